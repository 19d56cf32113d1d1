"""Acceptance (message semantics, real processes): signed receipt states,
requests and responses with their context, idempotency across ``kill -9`` of
the recipient, and expired messages never handed to an agent.

Two ``python -m peer`` processes with stores on loopback, used through their
local APIs as agents use them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests._procs import PeerProcess, kill_hard, running, start_peer, wait_ready


def _until(what: str, check: Any, deadline_s: float = 20.0) -> Any:
    end = time.monotonic() + deadline_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _pair(tmp_path: Path) -> tuple[PeerProcess, PeerProcess]:
    alice = start_peer(tmp_path, "alice")
    wait_ready(alice)
    bob = start_peer(tmp_path, "bob", bootstrap=alice.ws_url)
    wait_ready(bob)
    for p in (alice, bob):
        peers = p.get("/peers", min="1", wait="15").json()
        assert peers and all("coord" in x.get("caps", ["coord"]) for x in peers)
    return alice, bob


def _receipt_states(p: PeerProcess, msg_id: str) -> dict[str, Any]:
    r = p.get("/receipts", id=msg_id)
    return r.json()["states"] if r.status_code == 200 else {}


def test_request_response_and_signed_receipts(tmp_path: Path) -> None:
    alice, bob = _pair(tmp_path)
    with running(alice, bob):
        # a plain DM and a request both go through stored, delivered, read, replied
        plain = alice.post("/send", {"to": bob.peer_id, "body": "hello"}).json()["id"]
        asked = alice.post(
            "/send",
            {"to": bob.peer_id, "body": "status?", "kind": "request",
             "correlation_id": "c0ffee", "conversation_id": "abcd",
             "reply_context": '{"session": 7}', "priority": "high", "ttl": 60},
        ).json()["id"]
        _until("stored", lambda: {"stored"} <= set(_receipt_states(alice, asked)))
        got = _until("both at bob", lambda: (
            m if len(m := bob.get("/messages", peek="true").json()) >= 2 else None))
        by_id = {m["id"]: m for m in got}
        req = by_id[asked]
        assert req["message_kind"] == "request" and req["correlation_id"] == "c0ffee"
        assert req["reply_context"] == '{"session": 7}' and req["priority"] == "high"
        assert by_id[plain].get("message_kind") is None
        _until("delivered", lambda: {"delivered"} <= set(_receipt_states(alice, plain)))
        assert bob.post("/ack", {"ids": [plain, asked]}).status_code == 200
        for msg_id in (plain, asked):
            reply = bob.post("/send", {"to": alice.peer_id, "body": "ok", "reply_to": msg_id})
            assert reply.status_code == 200
        for msg_id in (plain, asked):
            states = _until("replied", lambda i=msg_id: (
                s if {"stored", "delivered", "read", "replied"} <= set(
                    s := _receipt_states(alice, i)) else None))
            for name, state in states.items():
                assert state["verified"] is True, name
                assert state["signed_by"] == bob.peer_id
        # the response carries the request's ids and context back, untouched
        answers = _until("response", lambda: [
            m for m in alice.get("/messages", peek="true").json()
            if m.get("message_kind") == "response"])
        assert answers[0]["correlation_id"] == "c0ffee"
        assert answers[0]["conversation_id"] == "abcd"
        assert answers[0]["reply_context"] == '{"session": 7}'
        assert alice.get("/messages", peek="true").json()[0]["status"] in ("read", "replied")


def test_idempotency_key_across_kill_and_expiry(tmp_path: Path) -> None:
    alice, bob = _pair(tmp_path)
    with running(alice):
        sent = []
        for i in range(100):
            if i == 40:  # the recipient dies mid-way, with no goodbye, and comes back
                kill_hard(bob)
                bob = start_peer(tmp_path, "bob", bootstrap=alice.ws_url,
                                 ports=(bob.mesh_port, bob.api_port))
                wait_ready(bob)
            r = alice.post("/send", {"to": bob.peer_id, "body": f"charge #{i}",
                                     "idempotency_key": "invoice-42"})
            assert r.status_code == 200, r.text
            sent.append(r.json()["id"])
        with running(bob):
            # every copy reaches bob's peer (alice's outbox empties: all receipted) ...
            _until("outbox empty", lambda: alice.get("/outbox").json() == [], 60)
            # ... and the agent was handed exactly one of them
            handed = [m for m in bob.get("/messages", peek="true").json()
                      if m.get("idempotency_key") == "invoice-42"]
            assert len(handed) == 1

            # an expired message is never handed: sent while bob is down, caught up after
            kill_hard(bob)
            late = alice.post("/send", {"to": bob.peer_id, "body": "too late", "ttl": 0.5})
            live = alice.post("/send", {"to": bob.peer_id, "body": "in time", "ttl": 600})
            assert late.status_code == live.status_code == 200
            time.sleep(1.0)  # the expiry passes while bob is away (the point of the test)
            bob = start_peer(tmp_path, "bob", bootstrap=alice.ws_url,
                             ports=(bob.mesh_port, bob.api_port))
            wait_ready(bob)
            with running(bob):
                _until("in time arrives", lambda: any(
                    m["body"] == "in time" for m in bob.get("/messages", peek="true").json()))
                bodies = [m["body"] for m in bob.get("/messages", peek="true").json()]
                assert "too late" not in bodies
                assert sum(b.startswith("charge #") for b in bodies) == 1
