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


def test_reply_addresses_are_public_unless_allowed() -> None:
    from peer.protocols._meshenv import parse_networks, reply_address_allowed
    for private in ("127.0.0.1", "169.254.169.254", "10.1.2.3", "192.168.0.1", "::1",
                    "fe80::1%eth0", "::ffff:127.0.0.1", "224.0.0.1", "0.0.0.0", "100.64.0.1"):
        assert not reply_address_allowed(private, ()), private
    assert reply_address_allowed("93.184.216.34", ())
    allow = parse_networks(["127.0.0.1", "10.0.0.0/8"])
    assert reply_address_allowed("127.0.0.1", allow) and reply_address_allowed("10.9.9.9", allow)
    assert not reply_address_allowed("127.0.0.2", allow)


async def test_reply_urls_are_checked_and_pinned() -> None:
    from peer.protocols._meshenv import MeshError, parse_networks
    hooks = _hooks()
    for url in ("http://169.254.169.254/latest/meta-data", "http://127.0.0.1:9/hooks/x",
                "http://localhost:9/x", "http://[::1]/x"):
        try:
            await hooks.reply_target(url)
        except MeshError as exc:
            assert exc.status == 400 and exc.code == "reply-url"
        else:
            raise AssertionError(f"{url} allowed")
    assert await hooks.reply_target("https://93.184.216.34/hook") == (
        "https://93.184.216.34/hook", "93.184.216.34", "93.184.216.34")
    hooks.reply_allow = parse_networks(["127.0.0.0/8"])
    assert await hooks.reply_target("http://127.0.0.1:9/hooks/x") == (
        "http://127.0.0.1:9/hooks/x", "127.0.0.1:9", "127.0.0.1")
