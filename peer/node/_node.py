"""The Trio shell of a peer: ``Peer``, its lifecycle and what an agent asks of it.

``Peer.run`` opens the nursery that owns every task of the peer. A peer is
composed of parts, none of which inherits another:

* ``LinkManager`` (``_linkhost``): handshakes, one reader and writer per link;
* ``Swarm`` (``_swarm``): the one router between links and the sans-IO
  behaviours (gossip, presence, DHT, catch-up, delivery), which performs
  their decisions and runs their timers;
* ``Dialer`` (``_dialer``): dialling, bootstrap, the listener;
* ``DhtBridge`` (``_dhthost``): the DHT's side of the peer;
* ``Storage`` (``_storage``), with a ``store_path``: the log, the persistent
  inbox, the outbox and catch-up; without one (simulations, benchmarks)
  nothing persists and the inbox is memory only.

Rules kept here:

* Tasks start in nurseries the peer owns, from its own loops, never from a
  sync callback: a subscription is queued and taken up by ``_subscriptions``.
* Every envelope we sign gets its sequence number from ``seal``: one chain
  per log topic, continued from the store after a restart. With a store,
  only the paths that store before sending are open (``send_message``,
  ``send_direct``).
* The inbox only grows by what the swarm delivers and the messages we send.
"""

from __future__ import annotations

import contextlib
import functools
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from dht import Contact, DhtService
from peer.protocols._owntail import TAIL
from peer.protocols._siblingrouter import Action, GossipRouter, SiblingRouter
from peer.wire._envelope import (
    PRESENCE_TOPIC,
    Content,
    Envelope,
    inbox_topic,
    seal_dm,
    seal_message,
)
from peer.wire._frames import is_topic
from peer.wire._frametypes import Push
from peer.wire._identity import Identity
from peer.wire._stats import Statistics, snapshot
from store import StoreError, open_store_service

from ._agents import AgentDirectory
from ._blobhost import BlobHost, blob_dir
from ._convhost import ConversationService
from ._coordhost import Coordination
from ._dhthost import DhtBridge
from ._dialer import Dialer
from ._inbox import Directory, Inbox, InboxMessage, PeerInfo, inbox_entry
from ._inboxlog import own_tails
from ._link import Link
from ._linkhost import LinkConfig, LinkManager
from ._logging import peer_logger
from ._ocmhost import OcmGateway
from ._options import PRESENCE_INTERVAL, BenchOnly, PeerCounters, PeerOptions, UnknownPeer
from ._rallyhost import RallyService
from ._storage import Storage
from ._stream import MessageStream
from ._swarm import Swarm
from ._taskhost import TaskService
from ._transport import Transport
from ._websocket import memory_link_pair

__all__ = ["Peer", "PeerCounters", "PeerOptions", "UnknownPeer", "memory_link_pair"]

ONLINE_WINDOW_MS = int(2.5 * PRESENCE_INTERVAL * 1000)


