"""The Trio shell of a peer: links, listener, dialers, heartbeat, inbox.

``Peer.run`` opens the nursery that owns every task of the peer. Each link
runs in a child nursery of its own (a reader and a writer task); closing a
link is cancelling that nursery. The protocol decisions come from the sans-IO
``Handshake`` and ``GossipRouter``; this module only performs them: it moves
records, encrypts them per link, reads the clock and logs.

A failure in one link (a bad upgrade, a bad frame, an exception while
handling it) closes that link, is logged and counted, and never reaches the
peer's nursery.
"""

from __future__ import annotations

import contextlib
import math
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import structlog
import trio
import trio.testing
import trio_websocket

from dht import Contact, DhtConfig, DhtNode, DhtService, Mode, Relay

from . import _cbor
from ._bootstrap import BootstrapError, parse_peer_address
from ._envelope import (
    PRESENCE_TOPIC,
    Content,
    Envelope,
    inbox_topic,
    open_dm,
    payload_value,
    seal_dm,
    seal_message,
    seal_presence,
)
from ._errors import ErrorCode, ProtocolError
from ._frames import clip_utf8, decode_frame, encode_frame, is_topic
from ._gossip import Close, Deliver, GossipRouter, Send, Upcall
from ._handshake import PLAINTEXT_CAP, Handshake, HandshakeResult, LinkCipher, SelfConnection
from ._identity import Identity
from ._inbox import Directory, Inbox, InboxMessage, PeerInfo
from ._limits import MAX_RECORD, GossipParams
from ._transport import (
    RECEIVE_BUFFER,
    StreamTransport,
    Transport,
    TransportClosed,
    WebSocketTransport,
)

SEND_QUEUE = 4096  # records waiting for a slow link before it is dropped
HANDSHAKE_TIMEOUT = 10.0
PRESENCE_INTERVAL = 60.0
PRESENCE_DEBOUNCE = 5.0
ONLINE_WINDOW_MS = int(2.5 * PRESENCE_INTERVAL * 1000)
WRITE_BATCH = 256  # records a writer sends with one write, at most
WRITE_BATCH_BYTES = 1024 * 1024  # ... and bytes (one oversize record still goes alone)
WRITE_YIELDS = 8  # scheduler turns a writer waits for more frames while they keep coming
_INTEREST_FRAMES = frozenset({"sub", "unsub"})
_LINK_GONE = (TransportClosed, trio.BrokenResourceError, trio.ClosedResourceError)


class UnknownPeer(Exception):
    """A DM to a peer id whose public key we have never seen."""


@dataclass
class PeerOptions:
    """How a peer behaves; the CLI builds one from flags and environment."""

    listen_urls: tuple[str, ...] = ()  # what we advertise as our address(es)
    relay: bool = True
    relay_only: bool = False
    channels: tuple[str, ...] = ()
    gossip: GossipParams = field(default_factory=GossipParams)
    max_links: int = 128
    max_links_per_ip: int = 8  # inbound connections per remote address; loopback is exempt
    inbox_capacity: int = 100_000
    keepalive: float = 15.0
    idle_timeout: float = 45.0
    presence_interval: float = PRESENCE_INTERVAL
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    seed: int | None = None  # for reproducible simulations
    dht: bool = True
    dht_config: DhtConfig = field(default_factory=DhtConfig)
    providers_to_link: int = 3  # carriers of a channel we link to when we subscribe
    # benchmarks only, unsafe: skip the relay's envelope signature checks, and
    # offer unencrypted links (used only if the other side offers them too)
    bench_no_verify: bool = False
    bench_plaintext_links: bool = False

    def caps_for(self, serving_dht: bool) -> tuple[str, ...]:
        caps = ["relay"] if self.relay else []
        if self.relay_only:
            caps.append("relay-only")
        if serving_dht:
            caps.append("dht")
        if self.bench_plaintext_links:
            caps.append(PLAINTEXT_CAP)
        return tuple(caps)

    @property
    def caps(self) -> tuple[str, ...]:
        return self.caps_for(False)


