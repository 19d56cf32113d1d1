"""The Trio shell of a peer: lifecycle, router actions, inbox, agent operations.

``Peer.run`` opens the nursery that owns every task of the peer. The protocol
decisions come from the sans-IO ``Handshake`` and ``GossipRouter``; the shell
only performs them: it moves records, encrypts them per link, reads the clock
and logs. Rules kept here:

* Every router decision goes through ``_perform``; a link that cannot keep up
  with its send queue is closed as ``SLOW``, never waited for.
* The inbox only grows by what the router delivers and the DMs we send; a DM
  that does not open is counted and dropped.
* Presence is announced every ``presence_interval`` and when wanted (a new
  peer, a new presence link), debounced by ``PRESENCE_DEBOUNCE``.
* Inbound connections are limited per remote address (loopback exempt).

Serving a link lives in ``peer.node._linkhost``, the DHT host methods in
``peer.node._dhthost``, WebSocket plumbing in ``peer.node._websocket``; ``Peer``
inherits the first two as mixins. With a ``store_path`` the peer's log,
persistent inbox, outbox and catch-up live in ``peer.node._storage``; without one
(simulations, benchmarks) nothing persists and the inbox is memory only.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio
import trio_websocket

from dht import DhtService
from peer.protocols._gossip import Close, Deliver, GossipRouter, Send, Upcall
from peer.wire import _cbor
from peer.wire._envelope import (
    PRESENCE_TOPIC,
    Content,
    Envelope,
    inbox_topic,
    open_dm,
    open_envelope,
    payload_value,
    seal_dm,
    seal_message,
    seal_presence,
)
from peer.wire._errors import ErrorCode, ProtocolError
from peer.wire._frames import is_topic
from peer.wire._frametypes import CuPage, CuReq, Dht, Push
from peer.wire._identity import Identity
from store import open_store_service

from ._dhthost import DhtHost
from ._inbox import Directory, Inbox, InboxMessage, PeerInfo
from ._link import Link
from ._linkhost import LinkHost
from ._options import PRESENCE_INTERVAL, PeerCounters, PeerOptions, UnknownPeer
from ._storage import Storage
from ._transport import WebSocketTransport
from ._websocket import describe_remote, dial_websocket, is_loopback, memory_link_pair, serve_ws

__all__ = ["Peer", "PeerCounters", "PeerOptions", "UnknownPeer", "memory_link_pair"]

PRESENCE_DEBOUNCE = 5.0
ONLINE_WINDOW_MS = int(2.5 * PRESENCE_INTERVAL * 1000)


class Peer(LinkHost, DhtHost):
    """A clawmesh peer. Create it, then ``await nursery.start(peer.run)``."""

    def __init__(self, identity: Identity, options: PeerOptions | None = None) -> None:
        self.identity = identity
        self.options = options or PeerOptions()
        self.peer_id = identity.peer_id
        self.log = structlog.get_logger("clawmesh").bind(peer=identity.peer_id_hex[:16])
        self.rng = random.Random(self.options.seed)
        self.router = GossipRouter(
            identity.peer_id,
            relay=self.options.relay,
            params=self.options.gossip,
            rng=random.Random(self.rng.random()),
            keepalive=self.options.keepalive,
            idle_timeout=self.options.idle_timeout,
            verify=not self.options.bench_no_verify,
            observe_all=self.options.relay_only and self.options.store_path is not None,
        )
        self.inbox = Inbox(self.options.inbox_capacity)
        self.directory = Directory()
        self.links: dict[bytes, Link] = {}
        self.counters = PeerCounters()
        self.channels: set[str] = set()
        self._chains: dict[str, tuple[int, bytes | None]] = {}  # log topic -> (seq, id)
        self.storage: Storage | None = None
        self._epoch = 0.0
        self._started = 0.0
        self._nursery: trio.Nursery | None = None
        self._inbox_changed = trio.Event()
        self._links_changed = trio.Event()
        self._changed = trio.Event()
        self._last_presence = -math.inf
        self._presence_wanted = trio.Event()
        self.listen_urls: list[str] = list(self.options.listen_urls)
        self._self_urls: set[str] = set()
        self._inbound_per_ip: dict[str, int] = {}
        self._dialing: dict[bytes, trio.Event] = {}
        self.dht: DhtService | None = None

    # -- time ------------------------------------------------------------------

    def now(self) -> float:
        return trio.current_time()

    def wall_ms(self) -> int:
        return int((self._epoch + trio.current_time()) * 1000)

    @property
    def uptime(self) -> float:
        return trio.current_time() - self._started

    # -- lifecycle -------------------------------------------------------------

    async def run(
        self,
        *,
        extra: Callable[[trio.Nursery], Awaitable[None]] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the peer until cancelled. ``extra`` starts more services in its nursery."""
        self._started = trio.current_time()
        self._epoch = time.time() - self._started
        async with contextlib.AsyncExitStack() as stack:
            channels = list(self.options.channels)
            if self.options.store_path is not None:
                service = await stack.enter_async_context(
                    open_store_service(self.options.store_path, log=self.log.bind(part="store"))
                )
                self.storage = Storage(self, service)
                stored = await self.storage.load()
                if self.storage.returning and not self.options.relay_only:
                    # back from an absence: what we kept catches up before live traffic
                    self.storage.hold_live([inbox_topic(self.peer_id), *stored])
                channels = [*stored, *channels]
            async with trio.open_nursery() as nursery:
                await self._start(nursery, channels, extra)
                task_status.started()

    async def _start(
        self,
        nursery: trio.Nursery,
        channels: list[str],
        extra: Callable[[trio.Nursery], Awaitable[None]] | None,
    ) -> None:
        self._nursery = nursery
        if self.storage is not None:
            nursery.start_soon(self.storage.run)
        if extra is not None:
            await extra(nursery)  # the listener: our addresses are known after it
        if self.options.dht:
            self.dht = self._make_dht()
            nursery.start_soon(self.dht.run)
        self.perform(self.router.subscribe(PRESENCE_TOPIC))
        if not self.options.relay_only:
            self.perform(self.router.subscribe(inbox_topic(self.peer_id)))
            for channel in dict.fromkeys(channels):
                self.subscribe(channel)
        nursery.start_soon(self._heartbeat_loop)
        nursery.start_soon(self._presence_loop)
        self.log.info("peer started", peer_id=self.identity.peer_id_hex, caps=self.caps)
        if self.options.bench_no_verify or self.options.bench_plaintext_links:
            self.log.warning(
                "benchmark-only flags on: UNSAFE, never use in production",
                no_verify=self.options.bench_no_verify,
                plaintext_links=self.options.bench_plaintext_links,
            )

    @property
    def serving_dht(self) -> bool:
        return self.options.dht and bool(self.listen_urls)

    @property
    def caps(self) -> tuple[str, ...]:
        return self.options.caps_for(self.serving_dht)

    def cancel(self) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    @property
    def nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise RuntimeError("peer is not running")
        return self._nursery

    # -- change notifications ----------------------------------------------------

    def _notify_links(self) -> None:
        self._links_changed.set()
        self._links_changed = trio.Event()
        self._notify_changed()

    def _notify_changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        """Wait until a link, a link's interest, the inbox or the directory changes."""
        await self._changed.wait()

    async def wait_links_changed(self) -> None:
        await self._links_changed.wait()

    # -- performing router decisions ---------------------------------------------

    def _upcall(self, action: Upcall) -> None:
        link = self.links.get(action.peer)
        if link is None:
            return
        frame = action.frame
        storage = self.storage
        match frame:
            case Dht():
                if self.dht is None:
                    return  # DHT off: requests go unanswered and time out at the asker
                try:
                    self.dht.on_message(action.peer, frame.message)
                except ProtocolError as exc:
                    self._refuse(link, exc, self.log.bind(link=action.peer.hex()[:16]))
            case CuReq():
                if storage is not None:
                    storage.on_request(action.peer, frame)
                else:
                    link.enqueue(
                        CuPage(
                            frame.r, frame.topic, (), frame.after, False, (), "not-carried"
                        ).encode()
                    )
            case CuPage():
                if storage is not None:
                    storage.on_page(action.peer, frame)
            case Push():
                if storage is not None:
                    storage.on_push(action.peer, frame.envelope)
                else:
                    self._on_push_memory(action.peer, frame.envelope)

    def perform(self, actions: list[Send | Deliver | Close | Upcall]) -> None:
        for action in actions:
            if isinstance(action, Send):
                link = self.links.get(action.peer)
                if link is not None and not link.enqueue(action.frame):
                    self.counters.refuse(ErrorCode.SLOW)
                    self.log.warning("link too slow", link=link.peer_id.hex()[:16])
                    link.close(ErrorCode.SLOW, "not reading fast enough")
            elif isinstance(action, Deliver):
                self._deliver(action.envelope, action.member)
            elif isinstance(action, Upcall):
                self._upcall(action)
            else:
                link = self.links.get(action.peer)
                if link is not None:
                    self.counters.refuse(action.code)
                    self.log.warning(
                        "closing link",
                        link=action.peer.hex()[:16],
                        code=action.code.value,
                        reason=action.reason,
                    )
                    link.close(action.code, action.reason)

    def _deliver(self, env: Envelope, member: bool = True) -> None:
        now_ms = self.wall_ms()
        info = self.directory.see(env.sender, env.sender_key, now_ms)
        if env.kind == "presence":
            self._on_presence(env, info)
            return
        if self.storage is not None:
            self.storage.accept(env, member=member)
            return
        if env.kind == "receipt" or not member:
            return
        outgoing = env.sender == self.peer_id
        if env.kind == "dm":
            try:
                content = open_dm(self.identity, env)
            except ProtocolError as exc:
                self.counters.dm_undecryptable += 1
                self.log.warning(
                    "DM does not open", sender=env.sender.hex()[:16], reason=exc.message
                )
                return
            self._add_to_inbox(env, content, channel=None, peer=env.sender, outgoing=outgoing)
        else:
            self._add_to_inbox(env, env.content(), channel=env.topic, peer=None, outgoing=outgoing)

    def _add_to_inbox(
        self,
        env: Envelope,
        content: Content,
        *,
        channel: str | None,
        peer: bytes | None,
        outgoing: bool,
    ) -> None:
        message, _ = self.make_inbox_message(env, content, channel, peer, outgoing, self.wall_ms())
        self.add_inbox_message(message)

    def make_inbox_message(
        self,
        env: Envelope,
        content: Content,
        channel: str | None,
        peer: bytes | None,
        outgoing: bool,
        now_ms: int,
    ) -> tuple[InboxMessage, bytes | None]:
        """The inbox entry of a message, and its payload's CBOR bytes."""
        payload: Any = None
        if content.payload is not None:
            payload = payload_value(content.payload)
        message = InboxMessage(
            cursor=0,
            id=env.id,
            kind=env.kind,
            topic=env.topic,
            channel=channel,
            sender=env.sender,
            peer=peer,
            body=content.body,
            payload=payload,
            has_payload=content.payload is not None,
            reply_to=content.reply_to,
            thread=content.thread,
            ts=env.ts,
            received_ms=now_ms,
            outgoing=outgoing,
            read=outgoing,
            status="pending" if outgoing and env.kind == "dm" else None,
            seq=env.seq,
        )
        return message, content.payload

    def add_inbox_message(self, message: InboxMessage) -> None:
        if self.inbox.add(message) is not None:
            self.notify_inbox()

    def notify_inbox(self) -> None:
        self._inbox_changed.set()
        self._inbox_changed = trio.Event()
        self._notify_changed()

    def _on_push_memory(self, link_peer: bytes, wire: bytes) -> None:
        """A pushed DM without a store: deliver it once, like one from gossip."""
        try:
            env = open_envelope(wire, verify=not self.options.bench_no_verify)
        except ProtocolError as exc:
            link = self.links.get(link_peer)
            if link is not None:
                self._refuse(link, exc, self.log.bind(link=link_peer.hex()[:16]))
            return
        if env.kind == "dm" and env.recipient == self.peer_id and not self.router.seen(env.id):
            self.router.note_seen(env.id, self.now())
            self._deliver(env)

    async def wait_inbox_changed(self) -> None:
        await self._inbox_changed.wait()

    def _on_presence(self, env: Envelope, info: PeerInfo) -> None:
        if env.sender == self.peer_id:
            return
        try:
            data = payload_value(env.fields["payload"])
        except ProtocolError:
            return
        if isinstance(data, dict):
            listen = data.get("listen")
            caps = data.get("caps")
            if isinstance(listen, list) and all(isinstance(a, str) for a in listen):
                info.listen = tuple(listen[:8])
            if isinstance(caps, list) and all(isinstance(c, str) for c in caps):
                info.caps = tuple(caps[:16])
        if self.storage is not None:
            self.storage.wake_outbox(env.sender)
        if info.extra.get("presence_seq", -1) < env.seq:
            first = "presence_seq" not in info.extra
            info.extra["presence_seq"] = env.seq
            self._notify_changed()
            if first:
                self._want_presence()  # let a newcomer learn of us soon

    # -- agent-facing operations -------------------------------------------------

    def _seal_next(self, log_topic: str, seal: Callable[[int, bytes | None], Envelope]) -> Envelope:
        """Sign our next envelope of ``log_topic`` with ``seal(seq, prev)``: ``seq``
        one more than our last one there, ``prev`` that one's id. Synchronous,
        so no other envelope of ours can come between; without a store the
        chain starts again with the process."""
        seq, prev = self._chains.get(log_topic, (0, None))
        env = seal(seq + 1, prev)
        self._chains[log_topic] = (seq + 1, env.id)
        return env

    async def seal_own(
        self, log_topic: str, seal: Callable[[int, bytes | None], Envelope]
    ) -> Envelope:
        """:meth:`_seal_next`, the chain continued from what the store holds of ours."""
        if self.storage is not None and log_topic not in self._chains:
            head = await self.storage.chain_head(log_topic)
            self._chains.setdefault(log_topic, head)  # another task may have sealed meanwhile
        return self._seal_next(log_topic, seal)

    def subscribe(self, channel: str) -> None:
        if not is_topic(channel) or "/" in channel:
            raise ValueError(f"not a channel name: {channel!r}")
        new = channel not in self.channels
        self.channels.add(channel)
        self.perform(self.router.subscribe(channel))
        if self.storage is not None and new:
            self.nursery.start_soon(self._subscribed, channel)
        if self.dht is not None and channel not in self.dht.node.providing:
            with contextlib.suppress(ValueError):  # providing too many topics: gossip still works
                self.dht.node.start_providing(channel, self.wall_time())
            self.nursery.start_soon(self._link_to_carriers, channel)

    async def _subscribed(self, channel: str) -> None:
        assert self.storage is not None
        await self.storage.note_subscribed(channel)
        await self.storage.save_channels()
        await self.storage.catch_up_all([channel])

    def unsubscribe(self, channel: str) -> None:
        if self.storage is not None and channel in self.channels:
            self.nursery.start_soon(self.storage.save_channels)
        self.channels.discard(channel)
        self.perform(self.router.unsubscribe(channel))
        if self.dht is not None:
            self.dht.node.stop_providing(channel)

    def publish(self, channel: str, content: Content) -> Envelope:
        """Sign and send a channel message (ValueError or ProtocolError if invalid)."""
        env = self._seal_next(
            channel,
            lambda seq, prev: seal_message(
                self.identity,
                topic=channel,
                content=content,
                seq=seq,
                ts=self.wall_ms(),
                prev=prev,
            ),
        )
        self.perform(self.router.publish(env, self.now()))
        return env

    async def send_message(self, channel: str, content: Content) -> Envelope:
        """Sign, store (durably, with a store) and send a channel message."""
        env = await self.seal_own(
            channel,
            lambda seq, prev: seal_message(
                self.identity,
                topic=channel,
                content=content,
                seq=seq,
                ts=self.wall_ms(),
                prev=prev,
            ),
        )
        if self.storage is not None:
            message = payload = None
            if channel in self.channels:
                message, payload = self.make_inbox_message(
                    env, content, channel, None, True, self.wall_ms()
                )
            await self.storage.store_own(env, message, payload)  # and publishes it
        else:
            self.perform(self.router.publish(env, self.now()))
        return env

    async def send_direct(self, peer_id: bytes, content: Content) -> Envelope:
        """Encrypt, sign, store and send a DM; it waits in the outbox for its receipt."""
        if self.storage is None:
            return self.send_dm(peer_id, content)
        info = self.directory.get(peer_id)
        if info is None or peer_id == self.peer_id:
            raise UnknownPeer(peer_id.hex())
        key = info.public_key
        env = await self.seal_own(
            inbox_topic(peer_id),
            lambda seq, prev: seal_dm(
                self.identity,
                recipient_key=key,
                content=content,
                seq=seq,
                ts=self.wall_ms(),
                prev=prev,
            ),
        )
        message, payload = self.make_inbox_message(
            env, content, None, peer_id, True, self.wall_ms()
        )
        await self.storage.store_own(env, message, payload)  # and publishes it
        link = self.links.get(peer_id)
        if link is not None and env.route not in self.router.interest_of(peer_id):
            link.enqueue(Push(env.wire).encode())
        return env

    def send_dm(self, peer_id: bytes, content: Content) -> Envelope:
        """Encrypt, sign and send a DM; UnknownPeer if we never saw its key."""
        info = self.directory.get(peer_id)
        if info is None or peer_id == self.peer_id:
            raise UnknownPeer(peer_id.hex())
        key = info.public_key
        env = self._seal_next(
            inbox_topic(peer_id),
            lambda seq, prev: seal_dm(
                self.identity,
                recipient_key=key,
                content=content,
                seq=seq,
                ts=self.wall_ms(),
                prev=prev,
            ),
        )
        self.perform(self.router.publish(env, self.now()))
        self._add_to_inbox(env, content, channel=None, peer=peer_id, outgoing=True)
        return env

    async def mark_read(self, ids: list[bytes]) -> int:
        """Mark inbox messages read; with a store, returns after it is durable."""
        cursors = [m.cursor for i in ids if (m := self.inbox.get(i)) is not None and not m.read]
        marked = self.inbox.mark_read(ids)
        if self.storage is not None:
            await self.storage.mark_read(cursors)
        return marked

    async def mark_read_through(self, cursor: int) -> int:
        marked = self.inbox.mark_read_through(cursor)
        if self.storage is not None:
            await self.storage.mark_read_through(cursor)
        return marked

    def known_peers(self, *, online: bool | None = None) -> list[PeerInfo]:
        now_ms = self.wall_ms()
        out = []
        for info in self.directory:
            if info.peer_id == self.peer_id:
                continue
            is_online = self.is_online(info, now_ms)
            if online is None or online == is_online:
                out.append(info)
        return out

    def is_online(self, info: PeerInfo, now_ms: int | None = None) -> bool:
        now_ms = self.wall_ms() if now_ms is None else now_ms
        return info.linked or now_ms - info.last_seen_ms < ONLINE_WINDOW_MS

    # -- periodic work -------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.options.gossip.heartbeat
        while True:
            await trio.sleep(interval)
            self.perform(self.router.heartbeat(self.now()))

    def _want_presence(self) -> None:
        self._presence_wanted.set()

    async def _presence_loop(self) -> None:
        while True:
            with trio.move_on_after(self.options.presence_interval):
                await self._presence_wanted.wait()
            self._presence_wanted = trio.Event()
            wait = self._last_presence + PRESENCE_DEBOUNCE - self.now()
            if wait > 0:
                await trio.sleep(wait)
            self._announce_presence()

    def _announce_presence(self) -> None:
        self._last_presence = self.now()
        payload = _cbor.encode({"listen": self.listen_urls[:8], "caps": list(self.caps)})
        # presence is not stored: its sequence is the clock, which outlives restarts
        now_ms = self.wall_ms()
        env = seal_presence(self.identity, payload=payload, seq=now_ms, ts=now_ms)
        self.perform(self.router.publish(env, self.now()))

    # -- dialling ------------------------------------------------------------------

    async def dial_forever(self, url: str, expect: bytes | None = None) -> None:
        """Keep a link to ``url`` up, reconnecting with exponential backoff and jitter."""
        backoff = self.options.backoff_initial
        log = self.log.bind(dial=url)
        while True:
            started = self.now()
            linked_to = await self.dial_once(url, expect)
            if url in self._self_urls:
                log.info("bootstrap address is this peer; not dialling it")
                return
            if linked_to is not None and linked_to in self.links:
                # a duplicate: the other direction won; wait for it to end
                await self.links[linked_to].closed.wait()
            if self.now() - started > 30:
                backoff = self.options.backoff_initial
            delay = self.rng.uniform(0, backoff)
            log.debug("redial", after=round(delay, 2))
            await trio.sleep(delay)
            backoff = min(self.options.backoff_max, backoff * 2)

    async def dial_once(
        self, url: str, expect: bytes | None = None, on_up: Callable[[], None] | None = None
    ) -> bytes | None:
        """One connection attempt to a ``ws://`` URL; returns the peer id linked, if any.

        The TCP stream is opened and closed by ``dial_websocket`` rather than by
        trio-websocket, which skips closing it when the other side closed first.
        """
        result = await dial_websocket(
            url, lambda transport: self.run_link(transport, True, expect, on_up), self.log
        )
        return None if result is None else result.peer_id

    async def serve_websocket(self, host: str, port: int) -> int:
        """Accept WebSocket links on ``host:port`` in the peer's nursery; returns the bound port."""

        async def handler(request: trio_websocket.WebSocketRequest) -> None:
            remote = describe_remote(request)
            ip = remote.rsplit(":", 1)[0]
            limit = self.options.max_links_per_ip
            if limit and not is_loopback(ip) and self._inbound_per_ip.get(ip, 0) >= limit:
                self.counters.refuse(ErrorCode.TOO_LARGE)
                self.log.warning("too many connections from one address", remote=remote)
                with contextlib.suppress(Exception):
                    await request.reject(503, body=b"too many connections from your address")
                return
            self._inbound_per_ip[ip] = self._inbound_per_ip.get(ip, 0) + 1
            try:
                try:
                    ws = await request.accept()
                    request.headers.clear()  # kept by trio-websocket for the link's life, unused
                except Exception as exc:
                    self.counters.link_errors += 1
                    self.log.info("websocket upgrade failed", remote=remote, error=repr(exc))
                    return
                await self.run_link(WebSocketTransport(ws, remote), False, None)
            except Exception as exc:  # never let one connection end the listener
                self.counters.link_errors += 1
                self.log.exception("link crashed", remote=remote, error=repr(exc))
            finally:
                self._inbound_per_ip[ip] -= 1
                if not self._inbound_per_ip[ip]:
                    del self._inbound_per_ip[ip]

        bound: int = await self.nursery.start(serve_ws, handler, host, port, self.nursery)
        return bound
