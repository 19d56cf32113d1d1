"""The fleet operator's MCP tools: schedules (and beside them the audit trail
and the fleet view), registered on the server ``_server.build_server`` makes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from mcp.server import MCPServer

from peer.client import AsyncClient
from peer.client._ops import message_body

Guard = Callable[[Awaitable[dict[str, Any]]], Awaitable[dict[str, Any]]]


def register_ops(server: MCPServer, client: Callable[[], AsyncClient], guarded: Guard) -> None:
    """Add the operator's tools to ``server``; ``client()`` opens the peer's API."""

    async def make(message: dict[str, Any], when: dict[str, Any]) -> dict[str, Any]:
        async with client() as mesh:
            made = await mesh.schedule(message, **{k: v for k, v in when.items() if v is not None})
        return {"schedule": made}

    @server.tool()
    async def schedule_message(
        text: str,
        channel: str | None = None,
        peer_id: str | None = None,
        at: str | None = None,
        every_seconds: float | None = None,
        cron: str | None = None,
        tz: str | None = None,
        missed: str | None = None,
        limit: int | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Send `text` to a `channel` (or a DM to `peer_id`) later or repeatedly: give
        one of `at` (ISO 8601 time, UTC unless an offset), `every_seconds` (>= 1) or
        `cron` ('0 9 * * mon-fri', in `tz`, an IANA zone, default UTC). `missed`:
        "fire" (default: occurrences missed while the peer was down are sent once) or
        "skip". `limit` caps the firings. Returns the schedule with its id."""
        when = {"at": at, "every": every_seconds, "cron": cron, "tz": tz, "missed": missed,
                "limit": limit, "name": name}
        return await guarded(make(message_body(channel, peer_id, text), when))

    async def listed() -> dict[str, Any]:
        async with client() as mesh:
            return {"schedules": await mesh.schedules()}

    @server.tool()
    async def list_schedules() -> dict[str, Any]:
        """Every schedule: id, state (active, paused, finished), next occurrence, firings."""
        return await guarded(listed())

    async def act(schedule_id: str, action: str) -> dict[str, Any]:
        async with client() as mesh:
            if action == "delete":
                await mesh.delete_schedule(schedule_id)
                return {"deleted": schedule_id}
            if action == "pause":
                return {"schedule": await mesh.pause_schedule(schedule_id)}
            return {"schedule": await mesh.resume_schedule(schedule_id)}

    @server.tool()
    async def manage_schedule(schedule_id: str, action: str) -> dict[str, Any]:
        """`action` "pause", "resume" (from now) or "delete" (with its history) a schedule."""
        if action not in ("pause", "resume", "delete"):
            raise ValueError('action must be "pause", "resume" or "delete"')
        return await guarded(act(schedule_id, action))

    async def runs(schedule_id: str, limit: int) -> dict[str, Any]:
        async with client() as mesh:
            rows = await mesh.schedule_runs(schedule_id, limit=max(1, min(limit, 100)),
                                            newest=True)
        return {"runs": rows}

    register_fleet(server, client, guarded)

    @server.tool()
    async def schedule_history(schedule_id: str, limit: int = 20) -> dict[str, Any]:
        """A schedule's job history, newest first: each firing (outcome sent, failed,
        interrupted, with the message id) or skip, and the occurrences it stands for."""
        return await guarded(runs(schedule_id, limit))


def register_fleet(
    server: MCPServer, client: Callable[[], AsyncClient], guarded: Guard
) -> None:
    """The fleet view as a tool."""

    async def fleet(online_only: bool) -> dict[str, Any]:
        async with client() as mesh:
            return await mesh.fleet(online=online_only or None)

    @server.tool()
    async def fleet_status(online_only: bool = False) -> dict[str, Any]:
        """The fleet's health: this peer's status and every peer's as heard in its
        presence (version, uptime, links, outbox depth, store use, circuits, online)."""
        return await guarded(fleet(online_only))


__all__ = ["register_fleet", "register_ops"]
