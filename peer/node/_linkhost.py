"""Serving links: the handshake, then a reader and a writer task per link.

Rules kept here:

* ``run_link`` never raises for link trouble: a refused or failed handshake,
  a bad frame or a bug while handling one closes that link, is logged and
  counted, and never reaches the peer's nursery.
* Each link runs in a child nursery of its own (reader and writer); closing a
  link is cancelling that nursery, within the deadline ``Link.close`` sets.
* Two links to one peer: the one dialled by the lower peer id is kept, which
  both sides compute alike.
* The writer seals and sends queued frames in batches, one write per batch.
* A relay holds many idle links, so an idle link keeps only its state: no
  bound logger, and neither the last record read nor the last batch written.

``LinkHost`` is a mixin of ``peer.node._node.Peer``; what it needs from the peer is
declared under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from peer.wire._envelope import PRESENCE_TOPIC
from peer.wire._errors import ErrorCode, ProtocolError
from peer.wire._frames import clip_utf8, decode_frame, encode_frame
from peer.wire._handshake import Handshake, HandshakeResult, SelfConnection

from ._link import HANDSHAKE_TIMEOUT, Link
from ._transport import Transport, TransportClosed

if TYPE_CHECKING:
    from dht import Contact, DhtService
    from peer.protocols._gossip import Close, Deliver, GossipRouter, Send, Upcall
    from peer.wire._identity import Identity

    from ._inbox import Directory, PeerInfo
    from ._options import PeerCounters, PeerOptions
    from ._storage import Storage

WRITE_BATCH = 256  # records a writer sends with one write, at most
WRITE_BATCH_BYTES = 1024 * 1024  # ... and bytes (one oversize record still goes alone)
WRITE_YIELDS = 8  # scheduler turns a writer waits for more frames while they keep coming
_INTEREST_FRAMES = frozenset({"sub", "unsub"})
_LINK_GONE = (TransportClosed, trio.BrokenResourceError, trio.ClosedResourceError)


class LinkHost:
    """The link-serving half of a ``Peer``."""

    if TYPE_CHECKING:
        identity: Identity
        options: PeerOptions
        peer_id: bytes
        log: Any
        router: GossipRouter
        directory: Directory
        links: dict[bytes, Link]
        counters: PeerCounters
        listen_urls: list[str]
        storage: Storage | None
        dht: DhtService | None
        _self_urls: set[str]

        @property
        def caps(self) -> tuple[str, ...]: ...
        @property
        def nursery(self) -> trio.Nursery: ...
        def now(self) -> float: ...
        def wall_ms(self) -> int: ...
        def contact_of(self, peer_id: bytes) -> Contact | None: ...
        def _update_relays(self) -> None: ...
        def perform(self, actions: list[Send | Deliver | Close | Upcall]) -> None: ...
        def _notify_links(self) -> None: ...
        def _notify_changed(self) -> None: ...
        def _want_presence(self) -> None: ...

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
        learns who answered. While the link is up, this task is its reader.
        """
        try:
            result = await self._open_link(transport, initiator, expect)
            if result is None:
                return None
            link = Link(result, transport, initiator, self.now())
            if not await self._take_place(link):
                return result
            info = self._register(link)
            try:
                async with trio.open_nursery() as nursery:
                    link.scope = nursery.cancel_scope
                    nursery.start_soon(self._writer, link)
                    self._start_serving(link, on_up)
                    # This task reads the link (inline: one coroutine less per idle link).
                    while link.close_code is None:
                        try:
                            record = await transport.receive()
                        except TransportClosed:
                            nursery.cancel_scope.cancel()  # nothing more to read or to flush
                            break
                        except ProtocolError as exc:  # an oversize stream record
                            self._refuse(link, exc, self._link_log(link))
                            break
                        self._on_record(link, record)
                        del record  # not kept while this task waits: records reach 320 KiB
                    # Closing: the writer flushes the error frame, then ends the
                    # nursery (or the link's deadline does).
                    await trio.sleep_forever()
            finally:
                self._unregister(link, info)
            return result
        finally:
            await transport.aclose()

    async def _open_link(
        self, transport: Transport, initiator: bool, expect: bytes | None
    ) -> HandshakeResult | None:
        """The handshake, or None if there is no room or it failed (logged and counted)."""
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
            return None
        try:
            return await self._handshake(transport, initiator, expect)
        except ProtocolError as exc:
            self.counters.handshakes_failed += 1
            self.counters.refuse(exc.code)
            if isinstance(exc, SelfConnection):
                self._self_urls.add(transport.remote)
            log.warning("handshake refused", code=exc.code.value, reason=exc.message)
        except (TransportClosed, trio.TooSlowError) as exc:
            self.counters.handshakes_failed += 1
            log.info("handshake did not finish", reason=str(exc) or type(exc).__name__)
        except Exception as exc:  # a bug must not take the peer down
            self.counters.handshakes_failed += 1
            log.exception("handshake crashed", error=repr(exc))
        return None

    async def _handshake(
        self, transport: Transport, initiator: bool, expect: bytes | None
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

    async def _take_place(self, link: Link) -> bool:
        """Settle two links to one peer; False if ``link`` is the one to drop.

        Both sides keep the link dialled by the lower peer id, which they compute alike.
        """
        existing = self.links.get(link.peer_id)
        if existing is None:
            return True
        keep_new = link.initiator == (self.peer_id < link.peer_id)
        loser = existing if keep_new else link
        loser.close(ErrorCode.DUPLICATE, "already linked")
        if not keep_new:
            with trio.move_on_after(1):
                await self._drain_writer(link)
            return False
        with trio.move_on_after(3):
            await existing.closed.wait()
        return True

    def _register(self, link: Link) -> PeerInfo:
        result = link.result
        self.links[link.peer_id] = link
        self.counters.links_opened += 1
        info = self.directory.see(link.peer_id, result.public_key, self.wall_ms())
        info.linked = True
        info.times_linked += 1
        info.listen, info.caps, info.agent = result.listen, result.caps, result.agent
        info.remote = link.transport.remote
        self._link_log(link).info("link up", caps=result.caps, links=len(self.links))
        self._notify_links()
        return info

    def _start_serving(self, link: Link, on_up: Callable[[], None] | None) -> None:
        """Tell the router, the DHT and the store that ``link`` is up."""
        self.perform(self.router.add_link(link.peer_id, relay=link.relay, now=self.now()))
        if self.dht is not None:
            contact = self.contact_of(link.peer_id)
            assert contact is not None
            self.dht.link_up(contact)
            self._update_relays()
        if self.storage is not None:
            self.storage.on_link_up(link.peer_id, link.result.caps)
        if on_up is not None:
            on_up()

    def _unregister(self, link: Link, info: PeerInfo) -> None:
        if self.links.get(link.peer_id) is link:
            del self.links[link.peer_id]
            info.linked = False
            self.perform(self.router.remove_link(link.peer_id))
            if self.dht is not None:
                self.dht.link_down(link.peer_id)
                self._update_relays()
            if self.storage is not None:
                self.storage.on_link_down(link.peer_id)
        self.counters.links_closed += 1
        link.closed.set()
        self._notify_links()
        self._link_log(link).info(
            "link down",
            code=link.close_code.value if link.close_code else "eof",
            reason=link.close_reason,
            links=len(self.links),
        )

    def _link_log(self, link: Link) -> Any:
        """The link's logger, bound when something is logged rather than kept per link."""
        return self.log.bind(
            remote=link.transport.remote, initiator=link.initiator, link=link.peer_id.hex()[:16]
        )

    async def _drain_writer(self, link: Link) -> None:
        while (frame := await link.queue.get()) is not None:
            await link.transport.send(link.cipher.seal(frame))

    async def _writer(self, link: Link) -> None:
        """Send what is queued for ``link``: each wake-up drains a batch, one write.

        When the queue has ended (the link is closing) and is flushed, it
        cancels the link's nursery.
        """
        seal = link.cipher.seal
        queue = link.queue
        send_many = link.transport.send_many
        try:
            while (frame := await queue.get()) is not None:
                batch = [seal(frame)]
                size = len(frame)
                yields, got = 0, False
                while len(batch) < WRITE_BATCH and size < WRITE_BATCH_BYTES:
                    frame = queue.get_nowait()
                    if frame is None:
                        # While frames keep coming (the reader is busy), give it
                        # a few turns before writing: one write for many frames.
                        if queue.closed or yields >= WRITE_YIELDS or (yields and not got):
                            break
                        yields += 1
                        got = False
                        await trio.lowlevel.checkpoint()
                        continue
                    got = True
                    batch.append(seal(frame))
                    size += len(frame)
                await send_many(batch)
                link.frames_out += len(batch)
                del frame, batch  # not kept while the writer waits: a batch may be a MiB
        except TransportClosed:
            pass
        assert link.scope is not None
        link.scope.cancel()

    def _on_record(self, link: Link, record: bytes) -> None:
        """Open, decode and route one record; one that is refused closes the link.

        Its own function so that nothing of a record outlives it while the
        reader waits for the next one.
        """
        try:
            plain = link.cipher.open(record)
            frame = decode_frame(plain)
            actions = self.router.handle_frame(
                link.peer_id, frame, plain, self.now(), self.wall_ms()
            )
            if frame.type in _INTEREST_FRAMES:
                self._notify_changed()
        except ProtocolError as exc:
            self._refuse(link, exc, self._link_log(link))
            return
        except Exception as exc:  # a bug: drop this link, keep the peer
            self.counters.link_errors += 1
            self._link_log(link).exception("link handler crashed", error=repr(exc))
            link.close(ErrorCode.UNEXPECTED, "internal error")
            return
        self.perform(actions)
        if frame.type == "sub" and any(e[0] == PRESENCE_TOPIC for e in frame.fields["topics"]):
            self._want_presence()  # the link now carries presence: announce ourselves

    def _refuse(self, link: Link, exc: ProtocolError, log: Any) -> None:
        self.counters.refuse(exc.code)
        log.warning("frame refused", code=exc.code.value, reason=exc.message)
        link.close(exc.code, exc.message)
