"""What the message store keeps, and how it lays it out in LMDB.

This module is pure data: the public value types, the limits on their sizes,
the key and record encodings of every named database, and the range
arithmetic on seen sender sequences. It opens no environment and runs no
transaction (``_Head.load`` and ``_latest_from_seen`` work inside a
transaction their caller owns).

Layout (named databases; integers are unsigned 64-bit big-endian, so byte
order is numeric order; ``topic`` and names are UTF-8 without NUL):

``log``      ``topic 00 seq`` -> CBOR ``[msg_id, sender, sender_seq, ts, received_ms, wire]``
``heads``    ``topic`` -> CBOR ``[next_seq, first_seq, count, bytes]``
``ids``      ``msg_id`` -> log key
``senders``  ``sender sender_seq msg_id`` -> log key
``seen``     ``sender topic 00 start`` -> ``end``: sender sequences received (inclusive ranges)
``seen_n``   ``sender topic`` -> number of ranges in ``seen`` for that pair
``latest``   ``topic 00 sender`` -> highest ``sender_seq`` stored from that sender in that topic
``flags``    ``topic 00 seq`` -> empty: that record of the local inbox has been read
``cursors``  ``name 00 topic`` -> seq; the reserved name ``00 "read"`` (user names have
             no NUL) holds each topic's read watermark: every seq <= it is read
``state``    ``key`` -> opaque bytes
``outbox``   ``msg_id`` -> CBOR ``[recipient, wire, next_try_ms, deadline_ms, attempts]``
``due``      ``next_try_ms msg_id`` -> empty
``deadline`` ``deadline_ms msg_id`` -> empty
``dead``     ``msg_id`` -> CBOR ``[recipient, wire, attempts, failed_ms, reason]``
``meta``     ``b"schema"`` -> schema version

A record whose ``sender_seq`` is 0 is not sequenced (a peer's own inbox
copies): it has no ``senders``, ``seen`` or ``latest`` entry. Stores written
before that rule have a ``senders`` entry for such records; it is harmless,
and ``check`` accepts it.

``latest`` only ever rises: retention does not lower it (it records what the
carrier has seen, like ``seen``), so its value for (topic, sender) is the end
of the last ``seen`` range of (sender, topic). Schema 1 had no ``latest`` or
``flags``; opening such a store creates them and fills ``latest`` from
``seen`` (``_latest_from_seen``). ``flags`` holds only seqs of stored records
above the topic's watermark: retention deletes the flags of the records it
deletes, and raising the watermark deletes the flags at or below it.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import cbor2
import lmdb

from ._errors import StoreCorrupt

MAX_TOPIC_BYTES = 255
MAX_NAME_BYTES = 255
MAX_ID_BYTES = 32
DEFAULT_MAX_RECORD = 1024 * 1024
MAX_STATE_VALUE = 256 * 1024
MAX_REASON_CHARS = 200
MAX_PAGE = 10_000
DEFAULT_MAX_SEEN_RANGES = 256
U64_MAX = (1 << 64) - 1

_U64 = struct.Struct(">Q")
_DB_NAMES = (
    "log", "heads", "ids", "senders", "seen", "seen_n", "cursors", "state",
    "outbox", "due", "deadline", "dead", "meta", "latest", "flags",
)
_READ_MARK = b"\x00read\x00"  # prefix of the read watermarks in ``cursors``


# -- values -------------------------------------------------------------------


class EnvelopeLike(Protocol):
    """What :meth:`AppendItem.from_envelope` needs of a verified envelope."""

    @property
    def id(self) -> bytes: ...
    @property
    def topic(self) -> str: ...
    @property
    def sender(self) -> bytes: ...
    @property
    def seq(self) -> int: ...
    @property
    def ts(self) -> int: ...
    @property
    def wire(self) -> bytes: ...


class AppendItem(NamedTuple):
    """One message to append to ``topic``'s log.

    A named tuple rather than a frozen dataclass: two are made per message
    on catch-up's path, and a frozen dataclass costs several times more to
    build.

    ``follows``: this item goes with the one before it in the batch (the
    peer's ``~inbox`` reference to the channel record before it). It is
    stored exactly when that one is new (a duplicate's follower is not
    stored: its result is a duplicate at seq 0, and neither is one after
    a follower that was not new), and its id index entry is put without
    overwriting one another record owns (a taken key: a duplicate); a
    caller picks a key that sorts next to its neighbours', so the index
    grows at a few places per commit instead of at one random place per
    message."""

    msg_id: bytes
    topic: str
    sender: bytes
    sender_seq: int
    ts: int
    wire: bytes
    received_ms: int
    follows: bool = False

    @classmethod
    def from_envelope(
        cls, env: EnvelopeLike, *, received_ms: int, topic: str | None = None
    ) -> AppendItem:
        return cls(  # in field order: positional arguments build a named tuple faster
            env.id,
            env.topic if topic is None else topic,
            env.sender,
            env.seq,
            env.ts,
            env.wire,
            received_ms,
        )

    def check(self, max_record: int = DEFAULT_MAX_RECORD) -> None:
        """Raise ValueError unless this item can be stored."""
        _topic_key(self.topic)
        self.check_fields(max_record)

    def check_fields(self, max_record: int = DEFAULT_MAX_RECORD) -> None:
        """``check`` without the topic (a batch checks each of its topics once).

        The common case (exact types, in range) is decided in one expression;
        anything else takes the checks one by one, which say what is wrong."""
        m, s, q, t, r, w = self.msg_id, self.sender, self.sender_seq, self.ts, \
            self.received_ms, self.wire
        if (
            type(m) is bytes and len(m) == MAX_ID_BYTES
            and type(s) is bytes and len(s) == MAX_ID_BYTES
            and type(q) is int and type(t) is int and type(r) is int
            and 0 <= q <= U64_MAX and 0 <= t <= U64_MAX and 0 <= r <= U64_MAX
            and type(w) is bytes and len(w) <= max_record
        ):
            return
        _check_id(self.msg_id, "msg_id")
        _check_id(self.sender, "sender")
        _check_u64(self.sender_seq, "sender_seq")
        _check_u64(self.ts, "ts")
        _check_u64(self.received_ms, "received_ms")
        if not isinstance(self.wire, bytes):
            raise ValueError("wire must be bytes")
        if len(self.wire) > max_record:
            raise ValueError(f"record of {len(self.wire)} bytes over {max_record}")


class AppendResult(NamedTuple):
    """Where a message is stored; ``duplicate`` if it was stored before."""

    msg_id: bytes
    topic: str
    seq: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class StoredMessage:
    topic: str
    seq: int
    msg_id: bytes
    sender: bytes
    sender_seq: int
    ts: int
    received_ms: int
    wire: bytes


@dataclass(frozen=True, slots=True)
class TopicHead:
    """A topic's log: ``count`` records are stored in ``first_seq .. next_seq - 1``,
    ``first_seq`` the lowest (all of them, unless retention kept pinned records and
    trimmed behind them: ``store._retention``)."""

    topic: str
    next_seq: int = 1
    first_seq: int = 1
    count: int = 0
    total_bytes: int = 0

    @property
    def last_seq(self) -> int:
        return self.next_seq - 1


@dataclass(frozen=True, slots=True)
class RetentionResult:
    deleted: int
    freed_bytes: int
    done: bool  # False: more records are due; call again
    pinned: int = 0  # pinned records this step passed over (kept)
    pinned_bytes: int = 0  # ... and their wire bytes
    resume: int = 0  # not done: the seq to call again ``after``


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    msg_id: bytes
    recipient: bytes
    wire: bytes
    next_try_ms: int
    deadline_ms: int
    attempts: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    msg_id: bytes
    recipient: bytes
    wire: bytes
    attempts: int
    failed_ms: int
    reason: str


@dataclass(frozen=True, slots=True)
class StoreStats:
    path: str
    map_size: int
    max_map_size: int
    used_bytes: int
    topics: int
    messages: int
    message_bytes: int
    outbox: int
    dead_letters: int
    commits: int
    map_grows: int


# -- keys and records -------------------------------------------------------------


def _check_u64(value: object, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= U64_MAX:
        raise ValueError(f"{name} must be an unsigned 64-bit integer")


def _check_id(value: object, name: str) -> None:
    if not isinstance(value, bytes) or len(value) != MAX_ID_BYTES:
        raise ValueError(f"{name} must be {MAX_ID_BYTES} bytes")


def _name_key(name: str, what: str, limit: int = MAX_NAME_BYTES) -> bytes:
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ValueError(f"{what} must be a non-empty string without NUL")
    raw = name.encode("utf-8")
    if len(raw) > limit:
        raise ValueError(f"{what} of {len(raw)} bytes over {limit}")
    return raw


def _topic_key(topic: str) -> bytes:
    return _name_key(topic, "topic", MAX_TOPIC_BYTES)


def _u64(value: int) -> bytes:
    return _U64.pack(value)


def _log_key(topic_key: bytes, seq: int) -> bytes:
    return topic_key + b"\x00" + _U64.pack(seq)


def _split_log_key(key: bytes) -> tuple[str, int]:
    if len(key) < 10 or key[-9] != 0:
        raise StoreCorrupt(f"bad log key {key[:40]!r}")
    return key[:-9].decode("utf-8"), _U64.unpack(key[-8:])[0]


def _latest_key(topic_key: bytes, sender: bytes) -> bytes:
    return topic_key + b"\x00" + sender


def _read_mark_key(topic_key: bytes) -> bytes:
    return _READ_MARK + topic_key


def _seq_in(key: bytes, prefix: bytes) -> int | None:
    """The seq of ``key`` if it is ``prefix`` followed by a u64, else None."""
    if len(key) != len(prefix) + 8 or not key.startswith(prefix):
        return None
    return int(_U64.unpack(key[-8:])[0])


def _latest_from_seen(
    txn: lmdb.Transaction[bytes], seen: lmdb._Database, latest: lmdb._Database
) -> int:
    """Fill ``latest`` from the ``seen`` ranges (upgrading a schema 1 store);
    returns the number of (topic, sender) entries written."""
    highest: dict[bytes, int] = {}
    for key, value in txn.cursor(db=seen).iternext():
        if len(key) < MAX_ID_BYTES + 10 or key[-9] != 0:
            raise StoreCorrupt(f"bad seen key {key[:40]!r}")
        lkey = _latest_key(key[MAX_ID_BYTES:-9], key[:MAX_ID_BYTES])
        end = int(_U64.unpack(value)[0])
        if end > highest.get(lkey, -1):
            highest[lkey] = end
    for lkey, end in highest.items():
        txn.put(lkey, _u64(end), db=latest)
    return len(highest)


def _loads(data: bytes, size: int, what: str) -> list[Any]:
    try:
        obj = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types on bad input
        raise StoreCorrupt(f"{what} does not decode: {exc}") from None
    if not isinstance(obj, list) or len(obj) != size:
        raise StoreCorrupt(f"{what} is not a {size}-item array")
    return obj


def _need(obj: object, kind: type, what: str) -> Any:
    if not isinstance(obj, kind) or isinstance(obj, bool):
        raise StoreCorrupt(f"{what} has a field of type {type(obj).__name__}")
    return obj


def _encode_record(item: AppendItem) -> bytes:
    """The log record of ``item``: the CBOR array ``[msg_id, sender, sender_seq,
    ts, received_ms, wire]`` exactly as ``cbor2.dumps`` writes it (shortest
    heads), put together from its parts (``_encode_record_cbor2`` is the
    reference); ``item`` is checked (``check_fields``) before."""
    return b"".join((
        b"\x86X ", item.msg_id, b"X ", item.sender, _uint_head(0x00, item.sender_seq),
        _uint_head(0x00, item.ts), _uint_head(0x00, item.received_ms),
        _uint_head(0x40, len(item.wire)), item.wire,
    ))


_ONE_BYTE = [bytes((b,)) for b in range(256)]
_HEAD1, _HEAD2, _HEAD4, _HEAD8 = (struct.Struct(f) for f in (">BB", ">BH", ">BI", ">BQ"))


def _uint_head(major: int, n: int) -> bytes:
    """The shortest CBOR head of major type ``major`` (0x00 uint, 0x40 bytes) for ``n``
    (``struct`` and a table: it runs four times per record on catch-up's path)."""
    if n < 24:
        return _ONE_BYTE[major | n]
    if n < 0x100:
        return _HEAD1.pack(major | 24, n)
    if n < 0x10000:
        return _HEAD2.pack(major | 25, n)
    if n < 0x100000000:
        return _HEAD4.pack(major | 26, n)
    return _HEAD8.pack(major | 27, n)


def _encode_record_cbor2(item: AppendItem) -> bytes:
    """:func:`_encode_record` the general way (the reference for tests)."""
    return cbor2.dumps(
        [item.msg_id, item.sender, item.sender_seq, item.ts, item.received_ms, item.wire]
    )


def _decode_record(key: bytes, value: bytes) -> StoredMessage:
    topic, seq = _split_log_key(key)
    f = _loads(value, 6, "log record")
    msg = StoredMessage(
        topic=topic,
        seq=seq,
        msg_id=_need(f[0], bytes, "log record"),
        sender=_need(f[1], bytes, "log record"),
        sender_seq=_need(f[2], int, "log record"),
        ts=_need(f[3], int, "log record"),
        received_ms=_need(f[4], int, "log record"),
        wire=_need(f[5], bytes, "log record"),
    )
    if len(msg.msg_id) != MAX_ID_BYTES or len(msg.sender) != MAX_ID_BYTES:
        raise StoreCorrupt("log record ids have the wrong length")
    return msg


@dataclass(slots=True)
class _Head:
    next_seq: int = 1
    first_seq: int = 1
    count: int = 0
    total_bytes: int = 0

    def encode(self) -> bytes:
        return cbor2.dumps([self.next_seq, self.first_seq, self.count, self.total_bytes])

    @classmethod
    def decode(cls, value: bytes) -> _Head:
        f = _loads(value, 4, "topic head")
        return cls(*(_need(x, int, "topic head") for x in f))

    @classmethod
    def load(cls, txn: lmdb.Transaction[bytes], heads: lmdb._Database, tkey: bytes) -> _Head:
        """The head of topic key ``tkey`` in the ``heads`` database (empty if none)."""
        raw = txn.get(tkey, db=heads)
        return cls() if raw is None else cls.decode(raw)

    def public(self, topic: str) -> TopicHead:
        return TopicHead(topic, self.next_seq, self.first_seq, self.count, self.total_bytes)


def _decode_outbox(msg_id: bytes, value: bytes) -> OutboxEntry:
    f = _loads(value, 5, "outbox entry")
    return OutboxEntry(
        msg_id=msg_id,
        recipient=_need(f[0], bytes, "outbox entry"),
        wire=_need(f[1], bytes, "outbox entry"),
        next_try_ms=_need(f[2], int, "outbox entry"),
        deadline_ms=_need(f[3], int, "outbox entry"),
        attempts=_need(f[4], int, "outbox entry"),
    )


def _encode_outbox(e: OutboxEntry) -> bytes:
    return cbor2.dumps([e.recipient, e.wire, e.next_try_ms, e.deadline_ms, e.attempts])


def _decode_dead(msg_id: bytes, value: bytes) -> DeadLetter:
    f = _loads(value, 5, "dead letter")
    return DeadLetter(
        msg_id=msg_id,
        recipient=_need(f[0], bytes, "dead letter"),
        wire=_need(f[1], bytes, "dead letter"),
        attempts=_need(f[2], int, "dead letter"),
        failed_ms=_need(f[3], int, "dead letter"),
        reason=_need(f[4], str, "dead letter"),
    )


def _encode_dead(d: DeadLetter) -> bytes:
    return cbor2.dumps([d.recipient, d.wire, d.attempts, d.failed_ms, d.reason])


# -- seen ranges -------------------------------------------------------------------


def merge_ranges(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort inclusive ranges and merge the ones that overlap or touch."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def gaps_between(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The inclusive ranges missing between sorted, merged ``ranges``."""
    return [(a[1] + 1, b[0] - 1) for a, b in itertools.pairwise(ranges)]
