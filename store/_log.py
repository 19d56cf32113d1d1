"""The message store: per-topic append logs, composed with the rest of the store.

:class:`MessageStore` is the store's synchronous interface. This module holds
the log itself (appends, the id and sender indexes, seen-sequence ranges and
per-topic sender heads, reads including the carrier side of catch-up,
statistics; the consistency check's walks are in ``store._check``) and
composes the other parts:

* ``store._env``: the LMDB environment, transactions and map growth (the base
  class); every LMDB transaction begins and ends inside one function call,
  and a write returns only after its commit.
* ``store._retention``: deleting a topic's oldest records.
* ``store._state``: reader cursors and opaque peer state.
* ``store._readflags``: which records of a local inbox log have been read.
* ``store._outbox``: the DM outbox and dead letters.
* ``store._held``: which messages of a topic are stored, by their seen ranges.
* ``store._records``: the value types, limits and the database layout.

The interface imports no trio; the Trio shell (``store._service``) calls it
from worker threads, with a single writer. Rules the log keeps:

* ``append_batch`` writes many messages in one transaction (group commit) and
  deduplicates by message id: a message already stored keeps its position.
* Per-topic sequence numbers start at 1 and are never reused. A topic's
  stored records lie in ``first_seq .. next_seq-1``, ``first_seq`` the lowest
  stored; retention removes the oldest records, so the range is contiguous
  unless records were pinned (``store._retention``: it skips a pinned record
  and trims the unpinned ones behind it, leaving holes). Reads go by the
  stored keys, so holes are simply not there.
* Everything is bounded: topic and key lengths, record and state value sizes,
  read page sizes, and the number of seen-sequence ranges kept per sender and
  topic.

The names ``store`` exports are re-exported from here.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence

import lmdb

from . import _check
from ._env import DEFAULT_MAP_SIZE, DEFAULT_MAX_MAP_SIZE
from ._errors import StoreClosed, StoreCorrupt, StoreError, StoreFull
from ._held import _Held
from ._outbox import _Outbox
from ._readflags import _ReadFlags
from ._records import (
    _U64,
    MAX_PAGE,
    U64_MAX,
    AppendItem,
    AppendResult,
    DeadLetter,
    EnvelopeLike,
    OutboxEntry,
    RetentionResult,
    StoredMessage,
    StoreStats,
    TopicHead,
    _check_id,
    _check_u64,
    _decode_record,
    _encode_record,
    _Head,
    _latest_key,
    _log_key,
    _seq_in,
    _split_log_key,
    _topic_key,
    _u64,
    gaps_between,
    merge_ranges,
)
from ._retention import _Retention
from ._state import _State

__all__ = [
    "DEFAULT_MAP_SIZE",
    "DEFAULT_MAX_MAP_SIZE",
    "MAX_PAGE",
    "AppendItem",
    "AppendResult",
    "DeadLetter",
    "EnvelopeLike",
    "MessageStore",
    "OutboxEntry",
    "RetentionResult",
    "StoreClosed",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
    "StoreStats",
    "StoredMessage",
    "TopicHead",
    "gaps_between",
    "merge_ranges",
]


class MessageStore(_Retention, _State, _ReadFlags, _Outbox, _Held):
    """Per-topic append logs, indexes, cursors, peer state, read flags and a DM outbox.

    Thread-safe: reads may run concurrently in any threads; writes serialize
    on LMDB's writer lock (the Trio shell uses a single writer thread).
    Opening, closing and the transaction plumbing come from ``store._env``;
    retention, cursors and state, read flags and the outbox from their own
    modules.
    """

    # -- appends -------------------------------------------------------------------

    def append_batch(self, items: Sequence[AppendItem]) -> list[AppendResult]:
        """Append ``items`` in one transaction; results in the same order.

        A message whose id is already stored (earlier, or earlier in this
        batch) is not stored again: its result carries the existing position
        and ``duplicate=True``. An item that ``follows`` is stored exactly when
        the item before it is (not: ``duplicate=True`` at seq 0). Returns
        after the commit.
        """
        tkeys: dict[str, bytes] = {}
        for item in items:
            item.check_fields(self._max_record)
            if type(item.topic) is not str or item.topic not in tkeys:
                tkeys[item.topic] = _topic_key(item.topic)
        if not items:
            return []
        return self._write(lambda txn: self._append_in(txn, items, tkeys))

    def _append_in(
        self,
        txn: lmdb.Transaction[bytes],
        items: Sequence[AppendItem],
        tkeys: dict[str, bytes],
    ) -> list[AppendResult]:
        heads: dict[bytes, _Head] = {}
        results: list[AppendResult] = []
        sequenced: list[tuple[bytes, bytes, int]] = []  # (sender, topic key, sender_seq)
        last_new = False  # the item before was stored now (a follower goes with it)
        # A cursor per place the batch writes to: LMDB skips the descent from the
        # root when a key falls on the page its cursor is on, so a topic's log
        # (growing at its end), the sender index (a page is one author's run)
        # and the followers' id keys (next to each other) are written along
        # their pages; a message's own id goes to a random place, on a cursor
        # of its own so it does not move the followers'.
        id_put = txn.cursor(db=self._ids).put
        follower_put = txn.cursor(db=self._ids).put
        sender_put = txn.cursor(db=self._senders).put
        log_puts: dict[bytes, Callable[..., bool]] = {}
        for item in items:
            msg_id, topic, follows = item.msg_id, item.topic, item.follows
            if follows and not last_new:
                results.append(AppendResult(msg_id, topic, 0, True))
                continue
            tkey = tkeys[topic]
            head = heads.get(tkey)
            if head is None:
                head = heads[tkey] = _Head.load(txn, self._heads, tkey)
                log_puts[tkey] = txn.cursor(db=self._log).put
            seq = head.next_seq
            key = _log_key(tkey, seq)
            # the id index entry first: one look into the index both finds a
            # duplicate and, when there is none, puts the entry
            if not (follower_put if follows else id_put)(msg_id, key, overwrite=False):
                where, at = _split_log_key(txn.get(msg_id, b"", db=self._ids))
                results.append(AppendResult(msg_id, where, at, True))
                last_new = False
                continue
            last_new = last_new or not follows
            if not log_puts[tkey](key, _encode_record(item), overwrite=False):
                raise StoreCorrupt(f"log position {topic}/{seq} is already taken")
            if item.sender_seq:  # 0: not sequenced (our inbox copies), no sender indexes
                sender_put(item.sender + _u64(item.sender_seq) + msg_id, key)
                sequenced.append((item.sender, tkey, item.sender_seq))
            if head.count == 0:
                head.first_seq = seq
            head.next_seq = seq + 1
            head.count += 1
            head.total_bytes += len(item.wire)
            results.append(AppendResult(msg_id, topic, seq, False))
        for sender, tkey, lo, hi in _runs(sequenced):  # a page from one author: one run
            self._mark_seen(txn, sender, tkey, lo, hi)
            self._raise_latest(txn, tkey, sender, hi)
        for tkey, head in heads.items():
            txn.put(tkey, head.encode(), db=self._heads)
        return results

    def _mark_seen(
        self, txn: lmdb.Transaction[bytes], sender: bytes, tkey: bytes, lo: int, hi: int
    ) -> None:
        """Add sender sequences ``lo..hi`` to the seen ranges of (sender, topic),
        merging every range they touch or adjoin."""
        prefix = sender + tkey + b"\x00"
        cur = txn.cursor(db=self._seen)
        start, end = lo, hi
        merged = 0
        positioned = cur.prev() if cur.set_range(prefix + _u64(lo)) else cur.last()
        if positioned and cur.key().startswith(prefix):  # the range starting below lo
            p_start, p_end = _U64.unpack(cur.key()[-8:])[0], _U64.unpack(cur.value())[0]
            if p_end >= hi:
                return  # already seen
            if p_end + 1 >= lo:
                start, end = p_start, hi
                merged += 1
            positioned = cur.next()
        else:
            positioned = cur.set_range(prefix + _u64(lo))
        while positioned and cur.key().startswith(prefix):  # ranges starting in lo..hi+1
            n_start = _U64.unpack(cur.key()[-8:])[0]
            if n_start > hi + 1:
                break
            end = max(end, _U64.unpack(cur.value())[0])
            merged += 1
            if n_start == start:
                positioned = cur.next()  # rewritten below
                continue
            positioned = cur.delete()  # moves to the next range
        txn.put(prefix + _u64(start), _u64(end), db=self._seen)
        if merged != 1:
            count_key = sender + tkey
            if self._add_ranges(txn, count_key, 1 - merged) > self._max_seen_ranges:
                self._fill_lowest_gap(txn, prefix)
                self._add_ranges(txn, count_key, -1)

    def _raise_latest(
        self, txn: lmdb.Transaction[bytes], tkey: bytes, sender: bytes, s: int
    ) -> None:
        """Raise the head of ``sender`` in topic key ``tkey`` to ``s`` (never lower it)."""
        key = _latest_key(tkey, sender)
        raw = txn.get(key, db=self._latest)
        if raw is None or _U64.unpack(raw)[0] < s:
            txn.put(key, _u64(s), db=self._latest)

    def _add_ranges(self, txn: lmdb.Transaction[bytes], count_key: bytes, delta: int) -> int:
        raw = txn.get(count_key, db=self._seen_n)
        n = (0 if raw is None else _U64.unpack(raw)[0]) + delta
        txn.put(count_key, _u64(n), db=self._seen_n)
        return n

    def _fill_lowest_gap(self, txn: lmdb.Transaction[bytes], prefix: bytes) -> None:
        """Bound the ranges kept: give up on the oldest gap by merging the two lowest."""
        cur = txn.cursor(db=self._seen)
        if not cur.set_range(prefix):
            return
        first_key = cur.key()
        if not cur.next() or not cur.key().startswith(prefix):
            return
        second_end = cur.value()
        cur.delete()
        txn.put(first_key, second_end, db=self._seen)

    # -- reads ---------------------------------------------------------------------

    def read(self, topic: str, after: int = 0, limit: int = 100) -> list[StoredMessage]:
        """Up to ``limit`` stored messages of ``topic`` with seq > ``after``, in log order.

        Records older than the topic's ``first_seq`` have been removed by
        retention; compare ``head(topic).first_seq`` with ``after + 1``.
        """
        tkey = _topic_key(topic)
        _check_u64(after, "after")
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be in 1..{MAX_PAGE}")
        if after >= U64_MAX:
            return []
        prefix = tkey + b"\x00"

        def op(txn: lmdb.Transaction[bytes]) -> list[StoredMessage]:
            out: list[StoredMessage] = []
            cur = txn.cursor(db=self._log)
            if not cur.set_range(prefix + _u64(after + 1)):
                return out
            for key, value in cur.iternext():
                if not key.startswith(prefix) or len(key) != len(prefix) + 8:
                    break
                out.append(_decode_record(key, value))
                if len(out) >= limit:
                    break
            return out

        return self._read(op)

    def get(self, msg_id: bytes) -> StoredMessage | None:
        """The stored message with this id, or None."""
        _check_id(msg_id, "msg_id")

        def op(txn: lmdb.Transaction[bytes]) -> StoredMessage | None:
            key = txn.get(msg_id, db=self._ids)
            if key is None:
                return None
            value = txn.get(key, db=self._log)
            if value is None:
                raise StoreCorrupt(f"id {msg_id.hex()} points to a missing record")
            return _decode_record(key, value)

        return self._read(op)

    def get_many(self, msg_ids: Sequence[bytes]) -> list[StoredMessage | None]:
        """``get`` of each of ``msg_ids`` in one read transaction (None: not stored, or
        its record is missing, which ``check`` reports)."""
        for msg_id in msg_ids:
            _check_id(msg_id, "msg_id")

        def op(txn: lmdb.Transaction[bytes]) -> list[StoredMessage | None]:
            out: list[StoredMessage | None] = []
            for msg_id in msg_ids:
                key = txn.get(msg_id, db=self._ids)
                value = None if key is None else txn.get(key, db=self._log)
                out.append(None if key is None or value is None else _decode_record(key, value))
            return out

        return self._read(op)

    def position(self, msg_id: bytes) -> tuple[str, int] | None:
        """``(topic, seq)`` of a stored message, or None."""
        _check_id(msg_id, "msg_id")
        key = self._read(lambda txn: txn.get(msg_id, db=self._ids))
        return None if key is None else _split_log_key(key)

    def held(self, msg_ids: Sequence[bytes]) -> set[bytes]:
        """Which of ``msg_ids`` are stored (one read transaction for all)."""
        for msg_id in msg_ids:
            _check_id(msg_id, "msg_id")

        def read(txn: lmdb.Transaction[bytes]) -> set[bytes]:
            cur = txn.cursor(db=self._ids)
            return {m for m in msg_ids if cur.set_key(m)}

        return self._read(read)

    def by_sender(self, sender: bytes, sender_seq: int) -> list[StoredMessage]:
        """Stored messages with this (sender, sender sequence); more than one
        means the sender reused a sequence number."""
        _check_id(sender, "sender")
        _check_u64(sender_seq, "sender_seq")
        prefix = sender + _u64(sender_seq)

        def op(txn: lmdb.Transaction[bytes]) -> list[StoredMessage]:
            out: list[StoredMessage] = []
            cur = txn.cursor(db=self._senders)
            if not cur.set_range(prefix):
                return out
            for key, log_key in cur.iternext():
                if not key.startswith(prefix):
                    break
                value = txn.get(log_key, db=self._log)
                if value is None:
                    raise StoreCorrupt("sender index points to a missing record")
                out.append(_decode_record(log_key, value))
            out.sort(key=lambda m: (m.topic, m.seq))
            return out

        return self._read(op)

    def head(self, topic: str) -> TopicHead:
        tkey = _topic_key(topic)
        raw = self._read(lambda txn: txn.get(tkey, db=self._heads))
        return (_Head() if raw is None else _Head.decode(raw)).public(topic)

    def topics(self) -> list[TopicHead]:
        """The head of every topic ever appended to, by name."""

        def op(txn: lmdb.Transaction[bytes]) -> list[TopicHead]:
            return [
                _Head.decode(v).public(k.decode("utf-8"))
                for k, v in txn.cursor(db=self._heads).iternext()
            ]

        return self._read(op)

    def sender_ranges(self, sender: bytes, topic: str | None = None) -> list[tuple[int, int]]:
        """Inclusive ranges of the sender sequence numbers received from ``sender``
        (on ``topic``, or on any topic), sorted and merged.

        Retention does not shrink these: they record what arrived, not what is
        still stored. Past ``max_seen_ranges`` ranges per (sender, topic), the
        oldest gap is given up (treated as received).
        """
        _check_id(sender, "sender")
        prefix = sender + (b"" if topic is None else _topic_key(topic) + b"\x00")

        def op(txn: lmdb.Transaction[bytes]) -> list[tuple[int, int]]:
            found: list[tuple[int, int]] = []
            cur = txn.cursor(db=self._seen)
            if not cur.set_range(prefix):
                return found
            for key, value in cur.iternext():
                if not key.startswith(prefix):
                    break
                found.append((_U64.unpack(key[-8:])[0], _U64.unpack(value)[0]))
            return found

        return merge_ranges(self._read(op))

    def sender_gaps(self, sender: bytes, topic: str | None = None) -> list[tuple[int, int]]:
        """Inclusive ranges of sender sequence numbers missing between the ones
        received ("missed N from X": N is the total length of these ranges)."""
        return gaps_between(self.sender_ranges(sender, topic))

    # -- catch-up, carrier side ------------------------------------------------------

    def seq_at(self, topic: str, received_ms: int) -> int:
        """The log seq a catch-up "since ``received_ms``" starts after.

        Returns the largest ``s`` such that every stored record of ``topic``
        with seq <= ``s`` was received before ``received_ms``; read from
        ``after=s`` to get what arrived since. Records are appended in
        receipt order, so ``received_ms`` is non-decreasing along the log
        unless the clock stepped back; the search treats it as sorted and is
        exact when it is. Either way record ``s`` (if stored) was received
        before ``received_ms`` and record ``s + 1`` (if stored) was not.

        An empty topic gives ``head.next_seq - 1`` (0 for a topic never
        appended to); if the oldest stored record is already not older,
        ``first_seq - 1``. A binary search over ``first_seq .. next_seq - 1``:
        O(log n) record reads in one read transaction.
        """
        tkey = _topic_key(topic)
        _check_u64(received_ms, "received_ms")

        def op(txn: lmdb.Transaction[bytes]) -> int:
            head = _Head.load(txn, self._heads, tkey)
            if head.count == 0:
                return head.next_seq - 1

            cur = txn.cursor(db=self._log)
            prefix = tkey + b"\x00"

            def received(seq: int) -> int:
                """Of the first stored record at or after ``seq`` (a pinned topic may
                have holes), or past every u64 if there is none."""
                if not cur.set_range(_log_key(tkey, seq)) or _seq_in(cur.key(), prefix) is None:
                    return U64_MAX + 1
                return _decode_record(cur.key(), cur.value()).received_ms

            seqs = range(head.first_seq, head.next_seq)
            return head.first_seq - 1 + bisect_left(seqs, received_ms, key=received)

        return self._read(op)

    def read_sender(
        self, topic: str, sender: bytes, first: int, last: int, limit: int = 100
    ) -> list[StoredMessage]:
        """Up to ``limit`` stored messages of ``topic`` from ``sender`` with a
        sender sequence in ``first .. last`` (inclusive), by ascending sender
        sequence (a sequence the sender reused: by message id).

        Records removed by retention are not returned (retention deletes
        their ``senders`` index entries with them). An empty range
        (``first > last``) gives ``[]``. The ``senders`` index has no topic,
        so the sender's records in other topics within the range are read
        past, not returned.
        """
        tkey = _topic_key(topic)
        _check_id(sender, "sender")
        _check_u64(first, "first")
        _check_u64(last, "last")
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be in 1..{MAX_PAGE}")
        if first > last:
            return []
        in_topic = tkey + b"\x00"
        seq_end = len(sender) + 8

        def op(txn: lmdb.Transaction[bytes]) -> list[StoredMessage]:
            out: list[StoredMessage] = []
            cur = txn.cursor(db=self._senders)
            if not cur.set_range(sender + _u64(first)):
                return out
            for key, log_key in cur.iternext():
                if not key.startswith(sender) or _U64.unpack(key[len(sender):seq_end])[0] > last:
                    break
                if _seq_in(log_key, in_topic) is None:
                    continue  # another topic
                value = txn.get(log_key, db=self._log)
                if value is None:
                    raise StoreCorrupt("sender index points to a missing record")
                out.append(_decode_record(log_key, value))
                if len(out) >= limit:
                    break
            return out

        return self._read(op)

    def sender_heads(self, topic: str, limit: int = 256) -> list[tuple[bytes, int]]:
        """``(sender, highest sender_seq)`` of each sender ever stored in ``topic``.

        In ascending order of sender; with more than ``limit`` (1..MAX_PAGE)
        senders, the first ``limit`` of that order. Retention does not lower
        these: they say what this carrier has received, not what it still
        stores (compare ``read_sender``).
        """
        tkey = _topic_key(topic)
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be in 1..{MAX_PAGE}")
        prefix = tkey + b"\x00"

        def op(txn: lmdb.Transaction[bytes]) -> list[tuple[bytes, int]]:
            out: list[tuple[bytes, int]] = []
            cur = txn.cursor(db=self._latest)
            if not cur.set_range(prefix):
                return out
            for key, value in cur.iternext():
                if not key.startswith(prefix):
                    break
                out.append((key[len(prefix):], int(_U64.unpack(value)[0])))
                if len(out) >= limit:
                    break
            return out

        return self._read(op)

    # -- statistics and checking -------------------------------------------------------------

    def stats(self) -> StoreStats:
        def op(txn: lmdb.Transaction[bytes]) -> tuple[int, int, int, int, int, int]:
            topics = message_bytes = 0
            for _, value in txn.cursor(db=self._heads).iternext():
                topics += 1
                message_bytes += _Head.decode(value).total_bytes
            return (
                topics,
                txn.stat(self._log)["entries"],
                message_bytes,
                txn.stat(self._outbox)["entries"],
                txn.stat(self._dead)["entries"],
                txn.stat(self._log)["psize"],
            )

        topics, messages, message_bytes, outbox, dead, psize = self._read(op)
        with self._gate.shared():
            info = self._require_env().info()
        with self._counter_lock:
            commits, grows = self._commits, self._grows
        return StoreStats(
            path=str(self.path),
            map_size=info["map_size"],
            max_map_size=self._max_map_size,
            used_bytes=(info["last_pgno"] + 1) * psize,
            topics=topics,
            messages=messages,
            message_bytes=message_bytes,
            outbox=outbox,
            dead_letters=dead,
            commits=commits,
            map_grows=grows,
        )

    def check(self) -> list[str]:
        """Walk everything and report inconsistencies (empty list: all is well).

        Every record decodes, each topic's records are exactly
        ``first_seq .. next_seq - 1`` with the counts and bytes its head says,
        and the id, sender and outbox indexes match the records both ways.
        The sender heads (``latest``) equal the ends of the seen ranges, and
        read flags name stored records above their topic's watermark.
        """
        return self._read(self._check_in)

    def _check_in(self, txn: lmdb.Transaction[bytes]) -> list[str]:
        problems: list[str] = []
        heads = _check.read_heads(txn, self._heads, problems)
        tally = _check.walk_log(txn, self._log, self._ids, self._senders, problems)
        problems += _check.check_heads(heads, tally)
        problems += _check.check_index_sizes(txn, self._ids, self._senders, tally)
        problems += _check.check_latest(txn, self._seen, self._latest)
        problems += _check.check_flags(txn, self._flags, self._cursors, heads)
        problems += _check.check_outbox(txn, self._outbox, self._due, self._deadline, self._dead)
        return problems


def _runs(sequenced: list[tuple[bytes, bytes, int]]) -> list[tuple[bytes, bytes, int, int]]:
    """``(sender, topic key, sender_seq)`` in batch order, as runs of consecutive
    sequences of one (sender, topic): ``(sender, topic key, first, last)``."""
    out: list[tuple[bytes, bytes, int, int]] = []
    for sender, tkey, s in sequenced:
        if out and out[-1][3] + 1 == s and out[-1][:2] == (sender, tkey):
            out[-1] = (sender, tkey, out[-1][2], s)
        else:
            out.append((sender, tkey, s, s))
    return out
