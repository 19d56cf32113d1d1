"""The Trio shell around :class:`~store._log.MessageStore`: one writer, group commit.

Rules this module keeps:

* The store is synchronous; this module only moves calls into worker threads
  (``trio.to_thread.run_sync``). No LMDB transaction is ever open across an
  ``await``: each store method opens and closes its own.
* One writer. Every write goes through a bounded memory channel to the writer
  task, which runs one thread call at a time. It drains up to ``max_batch``
  waiting appends and commits them in one transaction (group commit): while a
  commit is being fsynced, new appends queue up and go into the next one.
* An append returns (the caller may acknowledge: answer the local API, send a
  receipt) only after the transaction holding it has committed. If the commit
  fails, every caller in that batch gets the error (``StoreFull`` when the
  store is full) and nothing of the batch is stored.
* Reads run in worker threads too, several at once (bounded by a capacity
  limiter); LMDB readers do not block the writer or each other.
* ``run`` lives in the caller's nursery and stops when cancelled; no task is
  started anywhere else. After it stops, waiting and new callers get
  ``StoreClosed``.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import structlog
import trio

from peer.wire._histogram import LatencyHistogram

from ._log import (
    AppendItem,
    AppendResult,
    MessageStore,
    RetentionResult,
    StoreClosed,
    StoredMessage,
    StoreError,
    StoreFull,
    TopicHead,
)
from ._policy import KeepRules, RetentionPolicy
from ._retention import Pin

T = TypeVar("T")

DEFAULT_MAX_BATCH = 128
DEFAULT_QUEUE = 1024
DEFAULT_READERS = 4


@dataclass(eq=False, slots=True)
class _Request:
    """One caller's write, handed to the writer task."""

    items: Sequence[AppendItem] | None = None
    fn: Callable[[MessageStore], Any] | None = None
    done: trio.Event = field(default_factory=trio.Event)
    executed: bool = False
    result: Any = None
    error: Exception | None = None


@dataclass(frozen=True, slots=True)
class ServiceStatistics:
    appends: int  # messages appended (duplicates included)
    append_commits: int  # transactions that carried appends
    max_batch: int  # most messages in one commit
    writes: int  # other write calls
    queued: int  # requests waiting for the writer now
    running: bool


def _fresh(error: Exception) -> Exception:
    """A new exception object per caller, so tracebacks are not shared across tasks."""
    if isinstance(error, StoreFull):
        new: Exception = StoreFull(str(error), reason=error.reason)
    elif isinstance(error, StoreError):
        new = type(error)(str(error))
    else:
        return error
    new.__cause__ = error
    return new


