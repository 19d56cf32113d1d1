"""MeshHooks rules checked without processes: only the asked peer answers a request."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import structlog

from peer.api._meshhooks import MeshHooks, Pending

ASKED = b"\x01" * 32
FORGER = b"\x02" * 32


def _hooks() -> MeshHooks:
    peer: Any = SimpleNamespace(
        options=SimpleNamespace(mesh_keys=None, store_path=None, name="me"),
        log=structlog.get_logger(), wall_time=lambda: 1000.0,
        directory={}, identity=SimpleNamespace(peer_id_hex="00" * 32))
    return MeshHooks(peer)


def _dm(sender: bytes, corr: str) -> Any:
    return SimpleNamespace(kind="dm", outgoing=False, reply_to=None, sender=sender,
                           has_payload=True, payload={"mesh": {"correlationId": corr}},
                           body="answer")


def test_only_the_asked_peer_answers_a_request() -> None:
    hooks = _hooks()
    raw = {"id": "req-1", "from": "alice", "payload": {"subject": "q"}}
    hooks.pending["req-1"] = Pending(raw, "http://x/", "tok", 2000.0, ASKED)
    hooks._maybe_reply(_dm(FORGER, "req-1"))
    assert "req-1" in hooks.pending  # the forgery is ignored, the request still waits
    assert hooks._receive.statistics().current_buffer_used == 0
    hooks._maybe_reply(_dm(ASKED, "req-1"))
    assert "req-1" not in hooks.pending
    assert hooks._receive.statistics().current_buffer_used == 1


async def test_health_never_walks_the_inbox() -> None:
    class Inbox:
        def __iter__(self) -> Any:
            raise AssertionError("/health walked the inbox")

    hooks = _hooks()
    hooks.peer.inbox = Inbox()  # type: ignore[assignment]
    hooks.local.append({"id": "x"})
    hooks.mesh_received = 2
    response = await hooks.health(None)  # type: ignore[arg-type]
    assert json.loads(bytes(response.body)) == {"status": "ok", "agent": "me", "inbox": 3}