@dataclass
class PeerCounters:
    links_opened: int = 0
    links_closed: int = 0
    handshakes_failed: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    link_errors: int = 0
    dm_undecryptable: int = 0

    def refuse(self, code: ErrorCode) -> None:
        self.refused[code.value] = self.refused.get(code.value, 0) + 1


class Link:
    """One authenticated, encrypted link to another peer."""

    def __init__(
        self,
        result: HandshakeResult,
        transport: Transport,
        initiator: bool,
        opened: float,
    ) -> None:
        self.result = result
        self.peer_id = result.peer_id
        self.transport = transport
        self.initiator = initiator
        self.opened = opened
        self.cipher: LinkCipher = result.cipher
        self.send_channel, self.receive_channel = trio.open_memory_channel[bytes](SEND_QUEUE)
        self.scope = trio.CancelScope()
        self.closed = trio.Event()
        self.close_code: ErrorCode | None = None
        self.close_reason = ""
        self.frames_out = 0

    @property
    def relay(self) -> bool:
        return "relay" in self.result.caps

    def enqueue(self, frame: bytes) -> bool:
        """Queue a plaintext frame; False if the link is closing or too far behind."""
        try:
            self.send_channel.send_nowait(frame)
        except trio.WouldBlock:
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return True  # closing already; nothing to do
        return True

    def close(self, code: ErrorCode, reason: str) -> None:
        """Send an error frame if possible, then end the link within a deadline."""
        if self.close_code is not None:
            return
        self.close_code = code
        self.close_reason = reason
        with contextlib.suppress(
            trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError
        ):
            self.send_channel.send_nowait(
                encode_frame("error", code=code.value, msg=clip_utf8(reason, 200))
            )
        self.send_channel.close()
        self.scope.deadline = min(self.scope.deadline, trio.current_time() + 2.0)


