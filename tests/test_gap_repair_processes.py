"""Acknowledged means delivered, with real processes (issue 12's minimal case).

A publisher A and a subscriber B reach each other only through a relay-only
seed S (no DHT, so no direct link). S is killed with SIGKILL; A's ``/send``
acknowledges 10 messages that nobody can route; S is started again. Without
anyone restarting A or B, B must get all 10, in A's order, once each, and
``missed`` must end empty: the peers' anti-entropy digests find the gap and
fill it (catchup.md section 7.5).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests._procs import kill_hard, running, start_peer, wait_ready

BOUND_S = 60.0  # generous for a shared CI machine; a run here took about 7 s


def storm(p: Any) -> list[dict[str, Any]]:
    r = p.get("/messages", channel="storm", limit="1000", peek="true")
    assert r.status_code == 200, r.text
    messages: list[dict[str, Any]] = r.json()
    return messages


def wait_for_more(p: Any, have: list[dict[str, Any]]) -> None:
    """Long-poll until a message after the last one ``have`` holds arrives (or 5 s)."""
    after = str(have[-1]["cursor"]) if have else "0"
    p.get("/messages", channel="storm", wait="5", peek="true", after=after)


def test_messages_sent_while_the_only_relay_was_down_arrive(tmp_path: Path) -> None:
    seed = start_peer(tmp_path, "seed", "--relay-only", "--no-dht")
    try:
        _run(tmp_path, seed)
    finally:
        if seed.proc.returncode is None:  # the test failed before killing it
            kill_hard(seed)


def _run(tmp_path: Path, seed: Any) -> None:
    wait_ready(seed)
    join = f"{seed.ws_url}#{seed.peer_id}"
    a = start_peer(tmp_path, "a", "--no-dht", "--channel", "storm", bootstrap=join)
    b = start_peer(tmp_path, "b", "--no-dht", "--channel", "storm", bootstrap=join)
    with running(a, b):
        for p in (a, b):
            wait_ready(p)
        # the mesh is up once B has a first message (the digests deliver it even if
        # A sent it before its link carried the channel)
        assert a.post("/send", {"channel": "storm", "body": "before"}).status_code == 200
        end = time.monotonic() + BOUND_S
        while not storm(b):
            assert time.monotonic() < end, "the first message never arrived"
            wait_for_more(b, [])
        kill_hard(seed)
        # acknowledged with no route (or, before A notices the seed is gone, queued to
        # the dead link and lost in flight: the repair must make up for both)
        sent = [a.post("/send", {"channel": "storm", "body": f"m{i}"}) for i in range(10)]
        assert all(r.status_code == 200 for r in sent)
        routed = sum(r.json()["routed"] for r in sent)
        seed = start_peer(
            tmp_path, "seed", "--relay-only", "--no-dht", ports=(seed.mesh_port, seed.api_port)
        )
        with running(seed):
            wait_ready(seed)
            started = time.monotonic()
            while len(have := storm(b)) < 11:
                assert time.monotonic() < end + BOUND_S, f"B has {len(have)} of 11"
                wait_for_more(b, have)
            took = time.monotonic() - started
            got = storm(b)
            assert [m["seq"] for m in got] == list(range(1, 12))  # in order, once each
            assert [m["body"] for m in got[1:]] == [f"m{i}" for i in range(10)]
            status = b.get("/status").json()
            assert all(not s["missed"] for s in status["store"]["catchup"].values()), status
            print(f"B had all 10 ({routed} sent to the dying link) {took:.1f} s after")
