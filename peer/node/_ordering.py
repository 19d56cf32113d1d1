"""The inbox's per-sender order, performed: ``InboxOrder`` for ``Storage``.

What goes to the local agent (channel messages of channels we are in, DMs to
us, from others) passes ``peer.protocols._order.SenderOrder`` on its way to
the store: a message that would overtake an earlier one of its sender waits
(in memory, not yet stored, so a crash loses nothing its carriers do not
still hold) until the earlier one comes, or the hold ends. Here:

* a lane starts from the store: the highest seq of that sender in that
  topic we hold (one read per commit for the lanes it meets first);
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
from store import StoreService

Item = tuple[Envelope, bool, bool]  # (envelope, member, pushed), as Storage accepts them
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
        self.order: SenderOrder[Item] = SenderOrder(hold=hold)

    def concerns(self, item: Item) -> bool:
        env, member, _ = item
        return self.active and member and env.kind in ("msg", "dm") and env.sender != self.me

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
            out = list(expired.items) if i == 0 else []
            for item in batch:
                if not self.concerns(item):
                    out.append(item)
                    continue
                env = item[0]
                released = self.order.offer((env.log_topic, env.sender), env.seq, item, now)
                self._report(released)
                out += released.items
            batch[:] = out

    async def _start_lanes(self, items: Iterable[Item]) -> None:
        """Start the lanes these items meet for the first time from the store."""
        new = {
            (item[0].log_topic, item[0].sender)
            for item in items
            if self.concerns(item) and not self.order.known((item[0].log_topic, item[0].sender))
        }
        if not new:
            return
        keys = sorted(new)

        def tops(s: Any) -> list[int]:
            out = []
            for topic, sender in keys:
                ranges = s.sender_ranges(sender, topic)
                out.append(max((b for _, b in ranges), default=0))
            return out

        for key, top in zip(keys, await self.service.read(tops), strict=True):
            if top:  # a sender never stored here starts at its first message
                self.order.start(key, top)

    def _report(self, released: Released[Item]) -> None:
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
        return {"held": o.held, "skipped": o.skipped, "duplicates": o.duplicates}


__all__ = ["InboxOrder", "Item"]
