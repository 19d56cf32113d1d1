"""The inbox's per-sender order, performed: ``InboxOrder`` for ``Storage``.

What goes to the local agent (channel messages of channels we are in, DMs to
us, from others) passes ``peer.protocols._order.SenderOrder`` on its way to
the store: a message that would overtake an earlier one of its sender waits
(in memory, not yet stored, so a crash loses nothing its carriers do not
still hold) until the earlier one comes, or the hold ends. Here:

* a lane starts from the store: the highest seq of that sender in that
  topic we hold (one read per commit for the lanes it meets first). A
  sender we hold nothing of, first heard at seq ``s`` > 1, may have sent
  its first messages while we were subscribed (they went astray in a
  fault): its lane starts up to ``LOOKBACK`` below ``s`` and those are
  fetched; what comes back older than our subscription (less the catch-up
  margin) is history we never followed, and is dropped rather than handed
  on (a placeholder takes its place in the lane);
* a gap that opens is fetched at once from the carriers (``want_gap``), not
  at the next digest round; a gap given up on is logged, counted, and
  fetched again, so ``missed`` in ``/status`` counts it until it is filled;
* held messages are not stored, not acknowledged (a DM's receipt waits with
  it) and not yet the agent's. What we relay is not held: only our inbox.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from peer.protocols._order import Gap, Released, SenderOrder
from peer.wire._envelope import Envelope
from store import MessageStore, StoreService

from ._catchuphost import SINCE_MARGIN_MS

Item = tuple[Envelope, bool, bool]  # (envelope, member, pushed), as Storage accepts them
Key = tuple[str, bytes]
LOOKBACK = 64  # seqs below a new sender's first one that are looked for
MAX_PROBES = 4096  # new senders whose lookback is under way
WantGap = Callable[[str, bytes, int, int], None]  # (log topic, sender, first, last missing)


class InboxOrder:
    """Per-sender order in front of the inbox; see the module docstring."""

    def __init__(
        self,
        me: bytes,
        service: StoreService,
        log: Any,
        *,
        hold: float,
        want_gap: WantGap,
        active: bool,
    ) -> None:
        self.me = me
        self.service = service
        self.log = log
        self.want_gap = want_gap
        self.active = active  # a relay-only seed has no inbox: nothing is held
        # None: a placeholder for a message that is history to us (see the docstring)
        self.order: SenderOrder[Item | None] = SenderOrder(hold=hold)
        self._probes: dict[Key, tuple[int, int]] = {}  # new lane -> (its first seq, floor ms)
        self.history = 0  # looked-back messages older than our subscription: dropped

    def concerns(self, item: Item) -> bool:
        env, member, _ = item
        return self.active and member and env.kind in ("msg", "dm") and env.sender != self.me

    def waiting(self, topic: str, sender: bytes) -> list[int]:
        """The seqs of ``sender`` in ``topic`` received and waiting here."""
        return self.order.waiting((topic, sender))

    def next_deadline(self) -> float | None:
        return self.order.next_deadline()

    async def arrange(self, batches: list[list[Item]], now: float) -> None:
        """Put each of ``batches`` (in place) in per-sender order: held ones go, what
        they released comes in after the item that released it; what waited too long
        goes first into the first batch."""
        await self._start_lanes(item for batch in batches for item in batch)
        expired = self.order.expire(now)
        self._report(expired)
        for i, batch in enumerate(batches):
            out = [item for item in expired.items if item is not None] if i == 0 else []
            for item in batch:
                if not self.concerns(item):
                    out.append(item)
                    continue
                env = item[0]
                key = (env.log_topic, env.sender)
                offered = None if self._is_history(key, env) else item
                released = self.order.offer(key, env.seq, offered, now)
                self._report(released)
                out += [item for item in released.items if item is not None]
            batch[:] = out

    def _is_history(self, key: Key, env: Envelope) -> bool:
        probe = self._probes.get(key)
        if probe is None:
            return False
        first, floor = probe
        if (self.order.top(key) or 0) >= first:
            del self._probes[key]  # the lane has moved past its lookback
            return False
        if env.seq >= first:
            return False
        if env.ts >= floor:
            return False
        self.history += 1
        return True

    async def _start_lanes(self, items: Iterable[Item]) -> None:
        """Start the lanes these items meet for the first time from the store."""
        firsts: dict[Key, int] = {}
        for item in items:
            env = item[0]
            key = (env.log_topic, env.sender)
            if self.concerns(item) and not self.order.known(key):
                firsts[key] = min(firsts.get(key, env.seq), env.seq)
        if not firsts:
            return
        keys = sorted(firsts)

        def read(s: MessageStore) -> list[tuple[int, int]]:
            out = []
            for topic, sender in keys:
                top = max((b for _, b in s.sender_ranges(sender, topic)), default=0)
                since = None if topic.startswith("inbox/") else s.get_state("since/" + topic)
                out.append((top, 0 if since is None else int(since.decode()) - SINCE_MARGIN_MS))
            return out

        for key, (top, floor) in zip(keys, await self.service.read(read), strict=True):
            first = firsts[key]
            if top or first <= 1:
                self.order.start(key, top)
            elif len(self._probes) < MAX_PROBES:  # never heard of, first heard past seq 1
                self.order.start(key, max(0, first - 1 - LOOKBACK))
                self._probes[key] = (first, floor)

    def _report(self, released: Released[Item | None]) -> None:
        for gap in released.opened:
            self.want_gap(gap.key[0], gap.key[1], gap.first, gap.last)
        for gap in released.skipped:
            self._skipped(gap)

    def _skipped(self, gap: Gap) -> None:
        topic, sender = gap.key
        self.log.warning(
            "gap given up: later messages go on without it",
            topic=topic,
            sender=sender.hex()[:16],
            first=gap.first,
            last=gap.last,
        )
        self.want_gap(topic, sender, gap.first, gap.last)  # counted in missed till filled

    def statistics(self) -> dict[str, int]:
        o = self.order
        return {
            "held": o.held,
            "skipped": o.skipped,
            "duplicates": o.duplicates,
            "history": self.history,
        }


__all__ = ["InboxOrder", "Item"]
