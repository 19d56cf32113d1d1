"""Catch-up in the peer's Trio shell: answering ``cureq`` and walking carriers' logs.

``CatchUpHost`` is a part of ``peer.node._storage.Storage``; the protocol decisions
(pages, their checks, gaps) are ``peer.protocols._catchup``'s. Rules kept here:

* Carrying: ``cureq`` frames are answered from the log in a reader thread,
  one at a time per link; more than a few queued get ``busy``.
* Walking: when a link to a storing peer comes up, every topic we keep is
  asked for, page by page, from a cursor kept per (carrier, topic), so a
  broken walk resumes where it stopped; the cursor moves in the commit that
  stores the page's messages. The next pages are asked for while one is
  checked and stored (``PAGES_AHEAD``). Walks of one topic run one at a time.
* The last page names the carrier's highest sequence per sender; what we
  still lack is asked for from every other carrier, and what nobody has is
  reported as missed.
"""

from __future__ import annotations

import contextlib
import functools
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from peer.protocols._catchup import (
    NOT_CARRIED,
    Page,
    PageRequest,
    build_page,
    check_page,
    missing_ranges,
)
from peer.wire._envelope import Envelope, inbox_topic
from peer.wire._errors import ErrorCode, ProtocolError
from peer.wire._limits import MAX_PAGE_MESSAGES, MAX_REQUEST_ID
from store import MessageStore, StoreError

if TYPE_CHECKING:
    from store import StoreService

    from ._node import Peer
    from ._options import PeerOptions
    from ._storage import StorageCounters

STORE_CAP = "store"
ALIVE_KEY = "alive"
ALIVE_INTERVAL = 10.0
PAGE_TIMEOUT = 20.0
SINCE_MARGIN_MS = 120_000  # clocks of carriers and ours differ; duplicates are cheap
MAX_GAP_SENDERS = 64
PAGES_AHEAD = 2  # pages of a walk asked for before the one being checked and stored


@dataclass
class TopicCatchUp:
    """What catching up on one topic has found, for ``/status``."""

    received: int = 0
    duplicates: int = 0
    pages: int = 0
    carriers: set[str] = field(default_factory=set)
    missed: dict[str, int] = field(default_factory=dict)  # sender hex -> messages no one had
    last_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "duplicates": self.duplicates,
            "pages": self.pages,
            "carriers": sorted(self.carriers),
            "missed": dict(self.missed),
            "last": self.last_ms,
        }


