"""The OCM gateway's Trio shell: OpenClaw Messaging peers on the mesh's WebSocket port.

A WebSocket whose first message is text speaks OCM's JSON frames (binary
stays the mesh protocol; ``Dialer`` hands text over here). Each link runs
an ``OcmSession`` (sans-IO, ``peer/protocols/_ocmsession.py``) and this shell
performs its decisions; ``peer/protocols/_ocmmap.py`` says how messages map.

Rules kept here:

* One task reads a link and performs its decisions in order; relaying a
  message into the mesh waits for the store's commit (back-pressure), so an
  acknowledged OCM message is never lost. Each link has a writer task and a
  bounded queue (``QUEUE`` frames and ``QUEUE_BYTES`` characters): a peer
  that does not read is disconnected.
* Mesh messages reach OCM links through one task that follows the peer's
  inbox (``Peer.messages``): every channel or DM message whose route an OCM
  link subscribed to is sent to it once (ids remembered per link).
* ``sync_request`` is answered from the inbox: the messages after the given
  id, in order (``limit`` of them, a frame at most ``SYNC_BYTES``, and
  ``has_more`` when more follow); with no id, or one we do not hold, the
  newest ``limit``. One answer per link waits for the writer at a time:
  another ``sync_request`` before the writer took the last answer is refused
  (``sync-busy``), so a peer that asks and never reads holds two answers at
  most (one being written, one waiting).
* A link is closed after ``IDLE`` seconds with no frame; a failure in one
  link (bad frame, bug) closes that link only, logged and counted.
* Channels the gateway joins for OCM links (a ``subscribe``, or a message
  into a channel) are the gateway's, not the agent's: they are left out of
  the agent's channel list (``agent_channels``) and of the saved
  subscriptions, held per link (``MAX_LINK_CHANNELS`` each, and
  ``MAX_GATEWAY_CHANNELS`` in all) and left ``LINGER`` seconds after the
  last link holding one unsubscribes or goes (so an OCM peer back within
  that time catches up by ``sync_request``; a lingering channel is left at
  once when room is needed). A channel the agent
  joined itself is never left by the gateway; one the agent joins later
  becomes the agent's (``adopt``); one the agent leaves while links hold it
  stays the gateway's (``hold``).
* The gateway only runs on a peer with an inbox (not ``--relay-only``).
"""

from __future__ import annotations

import contextlib
import json
import math
import uuid
from collections import OrderedDict
from typing import Any, Protocol

import trio
import trio_websocket

from peer.protocols._ocm import (
    DEFAULT_SYNC_LIMIT,
    INVALID_MESSAGE,
    OcmMessage,
    error_frame,
)
from peer.protocols._ocmmap import Route, export, mesh_channel, route_of, wrap
from peer.protocols._ocmsession import (
    GATEWAY_MESSAGE_BURST,
    GATEWAY_MESSAGE_RATE,
    AnswerSync,
    Bucket,
    Close,
    Decision,
    Established,
    KnownKeys,
    OcmCounters,
    OcmSession,
    Relay,
    Send,
    Subscribed,
)
from peer.wire import _cbor
from peer.wire._envelope import Content, Envelope
from peer.wire._errors import ProtocolError
from peer.wire._limits import MAX_PAYLOAD
from store import Backoff, StoreError

from ._bootstrap import BootstrapError, fetch_bootstrap
from ._host import PeerCore
from ._inbox import Inbox, InboxMessage, PeerInfo
from ._options import UnknownPeer
from ._stream import MessageStream
from ._websocket import dial_websocket


class OcmPeer(PeerCore, Protocol):
    """The peer, as its OCM gateway sees it."""

    @property
    def inbox(self) -> Inbox: ...
    @property
    def channels(self) -> set[str]: ...
    @property
    def storage(self) -> object | None: ...
    def messages(self, *, after: int | None = None, outgoing: bool = False) -> MessageStream: ...
    def subscribe(self, channel: str) -> None: ...
    def unsubscribe(self, channel: str) -> None: ...
    async def send_message(self, channel: str, content: Content) -> Envelope: ...
    async def send_direct(self, peer_id: bytes, content: Content) -> Envelope: ...
    async def resolve_peer(self, peer_id: bytes) -> PeerInfo | None: ...

