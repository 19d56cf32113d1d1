"""The N = 10 pass's cuts, with real processes: a busy relay-only seed still carries
every message once, in order, and audits each one exactly as before.

A publisher A and a subscriber B are linked only through the seed S. S is
stopped (SIGSTOP) while A sends, so S reads A's records as bursts (up to
``READ_BURST``, now 32) when it goes on, checks them ahead, forwards them
(mesh fill remembered: B is a subscriber, not a transit relay), and writes
one ``relayed`` audit record per envelope from the template, in a few
lingered commits. B gets all of them in order; S's ``/audit`` holds one
record per message with the fields the general path writes.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from tests._procs import running, start_peer, wait_ready

BOUND_S = 60.0
COUNT = 80


def _held(p: Any) -> list[str]:
    r = p.get("/messages", channel="pass", limit="1000", peek="true", wait="2")
    assert r.status_code == 200, r.text
    return [m["body"] for m in r.json()]


def _relayed(seed: Any) -> list[dict[str, Any]]:
    r = seed.get("/audit", direction="relayed", kind="channel", limit="1000")
    assert r.status_code == 200, r.text
    return list(r.json())


def test_a_busy_seed_carries_and_audits_every_message_once(tmp_path: Path) -> None:
    seed = start_peer(tmp_path, "seed", "--relay-only", "--no-dht", "--check-ahead", "on")
    with running(seed):
        a = start_peer(tmp_path, "a", "--no-dht", "--channel", "pass", bootstrap=seed.ws_url)
        b = start_peer(tmp_path, "b", "--no-dht", "--channel", "pass", bootstrap=seed.ws_url)
        with running(a, b):
            for p in (seed, a, b):
                wait_ready(p)
            assert a.post("/send", {"channel": "pass", "body": "first"}).status_code == 200
            end = time.monotonic() + BOUND_S
            while not _held(b):  # the route is up once B has a first message
                assert time.monotonic() < end, "the first message never arrived"
            os.kill(seed.proc.pid, signal.SIGSTOP)
            try:
                for i in range(COUNT):
                    sent = a.post("/send", {"channel": "pass", "body": f"m{i} \"é\"\n"})
                    assert sent.status_code == 200, sent.text
            finally:
                os.kill(seed.proc.pid, signal.SIGCONT)
            want = ["first"] + [f"m{i} \"é\"\n" for i in range(COUNT)]
            while (got := _held(b)) != want:
                assert len(got) <= len(want) and got == want[: len(got)], got
                assert time.monotonic() < end, f"{len(got)} of {len(want)} arrived"
            while len(rows := _relayed(seed)) < len(want):
                assert time.monotonic() < end, f"{len(rows)} of {len(want)} audited"
                time.sleep(0.05)  # polling the API with a deadline
            me = a.get("/status").json()["peer_id"]
            assert sorted(r["text"] for r in rows) == sorted(want)
            assert len({r["id"] for r in rows}) == len(want)  # once each
            for r in rows:
                assert r["sender"] == me and r["recipients"] == ["#pass"] and r["topic"] == "pass"
                assert r["state"] == "relayed" and r["size"] > 0 and r["seq"] >= 1
                assert r["time"].endswith("+00:00") and r["sent"].endswith("+00:00")
            counters = seed.get("/status").json()["counters"]
            assert counters["checked_ahead_bursts"] >= 1, counters
            assert counters["link_errors"] == 0
