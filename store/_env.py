"""The store's LMDB environment: opening it, running transactions, growing the map.

``_StoreEnv`` is the base of :class:`~store._log.MessageStore`; every other
part of the store reaches LMDB only through its ``_read`` and ``_write``.
Rules kept here:

* Every LMDB transaction begins and ends inside one function call (``_read``
  or ``_try_write``, running an ``op`` its caller passes in); nothing returns
  an open transaction, cursor or buffer into the map.
* A write returns only after its transaction has committed (durably, with
  ``sync=True``: LMDB fsyncs the data and meta pages before ``commit``
  returns). Callers acknowledge nothing before that.
* Writes serialize on ``_write_lock`` (the Trio shell also uses a single
  writer thread); reads run concurrently in any threads.
* The map grows instead of failing: on ``MapFullError`` the transaction is
  aborted, the map is resized while no transaction of this store is open
  (a shared/exclusive gate: transactions share it, a resize holds it alone)
  and the write is retried. Past ``max_map_size``, or when the disk refuses
  the write, the method raises :class:`StoreFull`; reads keep working.
  Writes that free space or keep the peer running (retention, cursors, state,
  outbox completion) pass ``reserve=True`` and may use a small reserve above
  ``max_map_size``, so a full store can still be trimmed.
* LMDB errors leave as :class:`StoreError` (or :class:`StoreFull`).

The databases opened here, and what they hold, are described in ``store._records``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self, TypeVar

import lmdb

from ._errors import StoreClosed, StoreError, StoreFull
from ._records import (
    _DB_NAMES,
    DEFAULT_MAX_RECORD,
    DEFAULT_MAX_SEEN_RANGES,
    _latest_from_seen,
    _u64,
)

T = TypeVar("T")

# 2: added ``latest`` and ``flags``. A schema 1 store is upgraded on open (one
# write: the new databases are created and ``latest`` is filled from ``seen``);
# code that knows only schema 1 refuses a schema 2 store instead of leaving
# those two databases stale.
SCHEMA_VERSION = 2
_UPGRADABLE = frozenset({_u64(1)})
DEFAULT_MAP_SIZE = 64 * 1024 * 1024
DEFAULT_MAX_MAP_SIZE = 4 * 1024 * 1024 * 1024

_PAGE = max(os.sysconf("SC_PAGESIZE"), 4096)
_MIN_GROWTH = 1024 * 1024
# errno values of a commit the disk refused. LMDB reports a short write as EIO.
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


# -- the gate -------------------------------------------------------------------



def tighten(path: Path, mode: int) -> None:
    """Take away group and other permissions ``path`` has beyond ``mode``."""
    current = path.stat().st_mode & 0o777
    if current & ~mode:
        os.chmod(path, current & mode)


def private_dir(path: Path) -> None:
    """Make ``path`` (and missing parents) a directory only its owner can enter,
    whatever the umask; an existing one with wider permissions is tightened."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    tighten(path, 0o700)


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


# -- the environment ---------------------------------------------------------------


class _StoreEnv:
    """One LMDB environment with the store's named databases open, and the
    transaction plumbing every part of the store runs through.

    Thread-safe: reads may run concurrently in any threads; writes serialize
    on LMDB's writer lock and on ``_write_lock``.
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
        private_dir(self.path)
        self._max_map_size = max(_round_page(max_map_size), _PAGE)
        if reserve is None:
            reserve = max(self._max_map_size // 32, _MIN_GROWTH)
        self._hard_max = self._max_map_size + _round_page(reserve)
        self._max_record = max_record
        self._max_seen_ranges = max_seen_ranges
        self._gate = _Gate()
        self._write_lock = threading.Lock()  # one write transaction at a time
        self._local = threading.local()  # .txn: the write transaction this thread is in
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
                mode=0o600,  # decrypted DMs live here: the owner's alone, whatever the umask
            )
        except lmdb.Error as exc:
            raise StoreError(f"cannot open the store at {self.path}: {exc}") from exc
        for name in ("data.mdb", "lock.mdb"):  # files an older version made wider
            with contextlib.suppress(FileNotFoundError):
                tighten(self.path / name, 0o600)
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
        self._latest = dbs["latest"]
        self._flags = dbs["flags"]

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
        if version in _UPGRADABLE:
            return None  # upgraded by _create_dbs, in a write
        if version != _u64(SCHEMA_VERSION):
            raise StoreError(f"{self.path}: unknown store schema {version!r}")
        return dbs

    def _create_dbs(self, txn: lmdb.Transaction[bytes]) -> dict[str, lmdb._Database]:
        env = self._require_env()
        dbs = {name: env.open_db(name.encode(), txn=txn) for name in _DB_NAMES}
        version = txn.get(b"schema", db=dbs["meta"])
        if version in _UPGRADABLE:
            _latest_from_seen(txn, dbs["seen"], dbs["latest"])
        if version is None or version in _UPGRADABLE:
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

    def __enter__(self) -> Self:
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
        txn = getattr(self._local, "txn", None)
        if txn is not None:
            return op(txn)  # inside atomically(): read what this write has done
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
        small state. Inside :meth:`atomically`, ``op`` joins the open transaction.
        """
        txn = getattr(self._local, "txn", None)
        if txn is not None:
            return op(txn)  # the outer write commits (or runs everything again)
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
                    self._local.txn = txn
                    try:
                        result = op(txn)
                    finally:
                        self._local.txn = None
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

    def atomically(self, fn: Callable[[Self], T]) -> T:
        """Run ``fn(self)`` in one write transaction: every write (and read) of the
        store's methods that ``fn`` calls is part of it, and one commit makes them
        durable together. ``fn`` must not change anything outside the store: when
        the map has to grow it runs again from the start."""
        return self._write(lambda txn: fn(self))

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



def _translate(exc: lmdb.Error) -> StoreError:
    code = getattr(exc, "code", 0)
    if isinstance(exc, lmdb.DiskError) or code in _DISK_FULL_ERRNOS:
        return StoreFull(f"disk refused the write: {exc}", reason="disk")
    return StoreError(f"LMDB error: {exc}")