QUEUE = 256  # frames waiting for one link's writer, at most
QUEUE_BYTES = 4 * 1024 * 1024  # characters waiting for one link's writer, at most
IDLE = 300.0  # seconds a link may stay silent
SYNC_BYTES = 1024 * 1024  # characters of one sync_response, at most
SEEN = 100_000  # OCM message ids remembered as relayed into the mesh
MAX_LINKS = 256  # OCM links at most
MAX_CHANNELS = 1024  # channels the gateway peer joins for OCM peers (and its own), at most
MAX_LINK_CHANNELS = 32  # channels one OCM link may make the gateway join
MAX_GATEWAY_CHANNELS = 256  # channels the gateway holds for OCM links (lingering ones too)
LINGER = 900.0  # seconds a gateway channel stays joined after its last link left
DIAL_BACKOFF = Backoff(base_ms=1_000, cap_ms=30_000)
_WS_GONE = (trio_websocket.ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError)


class OcmLink:
    """One OCM peer's link: its session, writer queue and channel names by route."""

    def __init__(self, session: OcmSession, ws: trio_websocket.WebSocketConnection, remote: str):
        self.session = session
        self.ws = ws
        self.remote = remote
        self.send, self.receive = trio.open_memory_channel[str | None](QUEUE)
        self.routes: dict[Route, str] = {}  # route -> the channel id this peer uses for it
        self.scope: trio.CancelScope | None = None  # the link's nursery
        self.queued = 0  # characters waiting in the queue
        self.sync_text: str | None = None  # the sync_response not yet written, if any
        self.joined: set[str] = set()  # gateway channels this link holds


