"""Per-sender order in front of the inbox, as a sans-IO structure.

A sender numbers its messages in each topic (``seq``, 1, 2, 3, ...). Over a
mesh with churn they do not arrive in that order: a link drops, later
messages come by another route, and the missing ones come seconds later
from anti-entropy or catch-up. An agent reading its inbox should see each
sender's messages in the order they were sent, so a message that would
overtake an earlier one of the same sender *waits* here until the gap is
filled, then both go on in order.

Waiting is bounded, so an unrepairable gap (its author's store lost it, no
carrier has it) never stalls a sender for good:

* each *lane* (topic, sender) remembers ``top``, the highest seq handed on;
  the shell starts a lane from its store (the highest seq it holds of that
  sender there), or, for a sender never seen, from the first message;
* ``offer`` hands on at once a message at ``top + 1`` (and the held ones it
  makes contiguous) and anything at or below ``top`` (history that came
  late; the store removes duplicates); a message above ``top + 1`` is held,
  and the gap it opens is reported so the shell can fetch the missing range
  at once rather than wait for the next digest round;
* a held message waits at most ``hold`` seconds: then the gap below it is
  given up on (``skipped``, counted and reported, never silent) and it goes
  on; should the missing ones come later, they still go on (late);
* at most ``max_held`` messages wait over all lanes: past it, the lane
  waiting longest gives up its gap first. Lanes with nothing held are
  forgotten past ``max_lanes`` (oldest first); the shell starts them again
  from its store.

Items are opaque to this module; times are monotonic seconds from the shell.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
Key = tuple[str, bytes]  # (log topic, sender)

ORDER_HOLD = 30.0  # seconds a message waits for an earlier one of its sender
MAX_ORDER_HELD = 50_000  # messages waiting, over all lanes
MAX_ORDER_BYTES = 64 << 20  # their bytes
MAX_ORDER_LANES = 65_536  # lanes remembered with nothing waiting
MAX_GAP = 10_000  # a jump past this many seqs is not waited for (nor counted as skipped)


@dataclass(frozen=True, slots=True)
class Gap:
    """``key``'s seqs ``first..last`` are missing below a held message."""

    key: Key
    first: int
    last: int


@dataclass(slots=True)
class Released(Generic[T]):
    """What one call hands on, in order; the gaps it opened (to fetch) and gave up on."""

    items: list[T] = field(default_factory=list)
    opened: list[Gap] = field(default_factory=list)
    skipped: list[Gap] = field(default_factory=list)
    jumped: list[Gap] = field(default_factory=list)  # implausibly large: not waited for


@dataclass(slots=True)
class _Lane(Generic[T]):
    top: int
    held: dict[int, T] = field(default_factory=dict)  # seq -> item
    seqs: list[int] = field(default_factory=list)  # a heap of the held seqs (and stale ones)

    def lowest(self) -> int:
        while self.seqs[0] not in self.held:
            heapq.heappop(self.seqs)
        return self.seqs[0]