class Peer:
    """A clawmesh peer. Create it, then ``await nursery.start(peer.run)``."""

    def __init__(
        self,
        identity: Identity,
        options: PeerOptions | None = None,
        *,
        bench: BenchOnly | None = None,
    ) -> None:
        self.identity = identity
        self.options = options or PeerOptions()
        self.bench = bench or BenchOnly()  # benchmark-only switches, never public options
        self.verify = not self.bench.no_verify
        self.peer_id = identity.peer_id
        self.log = peer_logger(identity.peer_id_hex)
        self.rng = random.Random(self.options.seed)
        self.router: GossipRouter = SiblingRouter(
            identity.peer_id,
            relay=self.options.relay,
            params=self.options.gossip,
            rng=random.Random(self.rng.random()),
            keepalive=self.options.keepalive,
            idle_timeout=self.options.idle_timeout,
            verify=self.verify,
            observe_all=self.options.relay_only and self.options.store_path is not None,
        )
        self.inbox = Inbox(self.options.inbox_capacity)
        self.directory = Directory()
        self.counters = PeerCounters()
        self.channels: set[str] = set()
        self._chains: dict[str, tuple[int, bytes | None]] = {}  # log topic -> (seq, id)
        self.storage: Storage | None = None
        self.coord = Coordination(self)  # message semantics: receipts, acks, expiry
        self.rallies = RallyService(self)  # requests and rallies
        self.coord.on_response = self.rallies.on_response
        self.conversations = ConversationService(self)
        self.coord.on_conv = self.conversations.on_dm
        self.tasks = TaskService(self)
        self.coord.on_task = self.tasks.on_dm
        self.listen_urls: list[str] = list(self.options.listen_urls)
        self.api_url: str | None = None  # set by whoever serves the local API
        # more entries for our presence payload, who sees each presence heard (the
        # fleet view: peer/api/_fleet.py) and each envelope delivered (with its
        # ``member`` flag: the audit of a seed, peer/api/_audit.py); hooks must not raise
        self.presence_extras: list[Callable[[], dict[str, Any]]] = []
        self.presence_hooks: list[Callable[[Envelope, Any], None]] = []
        self.envelope_hooks: list[Callable[[Envelope, bool], None]] = []  # each one delivered
        self.swarm = Swarm(self, self.options.presence_interval)
        config = LinkConfig(identity, self.options, lambda: self.caps, lambda: self.listen_urls)
        self.link_manager = LinkManager(config, self.swarm, self.counters, self.log)
        self.links: dict[bytes, Link] = self.link_manager.links
        rng = random.Random(self.rng.random())
        self.dialer = Dialer(self.link_manager, self.options, self.counters, rng, self.log)
        self.bridge: DhtBridge | None = None
        self.agents = AgentDirectory(self)  # our agent card, and the cards found
        if self.options.card is not None:
            self.agents.set_card(self.options.card)
        self.blobs = BlobHost(self)
        on = self.options.ocm and not self.options.relay_only
        self.ocm: OcmGateway | None = OcmGateway(self) if on else None
        if self.ocm is not None:
            self.dialer.ocm_handler, self.dialer.ocm_dial = self.ocm.serve, self.ocm.dial_forever
        self._epoch = 0.0
        self._started = 0.0
        self._nursery: trio.Nursery | None = None
        self._inbox_changed = trio.Event()
        self._changed = trio.Event()
        self._new_channels: dict[str, None] = {}  # subscribed, not yet taken up
        self._channels_saved = True
        self._channels_wanted = trio.Event()

    # -- time ------------------------------------------------------------------

    def now(self) -> float:
        return trio.current_time()

    def wall_ms(self) -> int:
        return int((self._epoch + trio.current_time()) * 1000)

    def wall_time(self) -> float:
        return self._epoch + trio.current_time()

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
        """Run the peer until cancelled. ``extra`` starts more services in its nursery
        (the listener: our addresses are known after it, before the DHT starts)."""
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
                self.storage.admit_dm = self.coord.admit
                self.storage.delivery.observe(self.coord)
                await self.coord.load()
                await self.rallies.load()
                await self.conversations.load()
                await self.tasks.load()
                self._chains = await self.storage.own_chains()
                tails = functools.partial(own_tails, me=self.peer_id, size=TAIL)
                self.swarm.own_tail.preload(await service.read(tails))
                if self.storage.returning and not self.options.relay_only:
                    # back from an absence: what we kept catches up before live traffic
                    self.storage.hold_live([inbox_topic(self.peer_id), *stored])
                channels = [*stored, *channels]
                self.blobs.open(
                    blob_dir(self.options.store_path),
                    self.options.blob_quota_bytes,
                    self.wall_time(),
                )
                stack.callback(self.blobs.close)
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
        await nursery.start(self.dialer.run)
        if extra is not None:
            await extra(nursery)
        if self.options.dht:
            self.bridge = DhtBridge(self)
            nursery.start_soon(self.bridge.service.run)
            self.agents.start()
        self.swarm.start(self.now())
        self.swarm.perform(self.router.subscribe(PRESENCE_TOPIC))
        if not self.options.relay_only:
            self.swarm.perform(self.router.subscribe(inbox_topic(self.peer_id)))
            for channel in dict.fromkeys(channels):
                self.subscribe(channel)
        nursery.start_soon(self.swarm.run_timers)
        for service in (self.coord, self.rallies, self.conversations, self.tasks, self.blobs):
            nursery.start_soon(service.run)
        nursery.start_soon(self._subscriptions)
        if self.ocm is not None:
            await nursery.start(self.ocm.run)
        self.log.info("peer started", peer_id=self.identity.peer_id_hex, caps=self.caps)
        if self.bench.any:
            self.log.warning(
                "benchmark-only flags on: UNSAFE, never use in production",
                no_verify=self.bench.no_verify,
                plaintext_links=self.bench.plaintext_links,
            )

    @property
    def dht(self) -> DhtService | None:
        return None if self.bridge is None else self.bridge.service

    @property
    def serving_dht(self) -> bool:
        return self.options.dht and bool(self.listen_urls)

    @property
    def caps(self) -> tuple[str, ...]:
        return self.options.caps_for(self.serving_dht, self.bench)

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
        self.notify_changed()

    def notify_changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        """Wait until a link, a link's interest, the inbox or the directory changes."""
        await self._changed.wait()

    async def wait_links_changed(self) -> None:
        await self.link_manager.wait_changed()

    def add_to_inbox(
        self,
        env: Envelope,
        content: Content,
        *,
        channel: str | None,
        peer: bytes | None,
        outgoing: bool,
    ) -> None:
        """Put a message that needs no store (a peer without one) in the inbox."""
        message, _ = inbox_entry(env, content, channel, peer, outgoing, self.wall_ms())
        self.add_inbox_message(message)

    def add_inbox_message(self, message: InboxMessage) -> None:
        if self.inbox.add(message) is not None:
            self.notify_inbox()

    def notify_inbox(self) -> None:
        self._inbox_changed.set()
        self._inbox_changed = trio.Event()
        self.notify_changed()

    async def wait_inbox_changed(self) -> None:
        await self._inbox_changed.wait()

    def messages(
        self,
        *,
        channel: str | None = None,
        peer: bytes | None = None,
        after: int | None = None,
        outgoing: bool = False,
    ) -> MessageStream:
        """Messages as they reach the inbox, in cursor order, for ever:
        ``async for message in peer.messages(...)``.

        ``after`` is a cursor (``message.cursor``) to resume from: 0 replays
        what the inbox holds; None (the default) starts with the next new
        message (counted from this call, not from the first iteration).
        ``channel`` keeps one channel's messages, ``peer`` one peer's DMs; our
        own messages come too with ``outgoing=True``.
        """
        start = self.inbox.last_cursor if after is None else after
        return MessageStream(self, start, channel, peer, outgoing)

    def statistics(self) -> Statistics:
        """A frozen snapshot of what the peer counts: its links (``counters``), its
        gossip router, its store and commit latency (None without one) and its DHT
        (None when off)."""
        return snapshot(
            counters=snapshot(self.counters),
            gossip=self.router.statistics(),
            store=None if self.storage is None else self.storage.statistics(),
            commit_latency=(
                None if self.storage is None else self.storage.service.commit_latency.statistics()
            ),
            dht=None if self.dht is None else self.dht.statistics(),
        )

    def perform(self, actions: list[Action]) -> None:
        """Carry out decisions of the gossip router (see ``Swarm.perform``)."""
        self.swarm.perform(actions)

    # -- agent-facing operations -------------------------------------------------

    def seal(self, log_topic: str, seal: Callable[[int, bytes | None], Envelope]) -> Envelope:
        """Sign our next envelope of ``log_topic`` with ``seal(seq, prev)``: ``seq``
        one more than our last one there, ``prev`` that one's id.

        The one path for every envelope we sign with a sequence (channel
        messages, DMs, receipts). Synchronous, so no other envelope of ours can
        come between; with a store the chains were read from it at start, so a
        restart continues them (without one they start again with the process).
        """
        seq, prev = self._chains.get(log_topic, (0, None))
        env = seal(seq + 1, prev)
        self._chains[log_topic] = (seq + 1, env.id)
        return env

    def _seal_message(self, channel: str, content: Content) -> Envelope:
        self.router.check_publish(self.now())  # ProtocolError(RATE) over the limit
        return self.seal(
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

    def _seal_dm(self, peer_id: bytes, key: bytes, content: Content) -> Envelope:
        self.router.check_publish(self.now())  # ProtocolError(RATE) over the limit
        return self.seal(
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

    def unseal(self, env: Envelope) -> None:
        """``env`` was sealed but will never be stored or sent (its store refused it):
        if it is still the head of its chain, give its sequence back, so the chain
        has no hole. One that is stored or may still be (a cancelled wait for a
        commit) keeps its place: a hole is better than a reused sequence."""
        if self._chains.get(env.log_topic) == (env.seq, env.id):
            self._chains[env.log_topic] = (env.seq - 1, env.prev)


    def subscribe(self, channel: str) -> None:
        if not is_topic(channel) or "/" in channel:
            raise ValueError(f"not a channel name: {channel!r}")
        new = channel not in self.channels
        self.channels.add(channel)
        self.swarm.perform(self.router.subscribe(channel))
        if new:
            self._new_channels[channel] = None  # taken up by _subscriptions
            self._channels_saved = False
            self._channels_wanted.set()

    async def _subscriptions(self) -> None:
        """Take up new subscriptions: remember them, catch up, find carriers in the DHT."""
        async with trio.open_nursery() as nursery:
            while True:
                await self._channels_wanted.wait()
                self._channels_wanted = trio.Event()
                new, self._new_channels = list(self._new_channels), {}
                for channel in new:
                    nursery.start_soon(self._subscribed, channel)
                if self.storage is not None and not self._channels_saved:
                    self._channels_saved = True
                    await self.storage.save_channels()

    async def _subscribed(self, channel: str) -> None:
        if self.storage is not None:
            await self.storage.note_subscribed(channel)
        if self.bridge is not None and channel not in self.bridge.service.node.providing:
            with contextlib.suppress(ValueError):  # providing too many topics: gossip still works
                self.bridge.service.node.start_providing(channel, self.wall_time())
        if self.storage is not None:
            self.storage.catch_up_all([channel])  # walks run in the catch-up service
        if self.bridge is not None:
            await self.bridge.link_to_carriers(channel)

    def unsubscribe(self, channel: str) -> None:
        if channel in self.channels:
            self._channels_saved = False
            self._channels_wanted.set()
        self.channels.discard(channel)
        self.swarm.perform(self.router.unsubscribe(channel))
        if self.dht is not None:
            self.dht.node.stop_providing(channel)

    async def _store_own(
        self, env: Envelope, message: InboxMessage | None, payload: bytes | None
    ) -> None:
        """Store what we signed (then it is published); StoreError gives its sequence back."""
        assert self.storage is not None
        try:
            await self.storage.store_own(env, message, payload)
        except StoreError:
            self.unseal(env)
            raise

    def _memory_only(self, method: str, instead: str) -> None:
        if self.storage is not None:
            raise RuntimeError(
                f"{method}() sends without storing, for peers without a store;"
                f" a peer with a store sends with {instead}(), which keeps its sequence"
            )

    def publish_own(self, env: Envelope, now: float) -> None:
        self.swarm.publish_own(env, now)

    def publish(self, channel: str, content: Content) -> Envelope:
        """Sign and send a channel message at once, without storing it (a peer with
        no store: simulations, benchmarks); ValueError or ProtocolError if invalid.

        With a store this raises RuntimeError: use :meth:`send_message`, which
        stores first, so the sequence number survives a crash.
        """
        self._memory_only("publish", "send_message")
        env = self._seal_message(channel, content)
        self.swarm.perform(self.router.publish(env, self.now()))
        return env

    async def send_message(self, channel: str, content: Content) -> Envelope:
        """Sign, store (durably, with a store) and send a channel message."""
        env = self._seal_message(channel, content)
        if self.storage is not None:
            message = payload = None
            if channel in self.channels:
                message, payload = inbox_entry(
                    env, content, channel, None, True, self.wall_ms()
                )
            await self._store_own(env, message, payload)  # and publishes it
        else:
            self.swarm.perform(self.router.publish(env, self.now()))
        return env

    async def send_direct(self, peer_id: bytes, content: Content) -> Envelope:
        """Encrypt, sign, store and send a DM; it waits in the outbox for its receipt."""
        if self.storage is None:
            return self.send_dm(peer_id, content)
        info = self.directory.get(peer_id)
        if info is None or peer_id == self.peer_id:
            raise UnknownPeer(peer_id.hex())
        content = self.coord.outgoing(peer_id, content)
        env = self._seal_dm(peer_id, info.public_key, content)
        message, payload = inbox_entry(
            env, content, None, peer_id, True, self.wall_ms()
        )
        self.coord.sealed(env, content)
        await self._store_own(env, message, payload)  # and publishes it
        self.coord.sent(peer_id, env, content)
        link = self.links.get(peer_id)
        if link is not None and env.route not in self.router.interest_of(peer_id):
            link.enqueue(Push(env.wire).encode())
        return env

    def send_dm(self, peer_id: bytes, content: Content) -> Envelope:
        """Encrypt, sign and send a DM at once, without storing it; UnknownPeer if we
        never saw its key. With a store this raises RuntimeError: use :meth:`send_direct`."""
        self._memory_only("send_dm", "send_direct")
        info = self.directory.get(peer_id)
        if info is None or peer_id == self.peer_id:
            raise UnknownPeer(peer_id.hex())
        env = self._seal_dm(peer_id, info.public_key, content)
        self.swarm.perform(self.router.publish(env, self.now()))
        self.add_to_inbox(env, content, channel=None, peer=peer_id, outgoing=True)
        return env

    async def mark_read(self, ids: list[bytes]) -> int:
        """Mark inbox messages read; with a store, returns after it is durable."""
        fresh = [m for i in ids if (m := self.inbox.get(i)) is not None and not m.read]
        cursors = [m.cursor for m in fresh]
        marked = self.inbox.mark_read(ids)
        self.coord.on_read(fresh)
        if self.storage is not None:
            await self.storage.mark_read(cursors)
        return marked

    async def mark_read_through(self, cursor: int) -> int:
        self.coord.on_read(m for m in self.inbox if m.cursor <= cursor and not m.read)
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

    # -- links: dialling and listening ---------------------------------------------

    def start_link(
        self, transport: Transport, *, initiator: bool, expect: bytes | None = None
    ) -> None:
        """Run a link over ``transport`` in the peer's nursery (for tests and tools)."""
        self.nursery.start_soon(self.link_manager.run_link, transport, initiator, expect)

    async def dial_forever(self, url: str, expect: bytes | None = None) -> None:
        """Keep a link to ``url`` up (see ``Dialer.dial_forever``)."""
        await self.dialer.dial_forever(url, expect)

    async def dial_once(
        self, url: str, expect: bytes | None = None, on_up: Callable[[], None] | None = None
    ) -> bytes | None:
        """One connection attempt to a ``ws://`` URL; returns the peer id linked, if any."""
        return await self.dialer.dial_once(url, expect, on_up)

    async def serve_websocket(self, host: str, port: int) -> int:
        """Accept WebSocket links on ``host:port`` in the peer's nursery; returns the bound port."""
        return await self.dialer.serve_websocket(host, port, self.nursery)

    async def join(self, specs: list[str]) -> None:
        """Resolve bootstrap specs (URLs, files, ``ws://host:port/#peerid``) and keep
        links to every peer they name; whenever the peer then has no link for a
        while, it bootstraps again from the specs and the DHT. Runs until cancelled."""
        await self.dialer.join(specs, self.nursery)
        await self.dialer.rejoin_when_alone(specs, self.nursery, self._dht_contacts)

    def _dht_contacts(self) -> list[Contact]:
        return [] if self.dht is None else self.dht.node.table.contacts()

    async def connect(self, contact: Contact) -> bool:
        """Link to ``contact`` (a peer id, its key and addresses) unless linked;
        True once linked, False if it cannot be (see ``Dialer.connect``)."""
        return await self.dialer.connect(contact)

    async def resolve_peer(self, peer_id: bytes) -> PeerInfo | None:
        """What we know of ``peer_id``, asking the DHT (and linking) if we know nothing."""
        if self.bridge is None:
            return self.directory.get(peer_id)
        return await self.bridge.resolve_peer(peer_id)

    def contact_of(self, peer_id: bytes) -> Contact | None:
        return None if self.bridge is None else self.bridge.contact_of(peer_id)
