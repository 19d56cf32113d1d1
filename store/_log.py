"""The message store: per-topic append logs and peer state in one LMDB environment.

Rules this module keeps:

* The interface is synchronous and imports no trio. Every LMDB transaction
  begins and ends inside one method call; nothing here returns an open
  transaction, cursor or buffer into the map. The Trio shell
  (``store._service``) calls these methods from worker threads, with a single
  writer.
* A method that writes returns only after its transaction has committed
  (durably, with ``sync=True``: LMDB fsyncs the data and meta pages before
  ``commit`` returns). Callers acknowledge nothing before that.
* ``append_batch`` writes many messages in one transaction (group commit) and
  deduplicates by message id: a message already stored keeps its position.
* Per-topic sequence numbers start at 1, are never reused, and a topic's
  stored records always form one contiguous range ``first_seq .. next_seq-1``:
  retention only ever removes the oldest records.
* The map grows instead of failing: on ``MapFullError`` the transaction is
  aborted, the map is resized while no transaction of this store is open
  (a shared/exclusive gate: transactions share it, a resize holds it alone)
  and the write is retried. Past ``max_map_size``, or when the disk refuses
  the write, the method raises :class:`StoreFull`; reads keep working.
  Writes that free space or keep the peer running (retention, cursors, state,
  outbox completion) may use a small reserve above ``max_map_size``, so a full
  store can still be trimmed.
* Everything is bounded: topic and key lengths, record and state value sizes,
  read page sizes, and the number of seen-sequence ranges kept per sender and
  topic.

Layout (named databases; integers are unsigned 64-bit big-endian, so byte
order is numeric order; ``topic`` and names are UTF-8 without NUL):

``log``      ``topic 00 seq`` -> CBOR ``[msg_id, sender, sender_seq, ts, received_ms, wire]``
``heads``    ``topic`` -> CBOR ``[next_seq, first_seq, count, bytes]``
``ids``      ``msg_id`` -> log key
``senders``  ``sender sender_seq msg_id`` -> log key
``seen``     ``sender topic 00 start`` -> ``end``: sender sequences received (inclusive ranges)
``seen_n``   ``sender topic`` -> number of ranges in ``seen`` for that pair
``cursors``  ``name 00 topic`` -> seq
``state``    ``key`` -> opaque bytes
``outbox``   ``msg_id`` -> CBOR ``[recipient, wire, next_try_ms, deadline_ms, attempts]``
``due``      ``next_try_ms msg_id`` -> empty
``deadline`` ``deadline_ms msg_id`` -> empty
``dead``     ``msg_id`` -> CBOR ``[recipient, wire, attempts, failed_ms, reason]``
``meta``     ``b"schema"`` -> schema version
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import cbor2
import lmdb

T = TypeVar("T")

SCHEMA_VERSION = 1
MAX_TOPIC_BYTES = 255
MAX_NAME_BYTES = 255
MAX_ID_BYTES = 32
DEFAULT_MAX_RECORD = 1024 * 1024
MAX_STATE_VALUE = 256 * 1024
MAX_REASON_CHARS = 200
MAX_PAGE = 10_000
DEFAULT_MAP_SIZE = 64 * 1024 * 1024
DEFAULT_MAX_MAP_SIZE = 4 * 1024 * 1024 * 1024
DEFAULT_MAX_SEEN_RANGES = 256
U64_MAX = (1 << 64) - 1

_U64 = struct.Struct(">Q")
_PAGE = max(os.sysconf("SC_PAGESIZE"), 4096)
_MIN_GROWTH = 1024 * 1024
# errno values of a commit the disk refused. LMDB reports a short write as EIO.
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})
_DB_NAMES = (
    "log", "heads", "ids", "senders", "seen", "seen_n", "cursors", "state",
    "outbox", "due", "deadline", "dead", "meta",
)


# -- errors -------------------------------------------------------------------


class StoreError(Exception):
    """Base class of every error this package raises on purpose."""


class StoreFull(StoreError):
    """The store cannot take this write: the map is at its maximum, or the disk is full.

    Nothing of the failed write was committed. Reads keep working, and so do
    writes that free space (retention) or record small state.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # "map" or "disk"


