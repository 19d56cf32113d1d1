"""Catch-up in the peer's Trio shell: performing what ``CatchUpCore`` decides.

``CatchUpService`` is owned by ``peer.node._storage.Storage``. The decisions
(serving queues, which walks run, pages asked ahead, timeouts, matching
replies) are ``peer.protocols._catchupcore``'s; the pages and their checks
``peer.protocols._catchup``'s. Rules kept here:

* Events (``cureq``/``cupage`` frames, links up and down, the timer) are fed
  to the core with ``peer.now()``; the commands it returns that need no
  waiting (sending a frame, releasing held messages, answering an ``ask``)
  are performed at once, the others go through one bounded channel to
  ``run``, which starts each as a task in the one nursery it owns. No task
  is started from a callback and nothing polls.
* Store work: pages are built in a reader thread, checked in a worker
  thread, and stored with their cursor move in one commit
  (``accept_many(..., then=...)``). A page that arrives while an earlier
  one is stored is checked at once (``Received``, ``peer.node._earlycheck``)
  and stored with the others that waited, in one commit.
* Gap filling (the heads of a walk's last page, a carrier's digest, a gap
  the inbox waits on) is one procedure, ``peer.node._gapfill.GapFiller``,
  asking carriers through the core (``ask``/``Answer``), at most
  ``MAX_FILL_PAGES`` pages at a time; what nobody has is reported as missed,
  and a sender's entry goes once nothing of it is lacking.
* Anti-entropy (``peer.protocols._antientropy``) shares the timer task: our
  heads go out as digests, and a carrier's digest that shows something we
  lack is filled from that carrier first (a member walks the carrier's log
  for a sender it never heard from; a relay-only seed asks for all of it).
* We note every ``ALIVE_INTERVAL`` seconds that we are running, so a restart
  catches up from there.
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from peer.protocols._antientropy import AntiEntropy, Lack, ReadHeads, SendHeads, wanted
from peer.protocols._catchup import (
    NOT_CARRIED,
    Page,
    PageRequest,
    build_page,
    check_page,
    refusal,
)
from peer.protocols._catchupcore import (
    PAGE_TIMEOUT,
    PAGES_AHEAD,
    STORE_CAP,
    Answer,
    CatchUpCore,
    CheckAndStore,
    Command,
    FillGaps,
    ReadCursor,
    ReadPage,
    Received,
    Release,
    SendPage,
    SendRequest,
    TopicCatchUp,
    Unmatched,
)
from peer.wire._envelope import Envelope, inbox_topic
from peer.wire._errors import ErrorCode, ProtocolError
from peer.wire._frametypes import Heads
from peer.wire._limits import MAX_PAGE_HEADS
from store import MessageStore, StoreError, StoreService

from ._bulkgc import bulk_gc
from ._earlycheck import EarlyChecks
from ._gapfill import MAX_FILL_PAGES, Budget, GapFiller, Waiter
from ._host import StorageCounters, StoragePeer
from ._overlap import Overlaps

ALIVE_KEY = "alive"
ALIVE_INTERVAL = 10.0
SINCE_MARGIN_MS = 120_000  # clocks of carriers and ours differ; duplicates are cheap
COMMAND_QUEUE = 4096  # commands waiting for a task; bounded by links and walks in practice
MAX_GAP_FETCHES = 256  # (topic, sender) gaps the inbox waits on, fetched at once


@dataclass(frozen=True, slots=True)
class Recount:
    """More of ``sender`` in ``topic`` was stored while something of it was missed:
    count again (``missed`` in /status drops as soon as a gap is filled, by any path)."""

    topic: str
    sender: bytes


@dataclass(frozen=True, slots=True)
class FetchGap:
    """The inbox holds a later message of ``sender`` in ``topic``: fetch what we lack
    below it from the carriers now (the last seq wanted is in ``CatchUpService``)."""

    topic: str
    sender: bytes


Work = (
    ReadPage | ReadCursor | CheckAndStore | Received | FillGaps | ReadHeads | Lack | FetchGap
    | Recount
)
WORK = (
    ReadPage, ReadCursor, CheckAndStore, Received, FillGaps, ReadHeads, Lack, FetchGap, Recount
)


def _link_of(command: Work) -> bytes | None:
    """The link whose frames led to ``command`` (None: none did)."""
    if isinstance(command, FetchGap | Recount):
        return None
    if isinstance(command, ReadPage | ReadHeads | Lack):
        return command.peer
    return command.carrier


class AcceptMany(Protocol):
    """``Storage.accept_many``: store envelopes (and ``then``) in one commit; the new count."""

    async def __call__(
        self, envelopes: Iterable[Envelope], then: Callable[[MessageStore], None] | None = None
    ) -> int: ...


class CatchUpService:
    """Serving pages and walking carriers for a ``Storage``; see the module docstring."""

    def __init__(
        self,
        peer: StoragePeer,
        service: StoreService,
        *,
        log: Any,
        counters: StorageCounters,
        accept_many: AcceptMany,
        release: Callable[[str], None],
        keeps: Callable[[str], bool] = lambda topic: False,
        pinned: Callable[[], Iterable[str]] = tuple,
        pin: Callable[[str], None] = lambda topic: None,
    ) -> None:
        self.peer = peer
        self.service = service
        self.log = log
        self.counters = counters
        self.accept_many = accept_many
        self.release = release
        self.relay_only = peer.options.relay_only
        self.verify = peer.verify
        self.core = CatchUpCore(self.kept_topics)
        self.keeps, self.pinned, self.pin = keeps, pinned, pin
        self.anti_entropy = AntiEntropy(self.shared_topics, self.takes_digest, random.Random())
        self._commands, self._todo = trio.open_memory_channel[Work](COMMAND_QUEUE)
        self._armed = trio.Event()  # a request went out: the timer has a deadline
        self.prev_alive = 0  # wall ms our previous run last noted it was running
        self.started_ms = 0
        self.lost_commands = 0
        self._gaps: dict[tuple[str, bytes], tuple[int, int]] = {}  # being fetched: the seqs
        self._recounting: set[tuple[str, bytes]] = set()
        self.early = EarlyChecks()
        self.overlaps = Overlaps()  # how each carrier's next page is checked
        self.filler = GapFiller(
            peer, service, self.core, log, feed=self._feed, check=self._check, store=accept_many
        )
        self.filler.stored = self._repaired

    @property
    def catchup(self) -> dict[str, TopicCatchUp]:
        return self.core.stats

    @property
    def returning(self) -> bool:
        """This store has run before: there may be something to catch up."""
        return self.prev_alive > 0

    def kept_topics(self) -> list[str]:
        if self.relay_only:
            return []
        return [inbox_topic(self.peer.peer_id), *sorted(self.peer.channels)]

    def shared_topics(self, peer_id: bytes) -> list[str]:
        """What our digests to ``peer_id`` cover: its inbox (only it may read that), then
        our channels (a seed: the channels it stores)."""
        own = sorted(self.pinned()) if self.relay_only else sorted(self.peer.channels)
        return [inbox_topic(peer_id), *(t for t in own if not t.startswith("inbox/"))]

    def takes_digest(self, topic: str) -> bool:
        """A digest of ``topic`` is acted on: our inbox, our channels, a seed's kept ones."""
        if "/" in topic:
            return topic == inbox_topic(self.peer.peer_id) and not self.relay_only
        return self.keeps(topic) if self.relay_only else topic in self.peer.channels

    async def load(self) -> None:
        alive = await self.service.read(lambda s: s.get_state(ALIVE_KEY))
        self.prev_alive = int(alive.decode()) if alive else 0
        self.started_ms = self.peer.wall_ms()

    # -- events --------------------------------------------------------------------------

    def on_request(self, link_peer: bytes, request: PageRequest) -> None:
        self._feed(self.core.on_frame(link_peer, request, self.peer.now()))

    def on_page(self, link_peer: bytes, page: Page) -> None:
        self._feed(self.core.on_frame(link_peer, page, self.peer.now()))

    def on_heads(self, link_peer: bytes, frame: Heads) -> None:
        self._feed(self.anti_entropy.on_heads(link_peer, frame))

    def on_link_up(self, peer_id: bytes, caps: Sequence[str]) -> None:
        self._feed(self.core.on_link_up(peer_id, caps, self.peer.now()))
        self._feed(self.anti_entropy.on_link_up(peer_id, caps, self.peer.now()))
        self._armed.set()  # the digest rounds of this link need the timer

    def on_link_down(self, peer_id: bytes) -> None:
        self.anti_entropy.on_link_down(peer_id)
        self._feed(self.core.on_link_down(peer_id, self.peer.now()))

    def want_gap(self, topic: str, sender: bytes, first: int, last: int) -> None:
        """The inbox holds a message of ``sender`` past a gap: fetch ``first..last`` now."""
        key = (topic, sender)
        if key in self._gaps:  # the fetch under way goes on to this one
            a, b = self._gaps[key]
            self._gaps[key] = (min(a, first), max(b, last))
            return
        if len(self._gaps) >= MAX_GAP_FETCHES or not self.filler.may_repair(topic, sender):
            return  # the digest rounds find it; the hold bounds the wait
        try:
            self._commands.send_nowait(FetchGap(topic, sender))
        except trio.WouldBlock:
            return  # overloaded: the digest rounds find it
        self._gaps[key] = (first, last)

    def stored(self, pairs: Iterable[tuple[str, bytes]]) -> None:
        """Messages of these (topic, sender) pairs were stored: recount what was missed."""
        for key in pairs:
            if key in self.filler.counted and key not in self._recounting:
                try:
                    self._commands.send_nowait(Recount(*key))
                except trio.WouldBlock:
                    return  # the next count clears it
                self._recounting.add(key)

    async def _recount(self, topic: str, sender: bytes) -> None:
        try:
            counted = self.filler.counted.get((topic, sender))
            if counted is not None:
                head, whole = counted
                await self.filler.count_missed(topic, [(sender, head)], whole)
        finally:
            self._recounting.discard((topic, sender))

    def catch_up_all(self, topics: Sequence[str]) -> None:
        """Catch up ``topics`` from every linked carrier (on subscribe)."""
        self._feed(self.core.catch_up(list(self.core.carriers), topics, self.peer.now()))

    # -- performing commands -----------------------------------------------------------------

    def _feed(self, commands: Iterable[Command | ReadHeads | SendHeads | Lack]) -> None:
        for command in commands:
            if isinstance(command, Received) and not self.early.register(
                command.walk, command.page.r
            ):
                continue  # bounded: checked when it is stored
            if isinstance(command, WORK):
                try:
                    self._commands.send_nowait(command)
                except trio.WouldBlock:
                    if isinstance(command, Received):
                        self.early.forget(command.walk, command.page.r)
                        continue
                    # the core would wait for its outcome for ever: end that link
                    # instead, and its link-down resets the walks and serving
                    self.lost_commands += 1
                    self.log.error("catch-up command queue full", command=type(command).__name__)
                    self._drop_link(_link_of(command), "catch-up is overloaded")
            else:
                self._perform(command)

    def _perform(self, command: Command | SendHeads) -> None:
        match command:
            case SendHeads(peer, frame):
                link = self.peer.links.get(peer)
                if link is not None:
                    link.enqueue(frame.encode())  # a full queue: the next round sends it
            case SendPage(peer, page):
                self._answer(peer, page)
            case SendRequest(peer, request):
                link = self.peer.links.get(peer)
                self._armed.set()
                if link is None or not link.enqueue(request.encode()):
                    self._feed(self.core.request_failed(peer, request.r, self.peer.now()))
            case Release(topic):
                self.release(topic)
            case Answer(token, request, page):
                assert isinstance(token, Waiter)
                token.answer = None if page is None else (request, page)
                token.done.set()
            case Unmatched():
                self.counters.bad_pages += 1  # unsolicited or late: ignored

    def _answer(self, link_peer: bytes, page: Page) -> None:
        if page.err is None:
            self.counters.pages_served += 1
        else:
            self.counters.pages_refused += 1
        link = self.peer.links.get(link_peer)
        if link is not None and not link.enqueue(page.encode()):
            link.close(ErrorCode.SLOW, "not reading catch-up pages")

    async def run(self) -> None:
        """Start each command's work as a task of this service's nursery."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._alive_loop)
            nursery.start_soon(self._timer_loop)
            async for command in self._todo:
                nursery.start_soon(self._contained, command)

    async def _contained(self, command: Work) -> None:
        """Do one command's work; a bug there ends the link it concerns, not the peer
        (logged at error level and counted; the link-down resets the core's state)."""
        try:
            match command:
                case ReadPage():
                    await self._read_page(command)
                case ReadCursor():
                    await self._read_cursor(command)
                case CheckAndStore():
                    with bulk_gc():  # a page's objects live until its commit
                        await self._check_and_store(command)
                case Received(walk, carrier, request, page):
                    check = functools.partial(self._check, carrier, request, page)
                    await self.early.run(walk, page.r, check)
                case FillGaps():
                    await self._fill_gaps(command)
                case ReadHeads():
                    await self._read_heads(command)
                case Lack():
                    await self._lack(command)
                case FetchGap():
                    await self._fetch_gap(command)
                case Recount(topic, sender):
                    await self._recount(topic, sender)
        except Exception as exc:
            self.peer.counters.link_errors += 1
            self.log.error(
                "catch-up task crashed", command=type(command).__name__, error=repr(exc),
                exc_info=exc,
            )
            self._drop_link(_link_of(command), "internal error")

    def _drop_link(self, peer_id: bytes | None, reason: str) -> None:
        if peer_id is None:
            return
        link = self.peer.links.get(peer_id)
        if link is not None:
            link.close(ErrorCode.UNEXPECTED, reason)

    async def _timer_loop(self) -> None:
        """Feed the core's and anti-entropy's timers at their deadlines; woken early when
        a request goes out or a link comes up."""
        while True:
            deadlines = [self.core.next_deadline(), self.anti_entropy.next_deadline()]
            at = min((d for d in deadlines if d is not None), default=None)
            with trio.move_on_at(trio.current_time() + 3600 if at is None else at):
                await self._armed.wait()
            self._armed = trio.Event()
            now = self.peer.now()
            self._feed(self.core.handle_timer(now))
            self._feed(self.anti_entropy.handle_timer(now))

    # -- carrying: answering cureq ---------------------------------------------------------

    async def _read_page(self, command: ReadPage) -> None:
        try:
            page = await self.service.read(
                functools.partial(build_page, request=command.request, requester=command.peer)
            )
        except (StoreError, ValueError) as exc:
            self.log.warning("catch-up request failed", error=str(exc))
            page = refusal(command.request, NOT_CARRIED)
        self._feed(self.core.page_read(command, page))

    # -- catching up: walks ------------------------------------------------------------------

    async def _read_cursor(self, command: ReadCursor) -> None:
        name, topic = "cu:" + command.carrier.hex(), command.topic
        try:
            after = await self.service.read(lambda s: s.get_cursor(name, topic))
            since = 0 if after else await self._since(topic)  # a cursor is exact
        except (StoreError, ValueError) as exc:
            self.log.warning("catch-up failed", topic=topic, error=str(exc))
            self._feed(self.core.page_failed(command.walk, self.peer.now()))
            return
        self._feed(self.core.walk_ready(command.walk, after, since, self.peer.now()))

    async def _check_and_store(self, command: CheckAndStore) -> None:
        envelopes: list[Envelope] = []
        for request, page in command.pages:  # one commit for all, in order
            early, checked = await self.early.take(command.walk, page.r)
            if not early:
                checked = await self._check(command.carrier, request, page)
            if checked is None:
                self.early.drop_walk(command.walk)
                self._feed(self.core.page_failed(command.walk, self.peer.now()))
                return
            envelopes += checked
        move = functools.partial(
            MessageStore.set_cursor,
            name="cu:" + command.carrier.hex(),
            topic=command.topic,
            seq=command.cursor,
        )
        try:
            new = await self.accept_many(envelopes, then=move)  # one commit for both
        except (StoreError, ValueError) as exc:
            self.log.warning("catch-up failed", topic=command.topic, error=str(exc))
            self._feed(self.core.page_failed(command.walk, self.peer.now()))
            return
        self._feed(
            self.core.page_stored(
                command.walk, len(envelopes), new, self.peer.wall_ms(), self.peer.now()
            )
        )
        if new:
            self._repaired(command.topic, command.carrier)

    def _repaired(self, topic: str, carrier: bytes) -> None:
        """New messages of ``topic`` came from ``carrier``: our other links hear now."""
        self._feed(self.anti_entropy.repaired(topic, carrier, self.peer.now()))
        self._armed.set()  # a link's round may have been brought forward

    async def _since(self, topic: str) -> int:
        """From when, on our clock, a carrier we have no cursor with should send ``topic``:
        when we last ran (or subscribed, if later), less a margin for clock skew."""
        if topic.startswith("inbox/"):
            return 0  # everything a carrier holds for us
        raw = await self.service.read(lambda s: s.get_state("since/" + topic))
        subscribed = int(raw.decode()) if raw else self.peer.wall_ms()
        base = subscribed if subscribed >= self.started_ms else self.prev_alive or subscribed
        return max(1, base - SINCE_MARGIN_MS)

    async def _alive_loop(self) -> None:
        """Note every few seconds that we are running: a restart catches up from there."""
        while True:
            now = str(self.peer.wall_ms()).encode()
            with contextlib.suppress(StoreError):
                await self.service.write(
                    functools.partial(MessageStore.put_state, key=ALIVE_KEY, value=now)
                )
            await trio.sleep(ALIVE_INTERVAL)

    async def note_subscribed(self, topic: str) -> None:
        value = str(self.peer.wall_ms()).encode()
        key = "since/" + topic

        def write(s: MessageStore) -> None:
            if s.get_state(key) is None:
                s.put_state(key, value)

        await self.service.write(write)

    async def _check(
        self, carrier: bytes, request: PageRequest, page: Page
    ) -> list[Envelope] | None:
        verify = self.verify
        try:
            store = self.service.store
            stored = store.held_in if self.overlaps.opens_whole(carrier, request.topic) else None
            checked = await trio.to_thread.run_sync(
                lambda: check_page(request, page, verify=verify, known=store.held, stored=stored)
            )
            self.overlaps.checked(carrier, request.topic, len(page.messages), len(checked))
            return checked
        except ProtocolError as exc:
            self.counters.bad_pages += 1
            self.log.warning("bad catch-up page", carrier=carrier.hex()[:16], reason=exc.message)
            link = self.peer.links.get(carrier)
            if link is not None:
                self.peer.counters.refuse(exc.code)
                link.close(exc.code, exc.message)
            return None

    # -- gaps ------------------------------------------------------------------------------

    async def _fill_gaps(self, command: FillGaps) -> None:
        try:
            await self.filler.fill(command.topic, list(command.heads))
        except (StoreError, ValueError) as exc:
            self.log.warning("catch-up failed", topic=command.topic, error=str(exc))
        finally:
            self._feed(self.core.gaps_done(command.walk, self.peer.now()))

    async def _fetch_gap(self, command: FetchGap) -> None:
        topic, sender = key = (command.topic, command.sender)
        budget = Budget(MAX_FILL_PAGES)
        try:
            while True:
                gap = self._gaps[key]
                await self.filler.fill_exactly(topic, sender, gap, budget)
                if self._gaps[key] == gap or budget.pages <= 0:  # the rest: hold or digests
                    await self.filler.count_missed(topic, [(sender, gap[1])], whole=False)
                    return
        except (StoreError, ValueError) as exc:
            self.log.warning("gap not fetched", topic=topic, error=str(exc))
        finally:
            self._gaps.pop(key, None)

    # -- anti-entropy ----------------------------------------------------------------------

    async def _read_heads(self, command: ReadHeads) -> None:
        """Our heads of each topic (one read), as digests for ``command.peer``."""
        topics, most = command.topics, MAX_PAGE_HEADS + 1
        try:
            read = await self.service.read(lambda s: [s.sender_heads(t, most) for t in topics])
        except (StoreError, ValueError) as exc:
            self.log.warning("digest not read", error=str(exc))
            return
        for topic, heads in zip(topics, read, strict=True):
            more = len(heads) > MAX_PAGE_HEADS
            self._feed(self.anti_entropy.heads_read(command.peer, topic, heads, more))

    async def _lack(self, command: Lack) -> None:
        """A carrier's digest: fetch what it shows we lack, from it first."""
        peer, topic = command.peer, command.topic
        settled: list[tuple[bytes, int]] = []
        try:
            if (peer, topic) in self.core.walking() or (peer, topic) in self.core.queued():
                return  # the walk's own heads are checked when it ends; next round otherwise
            settled = await self._repair(peer, topic, command.heads)
        except (StoreError, ValueError) as exc:
            self.log.warning("anti-entropy failed", topic=topic, error=str(exc))
        finally:
            self.anti_entropy.lack_done(peer, topic, settled)

    async def _repair(
        self, peer: bytes, topic: str, heads: Sequence[tuple[bytes, int]]
    ) -> list[tuple[bytes, int]]:
        """Fill from ``peer`` (then any carrier) what ``heads`` show we lack; returns the
        heads settled: nothing left to ask, or asked with every request answered."""
        whole = self.relay_only  # a seed keeps the whole log of a sender
        me = self.peer.peer_id
        held = await self.filler.holdings(topic, [sender for sender, _ in heads])
        unheard = [s for s, h in heads if s != me and h > 0 and not held[s]]
        if unheard and not whole:
            # a sender we never heard from here: what came since we joined is after our
            # cursor in that carrier's log, and a walk finds it
            self._feed(self.core.catch_up([peer], [topic], self.peer.now()))
        if whole:
            self.pin(topic)
        behind = [(s, h) for s, h in heads if s != me and wanted(held[s], h, whole=whole)]
        if not behind:
            await self.filler.count_missed(topic, [(s, h) for s, h in heads if s != me], whole)
            return list(heads)
        answered = await self.filler.fill(topic, behind, first=peer, whole=whole)
        if answered:
            return list(heads)
        held = await self.filler.holdings(topic, [sender for sender, _ in heads])
        return [(s, h) for s, h in heads if not wanted(held[s], h, whole=whole)]


__all__ = [
    "ALIVE_KEY",
    "PAGES_AHEAD",
    "PAGE_TIMEOUT",
    "STORE_CAP",
    "CatchUpService",
    "TopicCatchUp",
]