class Peer:
    """A clawmesh peer. Create it, then ``await nursery.start(peer.run)``."""

    def __init__(self, identity: Identity, options: PeerOptions | None = None) -> None:
        self.identity = identity
        self.options = options or PeerOptions()
        self.peer_id = identity.peer_id
        self.log = structlog.get_logger("clawmesh").bind(peer=identity.peer_id_hex[:16])
        self._rng = random.Random(self.options.seed)
        self.router = GossipRouter(
            identity.peer_id,
            relay=self.options.relay,
            params=self.options.gossip,
            rng=random.Random(self._rng.random()),
            keepalive=self.options.keepalive,
            idle_timeout=self.options.idle_timeout,
            verify=not self.options.bench_no_verify,
        )
        self.inbox = Inbox(self.options.inbox_capacity)
        self.directory = Directory()
        self.links: dict[bytes, Link] = {}
        self.counters = PeerCounters()
        self.channels: set[str] = set()
        self._seq = 0
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
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if extra is not None:
                await extra(nursery)  # the listener: our addresses are known after it
            if self.options.dht:
                self.dht = self._make_dht()
                nursery.start_soon(self.dht.run)
            self._perform(self.router.subscribe(PRESENCE_TOPIC))
            if not self.options.relay_only:
                self._perform(self.router.subscribe(inbox_topic(self.peer_id)))
                for channel in self.options.channels:
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
            task_status.started()

    @property
    def serving_dht(self) -> bool:
        return self.options.dht and bool(self.listen_urls)

    @property
    def caps(self) -> tuple[str, ...]:
        return self.options.caps_for(self.serving_dht)

    def _make_dht(self) -> DhtService:
        node = DhtNode(
            self.identity,
            rng=random.Random(self._rng.random()),
            now=self.wall_time(),
            config=self.options.dht_config,
            mode=Mode.SERVER if self.serving_dht else Mode.CLIENT,
            addrs=self.listen_urls[:4],
            caps=self.caps,
        )
        service = DhtService(node, self, self.log)
        service.on_contact = self._on_dht_contact
        return service

    def _update_relays(self) -> None:
        """A DHT client is reached through its linked relays; keep its record saying so."""
        if self.dht is None or self.serving_dht:
            return
        relays = [
            Relay(link.peer_id, link.result.listen[0])
            for link in self.links.values()
            if link.relay and link.result.listen
        ][:4]
        if tuple(relays) != self.dht.node.relays:
            self.dht.node.set_relays(relays, self.wall_time())

    def _on_dht_contact(self, contact: Contact) -> None:
        if contact.id == self.peer_id:
            return
        info = self.directory.see(contact.id, contact.public_key, self.wall_ms())
        if not info.linked and contact.addrs:
            info.listen, info.caps = contact.addrs, contact.caps
        self._notify_changed()

    # -- what the DHT needs from us (dht.LinkHost) -------------------------------

    def wall_time(self) -> float:
        return self._epoch + trio.current_time()

    def contact_of(self, peer_id: bytes) -> Contact | None:
        link = self.links.get(peer_id)
        if link is None:
            return None
        r = link.result
        return Contact(r.peer_id, r.public_key, r.listen[:4], r.caps[:8])

    def send_dht(self, peer_id: bytes, payload: bytes) -> bool:
        link = self.links.get(peer_id)
        return link is not None and link.enqueue(encode_frame("dht", m=payload))

    async def connect(self, contact: Contact) -> bool:
        """Link to ``contact`` (dialling its addresses) unless linked; True once linked.

        Waits for the dial to succeed or fail; callers bound it with a cancel scope.
        """
        if contact.id in self.links:
            return True
        if contact.id == self.peer_id or not contact.addrs:
            return False
        if len(self.links) >= self.options.max_links:
            return False  # no room: the DHT and gossip reach it through others
        attempt = self._dialing.get(contact.id)
        if attempt is None:
            attempt = self._dialing[contact.id] = trio.Event()
            self.nursery.start_soon(self._dial_contact, contact, attempt)
        while contact.id not in self.links and not attempt.is_set():
            await self.wait_links_changed()
        return contact.id in self.links

    async def _dial_contact(self, contact: Contact, attempt: trio.Event) -> None:
        try:
            for addr in contact.addrs[:2]:
                if await self._dial_and_serve(addr, contact.id, attempt):
                    return
        finally:
            attempt.set()
            self._dialing.pop(contact.id, None)
            self._notify_links()

    async def _dial_and_serve(self, addr: str, expect: bytes, attempt: trio.Event) -> bool:
        """Dial ``addr``; True if a link came up (it is served until it ends)."""
        try:
            parse_peer_address(addr)
        except BootstrapError:
            return False
        linked = await self.dial_once(addr, expect, on_up=attempt.set)
        return linked is not None

    async def resolve_peer(self, peer_id: bytes) -> PeerInfo | None:
        """Find a peer's record in the DHT, learn its key, and link to it if we can.

        Callers bound it in time; the key is learnt even if the link never comes.
        """
        info = self.directory.get(peer_id)
        if info is not None or self.dht is None:
            return info
        record = await self.dht.find_peer(peer_id)
        if record is None:
            return None
        info = self.directory.see(record.id, record.public_key, self.wall_ms())
        info.listen, info.caps = record.addrs, record.caps
        contact = record.contact()
        if not contact.addrs and record.relays:  # a DHT client: reach it through its relay
            contact = Contact(record.id, record.public_key, tuple(r.addr for r in record.relays))
        with trio.move_on_after(5.0):
            await self.connect(contact)
        return info

    async def _link_to_carriers(self, channel: str) -> None:
        """Find who carries ``channel`` in the DHT and link to a few of them."""
        if self.dht is None:
            return
        await self.dht.wait_joined()
        providers = await self.dht.find_providers(channel)
        wanted = [p for p in providers if p.id != self.peer_id and p.id not in self.links]

        async def link(contact: Contact) -> None:
            with trio.move_on_after(5.0):
                await self.connect(contact)

        async with trio.open_nursery() as nursery:
            for record in wanted[: self.options.providers_to_link]:
                nursery.start_soon(link, Contact(record.id, record.public_key, record.addrs))

    def cancel(self) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    @property
    def nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise RuntimeError("peer is not running")
        return self._nursery

    # -- links -----------------------------------------------------------------

    def start_link(
        self, transport: Transport, *, initiator: bool, expect: bytes | None = None
    ) -> None:
        """Run a link over ``transport`` in the peer's nursery (for tests and tools)."""
        self.nursery.start_soon(self.run_link, transport, initiator, expect)

    async def run_link(
        self,
        transport: Transport,
        initiator: bool,
        expect: bytes | None = None,
        on_up: Callable[[], None] | None = None,
    ) -> HandshakeResult | None:
        """Handshake, then serve the link until it closes. Never raises for link trouble.

        Returns the handshake result (None if the handshake failed), so a dialer
        learns who answered.
        """
        log = self.log.bind(remote=transport.remote, initiator=initiator)
        if not initiator and len(self.links) >= self.options.max_links:
            # refuse before proving anything, so the dialler does not count a link
            self.counters.refuse(ErrorCode.TOO_LARGE)
            log.info("no room for another link")
            with trio.move_on_after(1), contextlib.suppress(*_LINK_GONE):
                await transport.send(
                    encode_frame(
                        "error", code=ErrorCode.TOO_LARGE.value, msg="no room for more links"
                    )
                )
            await transport.aclose()
            return None
        try:
            result = await self._handshake(transport, initiator, expect, log)
        except ProtocolError as exc:
            self.counters.handshakes_failed += 1
            self.counters.refuse(exc.code)
            if isinstance(exc, SelfConnection):
                self._self_urls.add(transport.remote)
            log.warning("handshake refused", code=exc.code.value, reason=exc.message)
            await transport.aclose()
            return None
        except (TransportClosed, trio.TooSlowError) as exc:
            self.counters.handshakes_failed += 1
            log.info("handshake did not finish", reason=str(exc) or type(exc).__name__)
            await transport.aclose()
            return None
        except Exception as exc:  # a bug must not take the peer down
            self.counters.handshakes_failed += 1
            log.exception("handshake crashed", error=repr(exc))
            await transport.aclose()
            return None
        try:
            await self._serve_link(
                result, transport, initiator, log.bind(link=result.peer_id.hex()[:16]), on_up
            )
        finally:
            await transport.aclose()
        return result

    async def _handshake(
        self, transport: Transport, initiator: bool, expect: bytes | None, log: Any
    ) -> HandshakeResult:
        hs = Handshake(
            self.identity,
            initiator=initiator,
            caps=self.caps,
            listen=tuple(self.listen_urls),
            expect_peer_id=expect,
        )
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            try:
                if initiator:
                    for record in hs.start():
                        await transport.send(record)
                while not hs.done:
                    record = await transport.receive()
                    for reply in hs.receive(record):
                        await transport.send(reply)
            except ProtocolError as exc:
                if exc.code is not ErrorCode.UNEXPECTED or "peer refused" not in exc.message:
                    with trio.move_on_after(1), contextlib.suppress(*_LINK_GONE):
                        await transport.send(
                            encode_frame(
                                "error", code=exc.code.value, msg=clip_utf8(exc.message, 200)
                            )
                        )
                raise
        assert hs.result is not None
        if len(self.links) >= self.options.max_links and hs.result.peer_id not in self.links:
            err = ProtocolError(ErrorCode.TOO_LARGE, "peer has no room for more links")
            with trio.move_on_after(1), contextlib.suppress(*_LINK_GONE):
                await transport.send(
                    hs.result.cipher.seal(
                        encode_frame("error", code=err.code.value, msg=err.message)
                    )
                )
            raise err
        return hs.result

    async def _serve_link(
        self,
        result: HandshakeResult,
        transport: Transport,
        initiator: bool,
        log: Any,
        on_up: Callable[[], None] | None = None,
    ) -> None:
        link = Link(result, transport, initiator, self.now())
        existing = self.links.get(link.peer_id)
        if existing is not None:
            # Two links to one peer: keep the one dialled by the lower peer id,
            # which both sides compute alike.
            keep_new = link.initiator == (self.peer_id < link.peer_id)
            loser = existing if keep_new else link
            loser.close(ErrorCode.DUPLICATE, "already linked")
            if not keep_new:
                with trio.move_on_after(1):
                    await self._drain_writer(link)
                return
            with trio.move_on_after(3):
                await existing.closed.wait()
        self.links[link.peer_id] = link
        self.counters.links_opened += 1
        info = self.directory.see(link.peer_id, result.public_key, self.wall_ms())
        info.linked = True
        info.times_linked += 1
        info.listen, info.caps, info.agent = result.listen, result.caps, result.agent
        info.remote = transport.remote
        log.info("link up", caps=result.caps, links=len(self.links))
        self._notify_links()
        try:
            with link.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, link, nursery.cancel_scope)
                    self._perform(
                        self.router.add_link(link.peer_id, relay=link.relay, now=self.now())
                    )
                    if self.dht is not None:
                        contact = self.contact_of(link.peer_id)
                        assert contact is not None
                        self.dht.link_up(contact)
                        self._update_relays()
                    if on_up is not None:
                        on_up()
                    await self._reader(link, log)
                    nursery.cancel_scope.cancel()
        finally:
            if self.links.get(link.peer_id) is link:
                del self.links[link.peer_id]
                info.linked = False
                self._perform(self.router.remove_link(link.peer_id))
                if self.dht is not None:
                    self.dht.link_down(link.peer_id)
                    self._update_relays()
            self.counters.links_closed += 1
            link.closed.set()
            self._notify_links()
            log.info(
                "link down",
                code=link.close_code.value if link.close_code else "eof",
                reason=link.close_reason,
                links=len(self.links),
            )

    async def _drain_writer(self, link: Link) -> None:
        async for frame in link.receive_channel:
            await link.transport.send(link.cipher.seal(frame))

    async def _writer(self, link: Link, scope: trio.CancelScope) -> None:
        """Send what is queued for ``link``: each wake-up drains a batch, one write."""
        seal = link.cipher.seal
        receive = link.receive_channel.receive
        receive_nowait = link.receive_channel.receive_nowait
        send_many = link.transport.send_many
        try:
            while True:
                try:
                    frame = await receive()
                except trio.EndOfChannel:
                    break
                batch = [seal(frame)]
                size = len(frame)
                yields, got = 0, False
                while len(batch) < WRITE_BATCH and size < WRITE_BATCH_BYTES:
                    try:
                        frame = receive_nowait()
                    except trio.WouldBlock:
                        # While frames keep coming (the reader is busy), give it
                        # a few turns before writing: one write for many frames.
                        if yields >= WRITE_YIELDS or (yields and not got):
                            break
                        yields += 1
                        got = False
                        await trio.lowlevel.checkpoint()
                        continue
                    except trio.EndOfChannel:
                        break
                    got = True
                    batch.append(seal(frame))
                    size += len(frame)
                await send_many(batch)
                link.frames_out += len(batch)
        except TransportClosed:
            pass
        scope.cancel()

    async def _reader(self, link: Link, log: Any) -> None:
        while link.close_code is None:
            try:
                record = await link.transport.receive()
            except TransportClosed:
                return
            except ProtocolError as exc:  # an oversize stream record
                self._refuse(link, exc, log)
                break  # let the writer flush the error frame
            try:
                plain = link.cipher.open(record)
                frame = decode_frame(plain)
                actions = self.router.handle_frame(
                    link.peer_id, frame, plain, self.now(), self.wall_ms()
                )
                if frame.type in _INTEREST_FRAMES:
                    self._notify_changed()
            except ProtocolError as exc:
                self._refuse(link, exc, log)
                break  # let the writer flush the error frame
            except Exception as exc:  # a bug: drop this link, keep the peer
                self.counters.link_errors += 1
                log.exception("link handler crashed", error=repr(exc))
                link.close(ErrorCode.UNEXPECTED, "internal error")
                break  # let the writer flush the error frame
            self._perform(actions)
            if frame.type == "sub" and any(e[0] == PRESENCE_TOPIC for e in frame.fields["topics"]):
                self._want_presence()  # the link now carries presence: announce ourselves
        # wait for the writer to flush the error frame (bounded by the link deadline)
        await link.closed.wait()

    def _refuse(self, link: Link, exc: ProtocolError, log: Any) -> None:
        self.counters.refuse(exc.code)
        log.warning("frame refused", code=exc.code.value, reason=exc.message)
        link.close(exc.code, exc.message)

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
        if self.dht is None:
            return  # DHT off: requests go unanswered and time out at the asker
        try:
            self.dht.on_message(action.peer, action.frame.fields["m"])
        except ProtocolError as exc:
            self._refuse(link, exc, self.log.bind(link=action.peer.hex()[:16]))

    def _perform(self, actions: list[Send | Deliver | Close | Upcall]) -> None:
        for action in actions:
            if isinstance(action, Send):
                link = self.links.get(action.peer)
                if link is not None and not link.enqueue(action.frame):
                    self.counters.refuse(ErrorCode.SLOW)
                    self.log.warning("link too slow", link=link.peer_id.hex()[:16])
                    link.close(ErrorCode.SLOW, "not reading fast enough")
            elif isinstance(action, Deliver):
                self._deliver(action.envelope)
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

    def _deliver(self, env: Envelope) -> None:
        now_ms = self.wall_ms()
        info = self.directory.see(env.sender, env.sender_key, now_ms)
        if env.kind == "presence":
            self._on_presence(env, info)
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
            received_ms=self.wall_ms(),
            outgoing=outgoing,
            read=outgoing,
        )
        if self.inbox.add(message) is not None:
            self._inbox_changed.set()
            self._inbox_changed = trio.Event()
            self._notify_changed()

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
        if info.extra.get("presence_seq", -1) < env.seq:
            first = "presence_seq" not in info.extra
            info.extra["presence_seq"] = env.seq
            self._notify_changed()
            if first:
                self._want_presence()  # let a newcomer learn of us soon

    # -- agent-facing operations -------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def subscribe(self, channel: str) -> None:
        if not is_topic(channel) or "/" in channel:
            raise ValueError(f"not a channel name: {channel!r}")
        self.channels.add(channel)
        self._perform(self.router.subscribe(channel))
        if self.dht is not None and channel not in self.dht.node.providing:
            with contextlib.suppress(ValueError):  # providing too many topics: gossip still works
                self.dht.node.start_providing(channel, self.wall_time())
            self.nursery.start_soon(self._link_to_carriers, channel)

    def unsubscribe(self, channel: str) -> None:
        self.channels.discard(channel)
        self._perform(self.router.unsubscribe(channel))
        if self.dht is not None:
            self.dht.node.stop_providing(channel)

    def publish(self, channel: str, content: Content) -> Envelope:
        """Sign and send a channel message (ValueError or ProtocolError if invalid)."""
        env = seal_message(
            self.identity, topic=channel, content=content, seq=self._next_seq(), ts=self.wall_ms()
        )
        self._perform(self.router.publish(env, self.now()))
        return env

    def send_dm(self, peer_id: bytes, content: Content) -> Envelope:
        """Encrypt, sign and send a DM; UnknownPeer if we never saw its key."""
        info = self.directory.get(peer_id)
        if info is None or peer_id == self.peer_id:
            raise UnknownPeer(peer_id.hex())
        env = seal_dm(
            self.identity,
            recipient_key=info.public_key,
            content=content,
            seq=self._next_seq(),
            ts=self.wall_ms(),
        )
        self._perform(self.router.publish(env, self.now()))
        self._add_to_inbox(env, content, channel=None, peer=peer_id, outgoing=True)
        return env

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
            self._perform(self.router.heartbeat(self.now()))

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
        env = seal_presence(self.identity, payload=payload, seq=self._next_seq(), ts=self.wall_ms())
        self._perform(self.router.publish(env, self.now()))

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
            delay = self._rng.uniform(0, backoff)
            log.debug("redial", after=round(delay, 2))
            await trio.sleep(delay)
            backoff = min(self.options.backoff_max, backoff * 2)

    async def dial_once(
        self, url: str, expect: bytes | None = None, on_up: Callable[[], None] | None = None
    ) -> bytes | None:
        """One connection attempt to a ``ws://`` URL; returns the peer id linked, if any.

        The TCP stream is opened and closed here rather than by trio-websocket,
        which skips closing it when the other side closed first.
        """
        parts = urlsplit(url)
        host = parts.hostname or ""
        secure = parts.scheme == "wss"
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        stream: trio.abc.Stream | None = None
        result: HandshakeResult | None = None
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                stream = await trio.open_tcp_stream(host, parts.port or (443 if secure else 80))
                if secure:
                    stream = trio.SSLStream(
                        stream, ssl.create_default_context(), server_hostname=host
                    )
            async with trio.open_nursery() as nursery:
                with trio.fail_after(HANDSHAKE_TIMEOUT):
                    ws = await trio_websocket.wrap_client_stream(
                        nursery,
                        stream,
                        host,
                        resource,
                        max_message_size=MAX_RECORD + 1024,
                        message_queue_size=64,
                        receive_buffer_size=RECEIVE_BUFFER,
                    )
                result = await self.run_link(WebSocketTransport(ws, url), True, expect, on_up)
                nursery.cancel_scope.cancel()
        except (
            OSError,
            trio.TooSlowError,
            trio_websocket.HandshakeError,
            trio_websocket.ConnectionClosed,
            trio.BrokenResourceError,
        ) as exc:
            self.log.debug("dial failed", dial=url, error=repr(exc))
        except ExceptionGroup as group:  # trio-websocket may wrap close errors
            self.log.debug("dial failed", dial=url, error=repr(group))
        finally:
            if stream is not None:
                with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await stream.aclose()
        return None if result is None else result.peer_id

    async def serve_websocket(self, host: str, port: int) -> int:
        """Accept WebSocket links on ``host:port`` in the peer's nursery; returns the bound port."""

        async def handler(request: trio_websocket.WebSocketRequest) -> None:
            remote = _describe_remote(request)
            ip = remote.rsplit(":", 1)[0]
            limit = self.options.max_links_per_ip
            if limit and not _is_loopback(ip) and self._inbound_per_ip.get(ip, 0) >= limit:
                self.counters.refuse(ErrorCode.TOO_LARGE)
                self.log.warning("too many connections from one address", remote=remote)
                with contextlib.suppress(Exception):
                    await request.reject(503, body=b"too many connections from your address")
                return
            self._inbound_per_ip[ip] = self._inbound_per_ip.get(ip, 0) + 1
            try:
                try:
                    ws = await request.accept()
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

        bound: int = await self.nursery.start(_serve_ws, handler, host, port, self.nursery)
        return bound