class OcmGateway:
    def __init__(self, peer: OcmPeer) -> None:
        self.peer = peer
        self.own_id = peer.identity.peer_id_hex
        self.counters = OcmCounters()
        self.keys = KnownKeys()
        self.budget = Bucket(GATEWAY_MESSAGE_RATE, GATEWAY_MESSAGE_BURST, 0.0)
        self.links: set[OcmLink] = set()
        self.log = peer.log.bind(part="ocm")
        self._seen: OrderedDict[str | bytes, None] = OrderedDict()  # keys: ``_seen_key``
        self.held: dict[str, set[OcmLink]] = {}  # the gateway's own channels -> links holding
        self.lingering: dict[str, float] = {}  # held by no link: channel -> when it is left
        self._lingering_changed = trio.Event()

    def adopt(self, channel: str) -> None:
        """The agent subscribed to ``channel``: it is the agent's from now on."""
        self.lingering.pop(channel, None)
        for link in self.held.pop(channel, set()):
            link.joined.discard(channel)

    def hold(self, channel: str) -> bool:
        """The agent leaves ``channel``: True if OCM links still use it (the gateway
        keeps it, as its own), False if it may be left."""
        users = {link for link in self.links if ("ch", channel) in link.routes}
        if not users:
            return False
        self.held[channel] = users
        for link in users:
            link.joined.add(channel)
        return True

    def statistics(self) -> dict[str, Any]:
        return {"links": len(self.links), **self.counters.to_json()}

    # -- the inbox, fanned out to OCM links ------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        for message in list(self.peer.inbox):
            self._remember(message)
        stream = self.peer.messages(after=self.peer.inbox.last_cursor, outgoing=True)
        async with trio.open_nursery() as nursery:
            for spec in self.peer.options.ocm_bootstrap:
                nursery.start_soon(self.join, spec)
            nursery.start_soon(self._expire)
            task_status.started()
            async for message in stream:
                try:
                    self._fan_out(message)
                except Exception as exc:  # a bug: logged, the next message goes on
                    self.peer.counters.task_errors += 1
                    self.log.error("ocm fan-out crashed", error=repr(exc), exc_info=exc)

    async def _expire(self) -> None:
        """Leave lingering gateway channels when their time is up."""
        while True:
            with trio.move_on_at(min(self.lingering.values(), default=math.inf)):
                await self._lingering_changed.wait()
            self._lingering_changed = trio.Event()
            now = trio.current_time()
            for channel in [c for c, at in self.lingering.items() if at <= now]:
                self._drop(channel)

    def _drop(self, channel: str) -> None:
        del self.lingering[channel]
        del self.held[channel]
        self.peer.unsubscribe(channel)

    def _remember(self, message: InboxMessage) -> tuple[Route, OcmMessage] | None:
        found = _export(message)
        if found is not None:
            self._see(_seen_key(found[1].message_id))
        return found

    def _see(self, key: str | bytes) -> None:
        self._seen[key] = None
        if len(self._seen) > SEEN:
            self._seen.popitem(last=False)

    def _note(self, message: InboxMessage) -> None:
        """What ``_remember`` records, without building the OCM message when nobody
        would be sent it: a plain channel message's OCM id is its mesh id as a UUID
        (what ``export`` gives it; kept as those 16 bytes, ``_seen_key``); anything
        with a payload may be a wrapped one."""
        if message.has_payload:
            self._remember(message)
        elif message.kind == "msg" and message.channel is not None:
            self._see(message.id[:16])

    def _fan_out(self, message: InboxMessage) -> None:
        if not self.links:  # the common case (a catch-up's messages): only remember ids
            self._note(message)
            return
        found = self._remember(message)
        if found is None:
            return
        route, ocm = found
        for link in list(self.links):
            name = link.routes.get(route)
            if name is None or not link.session.mark_sent(ocm.message_id):
                continue
            self._send(link, _renamed(ocm, name).to_frame())
            self.counters.relayed_out += 1

    # -- links -----------------------------------------------------------------------------

    async def serve(self, ws: trio_websocket.WebSocketConnection, remote: str, first: str) -> None:
        """An inbound WebSocket whose first message was text: an OCM peer."""
        if len(self.links) >= MAX_LINKS:
            self.counters.refuse("no-room")
            with contextlib.suppress(*_WS_GONE):
                await ws.send_message(json.dumps(error_frame(INVALID_MESSAGE, "no room")))
            return
        await self._run_link(ws, remote, initiator=False, first=first)

    async def join(self, spec: str) -> None:
        """Keep links to every OCM peer a bootstrap spec names (a bootstrap.json)."""
        attempts = 0
        while True:
            try:
                targets = await fetch_bootstrap(spec)
                break
            except BootstrapError as exc:
                attempts += 1
                self.log.warning("ocm bootstrap failed", spec=spec, error=str(exc))
                await trio.sleep(DIAL_BACKOFF.delay_ms(attempts, self.peer.rng) / 1000)
        async with trio.open_nursery() as nursery:
            for target in targets:
                nursery.start_soon(self.dial_forever, target.url)

    async def dial_forever(self, url: str) -> None:
        failures = 0
        while True:
            started = trio.current_time()
            await dial_websocket(url, self._dialled, self.log)
            failures = 0 if trio.current_time() - started > 10 else failures + 1
            await trio.sleep(DIAL_BACKOFF.delay_ms(failures, self.peer.rng) / 1000)

    async def _dialled(self, transport: Any) -> bool:
        await self._run_link(transport.connection, transport.remote, initiator=True, first=None)
        return True

    async def _run_link(
        self,
        ws: trio_websocket.WebSocketConnection,
        remote: str,
        *,
        initiator: bool,
        first: str | None,
    ) -> None:
        session = OcmSession(
            self.own_id,
            self.peer.identity.public_key,
            initiator=initiator,
            store=self.peer.storage is not None,
            keys=self.keys,
            counters=self.counters,
            now=trio.current_time(),
            shared=self.budget,
        )
        link = OcmLink(session, ws, remote)
        self.links.add(link)
        self.counters.links_opened += 1
        log = self.log.bind(remote=remote, initiator=initiator)
        try:
            async with trio.open_nursery() as nursery:
                link.scope = nursery.cancel_scope
                nursery.start_soon(self._writer, link, nursery.cancel_scope)
                await self._perform(link, session.start())
                if first is not None:
                    await self._perform(link, session.receive(first, trio.current_time()))
                await self._read(link)
                link.send.close()  # the writer flushes, then ends the nursery
        except Exception as exc:  # a bug in this link: drop it, keep the peer
            self.peer.counters.link_errors += 1
            log.error("ocm link crashed", error=repr(exc), exc_info=exc)
        finally:
            self.links.discard(link)
            for channel in list(link.joined):
                self._leave(channel, link)
            self.counters.links_closed += 1
            with trio.move_on_after(2), contextlib.suppress(*_WS_GONE):
                await ws.aclose()
            log.info("ocm link down", ocm_peer=session.peer_id)

    async def _read(self, link: OcmLink) -> None:
        session = link.session
        while not session.closed:
            message: str | bytes | None = None  # None: silent for IDLE seconds
            with trio.move_on_after(IDLE):
                try:
                    message = await link.ws.get_message()
                except _WS_GONE:
                    return
            if isinstance(message, bytes) or message is None:
                self.counters.refuse("binary" if message is not None else "idle")
                return
            await self._perform(link, session.receive(message, trio.current_time()))

    async def _writer(self, link: OcmLink, scope: trio.CancelScope) -> None:
        try:
            async for text in link.receive:
                if text is None:
                    break
                if text is link.sync_text:  # being written: the next may be asked for
                    link.sync_text = None  # (a peer that answers fast must not find it busy)
                await link.ws.send_message(text)
                link.queued -= len(text)
                self.counters.frames_out += 1
        except _WS_GONE:
            pass
        scope.cancel()

    def _send(self, link: OcmLink, frame: dict[str, Any]) -> str | None:
        """Queue ``frame`` for ``link``; the text queued, or None if the link ended."""
        text = json.dumps(frame, ensure_ascii=False)
        try:
            if link.queued + len(text) > QUEUE_BYTES:
                raise trio.WouldBlock
            link.send.send_nowait(text)
        except trio.WouldBlock:
            self.counters.refuse("slow")
            link.session.closed = True  # it does not read: the link ends at once
            if link.scope is not None:
                link.scope.cancel()
            return None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return None
        link.queued += len(text)
        return text

    async def _perform(self, link: OcmLink, decisions: list[Decision]) -> None:
        for decision in decisions:
            if isinstance(decision, Send):
                self._send(link, decision.frame)
            elif isinstance(decision, Established):
                self._established(link)
            elif isinstance(decision, Subscribed):
                self._subscribed(link, decision.channel_id, decision.on)
            elif isinstance(decision, Relay):
                await self._relay(link, decision)
            elif isinstance(decision, AnswerSync):
                self._answer_sync(link, decision.request.channel_id,
                                  decision.request.after_message_id, decision.request.limit)
            elif isinstance(decision, Close):
                self.log.info("ocm link closed", remote=link.remote, reason=decision.reason)

    def _established(self, link: OcmLink) -> None:
        hello = link.session.hello
        assert hello is not None
        self.log.info("ocm link up", remote=link.remote, ocm_peer=hello.peer_id,
                      signed=hello.public_key is not None)
        if not link.session.initiator:
            return
        # a peer we dialled: follow our channels there, and catch up from it
        for channel in sorted(self.peer.channels):
            link.routes[("ch", channel)] = channel
            self._send(link, {"type": "subscribe", "channel_id": channel})
            if hello.store:
                self._send(link, {"type": "sync_request", "channel_id": channel,
                                  "after_message_id": None, "limit": DEFAULT_SYNC_LIMIT})

    def _subscribed(self, link: OcmLink, channel_id: str, on: bool) -> None:
        route = route_of(channel_id, link.session.peer_id)
        if not on:
            link.routes.pop(route, None)
            if route[0] == "ch":
                self._leave(route[1], link)
            return
        if route[0] == "ch" and not self._join(route[1], link):
            link.session.subscriptions.discard(channel_id)
            self._refuse(link, "too-many", "over this gateway's channel limits")
            return
        link.routes[route] = channel_id
        if not link.session.initiator:  # so that an OCM relay sends us this channel
            self._send(link, {"type": "subscribe", "channel_id": channel_id})

    async def _relay(self, link: OcmLink, decision: Relay) -> None:
        message = decision.message
        if _seen_key(message.message_id) in self._seen:
            return  # already on the mesh (through us, or another gateway)
        route = route_of(message.channel_id, message.sender_id)
        value = wrap(message, decision.verified, decision.public_key,
                     to_mesh_peer=route[0] == "dm")
        payload = _cbor.encode(value)
        if len(payload) > MAX_PAYLOAD:
            self._refuse(link, "too-large", "message too large for the mesh")
            return
        content = Content(body=message.body, payload=payload)
        try:
            if route[0] == "dm":
                await self._send_dm(route[1], content)
            elif not self._join(route[1], link):
                self._refuse(link, "too-many", "over this gateway's channel limits")
                return
            else:
                await self.peer.send_message(route[1], content)
        except UnknownPeer:
            self._refuse(link, "unknown-peer", "no mesh peer with that id is known")
            return
        except ProtocolError as exc:
            self._refuse(link, exc.code.value, exc.message)
            return
        except StoreError as exc:
            self._refuse(link, "not-stored", str(exc)[:200])
            return
        except ValueError as exc:
            self._refuse(link, "not-carried", str(exc)[:200])
            return
        self._see(_seen_key(message.message_id))
        self.counters.relayed_in += 1
        if not decision.verified:
            self.counters.unverified_in += 1

    def _join(self, channel: str, link: OcmLink) -> bool:
        """Subscribe the gateway peer to ``channel`` for ``link`` (held until the last
        link holding it leaves); False past ``MAX_LINK_CHANNELS`` or ``MAX_CHANNELS``."""
        users = self.held.get(channel)
        if users is None and channel in self.peer.channels:
            return True  # the agent's own
        if link in (users or ()):
            return True
        if len(link.joined) >= MAX_LINK_CHANNELS:
            return False
        if users is None:
            if len(self.held) >= MAX_GATEWAY_CHANNELS and self.lingering:
                self._drop(min(self.lingering, key=self.lingering.__getitem__))
            if len(self.held) >= MAX_GATEWAY_CHANNELS or len(self.peer.channels) >= MAX_CHANNELS:
                return False
            users = self.held[channel] = set()
            self.peer.subscribe(channel)
        self.lingering.pop(channel, None)
        users.add(link)
        link.joined.add(channel)
        return True

    def _leave(self, channel: str, link: OcmLink) -> None:
        users = self.held.get(channel)
        link.joined.discard(channel)
        if users is None:
            return
        users.discard(link)
        if not users:
            self.lingering[channel] = trio.current_time() + LINGER
            self._lingering_changed.set()

    async def _send_dm(self, peer_id: bytes, content: Content) -> None:
        if peer_id == self.peer.peer_id:
            raise ValueError("DMs to the gateway's own agent are not carried")
        if self.peer.directory.get(peer_id) is None:
            with trio.move_on_after(10):
                await self.peer.resolve_peer(peer_id)
        await self.peer.send_direct(peer_id, content)

    def _refuse(self, link: OcmLink, kind: str, reason: str) -> None:
        self.counters.refuse(kind)
        self._send(link, error_frame(INVALID_MESSAGE, reason))

    def _answer_sync(self, link: OcmLink, channel_id: str, after: str | None, limit: int) -> None:
        if link.sync_text is not None:
            self._refuse(link, "sync-busy", "the last sync_response is not read yet")
            return
        route = route_of(channel_id, link.session.peer_id)
        held = [ocm for m in self.peer.inbox
                if (found := _export(m)) is not None and found[0] == route
                for ocm in (found[1],)]
        start = max(0, len(held) - limit)
        if after is not None:
            for i, ocm in enumerate(held):
                if ocm.message_id == after:
                    start = i + 1
                    break
        page: list[dict[str, Any]] = []
        size = 0
        for ocm in held[start:start + limit]:
            frame = _renamed(ocm, channel_id).to_frame()
            size += len(json.dumps(frame, ensure_ascii=False))
            if page and size > SYNC_BYTES:
                break
            page.append(frame)
            link.session.mark_sent(ocm.message_id)
        self.counters.sync_answered += 1
        link.sync_text = self._send(link, {
            "type": "sync_response", "channel_id": channel_id, "messages": page,
            "has_more": start + len(page) < len(held)})