class SenderOrder(Generic[T]):
    """Hold messages that would overtake an earlier one of their sender; see the
    module docstring."""

    def __init__(
        self,
        hold: float = ORDER_HOLD,
        max_held: int = MAX_ORDER_HELD,
        max_lanes: int = MAX_ORDER_LANES,
        max_bytes: int = MAX_ORDER_BYTES,
    ) -> None:
        self.hold = hold
        self.max_held = max_held
        self.max_lanes = max_lanes
        self.max_bytes = max_bytes
        self.held_bytes = 0
        self._sizes: dict[tuple[Key, int], int] = {}
        self._lanes: OrderedDict[Key, _Lane[T]] = OrderedDict()
        self._dues: list[tuple[float, Key, int]] = []  # a heap: when each held one stops waiting
        self.held = 0  # messages waiting now
        self.late = 0  # handed on below a lane's top: came after a later one
        self.skipped = 0  # seqs given up on
        self.duplicates = 0  # offered while the same seq waited

    def known(self, key: Key) -> bool:
        return key in self._lanes

    def waiting(self, key: Key) -> list[int]:
        """The seqs of ``key`` held now."""
        lane = self._lanes.get(key)
        return [] if lane is None else list(lane.held)

    def top(self, key: Key) -> int | None:
        """The highest seq of ``key`` handed on (None: no such lane)."""
        lane = self._lanes.get(key)
        return None if lane is None else lane.top

    def start(self, key: Key, top: int) -> None:
        """Begin ``key``'s lane at ``top``, the highest seq already handed on (0: none)."""
        if key not in self._lanes:
            self._lanes[key] = _Lane(max(0, top))
            self._forget_idle()

    def offer(self, key: Key, seq: int, item: T, now: float, size: int = 0) -> Released[T]:
        """``item``, ``key``'s message ``seq`` (``size`` bytes): what may go on now, in
        order."""
        out: Released[T] = Released()
        lane = self._lanes.get(key)
        if lane is None:  # a sender never seen: its first message starts the lane
            lane = self._lanes[key] = _Lane(seq - 1)
            self._forget_idle()
        self._lanes.move_to_end(key)
        if seq - lane.top - 1 > MAX_GAP:  # a forged or broken seq: not waited for
            if lane.held:
                self._give_up(0.0, key, max(lane.held), out)
            out.jumped.append(Gap(key, lane.top + 1, seq - 1))
            lane.top = seq - 1
        if seq <= lane.top:
            self.late += 1
            out.items.append(item)
        elif seq == lane.top + 1:
            lane.top = seq
            out.items.append(item)
            self._drain(key, lane, out)
        elif seq in lane.held:
            self.duplicates += 1
        else:
            if not lane.held or seq < lane.lowest():
                out.opened.append(Gap(key, lane.top + 1, seq - 1))
            lane.held[seq] = item
            heapq.heappush(lane.seqs, seq)
            heapq.heappush(self._dues, (now + self.hold, key, seq))
            self.held += 1
            self._sizes[(key, seq)] = size
            self.held_bytes += size
            while self.held > self.max_held or self.held_bytes > self.max_bytes:
                self._give_up(*self._earliest(), out)
        return out

    def next_in_order(self, key: Key, seq: int) -> bool:
        """``offer`` for its commonest case alone: ``key``'s lane is known, holds
        nothing, and ``seq`` is its next message. Then the lane moves on exactly as
        ``offer`` moves it (which would hand on that one item and nothing else) and
        True is returned; otherwise nothing changes and False is returned."""
        lane = self._lanes.get(key)
        if lane is None or lane.held or seq != lane.top + 1:
            return False
        self._lanes.move_to_end(key)
        lane.top = seq
        lane.seqs.clear()
        if not self.held:
            self._dues.clear()
        return True

    def next_run(self, key: Key, first: int, count: int) -> bool:
        """``next_in_order`` for ``count`` consecutive seqs from ``first`` at once (a
        catch-up page of one author): the lane moves on exactly as that many
        ``next_in_order`` calls, each True, would move it; False (nothing changed)
        unless the first of them would be True."""
        if count < 1 or not self.next_in_order(key, first):
            return False
        self._lanes[key].top = first + count - 1
        return True

    def next_deadline(self) -> float | None:
        """When the first held message stops waiting (None: nothing held)."""
        return self._earliest()[0] if self.held else None

    def expire(self, now: float) -> Released[T]:
        """Give up the gaps under every held message whose wait is over."""
        out: Released[T] = Released()
        while self.held:
            due, key, seq = self._earliest()
            if due > now:
                break
            self._give_up(due, key, seq, out)
        return out

    def gaps(self) -> list[Gap]:
        """The lowest gap of every lane that holds something."""
        out = []
        for key, lane in self._lanes.items():
            if lane.held:
                out.append(Gap(key, lane.top + 1, lane.lowest() - 1))
        return out

    # -- inside ------------------------------------------------------------------------

    def _earliest(self) -> tuple[float, Key, int]:
        """The (due, key, seq) of the held message that waits longest (something is held)."""
        while True:
            due, key, seq = self._dues[0]
            lane = self._lanes.get(key)
            if lane is not None and seq in lane.held:
                return due, key, seq
            heapq.heappop(self._dues)  # handed on since

    def _drain(self, key: Key, lane: _Lane[T], out: Released[T]) -> None:
        """Hand on the held messages that now follow ``top`` without a gap."""
        while lane.top + 1 in lane.held:
            lane.top += 1
            out.items.append(lane.held.pop(lane.top))
            self.held -= 1
            self.held_bytes -= self._sizes.pop((key, lane.top), 0)
        if not lane.held:
            lane.seqs.clear()
            if not self.held:
                self._dues.clear()

    def _give_up(self, due: float, key: Key, seq: int, out: Released[T]) -> None:
        """``key``'s ``seq`` waited long enough: skip every gap below it."""
        lane = self._lanes[key]
        while lane.held and lane.lowest() <= seq:
            lowest = lane.lowest()
            if lowest > lane.top + 1:
                gap = Gap(key, lane.top + 1, lowest - 1)
                self.skipped += gap.last - gap.first + 1
                out.skipped.append(gap)
                lane.top = lowest - 1
            self._drain(key, lane, out)

    def _forget_idle(self) -> None:
        """Forget the least recently used lanes with nothing held, past ``max_lanes``."""
        for _ in range(self.held + 1):  # a lane that holds goes to the back: bounded tries
            if len(self._lanes) <= self.max_lanes:
                return
            key, lane = next(iter(self._lanes.items()))
            if lane.held:
                self._lanes.move_to_end(key)
            else:
                del self._lanes[key]


__all__ = ["MAX_GAP", "MAX_ORDER_HELD", "ORDER_HOLD", "Gap", "Released", "SenderOrder"]
