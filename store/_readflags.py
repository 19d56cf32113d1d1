"""Read state of a local inbox log: a per-topic watermark plus flags above it.

``_ReadFlags`` is a part of :class:`~store._log.MessageStore`. A record of a
topic is *read* when its seq is at or below the topic's read watermark, or
when it carries a flag in the ``flags`` database. The watermark lives in the
``cursors`` database under a reserved name (``00 "read"``, which no reader
name can spell); see ``store._records`` for the layout. Rules kept here:

* Flags exist only for stored records above the watermark: ``mark_read``
  ignores other seqs, raising the watermark deletes the flags at or below it,
  and retention deletes the flag of every record it deletes. So the unread
  count is the number of stored records above the watermark minus the flags.
* The watermark only rises, and never past the topic's last seq: messages
  appended later start unread.
* Every write is small and keeps the peer running, so it uses
  ``reserve=True`` like cursors and state.
"""

from __future__ import annotations

from collections.abc import Iterable

import lmdb

from ._env import _StoreEnv
from ._records import (
    _U64,
    MAX_PAGE,
    _check_u64,
    _Head,
    _log_key,
    _read_mark_key,
    _seq_in,
    _topic_key,
    _u64,
)


class _ReadFlags(_StoreEnv):
    """``mark_read``, ``mark_read_through``, ``read_state`` and ``unread_count``."""

    def _watermark(self, txn: lmdb.Transaction[bytes], tkey: bytes) -> int:
        raw = txn.get(_read_mark_key(tkey), db=self._cursors)
        return 0 if raw is None else int(_U64.unpack(raw)[0])

    def _flagged(self, txn: lmdb.Transaction[bytes], tkey: bytes, above: int) -> set[int]:
        """The flagged seqs of topic key ``tkey`` greater than ``above``."""
        prefix = tkey + b"\x00"
        out: set[int] = set()
        cur = txn.cursor(db=self._flags)
        if not cur.set_range(prefix):
            return out
        for key in cur.iternext(values=False):
            seq = _seq_in(key, prefix)
            if seq is None:
                break
            if seq > above:
                out.add(seq)
        return out

    def mark_read(self, topic: str, seqs: Iterable[int]) -> int:
        """Flag the records ``seqs`` of ``topic`` as read; returns how many were
        not read before.

        Seqs that are not stored (never appended, or removed by retention), at
        or below the topic's read watermark, or already flagged are ignored.
        At most ``MAX_PAGE`` seqs per call (ValueError otherwise).
        """
        tkey = _topic_key(topic)
        wanted = list(seqs)
        if len(wanted) > MAX_PAGE:
            raise ValueError(f"at most {MAX_PAGE} seqs per call")
        for seq in wanted:
            _check_u64(seq, "seq")
        if not wanted:
            return 0

        def op(txn: lmdb.Transaction[bytes]) -> int:
            head = _Head.load(txn, self._heads, tkey)
            if head.count == 0:
                return 0
            low = max(head.first_seq, self._watermark(txn, tkey) + 1)
            marked = 0
            for seq in sorted(set(wanted)):
                if low <= seq < head.next_seq and txn.put(
                    _log_key(tkey, seq), b"", overwrite=False, db=self._flags
                ):
                    marked += 1
            return marked

        return self._write(op, reserve=True)

    def mark_read_through(self, topic: str, seq: int) -> int:
        """Raise ``topic``'s read watermark to ``seq``: every record with a seq
        at or below it is read. Returns how many stored records were unread
        before and are read now.

        The watermark never falls (a ``seq`` at or below it changes nothing)
        and never passes the topic's last seq (a larger ``seq``, such as
        ``U64_MAX`` for "all read", is lowered to it), so messages appended
        later are unread. Flags at or below the new watermark are deleted.
        """
        tkey = _topic_key(topic)
        _check_u64(seq, "seq")
        prefix = tkey + b"\x00"

        def op(txn: lmdb.Transaction[bytes]) -> int:
            head = _Head.load(txn, self._heads, tkey)
            old = self._watermark(txn, tkey)
            new = min(seq, head.next_seq - 1)
            if new <= old:
                return 0
            low = max(old + 1, head.first_seq)
            newly = max(0, new - low + 1) if head.count else 0
            cur = txn.cursor(db=self._flags)
            if cur.set_range(_log_key(tkey, old + 1)):
                while True:
                    flagged = _seq_in(cur.key(), prefix)
                    if flagged is None or flagged > new:
                        break
                    newly -= 1  # it was read already
                    if not cur.delete():
                        break
            txn.put(_read_mark_key(tkey), _u64(new), db=self._cursors)
            return newly

        return self._write(op, reserve=True)

    def read_state(self, topic: str) -> tuple[int, set[int]]:
        """``(watermark, flagged)``: ``topic``'s read watermark (0 if never set)
        and the seqs above it flagged by ``mark_read``."""
        tkey = _topic_key(topic)

        def op(txn: lmdb.Transaction[bytes]) -> tuple[int, set[int]]:
            watermark = self._watermark(txn, tkey)
            return watermark, self._flagged(txn, tkey, watermark)

        return self._read(op)

    def unread_count(self, topic: str) -> int:
        """How many stored records of ``topic`` are unread: those above the
        watermark without a flag. Reads every flag of the topic."""
        tkey = _topic_key(topic)

        def op(txn: lmdb.Transaction[bytes]) -> int:
            head = _Head.load(txn, self._heads, tkey)
            if head.count == 0:
                return 0
            watermark = self._watermark(txn, tkey)
            above = head.next_seq - max(head.first_seq, watermark + 1)
            return max(0, above) - len(self._flagged(txn, tkey, watermark))

        return self._read(op)
