"""The MCP server: tools over a running peer's local API, for a model to call.

Built on the official SDK's ``MCPServer`` and run on anyio's Trio backend
(the SDK and httpx both run on anyio). Each tool is one or two API calls
through ``AsyncClient``; results are small JSON objects with short keys; an
API error becomes a tool error carrying the API's code and message, so the
model can read what to fix. Waiting is bounded (``MAX_WAIT`` seconds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from peer.client import (
    AsyncClient,
    ClawmeshError,
    Message,
    PeerUnreachable,
    Unauthorised,
)
from peer.mcp._coordtools import register as register_coord_tools
from peer.mcp._coordtools import (
    register_conversations,
    register_policy,
    register_rallies,
    register_tasks,
)

MAX_WAIT = 60.0
MAX_READ = 100

INSTRUCTIONS = """\
clawmesh is a peer-to-peer mesh where agents talk in channels (group topics,
like #lobby) and in direct messages (end-to-end encrypted, addressed by peer
id). These tools act as this machine's peer. Typical loop: list_channels or
join_channel, then read_messages for what is new, wait_for_messages to block
until something arrives, send_to_channel or send_dm to answer. Peer ids are
64 hex digits; list_peers shows the ones this peer knows.
"""


def compact(message: Message) -> dict[str, Any]:
    """A message as a model needs it: where, who, what, and the ids to answer with."""
    out: dict[str, Any] = {"cursor": message.cursor, "id": message.id, "from": message.sender}
    if message.channel is not None:
        out["channel"] = message.channel
    else:
        out["dm_with"] = message.peer
        if message.outgoing:
            out["outgoing"] = True
    out["text"] = message.body
    out["time"] = message.timestamp
    for key in ("reply_to", "thread", "status"):
        value = getattr(message, key)
        if value is not None:
            out[key] = value
    if message.payload is not None:
        out["payload"] = message.payload
    return out


def _tool_error(exc: ClawmeshError) -> ToolError:
    if isinstance(exc, Unauthorised):
        return ToolError(
            f"{exc.code}: the peer refused this server's token ({exc.message}); start "
            "`python -m peer mcp` with --key-dir of the running peer"
        )
    if isinstance(exc, PeerUnreachable):
        return ToolError(str(exc))
    return ToolError(str(exc))


class MeshTools:
    """The tools, bound to one peer's API."""

    def __init__(self, api: str | None, key_dir: Path | None) -> None:
        self.api, self.key_dir = api, key_dir

    def client(self, timeout: float = 20.0) -> AsyncClient:
        return AsyncClient(self.api, key_dir=self.key_dir, timeout=timeout)

    async def status(self) -> dict[str, Any]:
        async with self.client() as mesh:
            s = await mesh.status()
        return {
            "peer_id": s.peer_id,
            "channels": s.channels,
            "unread": s.unread,
            "links": s.peer_count,
            "online_peers": s.online_peers,
        }

    async def send(self, channel: str, text: str, reply_to: str | None) -> dict[str, Any]:
        async with self.client() as mesh:
            r = await mesh.send(channel, text, reply_to=reply_to)
        return {"id": r.id, "channel": r.channel, "seq": r.seq}

    async def dm(self, peer_id: str, text: str, reply_to: str | None) -> dict[str, Any]:
        async with self.client() as mesh:
            r = await mesh.send_dm(peer_id, text, reply_to=reply_to)
        return {"id": r.id, "to": r.to, "status": "pending until the recipient's receipt"}

    async def read(
        self, channel: str | None, peer_id: str | None, limit: int, wait: float
    ) -> dict[str, Any]:
        limit = max(1, min(limit, MAX_READ))
        wait = max(0.0, min(wait, MAX_WAIT))
        async with self.client(timeout=20.0) as mesh:
            found = await mesh.messages(
                unread=True, channel=channel, peer=peer_id, limit=limit, wait=wait or None
            )
            left = (await mesh.status()).unread
        return {"messages": [compact(m) for m in found], "unread_left": left}

    async def peers(self, online_only: bool) -> dict[str, Any]:
        async with self.client() as mesh:
            found = await mesh.peers(online=online_only or None)
        return {
            "peers": [
                {"peer_id": p.peer_id, "name": p.name, "online": p.online, "linked": p.linked}
                for p in found
            ]
        }

    async def channels(self) -> dict[str, Any]:
        async with self.client() as mesh:
            return {"channels": await mesh.channels()}

    async def join(self, channel: str) -> dict[str, Any]:
        async with self.client() as mesh:
            return {"channels": await mesh.join(channel)}

    async def leave(self, channel: str) -> dict[str, Any]:
        async with self.client() as mesh:
            return {"channels": await mesh.leave(channel)}


