"""Receipt states, acks owed, idempotency keys and expiries, as sans-IO parts.

The message semantics of envelope.md section 12 need four small pieces of
bookkeeping; each takes ``now_ms`` (wall-clock milliseconds) and returns
data, and the Trio shell (``peer.node._coordhost``) persists and sends:

* ``ReceiptBook`` (the sender's side): for every DM we sent, the receipt
  states its recipient signed, ``stored`` (a ``receipt`` envelope),
  ``delivered``, ``read``, ``replied`` or ``expired`` (``ack`` DMs), each
  with the signed envelope that carried it. Only the DM's recipient can
  give it a state; a state is recorded once (the first signed proof).
* ``AckPlanner`` (the recipient's side): which states we owe which sender
  for which ids; owed acks wait ``delay_ms`` so a burst goes out in few
  acks of at most ``MAX_ACK_IDS`` ids each; every (id, state) is owed once.
* ``IdempotencyKeys``: (sender, key) pairs already handed to the agent, so
  a message with a used key is stored but never handed again.
* ``ExpiryWatch``: when an unread message must leave the agent's inbox.

All four are bounded; past the bound the oldest entries go first.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass, field

from peer.wire._meta import MAX_ACK_IDS

STATES = ("stored", "delivered", "read", "replied", "expired")
MAX_TRACKED = 100_000
MAX_KEYS = 200_000
MAX_OWED = 65_536
ACK_DELAY_MS = 100


@dataclass(slots=True)
class Tracked:
    """One DM of ours and the states its recipient has signed for it."""

    msg_id: bytes
    recipient: bytes
    sent_ms: int
    states: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # state -> (ms, wire)

    def latest(self) -> str:
        """The furthest state reached ("sent" if none)."""
        done = [s for s in STATES if s in self.states]
        return done[-1] if done else "sent"


class ReceiptBook:
    """What each recipient signed for each DM we sent (see module docstring)."""

    def __init__(self, capacity: int = MAX_TRACKED) -> None:
        self._tracked: OrderedDict[bytes, Tracked] = OrderedDict()
        self.capacity = capacity

    def __len__(self) -> int:
        return len(self._tracked)

    def get(self, msg_id: bytes) -> Tracked | None:
        return self._tracked.get(msg_id)

    def track(self, msg_id: bytes, recipient: bytes, now_ms: int) -> Tracked:
        entry = self._tracked.get(msg_id)
        if entry is None:
            entry = self._tracked[msg_id] = Tracked(msg_id, recipient, now_ms)
            while len(self._tracked) > self.capacity:
                self._tracked.popitem(last=False)
        return entry

    def restore(self, entry: Tracked) -> None:
        self._tracked[entry.msg_id] = entry
        while len(self._tracked) > self.capacity:
            self._tracked.popitem(last=False)

    def record(
        self, signer: bytes, state: str, ids: tuple[bytes, ...] | list[bytes], wire: bytes,
        now_ms: int,
    ) -> list[Tracked]:
        """``signer`` signed ``state`` for ``ids`` in ``wire``: the entries that changed.
        Ids we did not send to ``signer`` are ignored (only a recipient can sign)."""
        if state not in STATES:
            return []
        changed: list[Tracked] = []
        for msg_id in dict.fromkeys(ids):
            entry = self._tracked.get(msg_id)
            if entry is None or entry.recipient != signer or state in entry.states:
                continue
            entry.states[state] = (now_ms, wire)
            changed.append(entry)
        return changed


class AckPlanner:
    """Acks we owe to senders (see module docstring)."""

    def __init__(self, delay_ms: int = ACK_DELAY_MS) -> None:
        self.delay_ms = delay_ms
        self._owed: dict[tuple[bytes, str], list[bytes]] = {}
        self._done: OrderedDict[tuple[bytes, str], None] = OrderedDict()  # (id, state)
        self._count = 0
        self._at: int | None = None
        self.dropped = 0

    def owe(self, sender: bytes, state: str, msg_id: bytes, now_ms: int) -> bool:
        """Owe ``sender`` an ack of ``state`` for ``msg_id``; False if owed before."""
        key = (msg_id, state)
        if key in self._done:
            return False
        if self._count >= MAX_OWED:
            self.dropped += 1
            return False
        self._done[key] = None
        while len(self._done) > MAX_KEYS:
            self._done.popitem(last=False)
        self._owed.setdefault((sender, state), []).append(msg_id)
        self._count += 1
        if self._at is None:
            self._at = now_ms + self.delay_ms
        return True

    def next_deadline(self) -> int | None:
        return self._at

    def due(self, now_ms: int) -> list[tuple[bytes, str, tuple[bytes, ...]]]:
        """The acks to send now: (sender, state, at most ``MAX_ACK_IDS`` ids)."""
        if self._at is None or self._at > now_ms:
            return []
        owed, self._owed = self._owed, {}
        self._count = 0
        self._at = None
        return [
            (sender, state, tuple(ids[i : i + MAX_ACK_IDS]))
            for (sender, state), ids in owed.items()
            for i in range(0, len(ids), MAX_ACK_IDS)
        ]


class IdempotencyKeys:
    """(sender, key) pairs whose message the agent was handed, oldest first."""

    def __init__(self, capacity: int = MAX_KEYS) -> None:
        self._keys: OrderedDict[tuple[bytes, str], bytes] = OrderedDict()
        self.capacity = capacity

    def __len__(self) -> int:
        return len(self._keys)

    def first(self, sender: bytes, key: str) -> bytes | None:
        """The id of the message that first used ``key`` from ``sender``, if any."""
        return self._keys.get((sender, key))

    def claim(self, sender: bytes, key: str, msg_id: bytes) -> bool:
        """Take ``key`` for ``msg_id``; False if another message holds it."""
        held = self._keys.get((sender, key))
        if held is not None:
            return held == msg_id
        self._keys[(sender, key)] = msg_id
        while len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return True


class ExpiryWatch:
    """Message ids by expiry time."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, bytes]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, msg_id: bytes, expires_ms: int) -> None:
        heapq.heappush(self._heap, (expires_ms, msg_id))
        if len(self._heap) > MAX_TRACKED:  # keep the soonest: the rest are checked on hand-out
            self._heap = heapq.nsmallest(MAX_TRACKED, self._heap)
            heapq.heapify(self._heap)

    def next_deadline(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def due(self, now_ms: int) -> list[bytes]:
        out: list[bytes] = []
        while self._heap and self._heap[0][0] <= now_ms:
            out.append(heapq.heappop(self._heap)[1])
        return out


__all__ = [
    "ACK_DELAY_MS",
    "STATES",
    "AckPlanner",
    "ExpiryWatch",
    "IdempotencyKeys",
    "ReceiptBook",
    "Tracked",
]
