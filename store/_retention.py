"""Retention: deleting the oldest records of a topic once it is over a limit.

``_Retention`` is a part of :class:`~store._log.MessageStore`. It removes a
topic's records oldest first, and writes with ``reserve=True`` so a full
store can still be trimmed. With each record it deletes its id and sender
index entries and its read flag, in the same transaction; it leaves the
``seen`` ranges, the ``latest`` sender heads and the read watermark alone
(they record what arrived and what was read, not what is still stored).

A caller may pin records (``pinned``: a record to keys of the id index): a
record one of whose keys is there is kept, and retention skips over it
and goes on trimming the unpinned records behind it, oldest first, as long
as the records not pinned are over the count or bytes limit (or, for the age
limit, are too old): pinned records are kept beyond the limits. So a
pinned topic's stored records may have holes: ``first_seq`` is always the
lowest stored seq and ``count`` the number stored, and readers go by the
stored keys (``read``, ``seq_at``). Topics without pins stay one
contiguous range. A step examines at most ``MAX_SCAN`` records (kept pinned
ones included) and says where it stopped (``resume``), so a topic held by
many pins is trimmed in bounded steps that go forward. The store does not
know what holds a pin (the peer's inbox, for one). Read flags count unread
records by seq ranges (``store._readflags``), so they are for topics never
pinned (the peer's ``~inbox``). Which topics to keep and for how long is
decided in ``store._policy``.
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
    _seq_in,
    _topic_key,
    _u64,
)


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

    def exceeded(
        self, head: _Head, oldest: StoredMessage | None, now_ms: int, kept: tuple[int, int]
    ) -> bool:
        """Is the topic over a limit (so its oldest record is due)? ``kept``: the
        pinned records (count, bytes) passed over so far, which the count and bytes
        limits leave out (only ``oldest``'s age counts for the age limit)."""
        if head.count == 0:
            return False
        if self.max_count is not None and head.count - kept[0] > self.max_count:
            return True
        if self.max_bytes is not None and head.total_bytes - kept[1] > self.max_bytes:
            return True
        return (
            self.max_age_ms is not None
            and oldest is not None
            and now_ms - oldest.received_ms > self.max_age_ms
        )


# A record's pins: the id index keys any of which, stored, keeps it.
Pin = Callable[[StoredMessage], Iterable[bytes]]
MAX_SCAN = 4096  # records one retention step examines, at most (kept pinned ones included)


class _Retention(_StoreEnv):
    """``apply_retention``: bounded deletes from the old end of a topic's log."""

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
        after: int = 0,
        kept: tuple[int, int] = (0, 0),
    ) -> RetentionResult:
        """Delete at most ``budget`` of the oldest records of ``topic`` that are
        over a limit: older than ``max_age_ms`` (by ``received_ms``), or while
        the topic holds more than ``max_bytes`` of wire bytes or more than
        ``max_count`` records. One short write transaction, and none at all when
        nothing is due, so a sweep over many topics never stops the world.

        ``pinned`` maps a record to id index keys: while one of those keys is
        stored, the record is kept and skipped; the records behind it
        are trimmed all the same (``pinned`` in the result counts the kept
        ones this step passed, ``pinned_bytes`` their bytes). The count and
        bytes limits bound the records not pinned: a topic whose pinned
        records alone are over them keeps every unpinned one. A step that is
        not ``done`` says where it stopped: call again with
        ``after=result.resume`` and ``kept`` the pinned count and bytes passed
        by the steps before.
        """
        tkey = _topic_key(topic)
        if budget < 1:
            raise ValueError("budget must be >= 1")
        limits = _Limits(max_age_ms, max_bytes, max_count)
        prefix = tkey + b"\x00"

        def held(txn: lmdb.Transaction[bytes], record: StoredMessage) -> bool:
            return pinned is not None and any(
                txn.get(key, db=self._ids) is not None for key in pinned(record)
            )

        def walk(txn: lmdb.Transaction[bytes], delete: bool) -> RetentionResult:
            """From the oldest record after ``after``: delete (or, with ``delete``
            False, only find) the unpinned records due, skipping the pinned."""
            head = _Head.load(txn, self._heads, tkey)
            deleted = freed = scanned = 0
            pins, pin_bytes = kept
            cur = txn.cursor(db=self._log)
            found = head.count > 0 and cur.set_range(_log_key(tkey, max(head.first_seq, after + 1)))
            last, stopped = after, False
            while found and (seq := _seq_in(cur.key(), prefix)) is not None:
                record = _decode_record(cur.key(), cur.value())
                if not limits.exceeded(head, record, now_ms, (pins, pin_bytes)):
                    break
                if deleted >= budget or scanned >= MAX_SCAN:
                    stopped = True
                    break
                scanned += 1
                last = seq
                if held(txn, record):
                    pins += 1
                    pin_bytes += len(record.wire)
                    found = cur.next()
                    continue
                if not delete:
                    return RetentionResult(0, 0, False, resume=after)  # something is due
                found = cur.delete()  # and on to the next record
                self._forget(txn, tkey, record)
                head.count -= 1
                head.total_bytes -= len(record.wire)
                deleted += 1
                freed += len(record.wire)
            if deleted:
                head.first_seq = self._lowest(txn, tkey, head)
                txn.put(tkey, head.encode(), db=self._heads)
            return RetentionResult(
                deleted,
                freed,
                not stopped,
                pinned=pins - kept[0],
                pinned_bytes=pin_bytes - kept[1],
                resume=last,
            )

        probe = self._read(lambda txn: walk(txn, delete=False))
        if probe.done or probe.resume != after:
            return probe  # nothing due (up to where the scan stopped): no write at all
        return self._write(lambda txn: walk(txn, delete=True), reserve=True)

    def _forget(self, txn: lmdb.Transaction[bytes], tkey: bytes, record: StoredMessage) -> None:
        """A deleted record's read flag and index entries (its log entry is gone)."""
        txn.delete(_log_key(tkey, record.seq), db=self._flags)  # same key layout
        txn.delete(record.msg_id, db=self._ids)
        skey = record.sender + _u64(record.sender_seq) + record.msg_id
        txn.delete(skey, db=self._senders)

    def _lowest(self, txn: lmdb.Transaction[bytes], tkey: bytes, head: _Head) -> int:
        """The topic's lowest stored seq (``next_seq`` if none is)."""
        if head.count == 0:
            return head.next_seq
        cur = txn.cursor(db=self._log)
        if cur.set_range(_log_key(tkey, head.first_seq)):
            seq = _seq_in(cur.key(), tkey + b"\x00")
            if seq is not None:
                return seq
        raise StoreCorrupt(f"{tkey!r}: {head.count} records in the head, none in the log")