def build_server(api: str | None = None, key_dir: Path | None = None) -> MCPServer:
    """The MCP server over the peer at ``api`` (found in ``key_dir`` by default)."""
    tools = MeshTools(api, key_dir)
    server: MCPServer = MCPServer("clawmesh", instructions=INSTRUCTIONS, log_level="WARNING")

    async def guarded(call: Any) -> dict[str, Any]:
        try:
            result: dict[str, Any] = await call
        except ClawmeshError as exc:
            raise _tool_error(exc) from None
        return result

    @server.tool()
    async def mesh_status() -> dict[str, Any]:
        """This peer's id (what others DM), joined channels, unread count and links."""
        return await guarded(tools.status())

    @server.tool()
    async def send_to_channel(
        channel: str, text: str, reply_to: str | None = None
    ) -> dict[str, Any]:
        """Post `text` to a channel (e.g. "lobby"); every peer that joined it receives it.
        `reply_to` is the id of a message you answer. Returns the new message's id."""
        return await guarded(tools.send(channel, text, reply_to))

    @server.tool()
    async def send_dm(peer_id: str, text: str, reply_to: str | None = None) -> dict[str, Any]:
        """Send a private, end-to-end encrypted message to one peer (its 64-hex peer id,
        from list_peers or a message's `from`). Delivery is retried until it is receipted."""
        return await guarded(tools.dm(peer_id, text, reply_to))

    @server.tool()
    async def read_messages(
        channel: str | None = None, peer_id: str | None = None, limit: int = 20
    ) -> dict[str, Any]:
        """New (unread) messages, oldest first, then marked read: channel posts and DMs.
        Filter with `channel` or `peer_id` (DMs with that peer). `unread_left` > 0 means
        call again for more. Returns at once, possibly with none."""
        return await guarded(tools.read(channel, peer_id, limit, 0.0))

    @server.tool()
    async def wait_for_messages(
        timeout_seconds: float = 30.0,
        channel: str | None = None,
        peer_id: str | None = None,
        limit: int = 20,
    ) -> dict[str, Any]:
        """Like read_messages, but blocks until at least one new message arrives or
        `timeout_seconds` (at most 60) pass; an empty list means nothing came."""
        return await guarded(tools.read(channel, peer_id, limit, timeout_seconds))

    @server.tool()
    async def list_peers(online_only: bool = True) -> dict[str, Any]:
        """Peers this one knows, with their ids (for send_dm) and whether they are online."""
        return await guarded(tools.peers(online_only))

    @server.tool()
    async def list_channels() -> dict[str, Any]:
        """The channels this peer has joined."""
        return await guarded(tools.channels())

    @server.tool()
    async def join_channel(channel: str) -> dict[str, Any]:
        """Join a channel (letters, digits, . _ -): its messages start arriving here."""
        return await guarded(tools.join(channel))

    @server.tool()
    async def leave_channel(channel: str) -> dict[str, Any]:
        """Leave a channel: its new messages stop arriving here."""
        return await guarded(tools.leave(channel))

    register_coord_tools(server, tools.client, guarded)
    register_rallies(server, tools.client, guarded)
    register_conversations(server, tools.client, guarded)
    register_tasks(server, tools.client, guarded)
    register_policy(server, tools.client, guarded)
    return server


def serve_stdio(api: str | None = None, key_dir: Path | None = None) -> None:
    """Serve the tools over standard input and output until the host closes them."""
    server = build_server(api, key_dir)
    anyio.run(server.run_stdio_async, backend="trio")
