"""Serving links: the handshake, then a reader and a writer task per link.

Rules kept here:

* ``run_link`` never raises for link trouble: a refused or failed handshake,
  a bad frame or a bug while handling one closes that link, is logged and
  counted, and never reaches the peer's nursery.
* Each link runs in a child nursery of its own (its reader, and its writer
  while something is queued: an idle link has no writer task, see
  ``Link.kick``); closing a link is cancelling that nursery, within the
  deadline ``Link.close`` sets.
* Two links to one peer: the one dialled by the lower peer id is kept, which
  both sides compute alike.
* The writer seals and sends queued frames in batches, one write per batch.
  Most frames never reach it: ``Link.enqueue`` writes directly when nothing
  is ahead (``peer.node._link``). The reader handles a burst of records that
  were already read (``READ_BURST``) in one synchronous stretch, holding the
  direct writes they cause and flushing them once per link; while
  trio-websocket is still parsing bytes it already read it gets a few turns
  first, so a burst is gathered, but a lone record is never delayed.
* With check-ahead on (the events' ``check_ahead``, ``peer.node._checkahead``),
  a burst of two records or more is opened and decoded first, in order; if
  it holds enough new envelopes that the router would check (not dropped
  before the signature by a limit), their signatures are checked in a worker
  thread while the loop goes on; then it is routed in order (a record that
  does not open or decode is refused after the ones before it, as when
  handled one by one).
* A relay holds many idle links, so an idle link keeps only its state: no
  bound logger, and neither the last record read nor the last batch written.
* A connection refused or failed before its handshake finished (a bad
  record, a wrong key, a timeout, no room) gets its error frame, sent within
  ``REFUSAL_SEND``, and is then aborted (``Transport.abort``): nothing more it
  sends is read or parsed, so a flood after a refused first frame costs the
  peer that one frame. An authenticated link is closed gracefully.
* The manager knows no protocol past the handshake: a link coming up, going
  down and each decoded frame are handed to its ``LinkEvents`` (the peer's
  router), which decides what to send. A ``ProtocolError`` raised there
  refuses the frame and closes the link; any other exception is a bug, which
  closes only that link, is logged at error level and counted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from peer.wire._errors import ErrorCode, ProtocolError
from peer.wire._frames import clip_utf8, decode_frame
from peer.wire._frametypes import AnyFrame, Error
from peer.wire._handshake import Handshake, HandshakeResult, PeerRefused, SelfConnection
from peer.wire._identity import Identity

from ._checkahead import CheckAhead
from ._link import HANDSHAKE_TIMEOUT, Link, Outbox, Tail
from ._options import PeerCounters, PeerOptions
from ._transport import Transport, TransportClosed

WRITE_BATCH = 256  # records a writer sends with one write, at most
WRITE_BATCH_BYTES = 1024 * 1024  # ... and bytes (one oversize record still goes alone)
WRITE_YIELDS = 8  # scheduler turns a writer waits for more frames while they keep coming
# records handled in one synchronous stretch, their writes held and flushed once: 32 (was 16)
# halves the thread hand-offs of check-ahead and the sends per link of a busy relay
# (bench/README.md, "N = 10 pass"); a lone record is never held for it
READ_BURST = 32
REFUSAL_SEND = 1.0  # seconds to send the error frame that refuses a handshake, at most
_LINK_GONE = (TransportClosed, trio.BrokenResourceError, trio.ClosedResourceError)


class LinkEvents(Protocol):
    """What a ``LinkManager`` tells its owner (the peer's router)."""

    def link_up(self, link: Link) -> None:
        """``link`` finished its handshake and is registered."""

    def link_down(self, link: Link) -> None:
        """``link`` is closed and unregistered."""

    def frame(self, link: Link, frame: AnyFrame, raw: bytes) -> None:
        """A decoded frame; raising ``ProtocolError`` refuses it and closes the link."""


@dataclass
class LinkConfig:
    """What a handshake says about us; ``caps`` and ``listen`` change as the peer starts."""

    identity: Identity
    options: PeerOptions
    caps: Callable[[], tuple[str, ...]]
    listen: Callable[[], list[str]]


class LinkManager:
    """Every link of one peer: the handshake, then its reader and writer.

    ``links`` maps peer id to the one link kept with it; ``self_urls`` are
    addresses that turned out to be our own.
    """

    def __init__(
        self, config: LinkConfig, events: LinkEvents, counters: PeerCounters, log: Any
    ) -> None:
        self.identity = config.identity
        self.peer_id = config.identity.peer_id
        self.options = config.options
        self._config = config
        self.events = events
        self.counters = counters
        self.log = log
        self.links: dict[bytes, Link] = {}
        self.self_urls: set[str] = set()
        self._changed = trio.Event()
        self.outbox = Outbox(self._writer)
        self.check_ahead: CheckAhead | None = getattr(events, "check_ahead", None)

    def now(self) -> float:
        return trio.current_time()

    def wake(self) -> None:
        """Wake what waits in ``wait_changed`` (a dial attempt ended)."""
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        """Wait until a link comes up or goes down."""
        await self._changed.wait()

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
        result: HandshakeResult | None = None
        try:
            result = await self._open_link(transport, initiator, expect)
            if result is None:
                return None
            link = Link(result, transport, initiator, self.now(), self.outbox)
            try:
                if not await self._take_place(link):
                    return result
            except _LINK_GONE:
                return result  # it went while we settled which link to keep
            except Exception as exc:  # a bug: drop this link, keep the peer
                self._crashed(link, exc)
                return result
            self._register(link)
            try:
                await self._serve(link, on_up)
            except Exception as exc:  # a bug in this link's tasks: drop the link, keep the peer
                self._crashed(link, exc)
            finally:
                self._unregister(link)
            return result
        finally:
            if result is None:  # refused or failed before authentication: read nothing more
                await transport.abort()
            else:
                await transport.aclose()

    async def _serve(self, link: Link, on_up: Callable[[], None] | None) -> None:
        try:
            async with trio.open_nursery() as nursery:
                link.scope = nursery.cancel_scope
                link.nursery = nursery  # the writer starts there when something is queued
                link.kick()
                self.events.link_up(link)
                if on_up is not None:
                    on_up()
                # This task reads the link (inline: one coroutine less per idle link).
                while link.close_code is None:
                    try:
                        record = await link.transport.receive()
                    except TransportClosed:
                        nursery.cancel_scope.cancel()  # nothing more to read or to flush
                        break
                    except ProtocolError as exc:  # an oversize stream record
                        self._refuse(link, exc, self._link_log(link))
                        break
                    await self._gather_burst(link)
                    if self.check_ahead is None:
                        self._on_burst(link, record)
                    else:
                        await self._on_checked_burst(link, record, self.check_ahead)
                    del record  # not kept while this task waits: records reach 320 KiB
                # Closing: the writer flushes the error frame, then ends the
                # nursery (or the link's deadline does).
                await trio.sleep_forever()
        finally:
            link.nursery = None  # closed to new tasks: nothing more is written

    def _crashed(self, link: Link, exc: BaseException) -> None:
        self.counters.link_errors += 1
        self._link_log(link).error("link crashed", error=repr(exc), exc_info=exc)
        link.close(ErrorCode.UNEXPECTED, "internal error")

    async def _open_link(
        self, transport: Transport, initiator: bool, expect: bytes | None
    ) -> HandshakeResult | None:
        """The handshake, or None if there is no room or it failed (logged and counted)."""
        log = self.log.bind(remote=transport.remote, initiator=initiator)
        if not initiator and len(self.links) >= self.options.max_links:
            # refuse before proving anything, so the dialler does not count a link
            self.counters.refuse(ErrorCode.TOO_LARGE)
            log.info("no room for another link")
            with trio.move_on_after(REFUSAL_SEND), contextlib.suppress(*_LINK_GONE):
                await transport.send(
                    Error(ErrorCode.TOO_LARGE.value, "no room for more links").encode()
                )
            return None
        try:
            return await self._handshake(transport, initiator, expect)
        except ProtocolError as exc:
            self.counters.handshakes_failed += 1
            self.counters.refuse(exc.code)
            if isinstance(exc, SelfConnection):
                self.self_urls.add(transport.remote)
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
            caps=self._config.caps(),
            listen=tuple(self._config.listen()),
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
                if not isinstance(exc, PeerRefused):
                    with trio.move_on_after(REFUSAL_SEND), contextlib.suppress(*_LINK_GONE):
                        await transport.send(
                            Error(exc.code.value, clip_utf8(exc.message, 200)).encode()
                        )
                raise
        assert hs.result is not None
        if len(self.links) >= self.options.max_links and hs.result.peer_id not in self.links:
            err = ProtocolError(ErrorCode.TOO_LARGE, "peer has no room for more links")
            with trio.move_on_after(REFUSAL_SEND), contextlib.suppress(*_LINK_GONE):
                await transport.send(
                    hs.result.cipher.seal(Error(err.code.value, err.message).encode())
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

    def _register(self, link: Link) -> None:
        self.links[link.peer_id] = link
        self.counters.links_opened += 1
        self._link_log(link).info("link up", caps=link.result.caps, links=len(self.links))
        self._notify()

    def _unregister(self, link: Link) -> None:
        if self.links.get(link.peer_id) is link:
            del self.links[link.peer_id]
            try:
                self.events.link_down(link)
            except Exception as exc:  # a bug: logged and counted; the link is gone anyway
                self.counters.link_errors += 1
                self._link_log(link).error("link-down handler crashed", error=repr(exc))
        self.counters.links_closed += 1
        link.closed.set()
        self._notify()
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
            if isinstance(frame, Tail):
                await link.transport.send_raw(frame.data)
            else:
                await link.transport.send(link.cipher.seal(frame))

    async def _writer(self, link: Link) -> None:
        """Send what is queued for ``link``: each wake-up drains a batch, one write.

        Started by ``Link.kick`` when something is queued, it ends once the
        queue is empty (an idle link keeps no task); a writer started by
        other means (``link.writer_on`` False: tests) waits for more instead.
        When the queue has ended (the link is closing) and is flushed, it
        cancels the link's nursery. While it holds frames taken from the queue
        (``link.writing``), ``Link.enqueue`` queues rather than writes directly.
        A ``Tail`` is only ever first in the queue (a direct write needs an
        empty queue and an idle writer), so it is sent alone, first.
        """
        seal = link.cipher.seal
        queue = link.queue
        send_many = link.transport.send_many
        lazy = link.writer_on
        try:
            while True:
                if lazy and queue.idle:
                    link.writer_on = False  # in this step: a put after it starts another
                    return
                item = await queue.get()
                if item is None:
                    break
                link.writing = True
                if isinstance(item, Tail):
                    await link.transport.send_raw(item.data)
                    link.writing = False
                    del item
                    continue
                frame: bytes | Tail | None = item
                assert isinstance(frame, bytes)
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
                    assert not isinstance(frame, Tail)  # see above: only ever first
                    got = True
                    batch.append(seal(frame))
                    size += len(frame)
                await send_many(batch)
                link.frames_out += len(batch)
                link.writing = False
                del item, frame, batch  # not kept while the writer waits: a batch may be a MiB
        except TransportClosed:
            pass
        assert link.scope is not None
        link.scope.cancel()

    async def _gather_burst(self, link: Link) -> None:
        """While bytes already read are still being parsed into records (trio-websocket's
        reader yields after each one), give it turns, so that a burst is handled, and
        its writes flushed, together: up to ``READ_BURST`` records, and only while each
        turn brings one more. A lone record (no backlog) is handled at once."""
        transport = link.transport
        queued, more = transport.backlog()
        while more and queued < READ_BURST - 1:
            await trio.lowlevel.checkpoint()
            now_queued, more = transport.backlog()
            if now_queued <= queued:
                break
            queued = now_queued

    def _on_burst(self, link: Link, record: bytes) -> None:
        """``record`` and those already read behind it (up to ``READ_BURST``), with the
        direct writes they cause held and flushed once per link (``Outbox``)."""
        outbox = self.outbox
        outbox.hold()
        try:
            self._on_record(link, record)
            for _ in range(READ_BURST - 1):
                if link.close_code is not None:
                    break
                more = link.transport.receive_nowait()
                if more is None:
                    break
                self._on_record(link, more)
        finally:
            outbox.flush()

    async def _on_checked_burst(self, link: Link, record: bytes, ahead: CheckAhead) -> None:
        """``_on_burst`` with the burst's signatures checked in a thread first; a lone
        record is handled by ``_on_burst`` itself (no thread, no wait)."""
        more = link.transport.receive_nowait()
        if more is None:
            self._on_burst(link, record)
            return
        records = [record, more]
        while len(records) < READ_BURST and (more := link.transport.receive_nowait()) is not None:
            records.append(more)
        del record, more
        opened: list[tuple[AnyFrame, bytes]] = []
        failure: Exception | None = None
        for item in records:  # opened in order: the link cipher counts records
            try:
                plain = link.cipher.open(item)
                opened.append((decode_frame(plain), plain))
            except Exception as exc:  # refused (or a bug) after the frames before it
                failure = exc
                break
        del records
        burst = [(frame, len(plain)) for frame, plain in opened]
        held = sum(size for _, size in burst)
        vouched = await ahead.check(link.peer_id, burst, held, self.now())
        del burst
        outbox = self.outbox
        outbox.hold()
        try:
            with ahead.vouching(vouched):
                for frame, plain in opened:
                    if link.close_code is not None:
                        return
                    self._on_frame(link, frame, plain)
            if failure is not None and link.close_code is None:
                self._on_failure(link, failure)
        finally:
            outbox.flush()

    def _on_frame(self, link: Link, frame: AnyFrame, plain: bytes) -> None:
        try:
            self.events.frame(link, frame, plain)
        except Exception as exc:
            self._on_failure(link, exc)

    def _on_failure(self, link: Link, exc: Exception) -> None:
        if isinstance(exc, ProtocolError):
            self._refuse(link, exc, self._link_log(link))
        else:  # a bug: drop this link, keep the peer
            self._crashed(link, exc)

    def _on_record(self, link: Link, record: bytes) -> None:
        """Open, decode and hand on one record; one that is refused closes the link.

        Its own function so that nothing of a record outlives it while the
        reader waits for the next one.
        """
        try:
            plain = link.cipher.open(record)
            self.events.frame(link, decode_frame(plain), plain)
        except ProtocolError as exc:
            self._refuse(link, exc, self._link_log(link))
        except Exception as exc:  # a bug: drop this link, keep the peer
            self._crashed(link, exc)

    def _refuse(self, link: Link, exc: ProtocolError, log: Any) -> None:
        self.counters.refuse(exc.code)
        log.warning("frame refused", code=exc.code.value, reason=exc.message)
        link.close(exc.code, exc.message)
