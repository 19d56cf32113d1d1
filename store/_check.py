"""The store's consistency check: walk every database and report what disagrees.

:meth:`store._log.MessageStore.check` runs these functions in one read
transaction. Each takes the transaction and the database handles it reads,
changes nothing, and returns a list of one-line problems (empty: all is
well). They only read, so they may run while a writer works.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeAlias

import lmdb

from ._errors import StoreCorrupt
from ._records import (
    _U64,
    MAX_ID_BYTES,
    _decode_dead,
    _decode_outbox,
    _decode_record,
    _Head,
    _latest_key,
    _read_mark_key,
    _split_log_key,
    _u64,
)

Txn: TypeAlias = "lmdb.Transaction[bytes]"
Db: TypeAlias = Any  # an lmdb database handle (lmdb ships no types for it)


@dataclass(slots=True)
class LogTally:
    """What a walk of the log found: each topic's sequences and bytes, and counts."""

    seqs: dict[str, list[int]] = field(default_factory=dict)
    n_bytes: dict[str, int] = field(default_factory=dict)
    records: int = 0
    sender_entries: int = 0


def read_heads(txn: Txn, heads_db: Db, problems: list[str]) -> dict[str, _Head]:
    """Every topic head that decodes; the others are reported."""
    heads: dict[str, _Head] = {}
    for key, value in txn.cursor(db=heads_db).iternext():
        try:
            heads[key.decode("utf-8")] = _Head.decode(value)
        except (StoreCorrupt, UnicodeDecodeError) as exc:
            problems.append(f"head {key!r}: {exc}")
    return heads


def walk_log(txn: Txn, log_db: Db, ids_db: Db, senders_db: Db, problems: list[str]) -> LogTally:
    """Every record decodes and its id and sender index entries point back to it."""
    tally = LogTally()
    for key, value in txn.cursor(db=log_db).iternext():
        tally.records += 1
        try:
            msg = _decode_record(key, value)
        except (StoreCorrupt, UnicodeDecodeError) as exc:
            problems.append(f"record {key!r}: {exc}")
            continue
        tally.seqs.setdefault(msg.topic, []).append(msg.seq)
        tally.n_bytes[msg.topic] = tally.n_bytes.get(msg.topic, 0) + len(msg.wire)
        if txn.get(msg.msg_id, db=ids_db) != key:
            problems.append(f"{msg.topic}/{msg.seq}: id index does not point back")
        skey = msg.sender + _u64(msg.sender_seq) + msg.msg_id
        indexed = txn.get(skey, db=senders_db)
        if msg.sender_seq == 0:  # not sequenced: no entry (older stores have one)
            tally.sender_entries += indexed is not None
        elif indexed != key:
            problems.append(f"{msg.topic}/{msg.seq}: sender index does not point back")
        else:
            tally.sender_entries += 1
    return tally


def check_heads(heads: dict[str, _Head], tally: LogTally) -> list[str]:
    """Each topic's records lie in ``first_seq .. next_seq - 1`` starting at
    ``first_seq`` (holes only where retention kept pinned records), with the
    count and bytes its head says; no records without a head."""
    problems: list[str] = []
    seen_topics = dict(tally.seqs)
    for topic, head in heads.items():
        seqs = seen_topics.pop(topic, [])
        inside = bool(seqs) and seqs[0] == head.first_seq and seqs[-1] < head.next_seq
        if head.count != len(seqs) or (seqs and not inside):
            problems.append(
                f"{topic}: head says {head.count} records from {head.first_seq} "
                f"to {head.next_seq - 1}, log has {len(seqs)} "
                f"({seqs[:1]}..{seqs[-1:]})"
            )
        if head.count == 0 and head.first_seq != head.next_seq:
            problems.append(f"{topic}: empty but first_seq != next_seq")
        if tally.n_bytes.get(topic, 0) != head.total_bytes:
            problems.append(
                f"{topic}: head says {head.total_bytes} bytes, "
                f"log has {tally.n_bytes.get(topic, 0)}"
            )
    problems.extend(f"{topic}: records without a head" for topic in seen_topics)
    return problems


