"""The handlers of the local API's plain (not streaming) endpoints.

Each handler takes a Starlette request that already passed the origin, token
and query-parameter checks (``_api.LocalApi``), raises ``ApiError`` for what
it refuses, and answers JSON.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from peer.node._bootstrap import bootstrap_entry
from peer.node._inbox import PeerInfo
from peer.node._node import Peer, UnknownPeer
from peer.node._ocmhost import agent_channels
from peer.wire import _cbor
from peer.wire._envelope import Content
from peer.wire._errors import ProtocolError
from peer.wire._limits import MAX_BODY_BYTES, MAX_PAYLOAD
from store import StoreError

from ._agents import AgentEndpoints, has_feature, learn_skill
from ._blobapi import BlobApi
from ._convapi import ConversationEndpoints
from ._coordapi import meta_from_body, receipts
from ._policyapi import PolicyEndpoints, policy_status
from ._rallyapi import RallyEndpoints
from ._readreceipts import send_read_receipts, unread_dms
from ._select import message_filter, select
from ._spec import BY_ROUTE, Endpoint, openapi
from ._taskapi import TaskEndpoints
from ._values import (
    ApiError,
    bool_param,
    channel_name,
    hex_id,
    int_param,
    iso,
    json_to_cbor_value,
    message_json,
    parse_attachments,
    wait_param,
)
from ._webhooks import WebhookService

API_VERSION = 1
MAX_LIMIT = 1000
RESOLVE_TIMEOUT = 10.0  # seconds a DM to an unseen peer id may spend in the DHT
VERSION = "0.1.0"
OCMESH_MAX_CONTENT = 4096  # characters of content ocmesh accepts (413 past it)

JsonBody = Callable[[Request, Endpoint], Awaitable[dict[str, Any]]]


class Endpoints:
    """The handlers, around one running peer."""

    def __init__(
        self,
        peer: Peer,
        json_body: JsonBody,
        *,
        compat: str | None = None,
        webhooks: WebhookService | None = None,
    ) -> None:
        self.peer = peer
        self._json_body = json_body
        self.compat = compat
        self.webhooks = webhooks
        self.api_url = ""
        self.blob_api = BlobApi(peer)
        # more sections of /status, from the API's own parts (schedules, audit, fleet)
        self.status_parts: dict[str, Callable[[], Any]] = {}
        self.mesh_stats: Callable[[], dict[str, Any]] | None = None  # the MESH gateway's
        self.a2a_stats: Callable[[], dict[str, Any]] | None = None  # the A2A gateway's

    def handlers(self) -> dict[str, Callable[[Request], Awaitable[Response]]]:
        return {
            "/status": self.status,
            "/peers": self.peers,
            "/send": self.send,
            "/messages": self.messages,
            "/ack": self.ack,
            "/subscribe": self.subscribe,
            "/unsubscribe": self.unsubscribe,
            "/channels": self.channels,
            "/dht": self.dht,
            "/outbox": self.outbox,
            "/dead-letters": self.dead_letters,
            "/receipts": lambda request: receipts(self.peer, request),
            "/bootstrap.json": self.bootstrap,
            "/openapi.json": self.openapi,
            **AgentEndpoints(self.peer, self.body).handlers(),
            **self.blob_api.handlers(),
            **RallyEndpoints(self.peer, self._json_body).handlers(),
            **ConversationEndpoints(self.peer, self._json_body).handlers(),
            **TaskEndpoints(self.peer, self._json_body).handlers(),
            **PolicyEndpoints(self.peer, self._json_body).handlers(),
        }

    async def body(self, request: Request) -> dict[str, Any]:
        return await self._json_body(request, BY_ROUTE[(request.method, request.url.path)])

    async def status(self, request: Request) -> Response:
        peer = self.peer
        out: dict[str, Any] = {
            "daemon_version": VERSION,
            "api_version": API_VERSION,
            "protocol_version": 1,
            "peer_id": peer.identity.peer_id_hex,
            "pubkey": peer.identity.public_key.hex(),
            "name": peer.options.name or None,
            "uptime_seconds": int(peer.uptime),
            "peer_count": len(peer.links),
            "known_peers": len(peer.known_peers()),
            "online_peers": len(peer.known_peers(online=True)),
            "relay_status": self._relay_status(),
            "listen": peer.listen_urls,
            "api": self.api_url,
            "compat": self.compat,
            "caps": list(peer.caps),
            "relay_only": peer.options.relay_only,
            "channels": agent_channels(peer.channels, peer.ocm),
            "unread": peer.inbox.unread(),
            "webhooks": [] if self.webhooks is None else self.webhooks.statistics(),
            "blobs": peer.blobs.statistics(),
            "ocm": None if peer.ocm is None else peer.ocm.statistics(),
            "mesh_hooks": None if self.mesh_stats is None else self.mesh_stats(),
            "a2a": None if self.a2a_stats is None else self.a2a_stats(),
            **peer.statistics().to_json(),
            **{name: part() for name, part in self.status_parts.items()},
            **policy_status(peer),
        }
        return JSONResponse(out)

    def _relay_status(self) -> list[dict[str, Any]]:
        """ocmesh's relay list: here, the peers we hold a link to, and how."""
        out = []
        for peer_id, link in sorted(self.peer.links.items()):
            info = self.peer.directory.get(peer_id)
            caps = () if info is None else info.caps
            out.append(
                {
                    "peer_id": peer_id.hex(),
                    "url": (info.listen[0] if info is not None and info.listen else None),
                    "connected": True,
                    "relay": "relay" in caps,
                    "relay_only": "relay-only" in caps,
                    "remote": getattr(link.transport, "remote", ""),
                }
            )
        return out

    async def peers(self, request: Request) -> Response:
        online = bool_param(request, "online")
        wanted = int_param(request, "min", 0, 100_000)
        deadline = trio.current_time() + wait_param(request)
        feature = request.query_params.get("feature") or None
        if feature is not None:
            await learn_skill(self.peer, feature)

        def known() -> list[PeerInfo]:
            found = self.peer.known_peers(online=online)
            return [i for i in found if feature is None or has_feature(self.peer, i, feature)]

        found = known()
        while len(found) < wanted and trio.current_time() < deadline:
            with trio.move_on_at(deadline):
                await self.peer.wait_changed()
            found = known()
        now_ms = self.peer.wall_ms()
        return JSONResponse(
            [
                {
                    "peer_id": info.peer_id.hex(),
                    "pubkey": info.public_key.hex(),
                    "name": info.name or None,
                    "online": self.peer.is_online(info, now_ms),
                    "linked": info.linked,
                    "times_linked": info.times_linked,
                    "last_seen": iso(info.last_seen_ms),
                    "listen": list(info.listen),
                    "features": list(info.caps),
                    "agent": info.agent or None,
                }
                for info in found
            ]
        )

    def _content(self, data: dict[str, Any]) -> Content:
        if "body" in data and "content" in data and data["body"] != data["content"]:
            raise ApiError(400, "invalid", "body and content are two names for the text: give one")
        body = data.get("body", data.get("content", ""))
        if not isinstance(body, str):
            raise ApiError(400, "invalid", "body must be a string")
        if self.compat == "ocmesh" and len(body) > OCMESH_MAX_CONTENT:
            raise ApiError(413, "too-large", f"content over {OCMESH_MAX_CONTENT} characters")
        if len(body.encode()) > MAX_BODY_BYTES:
            raise ApiError(413, "too-large", f"body over {MAX_BODY_BYTES} bytes")
        payload = None
        if "payload" in data and data["payload"] is not None:
            try:
                payload = _cbor.encode(json_to_cbor_value(data["payload"]))
            except (ValueError, TypeError, OverflowError) as exc:
                raise ApiError(400, "invalid", f"payload cannot be encoded: {exc}") from None
            if len(payload) > MAX_PAYLOAD:
                raise ApiError(413, "too-large", f"payload over {MAX_PAYLOAD} bytes as CBOR")
        reply_to = hex_id(data["reply_to"], "reply_to") if data.get("reply_to") else None
        thread = hex_id(data["thread"], "thread") if data.get("thread") else None
        attachments = parse_attachments(data.get("attachments"), self._blob_facts)
        return Content(body, payload, reply_to, thread, attachments)

    def _blob_facts(self, blob: bytes) -> tuple[str, str, int] | None:
        """A blob held here as ``(name, type, size)`` (what attachments may refer to)."""
        store = self.peer.blobs.store
        manifest = None if store is None else store.manifest(blob)
        return None if manifest is None else (manifest.name, manifest.type, manifest.size)

    def _recipient(self, to: Any) -> bytes:
        """A peer id from ``to``: a peer id, or a public key as ``/peers`` lists it."""
        wanted = hex_id(to, "to")
        if self.peer.directory.get(wanted) is not None:
            return wanted
        for info in self.peer.directory:
            if info.public_key == wanted:
                return info.peer_id
        return wanted  # an unseen peer id: the DHT may know it

    async def send(self, request: Request) -> Response:
        return JSONResponse(await self.send_data(await self.body(request)))

    async def send_data(self, data: dict[str, Any]) -> dict[str, Any]:
        """Send what a /send body asks (also a schedule's firing); its answer."""
        peer = self.peer
        if peer.options.relay_only:
            raise ApiError(400, "relay-only", "a relay-only peer has no agent to send as")
        channel, to = data.get("channel"), data.get("to")
        if channel is not None and to is not None:
            raise ApiError(
                400, "invalid", 'give "channel" or "to", not both: a DM is never a channel post'
            )
        if channel is None and isinstance(to, str) and to.startswith("#"):
            channel, to = to, None
        content = self._content(data)
        meta = meta_from_body(data, peer.wall_ms())
        if meta is not None:
            if channel is not None:
                raise ApiError(400, "invalid", "kind, ids, ttl and keys travel in DMs only")
            content = dataclasses.replace(content, meta=meta)
        try:
            if channel is not None:
                name = channel_name(channel)
                env = await peer.send_message(name, content)
                target = {"channel": name}
            elif to is not None:
                recipient = self._recipient(to)
                env = await self._send_dm(recipient, content, to)
                target = {"to": recipient.hex()}
            else:
                raise ApiError(400, "invalid", 'say where: "channel": name, or "to": peer id')
        except ProtocolError as exc:
            status = {"too-large": 413, "rate": 429}.get(exc.code.value, 400)
            raise ApiError(status, exc.code.value, exc.message) from None
        except StoreError as exc:
            raise ApiError(507, "store", f"not stored, not sent: {exc}") from None
        return {
            "id": env.id.hex(),
            "stored": peer.storage is not None,
            **target,
            "topic": env.topic,
            "seq": env.seq,
            "timestamp": iso(env.ts),
            "routed": peer.router.reachable(env.route),
        }

    async def _send_dm(self, recipient: bytes, content: Content, to: Any) -> Any:
        peer = self.peer
        if peer.directory.get(recipient) is None:
            with trio.move_on_after(RESOLVE_TIMEOUT):
                await peer.resolve_peer(recipient)  # ask the DHT for its record
        try:
            return await peer.send_direct(recipient, content)
        except UnknownPeer:
            raise ApiError(
                400,
                "unknown-peer",
                f"peer unknown: no key known for {to}: not seen on the mesh nor found in the DHT",
            ) from None

    async def messages(self, request: Request) -> Response:
        peer = self.peer
        peek = bool_param(request, "peek") or False
        after = int_param(request, "after", 0, 2**63)
        limit = int_param(request, "limit", 100, MAX_LIMIT)
        wanted = message_filter(request, peer.peer_id, unread=True)
        deadline = trio.current_time() + wait_param(request)
        found, more = select(peer.inbox, wanted, after, limit)
        while not found and trio.current_time() < deadline:
            with trio.move_on_at(deadline):
                await peer.wait_inbox_changed()
            found, more = select(peer.inbox, wanted, after, limit)
        headers = {
            "X-Clawmesh-Cursor": str(found[-1].cursor if found else after),
            "X-Clawmesh-Count": str(len(found)),
            "X-Clawmesh-More": "true" if more else "false",
        }
        # rendered before anything is marked read
        response = JSONResponse([message_json(m) for m in found], headers=headers)
        peer.inbox.handed(found)
        if wanted.unread and not peek:
            await peer.mark_read([m.id for m in found])
        return response

    async def ack(self, request: Request) -> Response:
        data = await self.body(request)
        marked = 0
        if "ids" in data:
            ids = data["ids"]
            if not isinstance(ids, list) or len(ids) > 10_000:
                raise ApiError(400, "invalid", "ids must be a list of message ids")
            wanted = [hex_id(i, "ids[]") for i in ids]
            receipts = unread_dms(self.peer, wanted)  # before they are marked
            marked += await self.peer.mark_read(wanted)
            await send_read_receipts(self.peer, receipts)
        if "through" in data:
            through = data["through"]
            if type(through) is not int or through < 0:
                raise ApiError(400, "invalid", "through must be a cursor (integer)")
            marked += await self.peer.mark_read_through(through)
        return JSONResponse({"marked": marked, "unread": self.peer.inbox.unread()})

    async def subscribe(self, request: Request) -> Response:
        data = await self.body(request)
        if self.peer.options.relay_only:
            raise ApiError(400, "relay-only", "a relay-only peer subscribes to nothing")
        name = channel_name(data.get("channel"))
        self.peer.subscribe(name)
        if self.peer.ocm is not None:
            self.peer.ocm.adopt(name)  # a channel the gateway held is the agent's now
        if self.peer.storage is not None:
            await self.peer.storage.save_channels()
        return JSONResponse({"channel": name, "channels": self._channels()})

    async def unsubscribe(self, request: Request) -> Response:
        data = await self.body(request)
        name = channel_name(data.get("channel"))
        if self.peer.ocm is None or not self.peer.ocm.hold(name):  # OCM links still use it
            self.peer.unsubscribe(name)
        if self.peer.storage is not None:
            await self.peer.storage.save_channels()
        return JSONResponse({"channel": name, "channels": self._channels()})

    def _channels(self) -> list[str]:
        """The agent's channels (not those the OCM gateway holds for its links)."""
        return agent_channels(self.peer.channels, self.peer.ocm)

    async def channels(self, request: Request) -> Response:
        return JSONResponse(self._channels())

    async def dht(self, request: Request) -> Response:
        service = self.peer.dht
        if service is None:
            return JSONResponse({"enabled": False})
        stats = service.statistics().to_json()
        return JSONResponse(
            {"enabled": True, **stats, "buckets": service.node.table.buckets_summary()}
        )

    async def outbox(self, request: Request) -> Response:
        """DMs waiting for their recipient's receipt; ``wait=S`` waits up to S s for none."""
        storage = self.peer.storage
        if storage is None:
            return JSONResponse([])
        limit = int_param(request, "limit", 100, MAX_LIMIT)
        deadline = trio.current_time() + wait_param(request)
        entries = await storage.service.read(lambda s: s.outbox(limit=limit))
        while entries and trio.current_time() < deadline:  # wait=S: until it empties
            with trio.move_on_at(deadline):
                await self.peer.wait_changed()
            entries = await storage.service.read(lambda s: s.outbox(limit=limit))
        return JSONResponse(
            [
                {
                    "id": e.msg_id.hex(),
                    "to": e.recipient.hex(),
                    "attempts": e.attempts,
                    "next_try": iso(e.next_try_ms),
                    "deadline": iso(e.deadline_ms),
                }
                for e in entries
            ]
        )

    async def dead_letters(self, request: Request) -> Response:
        """DMs no receipt came for before their deadline."""
        storage = self.peer.storage
        if storage is None:
            return JSONResponse([])
        limit = int_param(request, "limit", 100, MAX_LIMIT)
        letters = await storage.service.read(lambda s: s.dead_letters(limit=limit))
        out = []
        for letter in letters:
            message = self.peer.inbox.get(letter.msg_id)
            out.append(
                {
                    "id": letter.msg_id.hex(),
                    "to": letter.recipient.hex(),
                    "attempts": letter.attempts,
                    "failed": iso(letter.failed_ms),
                    "reason": letter.reason,
                    "body": None if message is None else message.body,
                }
            )
        return JSONResponse(out)

    async def bootstrap(self, request: Request) -> Response:
        entry = bootstrap_entry(self.peer.identity, self.peer.listen_urls, self.peer.caps)
        return JSONResponse({"version": 1, "peers": [entry]})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi(VERSION))
