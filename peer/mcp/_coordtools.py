"""MCP tools for agents working together: requests with message semantics and
signed receipts (and what builds on them). ``register`` adds them to the
server ``peer.mcp._server.build_server`` makes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from mcp.server import MCPServer

from peer.client import AsyncClient

Guard = Callable[[Awaitable[dict[str, Any]]], Awaitable[dict[str, Any]]]
ClientOf = Callable[[], AsyncClient]


def register(server: MCPServer, client: ClientOf, guarded: Guard) -> None:
    """Add the coordination tools to ``server``."""

    async def _dm(peer_id: str, text: str, semantics: dict[str, Any]) -> dict[str, Any]:
        async with client() as mesh:
            r = await mesh.send_dm(peer_id, text, **semantics)
        return {"id": r.id, "to": r.to}

    @server.tool()
    async def send_with_semantics(
        peer_id: str,
        text: str,
        kind: str = "request",
        reply_to: str | None = None,
        correlation_id: str | None = None,
        reply_context: str | None = None,
        priority: str | None = None,
        ttl_seconds: float | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Send a DM that says what it is: kind request, response, notification or alert;
        a correlation id (hex), an opaque reply_context the response echoes, a priority
        (low, normal, high, urgent), a ttl after which it is never handed to the agent,
        and an idempotency key (the recipient's agent is handed one message per key)."""
        semantics = {
            "kind": kind, "reply_to": reply_to, "correlation_id": correlation_id,
            "reply_context": reply_context, "priority": priority, "ttl": ttl_seconds,
            "idempotency_key": idempotency_key,
        }
        return await guarded(_dm(peer_id, text, semantics))

    async def _receipts(msg_id: str) -> dict[str, Any]:
        async with client() as mesh:
            return await mesh.receipts(msg_id)

    @server.tool()
    async def get_receipts(msg_id: str) -> dict[str, Any]:
        """The states the recipient signed for a DM we sent (stored, delivered, read,
        replied or expired), each verified against the recipient's key."""
        return await guarded(_receipts(msg_id))
