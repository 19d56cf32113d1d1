"""Check-ahead with real processes: a relay-only seed that reads a burst checks its
signatures in a worker thread, and the subscriber gets every message once, in order.

A publisher A and a subscriber B are linked only through the seed S. S is
stopped (SIGSTOP) while A sends, so A's records wait in S's socket and S
reads them as bursts when it goes on (SIGCONT): its ``/status`` counts the
bursts checked ahead (up to ``READ_BURST``), and B holds all of A's messages
in A's order. S's ``/audit`` holds one ``relayed`` record per message (written
from the template of ``peer.api._auditfast``, in a few lingered commits) with
the fields the general path writes.
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
    r = p.get("/messages", channel="ahead", limit="1000", peek="true", wait="2")
    assert r.status_code == 200, r.text
    return [m["body"] for m in r.json()]


def _relayed(seed: Any) -> list[dict[str, Any]]:
    r = seed.get("/audit", direction="relayed", kind="channel", limit="1000")
    assert r.status_code == 200, r.text
    return list(r.json())


def test_a_seed_checks_a_burst_ahead_delivers_it_in_order_and_audits_it_once(
    tmp_path: Path,
) -> None:
    seed = start_peer(tmp_path, "seed", "--relay-only", "--no-dht", "--check-ahead", "on")
    with running(seed):
        # all three start at once (a seed's address is enough to join it)
        a = start_peer(tmp_path, "a", "--no-dht", "--channel", "ahead", bootstrap=seed.ws_url)
        b = start_peer(tmp_path, "b", "--no-dht", "--channel", "ahead", bootstrap=seed.ws_url)
        with running(a, b):
            for p in (seed, a, b):
                wait_ready(p)
            assert a.post("/send", {"channel": "ahead", "body": "first"}).status_code == 200
            end = time.monotonic() + BOUND_S
            while not _held(b):  # the route is up once B has a first message
                assert time.monotonic() < end, "the first message never arrived"
            os.kill(seed.proc.pid, signal.SIGSTOP)
            try:
                for i in range(COUNT):
                    r = a.post("/send", {"channel": "ahead", "body": f"m{i} \"é\"\n"})
                    assert r.status_code == 200, r.text
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
            assert sorted(row["text"] for row in rows) == sorted(want)
            assert len({row["id"] for row in rows}) == len(want)  # once each
            for row in rows:
                assert row["sender"] == me and row["recipients"] == ["#ahead"]
                assert row["topic"] == "ahead" and row["state"] == "relayed"
                assert row["size"] > 0 and row["seq"] >= 1
                assert row["time"].endswith("+00:00") and row["sent"].endswith("+00:00")
            counters = seed.get("/status").json()["counters"]
            assert counters["checked_ahead_bursts"] >= 1, counters
            assert counters["checked_ahead"] >= 4 and counters["checked_ahead_failed"] == 0
            assert counters["checked_ahead_over_budget"] == 0  # 64 bursts in flight: far off
            assert counters["link_errors"] == 0
