"""Ordered records under a key prefix in the store's ``state`` database, read and
written in bounded pages: the schedules, their job history and the audit trail.

Each function opens and closes its own transaction (``_read``/``_write``), so
a caller pages through a million records in short synchronous steps, never
holding a transaction across an ``await``. Keys are UTF-8 strings that sort
the way the caller wants (fixed-width hex numbers); values are opaque bytes.
``put`` writes with the store's reserve only when asked (``reserve=True``):
bulk records (audit) must not eat the room kept for the peer's own state.
"""

from __future__ import annotations

from collections.abc import Mapping

import lmdb

from ._log import MessageStore
from ._records import MAX_STATE_VALUE, _name_key

MAX_JOURNAL_PAGE = 10_000


def put(store: MessageStore, items: Mapping[str, bytes | None], *, reserve: bool = False) -> None:
    """Write (a value) or delete (None) every key of ``items`` in one transaction."""
    raws = {_name_key(k, "journal key"): v for k, v in items.items()}
    for value in raws.values():
        if value is not None and len(value) > MAX_STATE_VALUE:
            raise ValueError(f"journal value over {MAX_STATE_VALUE} bytes")

    def op(txn: lmdb.Transaction[bytes]) -> None:
        for key, value in raws.items():
            if value is None:
                txn.delete(key, db=store._state)
            else:
                txn.put(key, value, db=store._state)

    store._write(op, reserve=reserve)


def page(
    store: MessageStore, prefix: str, after: str | None = None, limit: int = 1000,
    *, reverse: bool = False,
) -> list[tuple[str, bytes]]:
    """At most ``limit`` records under ``prefix`` in key order, after (or, with
    ``reverse``, before) the key ``after``."""
    limit = max(1, min(limit, MAX_JOURNAL_PAGE))
    start = prefix.encode("utf-8")
    mark = None if after is None else after.encode("utf-8")

    def op(txn: lmdb.Transaction[bytes]) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        cur = txn.cursor(db=store._state)
        if reverse:
            end = mark if mark is not None else start + b"\xff"  # never in UTF-8
            positioned = cur.prev() if cur.set_range(end) else cur.last()
            items = cur.iterprev() if positioned else iter(())
        else:
            found = cur.set_range(mark + b"\x00" if mark is not None else start)
            items = cur.iternext() if found else iter(())
        for key, value in items:
            if not key.startswith(start):
                break
            out.append((key.decode("utf-8"), bytes(value)))
            if len(out) >= limit:
                break
        return out

    return store._read(op)


def delete_before(store: MessageStore, prefix: str, before: str, budget: int = 1000) -> int:
    """Delete up to ``budget`` records under ``prefix`` whose key sorts before
    ``before``; returns how many went (fewer than ``budget``: none are left)."""
    start, stop = prefix.encode("utf-8"), before.encode("utf-8")

    def op(txn: lmdb.Transaction[bytes]) -> int:
        cur = txn.cursor(db=store._state)
        n = 0
        if not cur.set_range(start):
            return 0
        while n < budget:
            key = cur.key()
            if not key.startswith(start) or key >= stop:
                break
            if not cur.delete():
                break
            n += 1
        return n

    return store._write(op)


def count(store: MessageStore, prefix: str) -> int:
    """How many records are under ``prefix`` (walks them: for tests and small sets)."""
    start = prefix.encode("utf-8")

    def op(txn: lmdb.Transaction[bytes]) -> int:
        cur = txn.cursor(db=store._state)
        n = 0
        if cur.set_range(start):
            for key in cur.iternext(values=False):
                if not key.startswith(start):
                    break
                n += 1
        return n

    return store._read(op)


__all__ = ["MAX_JOURNAL_PAGE", "count", "delete_before", "page", "put"]