async def _serve_ws(
    handler: Callable[[trio_websocket.WebSocketRequest], Awaitable[None]],
    host: str,
    port: int,
    handler_nursery: trio.Nursery,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    listeners = await trio.open_tcp_listeners(port, host=host)
    server = trio_websocket.WebSocketServer(
        handler,
        listeners,
        handler_nursery=handler_nursery,
        message_queue_size=64,
        max_message_size=MAX_RECORD + 1024,
        connect_timeout=HANDSHAKE_TIMEOUT,
        disconnect_timeout=2,
        receive_buffer_size=RECEIVE_BUFFER,
    )
    bound = listeners[0].socket.getsockname()[1]
    task_status.started(bound)
    await server.run()


def _is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip in ("::1", "[::1]", "localhost")


def _describe_remote(request: trio_websocket.WebSocketRequest) -> str:
    remote = request.remote
    if isinstance(remote, str):
        return remote
    return f"{remote.address}:{remote.port}"


def memory_link_pair(
    remote_a: str = "mem-a", remote_b: str = "mem-b"
) -> tuple[StreamTransport, StreamTransport]:
    """Two transports joined by Trio memory streams, for in-process meshes."""
    a, b = trio.testing.memory_stream_pair()
    return StreamTransport(a, remote_b), StreamTransport(b, remote_a)