class StoreClosed(StoreError):
    """The store (or its service) has been closed."""


class StoreCorrupt(StoreError):
    """Stored bytes do not have the shape this module writes."""


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


@dataclass(frozen=True, slots=True)
class AppendItem:
    """One message to append to ``topic``'s log."""

    msg_id: bytes
    topic: str
    sender: bytes
    sender_seq: int
    ts: int
    wire: bytes
    received_ms: int

    @classmethod
    def from_envelope(
        cls, env: EnvelopeLike, *, received_ms: int, topic: str | None = None
    ) -> AppendItem:
        return cls(
            msg_id=env.id,
            topic=env.topic if topic is None else topic,
            sender=env.sender,
            sender_seq=env.seq,
            ts=env.ts,
            wire=env.wire,
            received_ms=received_ms,
        )

    def check(self, max_record: int = DEFAULT_MAX_RECORD) -> None:
        """Raise ValueError unless this item can be stored."""
        _check_id(self.msg_id, "msg_id")
        _check_id(self.sender, "sender")
        _topic_key(self.topic)
        for name in ("sender_seq", "ts", "received_ms"):
            _check_u64(getattr(self, name), name)
        if not isinstance(self.wire, bytes):
            raise ValueError("wire must be bytes")
        if len(self.wire) > max_record:
            raise ValueError(f"record of {len(self.wire)} bytes over {max_record}")


@dataclass(frozen=True, slots=True)
class AppendResult:
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
    """A topic's log: records ``first_seq .. next_seq - 1`` are stored."""

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


# -- the gate -------------------------------------------------------------------


class _Gate:
    """Shared/exclusive lock between this store's transactions and map resizes.

    Every transaction holds the gate shared for its whole life (inside one
    method); ``set_mapsize`` holds it exclusively, so it only ever runs with
    no transaction of this process open, as LMDB requires. A waiting resize
    keeps new transactions out, so it cannot starve. Not reentrant: a method
    that holds the gate never calls another method that takes it.

    ``sole()`` is for the one thread with a write transaction open (writers
    are serialized before they take the gate): it waits until that thread is
    the only holder. Aborting a write transaction while reader threads are
    busy can take py-lmdb seconds to minutes (measured with lmdb 3.0), so
    aborts happen with readers held off for that moment.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._shared = 0
        self._closed_to_new = False
        self._waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._closed_to_new or self._waiting:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                if self._waiting or not self._shared:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._hold(others=0):
            yield

    @contextlib.contextmanager
    def sole(self) -> Iterator[None]:
        with self._hold(others=1):
            yield

    @contextlib.contextmanager
    def _hold(self, others: int) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            try:
                while self._closed_to_new or self._shared > others:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._closed_to_new = True
        try:
            yield
        finally:
            with self._cond:
                self._closed_to_new = False
                self._cond.notify_all()


class _MapFull:
    """Returned by ``_try_write`` when the transaction ran out of map."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


def _abort(txn: lmdb.Transaction[bytes]) -> None:
    with contextlib.suppress(lmdb.Error):
        txn.abort()


def _abort_write(gate: _Gate, txn: lmdb.Transaction[bytes]) -> None:
    with gate.sole():
        _abort(txn)