class CatchUpHost:
    """The catch-up half of ``Storage``: serving pages and walking carriers."""

    if TYPE_CHECKING:
        peer: Peer
        service: StoreService
        options: PeerOptions
        log: Any
        counters: StorageCounters

        @property
        def store(self) -> MessageStore: ...
        def release(self, topic: str) -> None: ...
        def wake_outbox(self, peer_id: bytes) -> None: ...
        async def accept_many(
            self,
            envelopes: Iterable[Envelope],
            then: Callable[[MessageStore], None] | None = None,
        ) -> int: ...

    def _init_catch_up(self) -> None:
        self.catchup: defaultdict[str, TopicCatchUp] = defaultdict(TopicCatchUp)
        self._requests: dict[int, tuple[bytes, trio.MemorySendChannel[Page]]] = {}
        self._next_request = 1
        self._serving: dict[bytes, trio.MemorySendChannel[PageRequest]] = {}
        self._walking: dict[tuple[bytes, str], bool] = {}  # running walks: wanted again?
        self._topic_locks: dict[str, trio.Lock] = {}
        self._prev_alive = 0  # wall ms our previous run last noted it was running
        self._started_ms = 0

    # -- carrying: answering cureq ---------------------------------------------------------

    def on_request(self, link_peer: bytes, request: PageRequest) -> None:
        queue = self._serving.get(link_peer)
        if queue is None:
            send, recv = trio.open_memory_channel[PageRequest](4)
            self._serving[link_peer] = send
            self.peer.nursery.start_soon(self._serve, link_peer, recv)
            queue = send
        try:
            queue.send_nowait(request)
        except trio.WouldBlock:
            self._answer(
                link_peer, Page(request.r, request.topic, [], request.after, False, [], "busy")
            )

    async def _serve(
        self, link_peer: bytes, requests: trio.MemoryReceiveChannel[PageRequest]
    ) -> None:
        try:
            while link_peer in self.peer.links:
                with trio.move_on_after(30):
                    request = await requests.receive()
                    try:
                        page = await self.service.read(
                            functools.partial(build_page, request=request, requester=link_peer)
                        )
                    except (StoreError, ValueError) as exc:
                        self.log.warning("catch-up request failed", error=str(exc))
                        page = Page(
                            request.r, request.topic, [], request.after, False, [], NOT_CARRIED
                        )
                    self._answer(link_peer, page)
                    continue
                break  # idle: the task ends, a later request starts another
        finally:
            del self._serving[link_peer]

    def _answer(self, link_peer: bytes, page: Page) -> None:
        if page.err is None:
            self.counters.pages_served += 1
        else:
            self.counters.pages_refused += 1
        link = self.peer.links.get(link_peer)
        if link is not None and not link.enqueue(page.encode()):
            link.close(ErrorCode.SLOW, "not reading catch-up pages")

    # -- catching up: asking carriers ----------------------------------------------------------

    def on_page(self, link_peer: bytes, page: Page) -> None:
        waiting = self._requests.get(page.r)
        if waiting is None or waiting[0] != link_peer:
            self.counters.bad_pages += 1
            return  # unsolicited or late: ignored
        try:
            waiting[1].send_nowait(page)
        except (trio.WouldBlock, trio.BrokenResourceError):
            self.counters.bad_pages += 1

    async def _ask(self, carrier: bytes, request: PageRequest) -> Page | None:
        """One request/page round; None if the link went or the carrier did not answer."""
        link = self.peer.links.get(carrier)
        if link is None:
            return None
        send, recv = trio.open_memory_channel[Page](1)
        self._requests[request.r] = (carrier, send)
        try:
            if not link.enqueue(request.encode()):
                return None
            page: Page | None = None
            with trio.move_on_after(PAGE_TIMEOUT):
                async with trio.open_nursery() as nursery:

                    async def link_gone() -> None:  # the request went with the link
                        await link.closed.wait()
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(link_gone)
                    page = await recv.receive()
                    nursery.cancel_scope.cancel()
            return page
        finally:
            del self._requests[request.r]

    def _request_id(self) -> int:
        r = self._next_request
        self._next_request = r % MAX_REQUEST_ID + 1
        return r

    def kept_topics(self) -> list[str]:
        if self.options.relay_only:
            return []
        return [inbox_topic(self.peer.peer_id), *sorted(self.peer.channels)]

    def on_link_up(self, peer_id: bytes, caps: tuple[str, ...]) -> None:
        self.wake_outbox(peer_id)
        if STORE_CAP in caps:
            topics = self.kept_topics()
            if topics:
                self.peer.nursery.start_soon(self.catch_up_with, peer_id, topics)

    async def catch_up_all(self, topics: list[str]) -> None:
        """Catch up ``topics`` from every linked carrier (on subscribe)."""
        carriers = [p for p, link in self.peer.links.items() if STORE_CAP in link.result.caps]
        async with trio.open_nursery() as nursery:
            for carrier in carriers:
                nursery.start_soon(self.catch_up_with, carrier, topics)

    async def catch_up_with(self, carrier: bytes, topics: list[str]) -> None:
        for topic in topics:
            key = (carrier, topic)
            if key in self._walking:
                self._walking[key] = True  # walk again when the running one ends
                continue
            self._walking[key] = False
            try:
                while True:
                    await self._walk(carrier, topic)
                    if not self._walking[key] or carrier not in self.peer.links:
                        break
                    self._walking[key] = False
            except (StoreError, ValueError) as exc:
                self.log.warning("catch-up failed", topic=topic, error=str(exc))
            finally:
                del self._walking[key]

    async def _since(self, topic: str) -> int:
        """From when, on our clock, a carrier we have no cursor with should send ``topic``:
        when we last ran (or subscribed, if later), less a margin for clock skew."""
        if topic.startswith("inbox/"):
            return 0  # everything a carrier holds for us
        raw = await self.service.read(lambda s: s.get_state("since/" + topic))
        subscribed = int(raw.decode()) if raw else self.peer.wall_ms()
        base = subscribed if subscribed >= self._started_ms else self._prev_alive or subscribed
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

    async def _walk(self, carrier: bytes, topic: str) -> None:
        """One carrier at a time per topic: each walk yields a sender's messages in order."""
        lock = self._topic_locks.setdefault(topic, trio.Lock())
        async with lock:
            if await self._walk_locked(carrier, topic):
                self.release(topic)  # a carrier's log was read to its end: live may follow

    async def _walk_locked(self, carrier: bytes, topic: str) -> bool:
        """Page through ``carrier``'s log of ``topic`` from our cursor, then fill gaps.

        True if the walk reached the end of the carrier's log (not refused, not cut).
        """
        name = "cu:" + carrier.hex()
        after = await self.service.read(lambda s: s.get_cursor(name, topic))
        since = 0 if after else await self._since(topic)  # a cursor is exact
        stats = self.catchup[topic]
        send, pages = trio.open_memory_channel[tuple[PageRequest, Page]](PAGES_AHEAD - 1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._fetch_pages, carrier, topic, after, since, send)
            async with pages:
                async for request, page in pages:
                    envelopes = await self._check(carrier, request, page)
                    if envelopes is None:
                        nursery.cancel_scope.cancel()
                        return False  # the link is closed; resumes from the cursor
                    stats.carriers.add(carrier.hex())
                    move = functools.partial(
                        MessageStore.set_cursor, name=name, topic=topic, seq=page.next
                    )
                    new = await self.accept_many(envelopes, then=move)  # one commit for both
                    stats.pages += 1
                    stats.received += new
                    stats.duplicates += len(envelopes) - new
                    stats.last_ms = self.peer.wall_ms()
                    if not page.more:
                        await self._fill_gaps(topic, page.heads)
                        return True
        return False  # cut or refused: resumes from the cursor, or other carriers have it

    async def _fetch_pages(
        self,
        carrier: bytes,
        topic: str,
        after: int,
        since: int,
        out: trio.MemorySendChannel[tuple[PageRequest, Page]],
    ) -> None:
        """Ask for page after page of a walk, each as soon as the one before
        arrives: the carrier reads and sends the next pages while we check and
        store this one. Ends at the last page, a refusal or a lost link."""
        async with out:
            while True:
                request = PageRequest(self._request_id(), topic, after, since, MAX_PAGE_MESSAGES)
                page = await self._ask(carrier, request)
                if page is None or page.err is not None:
                    return
                await out.send((request, page))
                if not page.more:
                    return
                after = page.next

    async def _check(
        self, carrier: bytes, request: PageRequest, page: Page
    ) -> list[Envelope] | None:
        verify = not self.options.bench_no_verify
        try:
            store = self.store

            return await trio.to_thread.run_sync(
                lambda: check_page(request, page, verify=verify, known=store.held)
            )
        except ProtocolError as exc:
            self.counters.bad_pages += 1
            self.log.warning("bad catch-up page", carrier=carrier.hex()[:16], reason=exc.message)
            link = self.peer.links.get(carrier)
            if link is not None:
                self.peer.counters.refuse(exc.code)
                link.close(exc.code, exc.message)
            return None

    async def _fill_gaps(self, topic: str, heads: Iterable[tuple[bytes, int]]) -> None:
        """Ask every carrier for sender ranges we lack; count what nobody has."""
        me = self.peer.peer_id
        gaps: list[tuple[bytes, int, int]] = []
        for sender, head in heads:
            if sender == me:
                continue
            for first, last in await self._lacking(topic, sender, 0, head):
                gaps.append((sender, first, last))
            if len(gaps) >= MAX_GAP_SENDERS:
                break
        if not gaps:
            return
        carriers = [p for p, link in self.peer.links.items() if STORE_CAP in link.result.caps]
        for sender, first, last in gaps[:MAX_GAP_SENDERS]:
            for carrier in carriers:
                todo = await self._lacking(topic, sender, first, last)
                if not todo:
                    break
                for a, b in todo[:16]:
                    await self._fetch_range(carrier, topic, sender, a, b)
        stats = self.catchup[topic]
        for sender, head in heads:
            key = sender.hex()
            if sender == me or not any(g[0] == sender for g in gaps):
                continue
            still = sum(b - a + 1 for a, b in await self._lacking(topic, sender, 0, head))
            if still:
                stats.missed[key] = still
                self.log.warning("missed messages", topic=topic, sender=key[:16], missed=still)
            else:
                stats.missed.pop(key, None)

    async def _lacking(
        self, topic: str, sender: bytes, first: int, last: int
    ) -> list[tuple[int, int]]:
        """The ranges of sender's ``first..last`` in ``topic`` that we do not hold."""
        have = await self.service.read(lambda s: s.sender_ranges(sender, topic))
        out = []
        for a, b in missing_ranges(have, last):
            a = max(a, first)
            if a <= b:
                out.append((a, b))
        return out

    async def _fetch_range(
        self, carrier: bytes, topic: str, sender: bytes, first: int, last: int
    ) -> None:
        """Ask one carrier for sender's ``first..last`` of ``topic``, page by page."""
        while first <= last:
            request = PageRequest(
                self._request_id(), topic, 0, 0, MAX_PAGE_MESSAGES, sender, first, last
            )
            page = await self._ask(carrier, request)
            if page is None or page.err is not None:
                return
            envelopes = await self._check(carrier, request, page)
            if envelopes is None:
                return
            if envelopes:
                self.catchup[topic].received += await self.accept_many(envelopes)
            if not page.more:
                return
            first = page.next + 1
