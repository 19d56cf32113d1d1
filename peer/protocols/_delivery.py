"""DM delivery as a sans-IO behaviour: the outbox, receipts and pushes.

``Delivery`` decides; the Trio shell (``peer.node._delivery``) performs. It
takes events (a link up or down, a presence seen, a DM stored, a receipt
stored, a push received, the timer) with the time passed in as wall-clock
milliseconds ``now_ms`` (outbox times are persisted and survive restarts)
and returns typed commands. No trio, no lmdb, no store, no clock: randomness
comes from an injected ``random.Random`` and the retry schedule from an
injected backoff (the shell passes ``store.Backoff``: full jitter, bounded).

Rules it keeps:

* A DM we send waits in the outbox until the recipient's signed receipt
  arrives. Its first try is one backoff base after it was stored, and it has
  a deadline (``deadline_ms`` after it was stored).
* Whenever the recipient is linked (a link comes up, or a presence arrives
  from a linked recipient) everything waiting for it is pushed at once, in
  its sequence order. Such a push is not an attempt.
* At its next try a DM is an attempt: if its recipient is linked, everything
  waiting for that recipient is pushed (sequence order); if not, the shell
  is asked to reach the recipient (dial it). Either way the attempt is
  counted and the next try is drawn from the backoff.
* After its deadline a DM is a dead letter. A receipt that comes later
  still settles it ("it made it after all"): the dead letter is removed.
* A receipt settles only what we sent to the receipt's signer.
* A DM to us is receipted only after it is stored; a duplicate of one is
  receipted again only when its sender pushed it (our receipt was lost).
  Receipts owed wait ``receipt_delay_ms`` after the first one owed, so a
  burst of DMs is receipted in few receipts, each naming at most
  ``MAX_RECEIPT_IDS`` ids.
* A push is taken only if it is a DM or a receipt addressed to us; a push
  that does not open closes the link.
* Bounded: at most ``max_entries`` DMs wait in the outbox (the shell refuses
  more sends), ``MAX_DEAD`` dead letters are remembered for late receipts,
  ``MAX_OWED`` receipt ids are owed at once (beyond that the sender's next
  push asks again), and one timer step handles at most ``DUE_PER_STEP`` due
  and ``EXPIRE_PER_STEP`` expired DMs (the rest are due at once again).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from peer.wire._envelope import MAX_RECEIPT_IDS, Envelope, open_envelope
from peer.wire._errors import ErrorCode, ProtocolError

RECEIPT_DELAY_MS = 50
MAX_OUTBOX = 10_000
MAX_DEAD = 10_000
MAX_OWED = 65_536
DUE_PER_STEP = 256
EXPIRE_PER_STEP = 100


class RetrySchedule(Protocol):
    """When to try again (``store.Backoff`` is one)."""

    @property
    def base_ms(self) -> int: ...

    def next_try_ms(self, now_ms: int, attempts: int, rng: random.Random) -> int: ...


@dataclass(frozen=True, slots=True)
class Pending:
    """One DM of ours waiting for its receipt (as the outbox in the store has it)."""

    msg_id: bytes
    recipient: bytes
    seq: int  # our sequence number in the recipient's inbox topic: the push order
    wire: bytes
    attempts: int
    next_try_ms: int
    deadline_ms: int


# -- commands -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PushDm:
    """Send a ``push`` frame with ``wire`` on the link to ``recipient`` (if any)."""

    recipient: bytes
    msg_id: bytes
    wire: bytes


@dataclass(frozen=True, slots=True)
class Reach:
    """Try to link to ``recipient`` (its address, or the DHT): DMs wait for it."""

    recipient: bytes


@dataclass(frozen=True, slots=True)
class Reschedule:
    """Count an attempt of ``msg_id`` in the store and keep its next try."""

    msg_id: bytes
    next_try_ms: int


@dataclass(frozen=True, slots=True)
class Expire:
    """``msg_id`` passed its deadline: make it a dead letter (reason ``expired``)."""

    msg_id: bytes
    recipient: bytes
    attempts: int


@dataclass(frozen=True, slots=True)
class Settle:
    """``sender``'s receipt names ``ids`` we sent it: forget their outbox entries
    or dead letters; they are delivered."""

    sender: bytes
    ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class SealReceipt:
    """Seal a receipt for ``ids`` (at most ``MAX_RECEIPT_IDS``) to ``sender``,
    store it (which publishes it) and push it if ``sender`` is linked."""

    sender: bytes
    ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Take:
    """A pushed DM or receipt for us: accept it like one from gossip."""

    envelope: Envelope


@dataclass(frozen=True, slots=True)
class Refuse:
    """A push we do not take: count ``code``; close the link if ``close``."""

    link_peer: bytes
    code: ErrorCode
    reason: str
    close: bool


Command = PushDm | Reach | Reschedule | Expire | Settle | SealReceipt | Take | Refuse


class Delivery:
    """The DM-delivery behaviour of one peer; see the module docstring."""

    def __init__(
        self,
        me: bytes,
        backoff: RetrySchedule,
        rng: random.Random,
        *,
        deadline_ms: int,
        verify: bool = True,
        max_entries: int = MAX_OUTBOX,
        receipt_delay_ms: int = RECEIPT_DELAY_MS,
    ) -> None:
        self.me = me
        self.backoff = backoff
        self.rng = rng
        self.deadline_ms = deadline_ms
        self.verify = verify
        self.max_entries = max_entries
        self.receipt_delay_ms = receipt_delay_ms
        self.linked: set[bytes] = set()
        self._entries: dict[bytes, Pending] = {}
        self._to: dict[bytes, set[bytes]] = {}  # recipient -> ids waiting for it
        self._dead: dict[bytes, bytes] = {}  # dead letter id -> recipient, oldest first
        self._dead_peers: dict[bytes, int] = {}  # recipient -> its dead letters
        self._owed: dict[bytes, list[bytes]] = {}  # sender -> ids to receipt
        self._owed_count = 0
        self._receipts_at: int | None = None
        self._next: int | None = None  # cached earliest next try or deadline
        self._next_stale = False
        self.owed_dropped = 0

    # -- the outbox view ---------------------------------------------------------------

    def load(self, entries: Iterable[Pending], dead: Iterable[tuple[bytes, bytes]]) -> None:
        """The outbox and dead letters (id, recipient) as the store has them at start;
        more than the bounds hold stays in the store until a later start."""
        for entry in entries:
            if len(self._entries) >= self.max_entries:
                break
            self._add(entry)
        for msg_id, recipient in dead:
            self._bury(msg_id, recipient)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, msg_id: object) -> bool:
        return msg_id in self._entries

    def get(self, msg_id: bytes) -> Pending | None:
        return self._entries.get(msg_id)

    def waiting_for(self, recipient: bytes) -> int:
        return len(self._to.get(recipient, ()))

    def has_room(self, more: int = 1) -> bool:
        return len(self._entries) + more <= self.max_entries

    def plan_dm(
        self, msg_id: bytes, recipient: bytes, seq: int, wire: bytes, now_ms: int
    ) -> Pending:
        """The outbox entry of a DM we are about to store (nothing changes yet)."""
        return Pending(
            msg_id,
            recipient,
            seq,
            wire,
            attempts=0,
            next_try_ms=now_ms + self.backoff.base_ms,
            deadline_ms=now_ms + self.deadline_ms,
        )

    def on_own_dm_stored(self, entry: Pending) -> list[Command]:
        """``entry`` (from ``plan_dm``) is committed: it waits for its receipt."""
        if entry.msg_id not in self._entries and entry.msg_id not in self._dead:
            self._add(entry)
        return []

    def _add(self, entry: Pending) -> None:
        self._entries[entry.msg_id] = entry
        self._to.setdefault(entry.recipient, set()).add(entry.msg_id)
        for t in (entry.next_try_ms, entry.deadline_ms):
            if self._next is None or t < self._next:
                self._next = t

    def _remove(self, msg_id: bytes) -> Pending | None:
        entry = self._entries.pop(msg_id, None)
        if entry is not None:
            ids = self._to[entry.recipient]
            ids.discard(msg_id)
            if not ids:
                del self._to[entry.recipient]
            self._next_stale = True
        return entry

    def _bury(self, msg_id: bytes, recipient: bytes) -> None:
        if msg_id not in self._dead:
            self._dead_peers[recipient] = self._dead_peers.get(recipient, 0) + 1
        self._dead[msg_id] = recipient
        while len(self._dead) > MAX_DEAD:
            self._unbury(next(iter(self._dead)))

    def _unbury(self, msg_id: bytes) -> None:
        recipient = self._dead.pop(msg_id, None)
        if recipient is not None:
            left = self._dead_peers.get(recipient, 1) - 1
            if left > 0:
                self._dead_peers[recipient] = left
            else:
                self._dead_peers.pop(recipient, None)

    def has_dead(self, recipient: bytes) -> bool:
        return self._dead_peers.get(recipient, 0) > 0

    def dead_ids(self) -> list[bytes]:
        """Every dead letter we remember, oldest first."""
        return list(self._dead)

    def dead_to(self, recipient: bytes) -> list[bytes]:
        """The dead letters we remember for ``recipient`` (replayed when it is back)."""
        return [i for i, r in self._dead.items() if r == recipient]

    def revive(self, entry: Pending) -> None:
        """A dead letter goes back into the outbox (``entry`` as the store now has it)."""
        self._unbury(entry.msg_id)
        if entry.msg_id not in self._entries and self.has_room():
            self._add(entry)

    # -- links and presence ------------------------------------------------------------

    def on_link_up(self, peer: bytes) -> list[PushDm]:
        """A link to ``peer`` is up: push everything waiting for it."""
        self.linked.add(peer)
        return self._push_all(peer)

    def on_link_down(self, peer: bytes) -> None:
        self.linked.discard(peer)

    def on_seen(self, peer: bytes) -> list[PushDm]:
        """A presence from ``peer``: if it is linked, push everything waiting for it."""
        return self._push_all(peer) if peer in self.linked else []

    def _push_all(self, recipient: bytes) -> list[PushDm]:
        waiting = sorted(
            (self._entries[i] for i in self._to.get(recipient, ())),
            key=lambda e: (e.seq, e.msg_id),
        )
        return [PushDm(e.recipient, e.msg_id, e.wire) for e in waiting]

    # -- receipts ----------------------------------------------------------------------

    def on_dm_stored(
        self,
        sender: bytes,
        recipient: bytes | None,
        msg_id: bytes,
        *,
        pushed: bool,
        duplicate: bool,
        now_ms: int,
    ) -> list[Command]:
        """A DM was committed (or was a duplicate of one): owe its sender a receipt?"""
        if sender == self.me or recipient != self.me or (duplicate and not pushed):
            return []
        if self._owed_count >= MAX_OWED:
            self.owed_dropped += 1  # its sender pushes it again: we owe it then
            return []
        self._owed.setdefault(sender, []).append(msg_id)
        self._owed_count += 1
        if self._receipts_at is None:
            self._receipts_at = now_ms + self.receipt_delay_ms
        return []

    def on_receipt(self, sender: bytes, ids: Sequence[bytes]) -> list[Settle]:
        """``sender``'s receipt for ``ids`` was stored: settle what we sent it."""
        settled: list[bytes] = []
        for msg_id in ids:
            entry = self._entries.get(msg_id)
            if entry is not None:
                if entry.recipient == sender:
                    self._remove(msg_id)
                    settled.append(msg_id)
                continue
            if self._dead.get(msg_id) == sender:
                self._unbury(msg_id)  # it made it after all
                settled.append(msg_id)
        return [Settle(sender, tuple(settled))] if settled else []

    def _flush_receipts(self) -> list[SealReceipt]:
        owed, self._owed = self._owed, {}
        self._owed_count = 0
        self._receipts_at = None
        return [
            SealReceipt(sender, tuple(ids[i : i + MAX_RECEIPT_IDS]))
            for sender, ids in owed.items()
            for i in range(0, len(ids), MAX_RECEIPT_IDS)
        ]

    # -- pushes ------------------------------------------------------------------------

    def on_push(self, link_peer: bytes, wire: bytes) -> list[Take | Refuse]:
        """A DM or receipt handed to us directly on the link to ``link_peer``."""
        try:
            env = open_envelope(wire, verify=self.verify)
        except ProtocolError as exc:
            return [Refuse(link_peer, exc.code, exc.message, close=True)]
        if env.kind not in ("dm", "receipt") or env.recipient != self.me:
            return [Refuse(link_peer, ErrorCode.UNEXPECTED, "not ours to take", close=False)]
        return [Take(env)]

    # -- the timer ---------------------------------------------------------------------

    def next_deadline(self) -> int | None:
        """Wall-clock ms of the next ``handle_timer`` needed, None if nothing waits."""
        if self._next_stale:
            times = [t for e in self._entries.values() for t in (e.next_try_ms, e.deadline_ms)]
            self._next = min(times, default=None)
            self._next_stale = False
        candidates = [t for t in (self._next, self._receipts_at) if t is not None]
        return min(candidates, default=None)

    def handle_timer(self, now_ms: int) -> list[Command]:
        """Expire what passed its deadline, try what is due, send the receipts owed."""
        out = self._expire(now_ms)
        out += self._retry(now_ms)
        if self._receipts_at is not None and self._receipts_at <= now_ms:
            out += self._flush_receipts()
        return out

    def _expire(self, now_ms: int) -> list[Command]:
        expired = sorted(
            (e for e in self._entries.values() if e.deadline_ms <= now_ms),
            key=lambda e: (e.deadline_ms, e.msg_id),
        )[:EXPIRE_PER_STEP]
        out: list[Command] = []
        for entry in expired:
            self._remove(entry.msg_id)
            self._bury(entry.msg_id, entry.recipient)
            out.append(Expire(entry.msg_id, entry.recipient, entry.attempts))
        return out

    def _retry(self, now_ms: int) -> list[Command]:
        due = sorted(
            (e for e in self._entries.values() if e.next_try_ms <= now_ms),
            key=lambda e: (e.next_try_ms, e.msg_id),
        )[:DUE_PER_STEP]
        if not due:
            return []
        recipients = sorted({e.recipient for e in due})
        out: list[Command] = []
        for recipient in recipients:  # everything waiting for them, in their sequence order
            if recipient in self.linked:
                out += self._push_all(recipient)
        out += [Reach(r) for r in recipients if r not in self.linked]
        for entry in due:
            next_try = self.backoff.next_try_ms(now_ms, entry.attempts, self.rng)
            self._entries[entry.msg_id] = replace(
                entry, attempts=entry.attempts + 1, next_try_ms=next_try
            )
            out.append(Reschedule(entry.msg_id, next_try))
        self._next_stale = True
        return out


__all__ = [
    "DUE_PER_STEP",
    "EXPIRE_PER_STEP",
    "MAX_DEAD",
    "MAX_OUTBOX",
    "MAX_OWED",
    "RECEIPT_DELAY_MS",
    "Command",
    "Delivery",
    "Expire",
    "Pending",
    "PushDm",
    "Reach",
    "Refuse",
    "Reschedule",
    "RetrySchedule",
    "SealReceipt",
    "Settle",
    "Take",
]