def _round_page(n: int) -> int:
    return -(-n // _PAGE) * _PAGE


# -- the store ----------------------------------------------------------------------


class MessageStore:
    """Per-topic append logs, indexes, cursors, peer state and a DM outbox.

    Thread-safe: reads may run concurrently in any threads; writes serialize
    on LMDB's writer lock (the Trio shell uses a single writer thread).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
        sync: bool = True,
        max_record: int = DEFAULT_MAX_RECORD,
        max_seen_ranges: int = DEFAULT_MAX_SEEN_RANGES,
        reserve: int | None = None,
    ) -> None:
        if map_size <= 0 or max_map_size < map_size:
            raise ValueError("need 0 < map_size <= max_map_size")
        if max_seen_ranges < 1:
            raise ValueError("max_seen_ranges must be >= 1")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._max_map_size = max(_round_page(max_map_size), _PAGE)
        if reserve is None:
            reserve = max(self._max_map_size // 32, _MIN_GROWTH)
        self._hard_max = self._max_map_size + _round_page(reserve)
        self._max_record = max_record
        self._max_seen_ranges = max_seen_ranges
        self._gate = _Gate()
        self._write_lock = threading.Lock()  # one write transaction at a time
        self._counter_lock = threading.Lock()
        self._commits = 0
        self._grows = 0
        try:
            self._env: lmdb.Environment | None = lmdb.open(
                str(self.path),
                map_size=_round_page(map_size),
                max_dbs=len(_DB_NAMES) + 2,
                sync=sync,
                metasync=sync,
                subdir=True,
                readahead=True,
            )
        except lmdb.Error as exc:
            raise StoreError(f"cannot open the store at {self.path}: {exc}") from exc
        self._map_size = self._env.info()["map_size"]
        self._env.reader_check()  # clear reader slots of processes that died
        try:
            dbs = self._open_existing_dbs() or self._write(self._create_dbs, reserve=True)
        except BaseException:
            self._env.close()
            self._env = None
            raise
        self._log = dbs["log"]
        self._heads = dbs["heads"]
        self._ids = dbs["ids"]
        self._senders = dbs["senders"]
        self._seen = dbs["seen"]
        self._seen_n = dbs["seen_n"]
        self._cursors = dbs["cursors"]
        self._state = dbs["state"]
        self._outbox = dbs["outbox"]
        self._due = dbs["due"]
        self._deadline = dbs["deadline"]
        self._dead = dbs["dead"]
        self._meta = dbs["meta"]

    def _open_existing_dbs(self) -> dict[str, lmdb._Database] | None:
        """The databases of an existing store, opened without a write (and its fsync)."""
        env = self._require_env()
        with self._gate.shared():
            try:
                dbs = {name: env.open_db(name.encode(), create=False) for name in _DB_NAMES}
            except lmdb.NotFoundError:
                return None
            with env.begin() as txn:
                version = txn.get(b"schema", db=dbs["meta"])
        if version != _u64(SCHEMA_VERSION):
            raise StoreError(f"{self.path}: unknown store schema {version!r}")
        return dbs

    def _create_dbs(self, txn: lmdb.Transaction[bytes]) -> dict[str, lmdb._Database]:
        env = self._require_env()
        dbs = {name: env.open_db(name.encode(), txn=txn) for name in _DB_NAMES}
        version = txn.get(b"schema", db=dbs["meta"])
        if version is None:
            txn.put(b"schema", _u64(SCHEMA_VERSION), db=dbs["meta"])
        elif version != _u64(SCHEMA_VERSION):
            raise StoreError(f"{self.path}: unknown store schema {version.hex()}")
        return dbs

    # -- lifecycle ---------------------------------------------------------------

    def close(self) -> None:
        """Close the environment; waits for transactions in other threads to end."""
        with self._gate.exclusive():
            if self._env is not None:
                self._env.close()
                self._env = None

    @property
    def closed(self) -> bool:
        return self._env is None

    @property
    def max_record(self) -> int:
        """The largest ``wire`` this store accepts, in bytes."""
        return self._max_record

    def __enter__(self) -> MessageStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require_env(self) -> lmdb.Environment:
        if self._env is None:
            raise StoreClosed(f"store {self.path} is closed")
        return self._env

    # -- transactions --------------------------------------------------------------

    def _commit(self, txn: lmdb.Transaction[bytes]) -> None:
        """Commit ``txn`` (a seam for tests that need to hold a commit back)."""
        txn.commit()

    def _read(self, op: Callable[[lmdb.Transaction[bytes]], T]) -> T:
        while True:
            with self._gate.shared():
                env = self._require_env()
                try:
                    txn = env.begin()
                except lmdb.MapResizedError:
                    resized = True
                except lmdb.Error as exc:
                    raise _translate(exc) from exc
                else:
                    resized = False
                    try:
                        return op(txn)
                    finally:
                        _abort(txn)
            if resized:
                self._adopt_map_size()

    def _write(self, op: Callable[[lmdb.Transaction[bytes]], T], *, reserve: bool = False) -> T:
        """Run ``op`` in one write transaction and commit it, growing the map as needed.

        ``op`` must not change anything outside the transaction: after a
        map-full abort it runs again from scratch. ``reserve`` lets the write
        use the space above ``max_map_size`` kept for freeing space and for
        small state.
        """
        ceiling = self._hard_max if reserve else self._max_map_size
        while True:
            outcome = self._try_write(op)
            if not isinstance(outcome, _MapFull):
                if reserve and self._map_size > self._max_map_size:
                    self._shrink_back()
                return outcome
            self._grow(outcome.size, ceiling)

    def _try_write(self, op: Callable[[lmdb.Transaction[bytes]], T]) -> T | _MapFull:
        resized = False
        with self._write_lock, self._gate.shared():
            env = self._require_env()
            size = self._map_size
            try:
                txn = env.begin(write=True)
            except lmdb.MapResizedError:
                resized = True
            except lmdb.Error as exc:
                raise _translate(exc) from exc
            else:
                try:
                    result = op(txn)
                    self._commit(txn)
                except lmdb.MapFullError:
                    _abort_write(self._gate, txn)
                    return _MapFull(size)
                except lmdb.Error as exc:
                    _abort_write(self._gate, txn)
                    raise _translate(exc) from exc
                except OSError as exc:
                    _abort_write(self._gate, txn)
                    if exc.errno in _DISK_FULL_ERRNOS:
                        raise StoreFull(f"disk refused the write: {exc}", reason="disk") from exc
                    raise
                except BaseException:
                    _abort_write(self._gate, txn)
                    raise
                with self._counter_lock:
                    self._commits += 1
                return result
        assert resized
        self._adopt_map_size()
        return _MapFull(-1)  # not full: retry (_grow sees the size changed and returns)

    def _grow(self, seen_size: int, ceiling: int) -> None:
        with self._gate.exclusive():
            env = self._require_env()
            if self._map_size != seen_size:
                return  # another thread grew it (or it was adopted) meanwhile
            if self._map_size >= ceiling:
                raise StoreFull(
                    f"store {self.path} is full: map of {self._map_size} bytes at its maximum",
                    reason="map",
                )
            wanted = max(self._map_size * 2, self._map_size + _MIN_GROWTH)
            target = min(ceiling, _round_page(wanted))
            env.set_mapsize(target)
            self._map_size = env.info()["map_size"]
            with self._counter_lock:
                self._grows += 1

    def _shrink_back(self) -> None:
        """Give back the reserve after a maintenance write grew into it."""
        with self._gate.exclusive():
            env = self._require_env()
            if self._map_size > self._max_map_size:
                env.set_mapsize(self._max_map_size)  # LMDB keeps at least what is used
                self._map_size = env.info()["map_size"]

    def _adopt_map_size(self) -> None:
        """Another process grew the map: take its size (no transaction open)."""
        with self._gate.exclusive():
            env = self._require_env()
            env.set_mapsize(0)
            self._map_size = env.info()["map_size"]

    # -- appends -------------------------------------------------------------------

    def append_batch(self, items: Sequence[AppendItem]) -> list[AppendResult]:
        """Append ``items`` in one transaction; results in the same order.

        A message whose id is already stored (earlier, or earlier in this
        batch) is not stored again: its result carries the existing position
        and ``duplicate=True``. Returns after the commit.
        """
        for item in items:
            item.check(self._max_record)
        if not items:
            return []
        return self._write(lambda txn: self._append_in(txn, items))

    def _append_in(
        self, txn: lmdb.Transaction[bytes], items: Sequence[AppendItem]
    ) -> list[AppendResult]:
        heads: dict[bytes, _Head] = {}
        results: list[AppendResult] = []
        for item in items:
            existing = txn.get(item.msg_id, db=self._ids)
            if existing is not None:
                topic, seq = _split_log_key(existing)
                results.append(AppendResult(item.msg_id, topic, seq, duplicate=True))
                continue
            tkey = _topic_key(item.topic)
            head = heads.get(tkey)
            if head is None:
                head = heads[tkey] = self._load_head(txn, tkey)
            seq = head.next_seq
            key = _log_key(tkey, seq)
            if not txn.put(key, _encode_record(item), overwrite=False, db=self._log):
                raise StoreCorrupt(f"log position {item.topic}/{seq} is already taken")
            txn.put(item.msg_id, key, db=self._ids)
            txn.put(item.sender + _u64(item.sender_seq) + item.msg_id, key, db=self._senders)
            self._mark_seen(txn, item.sender, tkey, item.sender_seq)
            if head.count == 0:
                head.first_seq = seq
            head.next_seq = seq + 1
            head.count += 1
            head.total_bytes += len(item.wire)
            results.append(AppendResult(item.msg_id, item.topic, seq, duplicate=False))
        for tkey, head in heads.items():
            txn.put(tkey, head.encode(), db=self._heads)
        return results

    def _load_head(self, txn: lmdb.Transaction[bytes], tkey: bytes) -> _Head:
        raw = txn.get(tkey, db=self._heads)
        return _Head() if raw is None else _Head.decode(raw)

    def _mark_seen(self, txn: lmdb.Transaction[bytes], sender: bytes, tkey: bytes, s: int) -> None:
        """Add sender sequence ``s`` to the seen ranges of (sender, topic)."""
        prefix = sender + tkey + b"\x00"
        cur = txn.cursor(db=self._seen)
        nxt: tuple[int, int] | None = None
        prev: tuple[int, int] | None = None
        if cur.set_range(prefix + _u64(s)):
            if cur.key().startswith(prefix):
                start = _U64.unpack(cur.key()[-8:])[0]
                if start == s:
                    return  # s opens a range: already seen
                nxt = (start, _U64.unpack(cur.value())[0])
            positioned = cur.prev()
        else:
            positioned = cur.last()
        if positioned and cur.key().startswith(prefix):
            prev = (_U64.unpack(cur.key()[-8:])[0], _U64.unpack(cur.value())[0])
        if prev is not None and prev[1] >= s:
            return  # inside a range
        join_prev = prev is not None and prev[1] + 1 == s
        join_next = nxt is not None and nxt[0] == s + 1
        count_key = sender + tkey
        if join_prev and join_next:
            assert prev is not None and nxt is not None
            txn.delete(prefix + _u64(nxt[0]), db=self._seen)
            txn.put(prefix + _u64(prev[0]), _u64(nxt[1]), db=self._seen)
            self._add_ranges(txn, count_key, -1)
        elif join_prev:
            assert prev is not None
            txn.put(prefix + _u64(prev[0]), _u64(s), db=self._seen)
        elif join_next:
            assert nxt is not None
            txn.delete(prefix + _u64(nxt[0]), db=self._seen)
            txn.put(prefix + _u64(s), _u64(nxt[1]), db=self._seen)
        else:
            txn.put(prefix + _u64(s), _u64(s), db=self._seen)
            if self._add_ranges(txn, count_key, 1) > self._max_seen_ranges:
                self._fill_lowest_gap(txn, prefix)
                self._add_ranges(txn, count_key, -1)

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

    def position(self, msg_id: bytes) -> tuple[str, int] | None:
        """``(topic, seq)`` of a stored message, or None."""
        _check_id(msg_id, "msg_id")
        key = self._read(lambda txn: txn.get(msg_id, db=self._ids))
        return None if key is None else _split_log_key(key)

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

    # -- retention -------------------------------------------------------------------

    def apply_retention(
        self,
        topic: str,
        *,
        now_ms: int,
        max_age_ms: int | None = None,
        max_bytes: int | None = None,
        max_count: int | None = None,
        budget: int = 256,
    ) -> RetentionResult:
        """Delete at most ``budget`` of the oldest records of ``topic`` that are
        over a limit: older than ``max_age_ms`` (by ``received_ms``), or while
        the topic holds more than ``max_bytes`` of wire bytes or more than
        ``max_count`` records. One short write transaction, and none at all when
        nothing is due, so a sweep over many topics never stops the world.
        """
        tkey = _topic_key(topic)
        if budget < 1:
            raise ValueError("budget must be >= 1")
        for name, limit in (("max_age_ms", max_age_ms), ("max_bytes", max_bytes),
                            ("max_count", max_count)):
            if limit is not None and limit < 0:
                raise ValueError(f"{name} must be >= 0")

        def over(head: _Head, oldest: StoredMessage | None) -> bool:
            if head.count == 0:
                return False
            if max_count is not None and head.count > max_count:
                return True
            if max_bytes is not None and head.total_bytes > max_bytes:
                return True
            return (
                max_age_ms is not None
                and oldest is not None
                and now_ms - oldest.received_ms > max_age_ms
            )

        def oldest_of(txn: lmdb.Transaction[bytes], head: _Head) -> StoredMessage | None:
            if head.count == 0:
                return None
            key = _log_key(tkey, head.first_seq)
            value = txn.get(key, db=self._log)
            if value is None:
                raise StoreCorrupt(f"{topic}: first record {head.first_seq} is missing")
            return _decode_record(key, value)

        def due(txn: lmdb.Transaction[bytes]) -> bool:
            head = self._load_head(txn, tkey)
            return over(head, oldest_of(txn, head))

        if not self._read(due):
            return RetentionResult(0, 0, True)

        def op(txn: lmdb.Transaction[bytes]) -> RetentionResult:
            head = self._load_head(txn, tkey)
            deleted = freed = 0
            oldest = oldest_of(txn, head)
            while deleted < budget and over(head, oldest):
                assert oldest is not None
                txn.delete(_log_key(tkey, oldest.seq), db=self._log)
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
            return RetentionResult(deleted, freed, not over(head, oldest))

        return self._write(op, reserve=True)

    # -- cursors -----------------------------------------------------------------------

    def set_cursor(self, name: str, topic: str, seq: int) -> None:
        """Remember that reader ``name`` has consumed ``topic`` up to ``seq``."""
        key = _name_key(name, "cursor name") + b"\x00" + _topic_key(topic)
        _check_u64(seq, "seq")
        self._write(lambda txn: txn.put(key, _u64(seq), db=self._cursors), reserve=True)

    def get_cursor(self, name: str, topic: str) -> int:
        """The seq reader ``name`` has consumed ``topic`` up to; 0 if never set."""
        key = _name_key(name, "cursor name") + b"\x00" + _topic_key(topic)
        raw = self._read(lambda txn: txn.get(key, db=self._cursors))
        return 0 if raw is None else int(_U64.unpack(raw)[0])

    def cursors(self, name: str) -> dict[str, int]:
        """Every cursor of reader ``name``, by topic."""
        prefix = _name_key(name, "cursor name") + b"\x00"

        def op(txn: lmdb.Transaction[bytes]) -> dict[str, int]:
            out: dict[str, int] = {}
            cur = txn.cursor(db=self._cursors)
            if cur.set_range(prefix):
                for key, value in cur.iternext():
                    if not key.startswith(prefix):
                        break
                    out[key[len(prefix):].decode("utf-8")] = _U64.unpack(value)[0]
            return out

        return self._read(op)

    def delete_cursor(self, name: str, topic: str) -> bool:
        key = _name_key(name, "cursor name") + b"\x00" + _topic_key(topic)
        return self._write(lambda txn: txn.delete(key, db=self._cursors), reserve=True)

    # -- peer state ----------------------------------------------------------------------

    def put_state(self, key: str, value: bytes) -> None:
        """Store an opaque value (subscriptions, unread marks, own sequence, ...)."""
        raw = _name_key(key, "state key")
        if not isinstance(value, bytes) or len(value) > MAX_STATE_VALUE:
            raise ValueError(f"state value must be bytes of at most {MAX_STATE_VALUE}")
        self._write(lambda txn: txn.put(raw, value, db=self._state), reserve=True)

    def get_state(self, key: str) -> bytes | None:
        raw = _name_key(key, "state key")
        return self._read(lambda txn: txn.get(raw, db=self._state))

    def delete_state(self, key: str) -> bool:
        raw = _name_key(key, "state key")
        return self._write(lambda txn: txn.delete(raw, db=self._state), reserve=True)

    def state_items(self, prefix: str = "") -> dict[str, bytes]:
        """Every state entry whose key starts with ``prefix``."""
        start = prefix.encode("utf-8")

        def op(txn: lmdb.Transaction[bytes]) -> dict[str, bytes]:
            out: dict[str, bytes] = {}
            cur = txn.cursor(db=self._state)
            if cur.set_range(start):
                for key, value in cur.iternext():
                    if not key.startswith(start):
                        break
                    out[key.decode("utf-8")] = value
            return out

        return self._read(op)

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
        """
        return self._read(self._check_in)

    def _check_in(self, txn: lmdb.Transaction[bytes]) -> list[str]:
        problems: list[str] = []
        heads: dict[str, _Head] = {}
        for key, value in txn.cursor(db=self._heads).iternext():
            try:
                heads[key.decode("utf-8")] = _Head.decode(value)
            except (StoreCorrupt, UnicodeDecodeError) as exc:
                problems.append(f"head {key!r}: {exc}")
        seen_topics: dict[str, list[int]] = {}
        n_bytes: dict[str, int] = {}
        records = 0
        for key, value in txn.cursor(db=self._log).iternext():
            records += 1
            try:
                msg = _decode_record(key, value)
            except (StoreCorrupt, UnicodeDecodeError) as exc:
                problems.append(f"record {key!r}: {exc}")
                continue
            seen_topics.setdefault(msg.topic, []).append(msg.seq)
            n_bytes[msg.topic] = n_bytes.get(msg.topic, 0) + len(msg.wire)
            if txn.get(msg.msg_id, db=self._ids) != key:
                problems.append(f"{msg.topic}/{msg.seq}: id index does not point back")
            skey = msg.sender + _u64(msg.sender_seq) + msg.msg_id
            if txn.get(skey, db=self._senders) != key:
                problems.append(f"{msg.topic}/{msg.seq}: sender index does not point back")
        for topic, head in heads.items():
            seqs = seen_topics.pop(topic, [])
            want = list(range(head.first_seq, head.next_seq)) if head.count else []
            if seqs != want or head.count != len(seqs):
                problems.append(
                    f"{topic}: head says {head.count} records from {head.first_seq} "
                    f"to {head.next_seq - 1}, log has {len(seqs)} "
                    f"({seqs[:1]}..{seqs[-1:]})"
                )
            if head.count == 0 and head.first_seq != head.next_seq:
                problems.append(f"{topic}: empty but first_seq != next_seq")
            if n_bytes.get(topic, 0) != head.total_bytes:
                problems.append(
                    f"{topic}: head says {head.total_bytes} bytes, log has {n_bytes.get(topic, 0)}"
                )
        for topic in seen_topics:
            problems.append(f"{topic}: records without a head")
        if txn.stat(self._ids)["entries"] != records:
            problems.append(f"id index has {txn.stat(self._ids)['entries']} entries, log {records}")
        if txn.stat(self._senders)["entries"] != records:
            problems.append("sender index and log differ in size")
        outbox = 0
        for key, value in txn.cursor(db=self._outbox).iternext():
            outbox += 1
            try:
                e = _decode_outbox(key, value)
            except StoreCorrupt as exc:
                problems.append(f"outbox {key.hex()}: {exc}")
                continue
            if txn.get(_u64(e.next_try_ms) + key, db=self._due) is None:
                problems.append(f"outbox {key.hex()}: not in the due index")
            if txn.get(_u64(e.deadline_ms) + key, db=self._deadline) is None:
                problems.append(f"outbox {key.hex()}: not in the deadline index")
        for db, name in ((self._due, "due"), (self._deadline, "deadline")):
            if txn.stat(db)["entries"] != outbox:
                problems.append(f"{name} index has {txn.stat(db)['entries']} entries for {outbox}")
        for key, value in txn.cursor(db=self._dead).iternext():
            try:
                _decode_dead(key, value)
            except StoreCorrupt as exc:
                problems.append(f"dead letter {key.hex()}: {exc}")
        return problems


def _translate(exc: lmdb.Error) -> StoreError:
    code = getattr(exc, "code", 0)
    if isinstance(exc, lmdb.DiskError) or code in _DISK_FULL_ERRNOS:
        return StoreFull(f"disk refused the write: {exc}", reason="disk")
    return StoreError(f"LMDB error: {exc}")
