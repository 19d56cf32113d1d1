"""Check-ahead with real processes: a relay-only seed that reads a burst checks its
signatures in a worker thread, and the subscriber gets every message once, in order.

A publisher A and a subscriber B are linked only through the seed S. S is
stopped (SIGSTOP) while A sends, so A's records wait in S's socket and S
reads them as bursts when it goes on (SIGCONT): its ``/status`` counts the
bursts checked ahead, and B holds all of A's messages in A's order.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from tests._procs import running, start_peer, wait_ready

BOUND_S = 60.0
COUNT = 60


def _held(p: Any) -> list[str]:
    r = p.get("/messages", channel="ahead", limit="1000", peek="true", wait="2")
    assert r.status_code == 200, r.text
    return [m["body"] for m in r.json()]


def test_a_seed_checks_a_burst_ahead_and_delivers_it_in_order(tmp_path: Path) -> None:
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
                    r = a.post("/send", {"channel": "ahead", "body": f"m{i}"})
                    assert r.status_code == 200, r.text
            finally:
                os.kill(seed.proc.pid, signal.SIGCONT)
            want = ["first"] + [f"m{i}" for i in range(COUNT)]
            while (got := _held(b)) != want:
                assert len(got) <= len(want) and got == want[: len(got)], got
                assert time.monotonic() < end, f"{len(got)} of {len(want)} arrived"
            counters = seed.get("/status").json()["counters"]
            assert counters["checked_ahead_bursts"] >= 1, counters
            assert counters["checked_ahead"] >= 4 and counters["checked_ahead_failed"] == 0
            assert counters["checked_ahead_over_budget"] == 0  # 64 bursts in flight: far off
            assert counters["link_errors"] == 0
