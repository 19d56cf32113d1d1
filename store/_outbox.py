"""The DM outbox and its dead letters.

``_Outbox`` is a part of :class:`~store._log.MessageStore`. A direct message
stays in the ``outbox`` database, indexed by next try (``due``) and by
deadline (``deadline``), until the recipient's signed receipt arrives; given
up, it becomes a dead letter (``dead``) until the API user removes it. The
three outbox databases always change together, in one transaction. Writes
that complete or give up on entries use ``reserve=True``; adding does not.
"""

from __future__ import annotations

import lmdb

from ._env import _StoreEnv
from ._errors import StoreCorrupt
from ._records import (
    _U64,
    MAX_PAGE,
    MAX_REASON_CHARS,
    U64_MAX,
    DeadLetter,
    OutboxEntry,
    _check_id,
    _check_u64,
    _decode_dead,
    _decode_outbox,
    _encode_dead,
    _encode_outbox,
    _u64,
)


class _Outbox(_StoreEnv):
    """``outbox_*`` and ``dead_letter*``: DMs waiting for a receipt, and the ones given up."""

    # -- outbox and dead letters -----------------------------------------------------------

    def outbox_add(
        self, msg_id: bytes, recipient: bytes, wire: bytes, next_try_ms: int, deadline_ms: int
    ) -> bool:
        """Keep a DM until the recipient's signed receipt arrives.

        False (and no change) if the message is already in the outbox or
        among the dead letters.
        """
        _check_id(msg_id, "msg_id")
        _check_id(recipient, "recipient")
        _check_u64(next_try_ms, "next_try_ms")
        _check_u64(deadline_ms, "deadline_ms")
        if not isinstance(wire, bytes) or len(wire) > self._max_record:
            raise ValueError(f"wire must be bytes of at most {self._max_record}")
        entry = OutboxEntry(msg_id, recipient, wire, next_try_ms, deadline_ms, 0)

        def op(txn: lmdb.Transaction[bytes]) -> bool:
            if txn.get(msg_id, db=self._outbox) is not None:
                return False
            if txn.get(msg_id, db=self._dead) is not None:
                return False
            txn.put(msg_id, _encode_outbox(entry), db=self._outbox)
            txn.put(_u64(next_try_ms) + msg_id, b"", db=self._due)
            txn.put(_u64(deadline_ms) + msg_id, b"", db=self._deadline)
            return True

        return self._write(op)

    def outbox_get(self, msg_id: bytes) -> OutboxEntry | None:
        _check_id(msg_id, "msg_id")
        raw = self._read(lambda txn: txn.get(msg_id, db=self._outbox))
        return None if raw is None else _decode_outbox(msg_id, raw)

    def outbox_due(self, now_ms: int, limit: int = 100) -> list[OutboxEntry]:
        """Entries whose next try is at or before ``now_ms``, soonest first."""
        _check_u64(now_ms, "now_ms")
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be in 1..{MAX_PAGE}")

        def op(txn: lmdb.Transaction[bytes]) -> list[OutboxEntry]:
            out: list[OutboxEntry] = []
            for key, _ in txn.cursor(db=self._due).iternext():
                if _U64.unpack(key[:8])[0] > now_ms or len(out) >= limit:
                    break
                raw = txn.get(key[8:], db=self._outbox)
                if raw is None:
                    raise StoreCorrupt("outbox due index points to a missing entry")
                out.append(_decode_outbox(key[8:], raw))
            return out

        return self._read(op)

    def outbox_retry(self, msg_id: bytes, next_try_ms: int) -> OutboxEntry | None:
        """Count an attempt and schedule the next one; None if not in the outbox."""
        _check_id(msg_id, "msg_id")
        _check_u64(next_try_ms, "next_try_ms")

        def op(txn: lmdb.Transaction[bytes]) -> OutboxEntry | None:
            raw = txn.get(msg_id, db=self._outbox)
            if raw is None:
                return None
            old = _decode_outbox(msg_id, raw)
            new = OutboxEntry(
                msg_id, old.recipient, old.wire, next_try_ms, old.deadline_ms, old.attempts + 1
            )
            txn.delete(_u64(old.next_try_ms) + msg_id, db=self._due)
            txn.put(_u64(next_try_ms) + msg_id, b"", db=self._due)
            txn.put(msg_id, _encode_outbox(new), db=self._outbox)
            return new

        return self._write(op, reserve=True)

    def outbox_done(self, msg_id: bytes) -> bool:
        """The recipient's receipt arrived: forget the entry (or its dead letter)."""
        _check_id(msg_id, "msg_id")

        def op(txn: lmdb.Transaction[bytes]) -> bool:
            found = self._outbox_remove(txn, msg_id) is not None
            return txn.delete(msg_id, db=self._dead) or found

        return self._write(op, reserve=True)

    def outbox_fail(self, msg_id: bytes, reason: str, now_ms: int) -> DeadLetter | None:
        """Give up on an entry: it becomes a dead letter. None if not in the outbox."""
        _check_id(msg_id, "msg_id")
        _check_u64(now_ms, "now_ms")
        reason = str(reason)[:MAX_REASON_CHARS]

        def op(txn: lmdb.Transaction[bytes]) -> DeadLetter | None:
            old = self._outbox_remove(txn, msg_id)
            if old is None:
                return None
            return self._bury(txn, old, reason, now_ms)

        return self._write(op, reserve=True)

    def outbox_expire(self, now_ms: int, limit: int = 100) -> list[DeadLetter]:
        """Turn up to ``limit`` entries whose deadline is at or before ``now_ms``
        into dead letters (reason ``"expired"``), earliest deadline first."""
        _check_u64(now_ms, "now_ms")
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be in 1..{MAX_PAGE}")

        def expired(txn: lmdb.Transaction[bytes]) -> list[bytes]:
            ids: list[bytes] = []
            for key, _ in txn.cursor(db=self._deadline).iternext():
                if _U64.unpack(key[:8])[0] > now_ms or len(ids) >= limit:
                    break
                ids.append(key[8:])
            return ids

        if not self._read(expired):
            return []

        def op(txn: lmdb.Transaction[bytes]) -> list[DeadLetter]:
            out: list[DeadLetter] = []
            for msg_id in expired(txn):
                old = self._outbox_remove(txn, msg_id)
                if old is None:
                    raise StoreCorrupt("outbox deadline index points to a missing entry")
                out.append(self._bury(txn, old, "expired", now_ms))
            return out

        return self._write(op, reserve=True)

    def _outbox_remove(self, txn: lmdb.Transaction[bytes], msg_id: bytes) -> OutboxEntry | None:
        raw = txn.get(msg_id, db=self._outbox)
        if raw is None:
            return None
        old = _decode_outbox(msg_id, raw)
        txn.delete(msg_id, db=self._outbox)
        txn.delete(_u64(old.next_try_ms) + msg_id, db=self._due)
        txn.delete(_u64(old.deadline_ms) + msg_id, db=self._deadline)
        return old

    def _bury(
        self, txn: lmdb.Transaction[bytes], old: OutboxEntry, reason: str, now_ms: int
    ) -> DeadLetter:
        dead = DeadLetter(old.msg_id, old.recipient, old.wire, old.attempts, now_ms, reason)
        txn.put(old.msg_id, _encode_dead(dead), db=self._dead)
        return dead

    def outbox(self, limit: int = 100) -> list[OutboxEntry]:
        """Entries waiting for a receipt, soonest next try first."""
        return self.outbox_due(U64_MAX, limit)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Messages reported undeliverable, by message id."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be in 1..{MAX_PAGE}")

        def op(txn: lmdb.Transaction[bytes]) -> list[DeadLetter]:
            out: list[DeadLetter] = []
            for key, value in txn.cursor(db=self._dead).iternext():
                if len(out) >= limit:
                    break
                out.append(_decode_dead(key, value))
            return out

        return self._read(op)

    def dead_letter_remove(self, msg_id: bytes) -> bool:
        """Forget a dead letter (the API user has seen it)."""
        _check_id(msg_id, "msg_id")
        return self._write(lambda txn: txn.delete(msg_id, db=self._dead), reserve=True)
