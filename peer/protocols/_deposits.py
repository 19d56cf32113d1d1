"""Depositing in mailboxes as a sans-IO behaviour: the sender's side of section 9.6.

``Depositor`` decides when an envelope we signed (a DM waiting for its
receipt, or a receipt for a DM sender) is handed to the mailbox peers closest
to its recipient, and to which; the Trio shell (``peer.node._mailboxhost``)
looks them up in the DHT, links to them and sends the ``deposit`` frames. No
trio, no clock: ``now_ms`` comes in, commands go out; retry jitter comes from
an injected ``random.Random``.

Rules it keeps:

* An envelope is tracked from when it is stored; ``delay_ms`` later it is
  *due*. Due, and its recipient is linked: a receipt is dropped (it was
  pushed, and the recipient's anti-entropy finds it in our log), a DM waits
  for its next check (the outbox pushes it). Due while a relay-only storing
  peer (a seed, which stores what it relays) is linked: next check. Otherwise
  the mailboxes of its recipient are looked up (one lookup per recipient at
  a time) and it is deposited at the ``k`` closest that advertise
  ``mailbox`` (neither us nor the recipient), skipping those that took it.
* Once ``k`` mailboxes took it, it is no longer tracked. A receipt (or the
  deadline) that settles a DM ends its tracking too.
* Checks and retries back off: ``retry_base_ms`` doubling up to
  ``retry_cap_ms``, times a uniform factor in [0.5, 1]. A tracked envelope
  is given up at its ``until_ms`` (a DM's deadline; a receipt's
  ``receipt_life_ms``).
* Our own mailboxes: from ``start`` and every ``own_check_ms`` (times a
  uniform factor in [0.8, 1.2]) we look up our own id and link to the ``k``
  closest mailbox peers; linked, their catch-up and digests serve our inbox.
* Bounded: at most ``max_tracked`` envelopes (the oldest are given up
  first), at most ``MAX_PER_LOOKUP`` envelopes deposited per lookup answer,
  at most ``LOOKUPS_PER_STEP`` lookups started per step (the other due
  recipients come ``STEP_LATER_MS`` later).
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

MAILBOX_CAP = "mailbox"
K_MAILBOXES = 3
DEPOSIT_DELAY_MS = 5_000
RETRY_BASE_MS = 30_000
RETRY_CAP_MS = 600_000
RECEIPT_LIFE_MS = 7 * 24 * 3600 * 1000
MAX_TRACKED = 10_000
MAX_PER_LOOKUP = 64
LOOKUPS_PER_STEP = 32
STEP_LATER_MS = 1_000
OWN_CHECK_MS = 60_000


@dataclass(slots=True)
class Tracked:
    """One envelope of ours that may need mailboxes."""

    msg_id: bytes
    recipient: bytes
    wire: bytes
    kind: str  # "dm" or "receipt"
    due_ms: int
    until_ms: int
    attempts: int = 0
    placed: set[bytes] = field(default_factory=set)  # mailboxes that took it


# -- commands -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FindMailboxes:
    """Look up the peers closest to ``recipient`` in the DHT; answer ``on_mailboxes``."""

    recipient: bytes


@dataclass(frozen=True, slots=True)
class LinkTo:
    """Link to ``peer``, one of our own mailboxes: its catch-up serves our inbox."""

    peer: bytes


@dataclass(frozen=True, slots=True)
class DepositAt:
    """Link to ``peer`` if needed and send it ``deposit`` with ``wire``; report the
    answer (or its absence) to ``on_answer``."""

    peer: bytes
    msg_id: bytes
    wire: bytes


class Depositor:
    """The sender's side of mailboxes; see the module docstring."""

    def __init__(
        self,
        me: bytes,
        rng: random.Random,
        *,
        k: int = K_MAILBOXES,
        delay_ms: int = DEPOSIT_DELAY_MS,
        retry_base_ms: int = RETRY_BASE_MS,
        retry_cap_ms: int = RETRY_CAP_MS,
        receipt_life_ms: int = RECEIPT_LIFE_MS,
        max_tracked: int = MAX_TRACKED,
        own_check_ms: int = OWN_CHECK_MS,
    ) -> None:
        self.me = me
        self.rng = rng
        self.k = k
        self.delay_ms = delay_ms
        self.retry_base_ms = retry_base_ms
        self.retry_cap_ms = retry_cap_ms
        self.receipt_life_ms = receipt_life_ms
        self.max_tracked = max_tracked
        self.own_check_ms = own_check_ms
        self._own_due: int | None = None  # next look for our own mailboxes
        self._tracked: dict[bytes, Tracked] = {}  # insertion order: oldest first
        self._looking: set[bytes] = set()  # recipients with a lookup running
        self.lookups = 0
        self.sent = 0
        self.placed = 0
        self.given_up = 0
        self.refused: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._tracked)

    def __contains__(self, msg_id: object) -> bool:
        return msg_id in self._tracked

    def get(self, msg_id: bytes) -> Tracked | None:
        return self._tracked.get(msg_id)

    def start(self, now_ms: int) -> None:
        """Look for our own mailboxes now, then every ``own_check_ms`` (jittered)."""
        self._own_due = now_ms

    # -- what to track -----------------------------------------------------------------

    def track(
        self,
        msg_id: bytes,
        recipient: bytes,
        wire: bytes,
        kind: str,
        now_ms: int,
        *,
        until_ms: int | None = None,
    ) -> None:
        """Our envelope ``msg_id`` for ``recipient`` was stored; deposit it if it is
        still undelivered ``delay_ms`` from now."""
        if msg_id in self._tracked or recipient == self.me:
            return
        while len(self._tracked) >= self.max_tracked:
            del self._tracked[next(iter(self._tracked))]
            self.given_up += 1
        until = now_ms + self.receipt_life_ms if until_ms is None else until_ms
        self._tracked[msg_id] = Tracked(
            msg_id, recipient, wire, kind, now_ms + self.delay_ms, until
        )

    def settle(self, ids: Collection[bytes]) -> None:
        """``ids`` were receipted (or became dead letters): stop tracking them."""
        for msg_id in ids:
            self._tracked.pop(msg_id, None)

    # -- the timer ---------------------------------------------------------------------

    def next_deadline(self) -> int | None:
        times = [t.due_ms for t in self._tracked.values()]
        if self._own_due is not None:
            times.append(self._own_due)
        return min(times, default=None)

    def _backoff(self, attempts: int) -> int:
        ceiling = self.retry_cap_ms
        if attempts < 32:
            ceiling = min(ceiling, self.retry_base_ms << attempts)
        return int(ceiling * self.rng.uniform(0.5, 1.0))

    def handle_timer(
        self, now_ms: int, *, linked: Collection[bytes], seed_linked: bool
    ) -> list[FindMailboxes]:
        """Look up the mailboxes of the recipients of what is due, and our own when that
        is due; ``linked``: the peers we have links to; ``seed_linked``: one of them is
        a relay-only storing peer."""
        recipients: dict[bytes, None] = {}
        if self._own_due is not None and self._own_due <= now_ms:
            self._own_due = now_ms + int(self.own_check_ms * self.rng.uniform(0.8, 1.2))
            if self.me not in self._looking:
                recipients[self.me] = None
        for tracked in list(self._tracked.values()):
            if tracked.due_ms > now_ms:
                continue
            if tracked.until_ms <= now_ms:
                del self._tracked[tracked.msg_id]
                self.given_up += 1
                continue
            tracked.due_ms = now_ms + self._backoff(tracked.attempts)
            tracked.attempts += 1
            if tracked.recipient in linked:
                if tracked.kind == "receipt":
                    del self._tracked[tracked.msg_id]  # pushed; our digests carry it too
                continue
            if seed_linked or tracked.recipient in self._looking:
                continue
            if tracked.recipient not in recipients and len(recipients) >= LOOKUPS_PER_STEP:
                tracked.attempts -= 1  # not tried: a step a moment later takes it
                tracked.due_ms = now_ms + STEP_LATER_MS
                continue
            recipients[tracked.recipient] = None
        self._looking.update(recipients)
        self.lookups += len(recipients)
        return [FindMailboxes(r) for r in recipients]

    # -- lookups and answers -------------------------------------------------------------

    def on_mailboxes(
        self, recipient: bytes, candidates: Sequence[tuple[bytes, Collection[str]]]
    ) -> list[DepositAt | LinkTo]:
        """The lookup for ``recipient`` found ``candidates`` (peer id, caps), nearest
        first: deposit what waits for it at the ``k`` nearest mailboxes (for us: link
        to our own, whose catch-up serves our inbox)."""
        self._looking.discard(recipient)
        boxes = [
            peer
            for peer, caps in candidates
            if MAILBOX_CAP in caps and peer != self.me and peer != recipient
        ][: self.k]
        if recipient == self.me:
            return [LinkTo(peer) for peer in boxes]
        if not boxes:
            return []
        out: list[DepositAt | LinkTo] = []
        waiting = [t for t in self._tracked.values() if t.recipient == recipient]
        for tracked in waiting[:MAX_PER_LOOKUP]:
            for peer in boxes:
                if peer not in tracked.placed:
                    out.append(DepositAt(peer, tracked.msg_id, tracked.wire))
        self.sent += len(out)
        return out

    def on_answer(self, peer: bytes, msg_id: bytes, err: str | None) -> None:
        """``peer`` answered our deposit of ``msg_id`` (``err`` None: taken); a deposit
        with no answer (link gone, timeout) is reported with ``err`` ``"no-answer"``."""
        if err is not None:
            self.refused[err] = self.refused.get(err, 0) + 1
            return
        self.placed += 1
        tracked = self._tracked.get(msg_id)
        if tracked is None:
            return
        tracked.placed.add(peer)
        if len(tracked.placed) >= self.k:
            del self._tracked[msg_id]

    def statistics(self) -> dict[str, object]:
        return {
            "tracked": len(self._tracked),
            "lookups": self.lookups,
            "sent": self.sent,
            "placed": self.placed,
            "given_up": self.given_up,
            "refused": dict(sorted(self.refused.items())),
        }


__all__ = [
    "DEPOSIT_DELAY_MS",
    "K_MAILBOXES",
    "LOOKUPS_PER_STEP",
    "MAILBOX_CAP",
    "MAX_PER_LOOKUP",
    "MAX_TRACKED",
    "OWN_CHECK_MS",
    "DepositAt",
    "Depositor",
    "FindMailboxes",
    "LinkTo",
    "Tracked",
]