def agent_channels(channels: set[str], gateway: OcmGateway | None) -> list[str]:
    """The agent's own channels: ``channels`` without those only the gateway holds."""
    return sorted(channels if gateway is None else channels - gateway.held.keys())


def _export(message: InboxMessage) -> tuple[Route, OcmMessage] | None:
    return export(
        kind=message.kind,
        channel=message.channel,
        peer=message.peer,
        outgoing=message.outgoing,
        sender=message.sender,
        body=message.body,
        payload=message.payload,
        has_payload=message.has_payload,
        message_id=message.id,
        ts_ms=message.ts,
    )


def _seen_key(ocm_id: str) -> str | bytes:
    """How an OCM message id is remembered: a UUID (what a mesh message's OCM id is,
    ``message_uuid``) as its 16 bytes, anything else as it is."""
    if len(ocm_id) == 36 and ocm_id[8] == "-":
        try:
            return uuid.UUID(ocm_id).bytes
        except ValueError:
            pass
    return ocm_id


def _renamed(ocm: OcmMessage, channel_id: str) -> OcmMessage:
    if ocm.channel_id == channel_id:
        return ocm
    return OcmMessage(ocm.message_id, channel_id, ocm.sender_id, ocm.body, ocm.payload_json,
                      ocm.timestamp, None)


__all__ = ["OcmGateway", "agent_channels", "mesh_channel"]
