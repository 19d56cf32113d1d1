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

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from peer.protocols._order import Gap, Released, SenderOrder
from peer.wire._envelope import Envelope
from store import MessageStore, StoreService

from ._catchuphost import SINCE_MARGIN_MS, CatchUpService
from ._host import StoragePeer

Item = tuple[Envelope, bool, bool]  # (envelope, member, pushed), as Storage accepts them
Key = tuple[str, bytes]
LOOKBACK = 64  # seqs below a new sender's first one that are looked for
MAX_PROBES = 4096  # new senders whose lookback floor is remembered (least recent forgotten)
ORDERED = ("msg", "dm")  # what the agent sees, in order
PLACES = ("receipt",)  # also numbered in the same lanes (a DM sender's receipts to us)
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
        wall_ms: Callable[[], int],
    ) -> None:
        self.me = me
        self.service = service
        self.log = log
        self.want_gap = want_gap
        self.active = active  # a relay-only seed has no inbox: nothing is held
        self.wall_ms = wall_ms
        # None: a placeholder, for a message that takes a place in a lane but goes on
        # at once (a receipt) or not at all (history to us, see the docstring)
        self.order: SenderOrder[Item | None] = SenderOrder(hold=hold)
        self._probes: OrderedDict[Key, tuple[int, int]] = OrderedDict()  # (first seq, floor)
        self._walked: dict[str, set[bytes]] = {}  # topic -> ids held that a walk page brought
        self.history = 0  # looked-back messages older than our subscription: dropped

    @classmethod
    def beside(
        cls, catchup: CatchUpService, peer: StoragePeer, service: StoreService, log: Any
    ) -> InboxOrder:
        """The order of ``peer``'s inbox, its gaps fetched by ``catchup`` (which counts
        what waits here as received, not missed)."""
        order = cls(
            peer.peer_id,
            service,
            log,
            hold=peer.options.order_hold,
            want_gap=catchup.want_gap,
            active=not peer.options.relay_only,
            wall_ms=peer.wall_ms,
        )
        catchup.filler.waiting = order.waiting
        return order

    def concerns(self, item: Item) -> bool:
        env, member, _ = item
        return (
            self.active
            and member
            and (env.kind in ORDERED or env.kind in PLACES)
            and env.sender != self.me
        )

    def walk_pending(self, topic: str) -> bool:
        """A walk page brought messages of ``topic`` that still wait here (unstored): its
        cursor must not move past them, or a crash would lose them for good."""
        return bool(self._walked.get(topic))

    def waiting(self, topic: str, sender: bytes) -> list[int]:
        """The seqs of ``sender`` in ``topic`` received and waiting here."""
        return self.order.waiting((topic, sender))

    def next_deadline(self) -> float | None:
        return self.order.next_deadline()

    async def arrange(
        self, batches: list[list[Item]], now: float, walks: list[bool] | None = None
    ) -> list[bool]:
        """Put each of ``batches`` (in place) in per-sender order: held ones go, what
        they released comes in after the item that released it; what waited too long
        goes first into the first batch. ``walks``: which batches are walk pages; for
        each batch, whether its walk cursor may move (nothing of its topic a walk brought
        still waits here)."""
        if not self.active:  # a relay-only seed: its hot path pays nothing here
            return [True] * len(batches)
        await self._start_lanes(item for batch in batches for item in batch)
        expired = self.order.expire(now)
        self._report(expired)
        topics = [batch[0][0].log_topic if batch else "" for batch in batches]
        for i, batch in enumerate(batches):
            out = self._passed(expired) if i == 0 else []
            walk = walks is not None and walks[i]
            self._place_all(batch, walk, now, out)
            batch[:] = out
        return [not self.walk_pending(topic) for topic in topics]

    def _place_all(self, batch: list[Item], walk: bool, now: float, out: list[Item]) -> None:
        """``_place`` each item of ``batch`` in turn; a run of one sender's next
        messages in seq order (a catch-up page) moves its lane in one step."""
        i, n = 0, len(batch)
        while i < n:
            j = self._run_end(batch, i)
            if j - i > 1 and self._take_run(batch, i, j, out):
                i = j
                continue
            for item in batch[i:j]:  # refused whole: one by one (never scanned again)
                self._place(item, walk, now, out)
            i = j

    def _run_end(self, batch: list[Item], i: int) -> int:
        """The end of the run of messages ``_take_run`` may take from ``batch[i]``:
        same kind (ordered), topic and sender, seqs one apart, all our concern."""
        first = batch[i]
        env = first[0]
        if env.kind not in ORDERED or not self.concerns(first):
            return i + 1
        kind, topic, sender, seq = env.kind, env.log_topic, env.sender, env.seq
        j, n = i + 1, len(batch)
        while j < n:
            e, member, _ = batch[j]
            seq += 1
            if not (member and e.seq == seq and e.sender == sender and e.kind == kind
                    and e.log_topic == topic):
                break
            j += 1
        return j

    def _take_run(self, batch: list[Item], i: int, j: int, out: list[Item]) -> bool:
        """What ``_place`` does to each of ``batch[i:j]`` when each is its lane's next
        message: in one step (False, nothing done, when the first is not)."""
        env = batch[i][0]
        key = (env.log_topic, env.sender)
        if key in self._probes or not self.order.next_run(key, env.seq, j - i):
            return False  # a lookback probe decides message by message
        run = batch[i:j]
        out += run
        walked = self._walked.get(env.log_topic)
        if walked:
            for e, _, _ in run:
                walked.discard(e.id)
        return True

    def _place(self, item: Item, walk: bool, now: float, out: list[Item]) -> None:
        """Offer one item to its sender's lane; what may go on now goes to ``out``."""
        if not self.concerns(item):
            out.append(item)
            return
        env = item[0]
        key = (env.log_topic, env.sender)
        if env.kind in PLACES:  # goes on at once, and moves its lane on
            out.append(item)
            offered = None
        else:
            offered = None if self._is_history(key, env) else item
            if offered is not None and self.order.next_in_order(key, env.seq):
                out.append(item)  # what ``offer`` would hand on, without its bookkeeping
                walked = self._walked.get(env.log_topic)
                if walked:
                    walked.discard(env.id)
                return
        released = self.order.offer(key, env.seq, offered, now, len(env.wire))
        self._report(released)
        if walk and offered is not None and all(r is not offered for r in released.items):
            self._walked.setdefault(env.log_topic, set()).add(env.id)
        out += self._passed(released)

    def _passed(self, released: Released[Item | None]) -> list[Item]:
        items = [item for item in released.items if item is not None]
        for env, _, _ in items:
            walked = self._walked.get(env.log_topic)
            if walked:
                walked.discard(env.id)
        return items

    def _is_history(self, key: Key, env: Envelope) -> bool:
        """A looked-back message older than our subscription (the floor stays with the
        lane: a second copy, from another carrier, is history too)."""
        probe = self._probes.get(key)
        if probe is None:
            return False
        first, floor = probe
        if env.seq >= first or env.ts >= floor:
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
        now_ms = self.wall_ms()

        def read(s: MessageStore) -> list[tuple[int, int]]:
            out = []
            for topic, sender in keys:
                top = max((b for _, b in s.sender_ranges(sender, topic)), default=0)
                if topic.startswith("inbox/"):
                    out.append((top, 0))  # every DM to us is wanted
                    continue
                since = s.get_state("since/" + topic)  # absent: subscribing just now
                subscribed = now_ms if since is None else int(since.decode())
                out.append((top, subscribed - SINCE_MARGIN_MS))
            return out

        for key, (top, floor) in zip(keys, await self.service.read(read), strict=True):
            first = firsts[key]
            if top or first <= 1:
                self.order.start(key, top)
            else:  # never heard of, first heard past seq 1
                self.order.start(key, max(0, first - 1 - LOOKBACK))
                self._probes[key] = (first, floor)
                while len(self._probes) > MAX_PROBES:
                    self._probes.popitem(last=False)

    def _report(self, released: Released[Item | None]) -> None:
        for gap in released.opened:
            self.want_gap(gap.key[0], gap.key[1], gap.first, gap.last)
        for gap in released.skipped:
            self._skipped(gap)
        for gap in released.jumped:
            self.log.warning(
                "seq jumped: not waited for",
                topic=gap.key[0],
                sender=gap.key[1].hex()[:16],
                first=gap.first,
                last=gap.last,
            )

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
