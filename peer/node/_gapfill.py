"""Filling gaps in a topic's log from the carriers, for ``CatchUpService``.

One procedure for every way a gap is found: the heads of a walk's last page,
a carrier's digest (anti-entropy), and a gap the inbox waits on
(``peer.node._ordering``). It asks linked carriers (one given first) for the
sender ranges we lack, through the catch-up core (``ask``, answered by an
``Answer`` command with the ``Waiter`` token), checks each page, stores it,
and counts what nobody had as ``missed``. At most ``MAX_FILL_PAGES`` pages
per pass; the next pass goes on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import trio

from peer.protocols._antientropy import wanted
from peer.protocols._catchup import Page, PageRequest
from peer.protocols._catchupcore import CatchUpCore, Command
from peer.protocols._score import Buckets
from peer.wire._envelope import Envelope
from store import StoreService

from ._host import StoragePeer

MAX_GAP_SENDERS = 64
MAX_FILL_PAGES = 64  # pages one gap-filling pass asks for; the next pass goes on
# passes per (topic, sender): a gap nobody can fill (an author held to its limit
# leaves one per dropped message) is asked about this often, not at every digest
REPAIR_RATE = 0.5  # passes per second
REPAIR_BURST = 4.0  # four passes at once, then one per 2 s
MAX_COUNTED = 4096  # (topic, sender) pairs with something missed, recounted as more comes

Check = Callable[[bytes, PageRequest, Page], Awaitable[list[Envelope] | None]]
Store = Callable[[Iterable[Envelope]], Awaitable[int]]


class Budget:
    """What one gap-filling pass may still ask for, and whether every ask was answered."""

    __slots__ = ("answered", "pages")

    def __init__(self, pages: int) -> None:
        self.pages = pages
        self.answered = True


class Waiter:
    """A request of the gap-filling procedure, answered by an ``Answer`` command."""

    __slots__ = ("answer", "done")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.answer: tuple[PageRequest, Page] | None = None


class GapFiller:
    """Asks carriers for what we lack; see the module docstring."""

    def __init__(
        self,
        peer: StoragePeer,
        service: StoreService,
        core: CatchUpCore,
        log: Any,
        *,
        feed: Callable[[Iterable[Command]], None],
        check: Check,
        store: Store,
    ) -> None:
        self.peer = peer
        self.service = service
        self.core = core
        self.log = log
        self.feed = feed
        self.check = check
        self.accept_many = store
        # seqs received but waiting in the inbox's order (not stored yet): not missed
        self.waiting: Callable[[str, bytes], list[int]] = lambda topic, sender: []
        # new messages of a topic were stored from a carrier: tell the other links
        self.stored: Callable[[str, bytes], None] = lambda topic, carrier: None
        self.passes = Buckets(REPAIR_RATE, REPAIR_BURST, max_keys=4096)
        # (topic, sender) -> (head, whole) of a count that found something missing: when
        # more of that sender is stored (by any path), it is counted again
        self.counted: dict[tuple[str, bytes], tuple[int, bool]] = {}
        self.deferred = 0  # repairs of a sender left for later: its passes were spent

    def may_repair(self, topic: str, sender: bytes) -> bool:
        """Spend one of the repair passes of ``sender`` in ``topic``, if it has one and
        the router has not dropped ``sender`` over its limit lately (what the limit
        dropped is not fetched back at once by another path: it waits, counted)."""
        now = self.peer.now()
        if not self.peer.router.held_back(sender, now) and self.passes.take(
            topic.encode() + sender, now
        ):
            return True
        self.deferred += 1
        return False

    async def fill(
        self,
        topic: str,
        heads: Sequence[tuple[bytes, int]],
        *,
        first: bytes | None = None,
        whole: bool = False,
    ) -> bool:
        """Ask the carriers (``first`` first) for sender ranges we lack up to ``heads``;
        count what nobody has. True if every request was answered within the budget."""
        me = self.peer.peer_id
        heads = [(sender, head) for sender, head in heads if sender != me]
        gaps: list[tuple[bytes, int, int]] = []
        deferred = False
        for sender, head in heads:
            lacking = await self.lacking(topic, sender, 1, head, whole)
            if lacking and not self.may_repair(topic, sender):
                deferred = True
                continue
            gaps += [(sender, a, b) for a, b in lacking]
            if len(gaps) >= MAX_GAP_SENDERS:
                break
        carriers = sorted(self.core.carriers, key=lambda c: c != first)
        budget = Budget(MAX_FILL_PAGES)
        for sender, a0, b0 in gaps[:MAX_GAP_SENDERS]:
            for carrier in carriers:
                todo = await self.lacking(topic, sender, a0, b0, whole)
                if not todo:
                    break
                for a, b in todo[:16]:
                    await self.fetch_range(carrier, topic, sender, a, b, budget)
        await self.count_missed(topic, heads, whole)
        return budget.answered and len(gaps) <= MAX_GAP_SENDERS and not deferred

    async def count_missed(
        self, topic: str, heads: Sequence[tuple[bytes, int]], whole: bool
    ) -> None:
        """``missed``: per sender, how much of ``1..head`` we still lack (entries of
        senders with nothing lacking go)."""
        held = await self.holdings(topic, [sender for sender, _ in heads])
        stats = self.core.stats[topic]
        for sender, head in heads:
            key = sender.hex()
            have = held[sender]
            waiting = self.waiting(topic, sender)
            if waiting:
                have = sorted([*have, *((seq, seq) for seq in waiting)])
            still = sum(b - a + 1 for a, b in wanted(have, head, whole=whole))
            if still:
                if stats.missed.get(key) != still:
                    self.log.warning("missed messages", topic=topic, sender=key[:16], missed=still)
                stats.missed[key] = still
                self.counted[(topic, sender)] = (head, whole)
                while len(self.counted) > MAX_COUNTED:
                    self.counted.pop(next(iter(self.counted)))
            else:
                stats.missed.pop(key, None)
                self.counted.pop((topic, sender), None)

    async def holdings(
        self, topic: str, senders: Sequence[bytes]
    ) -> dict[bytes, list[tuple[int, int]]]:
        """The sequence ranges we hold of each of ``senders`` in ``topic`` (one read)."""
        return await self.service.read(
            lambda s: {sender: s.sender_ranges(sender, topic) for sender in senders}
        )

    async def lacking(
        self, topic: str, sender: bytes, first: int, last: int, whole: bool = False
    ) -> list[tuple[int, int]]:
        """The ranges of sender's ``first..last`` in ``topic`` that we do not hold."""
        have = await self.service.read(lambda s: s.sender_ranges(sender, topic))
        out = []
        for a, b in wanted(have, last, whole=whole):
            a = max(a, first)
            if a <= b:
                out.append((a, b))
        return out


    async def _ask(
        self, carrier: bytes, topic: str, sender: bytes, first: int, last: int
    ) -> tuple[PageRequest, Page] | None:
        """One request/page round through the core; None if the link went, the
        carrier did not answer in time, or refused."""
        waiter = Waiter()
        self.feed(self.core.ask(carrier, topic, sender, first, last, waiter, self.peer.now()))
        await waiter.done.wait()
        if waiter.answer is None or waiter.answer[1].err is not None:
            return None
        return waiter.answer

    async def fetch_range(
        self,
        carrier: bytes,
        topic: str,
        sender: bytes,
        first: int,
        last: int,
        budget: Budget | None = None,
    ) -> None:
        """Ask one carrier for sender's ``first..last`` of ``topic``, page by page."""
        budget = budget or Budget(MAX_FILL_PAGES)
        while first <= last:
            if budget.pages <= 0:
                budget.answered = False  # the rest next time
                return
            budget.pages -= 1
            answer = await self._ask(carrier, topic, sender, first, last)
            if answer is None:
                budget.answered = False
                return
            request, page = answer
            envelopes = await self.check(carrier, request, page)
            if envelopes is None:
                budget.answered = False
                return
            if envelopes:
                new = await self.accept_many(envelopes)
                self.core.stats[topic].received += new
                if new:
                    self.stored(topic, carrier)
            if not page.more:
                return
            first = page.next + 1

    async def fill_exactly(
        self, topic: str, sender: bytes, gap: tuple[int, int], budget: Budget
    ) -> None:
        """Ask the carriers for exactly ``gap`` of ``sender``'s seqs (less what we hold):
        a gap the inbox waits on, whose lower neighbour may not be stored yet."""
        for carrier in list(self.core.carriers):
            have = await self.service.read(lambda s: s.sender_ranges(sender, topic))
            todo = without(gap, have)
            if not todo:
                return
            for a, b in todo[:16]:
                await self.fetch_range(carrier, topic, sender, a, b, budget)


def without(gap: tuple[int, int], have: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``gap`` (inclusive) outside the sorted inclusive ranges ``have``."""
    out = []
    first, last = gap
    for a, b in have:
        if b < first:
            continue
        if a > last:
            break
        if a > first:
            out.append((first, a - 1))
        first = max(first, b + 1)
    if first <= last:
        out.append((first, last))
    return out


__all__ = ["MAX_FILL_PAGES", "Budget", "GapFiller", "Waiter", "without"]
