"""Mailbox duty as a sans-IO behaviour: holding sealed DMs and receipts for others.

``Mailbox`` decides which ``deposit`` frames a peer takes (catchup.md section
9.6); the Trio shell (``peer.node._mailboxhost``) stores what it keeps, answers,
and drops what expired. No trio, no lmdb, no clock: ``now_ms`` (wall-clock
milliseconds: entries outlive restarts) comes in, commands go out.

Rules it keeps:

* Every deposit gets exactly one answer: taken (``err`` None) or refused with
  a reason, and every refusal is counted by reason (``refused``). A deposit
  whose envelope does not open is a protocol error: the link is closed, as
  for ``push``. The signature is checked last, after every other rule, so a
  flood that is refused costs no signature checks.
* Taken only when all hold: duty is on; the envelope is a DM or a receipt,
  signed by the link's peer (an author deposits only its own), not addressed
  to us; its size is at most ``max_entry_bytes``; its ``ts`` is within the
  expiry time in the past and ``max_skew_ms`` in the future; fewer than
  ``close_k`` peers we know are closer (XOR) to its recipient than we are;
  and it fits the quotas of its author, of its recipient and in total
  (entries and bytes), counting what waits to be stored.
* A deposit of an id we already hold is answered as taken and charged
  nothing: a retry after a lost answer.
* Quotas are charged when a deposit is taken and refunded if its store write
  fails (answered ``store``) or the store already held it by another path.
* An entry expires ``ttl_ms`` after it was taken; expired entries go in
  batches of at most ``EXPIRE_PER_STEP`` per step, grouped by recipient (the
  shell drops them from the recipient's log by age, so they go oldest first).
* Bounded: at most ``MAX_IN_FLIGHT`` deposits of one link wait for the
  store (beyond: ``busy``), and the ledger never holds more than
  ``total_entries``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from peer.wire._envelope import Envelope, check_signature, open_envelope, split_wire
from peer.wire._errors import ErrorCode, ProtocolError

DAY_MS = 24 * 3600 * 1000
MAX_IN_FLIGHT = 8
EXPIRE_PER_STEP = 256

# refusal reasons (the ``err`` of a ``deposited`` frame)
OFF = "off"
NOT_DM = "not-dm"
NOT_AUTHOR = "not-author"
TO_ME = "to-me"
TOO_LARGE = "too-large"
STALE = "stale"
NOT_CLOSE = "not-close"
QUOTA_SENDER = "quota-sender"
QUOTA_RECIPIENT = "quota-recipient"
QUOTA_TOTAL = "quota-total"
BUSY = "busy"
STORE = "store"


@dataclass(frozen=True, slots=True)
class MailboxQuota:
    """How much mailbox duty a peer takes on (every value is a local choice)."""

    max_entry_bytes: int = 128 * 1024
    sender_entries: int = 256
    sender_bytes: int = 4 << 20
    recipient_entries: int = 1024
    recipient_bytes: int = 16 << 20
    total_entries: int = 10_000
    total_bytes: int = 64 << 20
    ttl_ms: int = 7 * DAY_MS
    close_k: int = 20  # refuse when this many known peers are closer to the recipient
    max_skew_ms: int = 120_000

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            if getattr(self, name) < 1:
                raise ValueError(f"mailbox quota {name} must be >= 1")


@dataclass(frozen=True, slots=True)
class Held:
    """One envelope kept for its recipient (as the ledger in the store has it)."""

    msg_id: bytes
    recipient: bytes
    sender: bytes
    size: int
    received_ms: int


# -- commands -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """Send ``deposited {r, err}`` on the link to ``peer`` (``err`` None: taken)."""

    peer: bytes
    r: int
    err: str | None


@dataclass(frozen=True, slots=True)
class Keep:
    """Store ``envelope`` in its recipient's log with its ledger entry ``held`` (one
    commit), then report ``kept`` or ``keep_failed``, which answer ``r``."""

    peer: bytes
    r: int
    envelope: Envelope
    held: Held


@dataclass(frozen=True, slots=True)
class Forget:
    """``ids`` held for ``recipient`` expired: delete their ledger entries and the
    records of ``inbox/<recipient>`` received more than ``max_age_ms`` ago."""

    recipient: bytes
    ids: tuple[bytes, ...]
    max_age_ms: int


@dataclass(frozen=True, slots=True)
class CloseLink:
    """The deposit's envelope does not open: close the link with ``code``."""

    peer: bytes
    code: ErrorCode
    reason: str


