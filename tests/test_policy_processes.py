"""Acceptance (delivery policy, real processes): a DM to a peer that is down
becomes a dead letter at its deadline, the peer's circuit breaker opens in
``/status``, a dead letter can be retried by id, and the rest are replayed
by themselves when the peer is seen again; alerts are deduplicated."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests._procs import kill_hard, start_peer, stop, wait_ready


def _until(what: str, check: Any, deadline_s: float = 30.0) -> Any:
    end = time.monotonic() + deadline_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_dead_letters_breaker_replay_and_alerts(tmp_path: Path) -> None:
    alice = start_peer(tmp_path, "alice", "--dm-deadline", "3", "--outbox-retry", "0.2")
    wait_ready(alice)
    bob = start_peer(tmp_path, "bob", bootstrap=alice.ws_url)
    wait_ready(bob)
    try:
        assert alice.get("/peers", min="1", wait="20").json()
        # alerts: new, suppressed, escalated on the 3rd, recovery
        decisions = []
        for status in ("firing", "firing", "firing", "firing", "ok"):
            r = alice.post("/alerts", {"host": "db1", "check": "disk", "status": status,
                                       "to": [bob.peer_id]})
            assert r.status_code == 200, r.text
            decisions.append((r.json()["decision"], len(r.json()["sent"])))
        assert decisions == [("new", 1), ("suppressed", 0), ("escalate", 1),
                             ("suppressed", 0), ("recovery", 1)]
        got = _until("alerts at bob", lambda: (
            m if len(m := [x for x in bob.get("/messages", peek="true").json()
                           if x.get("message_kind") == "alert"]) == 3 else None))
        assert [m["priority"] for m in got] == ["high", "urgent", "normal"]

        # the alerts' receipts are back before bob goes (else they die with the rest)
        _until("alerts receipted", lambda: not alice.get("/outbox").json(), 60)
        kill_hard(bob)
        ids = [alice.post("/send", {"to": bob.peer_id, "body": f"while away {i}"}).json()["id"]
               for i in range(3)]
        dead = _until("dead letters", lambda: (
            d if len(d := alice.get("/dead-letters").json()) == 3 else None), 60)
        assert {d["id"] for d in dead} == set(ids)
        status = alice.get("/status").json()
        assert status["circuit_breakers"][bob.peer_id]["state"] in ("open", "half-open")
        assert status["delivery_policy"]["breaker_threshold"] == 3
        # one is retried by hand: back in the outbox (and dead again after its deadline)
        r = alice.post(f"/dead-letters/{ids[0]}/retry", {})
        assert r.status_code == 200 and r.json()["retried"] == [ids[0]]
        assert ids[0] in {e["id"] for e in alice.get("/outbox").json()}
        assert alice.post(f"/dead-letters/{'00' * 32}/retry", {}).status_code == 404

        bob = start_peer(tmp_path, "bob", bootstrap=alice.ws_url,
                         ports=(bob.mesh_port, bob.api_port))
        wait_ready(bob)
        # seen again: every dead letter is replayed and delivered, once
        _until("all delivered", lambda: (
            not alice.get("/dead-letters").json() and not alice.get("/outbox").json()), 30)
        bodies = [m["body"] for m in bob.get("/messages", peek="true").json()]
        assert sorted(b for b in bodies if b.startswith("while away")) == [
            f"while away {i}" for i in range(3)]
        status = alice.get("/status").json()
        assert bob.peer_id not in status["circuit_breakers"]  # closed again
    finally:
        stop(alice)
        stop(bob)
