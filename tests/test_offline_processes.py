"""Acceptance (offline delivery): a peer killed with SIGKILL misses 10,000
channel messages and 100 DMs, and gets all of them when it comes back.

Real ``python -m peer`` processes: a relay-only seed, two carriers that
subscribe to the five channels (and so store them and announce themselves as
their providers in the DHT), and the returning peer R. R is told only the
seed's address; after its restart it must find the carriers through the DHT,
catch up every channel from them, and get the DMs from the senders' outboxes.
Checked: every message exactly once, each sender's messages in sequence
order, the DMs receipted (the senders' outboxes empty), carriers found in the
DHT, and the time it took (printed; the bound is generous for shared CI).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests._procs import PeerProcess, running, start_peer, stop, wait_ready

CHANNELS = [f"ch{i}" for i in range(5)]
MESSAGES = 10_000
DMS = 100
BOUND_S = 120.0  # catch-up must finish within this (measured: see the printout)


def _send_all(sender: PeerProcess, bodies: list[dict[str, Any]]) -> None:
    def one(body: dict[str, Any]) -> None:
        r = sender.post("/send", body)
        assert r.status_code == 200, r.text

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, bodies))


def _all_messages(p: PeerProcess) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        page = p.get("/messages", after=str(after), limit="1000", peek="true").json()
        if not page:
            return out
        out.extend(page)
        after = page[-1]["cursor"]


def test_a_killed_peer_gets_everything_it_missed(tmp_path: Path) -> None:
    channel_flags = [x for c in CHANNELS for x in ("--channel", c)]
    # the seed stores DMs only: the channels must come from carriers found in the DHT
    seed = start_peer(tmp_path, "seed", "--relay-only", "--keep-topic", "inbox/")
    wait_ready(seed)
    c1 = start_peer(tmp_path, "c1", *channel_flags, bootstrap=seed.ws_url)
    c2 = start_peer(tmp_path, "c2", *channel_flags, bootstrap=seed.ws_url)
    r = start_peer(tmp_path, "r", *channel_flags, bootstrap=seed.ws_url)
    with running(seed, c1, c2):
        for p in (c1, c2, r):
            wait_ready(p)
        for p in (c1, c2):  # the senders know R (its key, for the DMs)
            assert len(p.get("/peers", min="3", wait="15").json()) >= 3
        # one message per channel reaches R: the meshes are up
        for c in CHANNELS:
            assert c1.post("/send", {"channel": c, "body": f"hello {c}"}).status_code == 200
        got = r.get("/messages", unread="true", wait="15").json()
        deadline = time.monotonic() + 15
        while len(got) < len(CHANNELS) and time.monotonic() < deadline:
            got += r.get("/messages", unread="true", wait="5").json()
        assert len(got) == len(CHANNELS)
        r.proc.kill()  # SIGKILL: no goodbye
        r.proc.wait()
        stop(r)

        sends: dict[str, list[dict[str, Any]]] = {"c1": [], "c2": []}
        for i in range(MESSAGES):
            name = ("c1", "c2")[i % 2]
            sends[name].append({"channel": CHANNELS[i % 5], "body": f"{name}-{i}"})
        for i in range(DMS):
            name = ("c1", "c2")[i % 2]
            sends[name].append({"to": r.peer_id, "body": f"dm-{name}-{i}"})
        started = time.monotonic()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda p: _send_all(p, sends[p.name]), (c1, c2)))
        print(f"\nsent {MESSAGES} messages and {DMS} DMs in {time.monotonic() - started:.1f}s")

        r2 = start_peer(tmp_path, "r", bootstrap=seed.ws_url)  # same home: keys, store
        with running(r2):
            wait_ready(r2)
            back = time.monotonic()
            total = MESSAGES + DMS + len(CHANNELS)  # and the five read before the kill
            messages: list[dict[str, Any]] = []
            while len(messages) < total and time.monotonic() - back < BOUND_S:
                after = messages[-1]["cursor"] if messages else 0
                messages += r2.get(
                    "/messages", after=str(after), limit="1000", peek="true", wait="5"
                ).json()  # long-polls on the inbox
            took = time.monotonic() - back
            got = len(messages) - len(CHANNELS)
            print(f"R caught up {got} of {total - len(CHANNELS)} in {took:.1f}s "
                  f"({got / took:.0f} msg/s incl. DHT lookups and links)")
            status = r2.get("/status").json()
            assert status["unread"] == MESSAGES + DMS, status["store"]

            assert messages == _all_messages(r2)  # nothing more came after
            ids = [m["id"] for m in messages]
            assert len(ids) == len(set(ids)) == total
            assert sorted(m["body"] for m in messages if m["kind"] == "dm") == sorted(
                b["body"] for p in ("c1", "c2") for b in sends[p] if "to" in b
            )
            assert {m["body"] for m in messages if m["kind"] == "msg"} == {
                b["body"] for p in ("c1", "c2") for b in sends[p] if "channel" in b
            } | {f"hello {c}" for c in CHANNELS}
            last: dict[tuple[str, str], int] = {}
            for m in messages:  # cursor order is arrival order
                key = (m["from"], m["topic"])
                assert m["seq"] > last.get(key, 0), f"out of order: {key} {m['seq']}"
                last[key] = m["seq"]

            # the channels came from carriers R found in the DHT
            catchup = status["store"]["catchup"]
            carriers = set().union(*(set(catchup[c]["carriers"]) for c in CHANNELS))
            assert carriers & {c1.peer_id, c2.peer_id}, catchup
            assert all(not catchup[c]["missed"] for c in CHANNELS)

            # every DM was receipted: the senders' outboxes empty
            for sender in (c1, c2):  # long-polls until the outbox is empty
                assert sender.get("/outbox", wait="30").json() == []
            assert c1.get("/dead-letters").json() == []
