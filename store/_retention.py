"""Retention: deleting the oldest records of a topic once it is over a limit.

``_Retention`` is a part of :class:`~store._log.MessageStore`. It only ever
removes a topic's oldest records, so the records left stay one contiguous
range ``first_seq .. next_seq - 1``, and it writes with ``reserve=True`` so a
full store can still be trimmed. With each record it deletes its id and
sender index entries and its read flag, in the same transaction; it leaves
the ``seen`` ranges, the ``latest`` sender heads and the read watermark alone
(they record what arrived and what was read, not what is still stored).

A caller may pin records (``pinned``: a record to keys of the id index): a
record one of whose keys is there is kept, and since only the old end
is ever trimmed, the topic's retention stops at it for this step (``done``,
with ``pinned`` set in the result) until whatever holds the key lets go.
The store does not know what holds it (the peer's inbox, for one).
Which topics to keep and for how long is decided in ``store._policy``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import lmdb

from ._env import _StoreEnv
from ._errors import StoreCorrupt
from ._records import (
    RetentionResult,
    StoredMessage,
    _decode_record,
    _Head,
    _log_key,
    _topic_key,
    _u64,
)

# A record's pins: the id index keys any of which, stored, keeps it.
Pin = Callable[[StoredMessage], Iterable[bytes]]


@dataclass(frozen=True, slots=True)
class _Limits:
    """A topic's retention limits; ``None`` is no limit."""

    max_age_ms: int | None
    max_bytes: int | None
    max_count: int | None

    def __post_init__(self) -> None:
        for name in ("max_age_ms", "max_bytes", "max_count"):
            limit = getattr(self, name)
            if limit is not None and limit < 0:
                raise ValueError(f"{name} must be >= 0")

    def exceeded(self, head: _Head, oldest: StoredMessage | None, now_ms: int) -> bool:
        """Is the topic over a limit (so its oldest record is due)?"""
        if head.count == 0:
            return False
        if self.max_count is not None and head.count > self.max_count:
            return True
        if self.max_bytes is not None and head.total_bytes > self.max_bytes:
            return True
        return (
            self.max_age_ms is not None
            and oldest is not None
            and now_ms - oldest.received_ms > self.max_age_ms
        )


class _Retention(_StoreEnv):
    """``apply_retention``: bounded deletes from the old end of a topic's log."""

    def _oldest(
        self, txn: lmdb.Transaction[bytes], topic: str, tkey: bytes, head: _Head
    ) -> StoredMessage | None:
        """The topic's first stored record, or ``None`` when it is empty."""
        if head.count == 0:
            return None
        key = _log_key(tkey, head.first_seq)
        value = txn.get(key, db=self._log)
        if value is None:
            raise StoreCorrupt(f"{topic}: first record {head.first_seq} is missing")
        return _decode_record(key, value)

    def apply_retention(
        self,
        topic: str,
        *,
        now_ms: int,
        max_age_ms: int | None = None,
        max_bytes: int | None = None,
        max_count: int | None = None,
        budget: int = 256,
        pinned: Pin | None = None,
    ) -> RetentionResult:
        """Delete at most ``budget`` of the oldest records of ``topic`` that are
        over a limit: older than ``max_age_ms`` (by ``received_ms``), or while
        the topic holds more than ``max_bytes`` of wire bytes or more than
        ``max_count`` records. One short write transaction, and none at all when
        nothing is due, so a sweep over many topics never stops the world.

        ``pinned`` maps a record to id index keys: while one of those keys is
        stored, the record is kept and deleting stops there (the result is
        ``done`` with ``pinned == 1``; later records wait behind it).
        """
        tkey = _topic_key(topic)
        if budget < 1:
            raise ValueError("budget must be >= 1")
        limits = _Limits(max_age_ms, max_bytes, max_count)

        def over(head: _Head, oldest: StoredMessage | None) -> bool:
            return limits.exceeded(head, oldest, now_ms)

        def oldest_of(txn: lmdb.Transaction[bytes], head: _Head) -> StoredMessage | None:
            return self._oldest(txn, topic, tkey, head)

        def held(txn: lmdb.Transaction[bytes], oldest: StoredMessage | None) -> bool:
            return (
                pinned is not None
                and oldest is not None
                and any(txn.get(key, db=self._ids) is not None for key in pinned(oldest))
            )

        def due(txn: lmdb.Transaction[bytes]) -> RetentionResult | None:
            head = _Head.load(txn, self._heads, tkey)
            oldest = oldest_of(txn, head)
            if not over(head, oldest):
                return RetentionResult(0, 0, True)
            return RetentionResult(0, 0, True, pinned=1) if held(txn, oldest) else None

        nothing = self._read(due)
        if nothing is not None:
            return nothing

        def op(txn: lmdb.Transaction[bytes]) -> RetentionResult:
            head = _Head.load(txn, self._heads, tkey)
            deleted = freed = stopped = 0
            oldest = oldest_of(txn, head)
            while deleted < budget and over(head, oldest):
                assert oldest is not None
                if held(txn, oldest):
                    stopped = 1
                    break
                txn.delete(_log_key(tkey, oldest.seq), db=self._log)
                txn.delete(_log_key(tkey, oldest.seq), db=self._flags)  # same key layout
                txn.delete(oldest.msg_id, db=self._ids)
                skey = oldest.sender + _u64(oldest.sender_seq) + oldest.msg_id
                txn.delete(skey, db=self._senders)
                head.count -= 1
                head.total_bytes -= len(oldest.wire)
                head.first_seq = oldest.seq + 1
                deleted += 1
                freed += len(oldest.wire)
                oldest = oldest_of(txn, head)
            if head.count == 0:
                head.first_seq = head.next_seq
            txn.put(tkey, head.encode(), db=self._heads)
            done = bool(stopped) or not over(head, oldest)
            return RetentionResult(deleted, freed, done, pinned=stopped)

        return self._write(op, reserve=True)