Command = Answer | Keep | Forget | CloseLink


class _Tally:
    """Entries and bytes charged to one key."""

    __slots__ = ("bytes", "entries")

    def __init__(self) -> None:
        self.entries = 0
        self.bytes = 0


class Mailbox:
    """The mailbox duty of one peer; see the module docstring."""

    def __init__(
        self,
        me: bytes,
        quota: MailboxQuota | None = None,
        *,
        enabled: bool = True,
        verify: bool = True,
    ) -> None:
        self.me = me
        self.quota = quota or MailboxQuota()
        self.enabled = enabled
        self.verify = verify
        self._held: dict[bytes, Held] = {}
        self._expiry: list[tuple[int, bytes]] = []  # (expires_ms, id), a heap
        self._senders: dict[bytes, _Tally] = {}
        self._recipients: dict[bytes, _Tally] = {}
        self._total = _Tally()
        self._in_flight: dict[bytes, int] = {}  # link peer -> deposits being stored
        self.refused: dict[str, int] = {}
        self.taken = 0
        self.expired = 0

    # -- the ledger --------------------------------------------------------------------

    def load(self, entries: Iterable[Held]) -> None:
        """The ledger as the store has it at start (at most ``total_entries``)."""
        for held in entries:
            if len(self._held) >= self.quota.total_entries:
                break
            self._charge(held)
            self._index(held)

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, msg_id: object) -> bool:
        return msg_id in self._held

    def holds_bytes(self) -> int:
        return self._total.bytes

    def _charge(self, held: Held, sign: int = 1) -> None:
        for tally in (
            self._senders.setdefault(held.sender, _Tally()),
            self._recipients.setdefault(held.recipient, _Tally()),
            self._total,
        ):
            tally.entries += sign
            tally.bytes += sign * held.size
        for key, table in ((held.sender, self._senders), (held.recipient, self._recipients)):
            if table[key].entries <= 0:
                del table[key]

    def _index(self, held: Held) -> None:
        self._held[held.msg_id] = held
        heapq.heappush(self._expiry, (held.received_ms + self.quota.ttl_ms, held.msg_id))

    # -- deposits ----------------------------------------------------------------------

    def on_deposit(
        self, link_peer: bytes, r: int, wire: bytes, *, closer: Callable[[bytes], int], now_ms: int
    ) -> list[Command]:
        """A ``deposit`` frame from ``link_peer``; ``closer(recipient)``: how many peers
        we know (the recipient excluded) are closer to ``recipient`` than we are."""
        if not self.enabled:
            return self._refuse(link_peer, r, OFF)
        if len(wire) > self.quota.max_entry_bytes:
            return self._refuse(link_peer, r, TOO_LARGE)  # not even opened
        try:
            env = open_envelope(wire, verify=False)  # the signature last: refusals are cheap
        except ProtocolError as exc:
            return self._close(link_peer, exc)
        reason = self._check(link_peer, env, closer, now_ms)
        if reason is not None:
            return self._refuse(link_peer, r, reason)
        if env.id in self._held:
            return [Answer(link_peer, r, None)]  # a retry: it is held already
        assert env.recipient is not None
        held = Held(env.id, env.recipient, env.sender, len(wire), now_ms)
        reason = self._over_quota(held)
        if reason is None and self._in_flight.get(link_peer, 0) >= MAX_IN_FLIGHT:
            reason = BUSY
        if reason is not None:
            return self._refuse(link_peer, r, reason)
        if self.verify:
            try:
                check_signature(env.sender_key, *split_wire(wire))
            except ProtocolError as exc:
                return self._close(link_peer, exc)
        self._charge(held)
        self._in_flight[link_peer] = self._in_flight.get(link_peer, 0) + 1
        return [Keep(link_peer, r, env, held)]

    def _check(
        self, link_peer: bytes, env: Envelope, closer: Callable[[bytes], int], now_ms: int
    ) -> str | None:
        q = self.quota
        if env.kind not in ("dm", "receipt") or env.recipient is None:
            return NOT_DM
        if env.sender != link_peer:
            return NOT_AUTHOR
        if env.recipient == self.me:
            return TO_ME
        if env.ts < now_ms - q.ttl_ms or env.ts > now_ms + q.max_skew_ms:
            return STALE
        if closer(env.recipient) >= q.close_k:
            return NOT_CLOSE
        return None

    def _over_quota(self, held: Held) -> str | None:
        q = self.quota
        sender = self._senders.get(held.sender) or _Tally()
        if sender.entries + 1 > q.sender_entries or sender.bytes + held.size > q.sender_bytes:
            return QUOTA_SENDER
        recipient = self._recipients.get(held.recipient) or _Tally()
        if (
            recipient.entries + 1 > q.recipient_entries
            or recipient.bytes + held.size > q.recipient_bytes
        ):
            return QUOTA_RECIPIENT
        total = self._total
        if total.entries + 1 > q.total_entries or total.bytes + held.size > q.total_bytes:
            return QUOTA_TOTAL
        return None

    def _close(self, link_peer: bytes, exc: ProtocolError) -> list[Command]:
        self.refused[exc.code.value] = self.refused.get(exc.code.value, 0) + 1
        return [CloseLink(link_peer, exc.code, exc.message)]

    def _refuse(self, link_peer: bytes, r: int, reason: str) -> list[Command]:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        return [Answer(link_peer, r, reason)]

    def _done(self, link_peer: bytes) -> None:
        left = self._in_flight.get(link_peer, 0) - 1
        if left > 0:
            self._in_flight[link_peer] = left
        else:
            self._in_flight.pop(link_peer, None)

    def kept(self, keep: Keep, *, duplicate: bool) -> list[Command]:
        """``keep`` was committed (``duplicate``: the store held that id already, by
        another path: it is not ours to expire, so it is not charged)."""
        self._done(keep.peer)
        if duplicate or keep.held.msg_id in self._held:
            self._charge(keep.held, -1)
        else:
            self._index(keep.held)
            self.taken += 1
        return [Answer(keep.peer, keep.r, None)]

    def keep_failed(self, keep: Keep) -> list[Command]:
        """``keep``'s store write failed: refund it and say so."""
        self._done(keep.peer)
        self._charge(keep.held, -1)
        return self._refuse(keep.peer, keep.r, STORE)

    # -- expiry ------------------------------------------------------------------------

    def next_deadline(self) -> int | None:
        """Wall-clock ms of the next ``handle_timer`` needed, None if nothing is held."""
        return self._expiry[0][0] if self._expiry else None

    def handle_timer(self, now_ms: int) -> list[Command]:
        """Forget what expired, at most ``EXPIRE_PER_STEP`` entries per step."""
        by_recipient: dict[bytes, list[bytes]] = {}
        count = 0
        while self._expiry and self._expiry[0][0] <= now_ms and count < EXPIRE_PER_STEP:
            _, msg_id = heapq.heappop(self._expiry)
            held = self._held.pop(msg_id, None)
            if held is None:
                continue
            self._charge(held, -1)
            by_recipient.setdefault(held.recipient, []).append(msg_id)
            count += 1
        self.expired += count
        return [
            Forget(recipient, tuple(ids), self.quota.ttl_ms)
            for recipient, ids in by_recipient.items()
        ]

    def statistics(self) -> dict[str, object]:
        return {
            "enabled": self.enabled,
            "held": len(self._held),
            "held_bytes": self._total.bytes,
            "recipients": len(self._recipients),
            "taken": self.taken,
            "expired": self.expired,
            "refused": dict(sorted(self.refused.items())),
        }


__all__ = [
    "BUSY",
    "NOT_AUTHOR",
    "NOT_CLOSE",
    "NOT_DM",
    "OFF",
    "QUOTA_RECIPIENT",
    "QUOTA_SENDER",
    "QUOTA_TOTAL",
    "STALE",
    "STORE",
    "TOO_LARGE",
    "TO_ME",
    "Answer",
    "CloseLink",
    "Command",
    "Forget",
    "Held",
    "Keep",
    "Mailbox",
    "MailboxQuota",
]