class StoreService:
    """Async access to a :class:`MessageStore` for Trio code.

    Start it in a nursery (``await nursery.start(service.run)``), then
    ``await service.append(item)``. ``run`` can be called once.
    """

    def __init__(
        self,
        store: MessageStore,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        queue_size: int = DEFAULT_QUEUE,
        readers: int = DEFAULT_READERS,
        close_store: bool = False,
        log: Any = None,
    ) -> None:
        if max_batch < 1 or queue_size < 1 or readers < 1:
            raise ValueError("max_batch, queue_size and readers must be >= 1")
        self.store = store
        self.log = structlog.get_logger("clawmesh.store") if log is None else log
        self._max_batch = max_batch
        self._close_store = close_store
        self._send, self._receive = trio.open_memory_channel[_Request](queue_size)
        self._readers = trio.CapacityLimiter(readers)
        self._writer = trio.CapacityLimiter(1)
        self._started = False
        self._running = False
        self._appends = 0
        self._append_commits = 0
        self._max_seen_batch = 0
        self.commit_latency = LatencyHistogram()  # seconds per writer round (one commit or more)
        self._writes = 0

    # -- lifecycle ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer task. Runs until cancelled; then fails whatever is still queued."""
        if self._started:
            raise RuntimeError("StoreService.run can be called once")
        self._started = True
        self._running = True
        try:
            task_status.started()
            await self._write_loop()
        finally:
            self._running = False
            self._fail_queued()
            if self._close_store:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self.store.close)

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._receive.receive()]
            items = len(batch[0].items or ())
            while items < self._max_batch:
                try:
                    request = self._receive.receive_nowait()
                except trio.WouldBlock:
                    break
                batch.append(request)
                items += len(request.items or ())
            started = trio.current_time()
            try:
                await trio.to_thread.run_sync(self._run_batch, batch, limiter=self._writer)
            finally:
                self.commit_latency.observe(trio.current_time() - started)
                for request in batch:
                    if not request.executed:
                        request.error = StoreClosed("store service stopped before this write")
                    request.done.set()
            failed = [r for r in batch if r.items is not None and r.error is not None]
            if failed:
                self.log.warning(
                    "store append failed",
                    error=str(failed[0].error),
                    kind=type(failed[0].error).__name__,
                    messages=sum(len(r.items or ()) for r in failed),
                )

    def _fail_queued(self) -> None:
        while True:
            try:
                request = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.ClosedResourceError, trio.EndOfChannel):
                break
            request.error = StoreClosed("store service stopped before this write")
            request.done.set()
        self._receive.close()

    def _run_batch(self, batch: list[_Request]) -> None:
        """In the writer thread: consecutive appends share one commit."""
        i = 0
        while i < len(batch):
            if batch[i].items is None:
                request = batch[i]
                assert request.fn is not None
                try:
                    request.result = request.fn(self.store)
                except Exception as exc:
                    request.error = exc
                request.executed = True
                self._writes += 1
                i += 1
                continue
            group: list[_Request] = []
            while i < len(batch) and batch[i].items is not None:
                group.append(batch[i])
                i += 1
            items = [item for request in group for item in request.items or ()]
            try:
                results = self.store.append_batch(items)
            except Exception as exc:
                for request in group:
                    request.error = exc
                    request.executed = True
                continue
            at = 0
            for request in group:
                n = len(request.items or ())
                request.result = results[at : at + n]
                request.executed = True
                at += n
            self._appends += len(items)
            self._append_commits += 1
            self._max_seen_batch = max(self._max_seen_batch, len(items))

    async def _submit(self, request: _Request) -> Any:
        if not self._running:
            raise StoreClosed("store service is not running")
        try:
            await self._send.send(request)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise StoreClosed("store service is not running") from None
        await request.done.wait()
        if request.error is not None:
            raise _fresh(request.error)
        return request.result

    def statistics(self) -> ServiceStatistics:
        return ServiceStatistics(
            appends=self._appends,
            append_commits=self._append_commits,
            max_batch=self._max_seen_batch,
            writes=self._writes,
            queued=self._send.statistics().current_buffer_used,
            running=self._running,
        )

    # -- writes ------------------------------------------------------------------

    async def append(self, item: AppendItem) -> AppendResult:
        """Append one message; returns after the commit that holds it."""
        return (await self.append_many([item]))[0]

    async def append_many(self, items: Iterable[AppendItem]) -> list[AppendResult]:
        """Append messages, all in the same commit; returns after that commit."""
        batch = list(items)
        for item in batch:
            item.check(self.store.max_record)  # a bad item fails its caller, not the batch
        if not batch:
            return []
        return cast(list[AppendResult], await self._submit(_Request(items=batch)))

    async def write(self, fn: Callable[[MessageStore], T]) -> T:
        """Run ``fn(store)`` in the writer thread, for any other write
        (``lambda s: s.set_cursor("api", topic, seq)``); returns after its commit."""
        return cast(T, await self._submit(_Request(fn=fn)))

    async def apply_retention(
        self,
        topic: str,
        policy: RetentionPolicy,
        *,
        now_ms: int,
        budget: int = 256,
        pinned: Pin | None = None,
        after: int = 0,
        kept: tuple[int, int] = (0, 0),
    ) -> RetentionResult:
        """One retention step for ``topic`` (at most ``budget`` deletions;
        ``pinned``, ``after`` and ``kept`` as in :meth:`MessageStore.apply_retention`)."""
        return await self.write(
            functools.partial(
                MessageStore.apply_retention,
                topic=topic,
                now_ms=now_ms,
                max_age_ms=policy.max_age_ms,
                max_bytes=policy.max_bytes,
                max_count=policy.max_count,
                budget=budget,
                pinned=pinned,
                after=after,
                kept=kept,
            )
        )

    async def retention_sweep(
        self,
        rules: KeepRules,
        *,
        now_ms: int,
        budget: int = 256,
        pinned: Callable[[str], Pin | None] | None = None,
    ) -> int:
        """Apply ``rules`` to every stored topic, ``budget`` deletions per step.

        Each step is its own short write, queued behind waiting appends, so a
        sweep never stops the world. A topic the rules do not keep is emptied.
        ``pinned(topic)``: the pin mapping for that topic's records (None: none);
        pinned records are kept beyond the limits and skipped, the unpinned behind
        them trimmed (those kept are logged as ``kept_for_pins``).
        Returns the number of records deleted.
        """
        deleted = held = 0
        for head in await self.read(MessageStore.topics):
            policy = rules.policy_for(head.topic)
            if policy is None:
                policy = RetentionPolicy(max_count=0)
            if policy.unlimited or head.count == 0:
                continue
            pins = None if pinned is None else pinned(head.topic)
            after, kept = 0, (0, 0)
            while True:
                step = await self.apply_retention(
                    head.topic, policy, now_ms=now_ms, budget=budget, pinned=pins, after=after,
                    kept=kept,
                )
                deleted += step.deleted
                held += step.pinned
                if step.done:
                    break
                after, kept = step.resume, (kept[0] + step.pinned, kept[1] + step.pinned_bytes)
        if deleted:
            self.log.info("store retention", deleted=deleted, kept_for_pins=held)
        return deleted

    # -- reads -------------------------------------------------------------------

    async def read(self, fn: Callable[[MessageStore], T]) -> T:
        """Run ``fn(store)`` in a reader thread (``lambda s: s.cursors("api")``)."""
        if self.store.closed:
            raise StoreClosed("store is closed")
        return await trio.to_thread.run_sync(fn, self.store, limiter=self._readers)

    async def read_log(self, topic: str, after: int = 0, limit: int = 100) -> list[StoredMessage]:
        return await self.read(lambda s: s.read(topic, after, limit))

    async def get(self, msg_id: bytes) -> StoredMessage | None:
        return await self.read(lambda s: s.get(msg_id))

    async def head(self, topic: str) -> TopicHead:
        return await self.read(lambda s: s.head(topic))


@asynccontextmanager
async def open_store_service(
    path: str,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    queue_size: int = DEFAULT_QUEUE,
    readers: int = DEFAULT_READERS,
    log: Any = None,
    **store_options: Any,
) -> AsyncIterator[StoreService]:
    """Open a store at ``path`` and run its service for the duration of the block.

    ``store_options`` go to :class:`MessageStore` (``map_size``, ``max_map_size``,
    ``sync``, ...). The store is closed when the block exits.
    """
    store = await trio.to_thread.run_sync(functools.partial(MessageStore, path, **store_options))
    service = StoreService(
        store, max_batch=max_batch, queue_size=queue_size, readers=readers, close_store=True,
        log=log,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        try:
            yield service
        finally:
            nursery.cancel_scope.cancel()