def check_index_sizes(txn: Txn, ids_db: Db, senders_db: Db, tally: LogTally) -> list[str]:
    """The id and sender indexes have one entry per (sequenced) record."""
    problems: list[str] = []
    if txn.stat(ids_db)["entries"] != tally.records:
        problems.append(f"id index has {txn.stat(ids_db)['entries']} entries, log {tally.records}")
    if txn.stat(senders_db)["entries"] != tally.sender_entries:
        problems.append("sender index and log differ in size")
    return problems


def check_latest(txn: Txn, seen_db: Db, latest_db: Db) -> list[str]:
    """``latest`` holds, for every (topic, sender) with seen ranges, the end
    of the last range (both only ever rise, on the same appends)."""
    want: dict[bytes, int] = {}
    for key, value in txn.cursor(db=seen_db).iternext():
        lkey = _latest_key(key[MAX_ID_BYTES:-9], key[:MAX_ID_BYTES])
        want[lkey] = max(want.get(lkey, 0), _U64.unpack(value)[0])
    problems: list[str] = []
    for lkey, raw in txn.cursor(db=latest_db).iternext():
        got = _U64.unpack(raw)[0] if len(raw) == 8 else None
        if want.pop(lkey, None) != got:
            problems.append(f"sender head {lkey!r} is {got}, seen ranges disagree")
    problems.extend(f"sender head {lkey!r} is missing" for lkey in want)
    return problems


def check_flags(txn: Txn, flags_db: Db, cursors_db: Db, heads: dict[str, _Head]) -> list[str]:
    """Every read flag names a stored record above its topic's watermark."""
    problems: list[str] = []
    for key in txn.cursor(db=flags_db).iternext(values=False):
        try:
            topic, seq = _split_log_key(key)
        except (StoreCorrupt, UnicodeDecodeError) as exc:
            problems.append(f"read flag {key!r}: {exc}")
            continue
        head = heads.get(topic, _Head())
        raw = txn.get(_read_mark_key(key[:-9]), db=cursors_db)
        watermark = 0 if raw is None else _U64.unpack(raw)[0]
        if not (head.count and head.first_seq <= seq < head.next_seq):
            problems.append(f"{topic}/{seq}: read flag of a record not stored")
        elif seq <= watermark:
            problems.append(f"{topic}/{seq}: read flag at or below the watermark")
    return problems


def check_outbox(txn: Txn, outbox_db: Db, due_db: Db, deadline_db: Db, dead_db: Db) -> list[str]:
    """Every outbox entry decodes and is in the due and deadline indexes, which
    hold nothing else; every dead letter decodes."""
    problems: list[str] = []
    outbox = 0
    for key, value in txn.cursor(db=outbox_db).iternext():
        outbox += 1
        try:
            e = _decode_outbox(key, value)
        except StoreCorrupt as exc:
            problems.append(f"outbox {key.hex()}: {exc}")
            continue
        if txn.get(_u64(e.next_try_ms) + key, db=due_db) is None:
            problems.append(f"outbox {key.hex()}: not in the due index")
        if txn.get(_u64(e.deadline_ms) + key, db=deadline_db) is None:
            problems.append(f"outbox {key.hex()}: not in the deadline index")
    for db, name in ((due_db, "due"), (deadline_db, "deadline")):
        if txn.stat(db)["entries"] != outbox:
            problems.append(f"{name} index has {txn.stat(db)['entries']} entries for {outbox}")
    for key, value in txn.cursor(db=dead_db).iternext():
        try:
            _decode_dead(key, value)
        except StoreCorrupt as exc:
            problems.append(f"dead letter {key.hex()}: {exc}")
    return problems
