"""The Trio shell of the store: one writer, group commit, acknowledgement after commit.

* Concurrent appends from many tasks share commits: far fewer transactions
  than appends, every append gets its own contiguous position.
* An append returns only after the commit that holds it: with the writer
  held inside ``commit`` the caller is still waiting and readers cannot see
  the message; once the commit completes, both change.
* A full store is a clear error: ``StoreFull`` reaches the callers whose batch
  failed (and is logged once per failed commit), the service keeps running,
  reads and small writes keep working, and after a retention sweep appends
  succeed again.
* Cancelling the service lets the commit in flight finish (its caller gets
  its result) and fails what is still queued with ``StoreClosed``.
* Retention sweeps run as many small writes, one per ``budget`` deletions.

Everything waits on events (``trio.Event``, ``wait_all_tasks_blocked``, a
``threading.Event`` waited for in a worker thread); nothing sleeps.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import lmdb
import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from store import (
    AppendItem,
    AppendResult,
    KeepRules,
    MessageStore,
    RetentionPolicy,
    StoreClosed,
    StoreFull,
    StoreService,
    open_store_service,
)

DEADLINE = 30.0


def item(n: int, topic: str = "lobby", size: int = 200) -> AppendItem:
    wire = (n.to_bytes(8, "big") * (size // 8 + 1))[:size]
    return AppendItem(hashlib.sha256(wire).digest(), topic, b"\x05" * 32, n, 1000 + n, wire, n)


class HeldStore(MessageStore):
    """A store whose writer stops inside ``commit`` until released (when armed)."""

    def __init__(self, path: Path, *, sync: bool) -> None:
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()
        super().__init__(path, sync=sync)

    def _commit(self, txn: lmdb.Transaction[bytes]) -> None:
        if self.armed:
            self.armed = False
            self.entered.set()
            assert self.release.wait(DEADLINE)
        super()._commit(txn)


async def wait_in_thread(event: threading.Event) -> None:
    assert await trio.to_thread.run_sync(event.wait, DEADLINE)


async def test_concurrent_appends_share_commits(tmp_path: Path) -> None:
    results: dict[int, AppendResult] = {}

    async def one(service: StoreService, n: int) -> None:
        results[n] = await service.append(item(n))

    with trio.fail_after(DEADLINE):
        async with open_store_service(str(tmp_path / "s"), max_batch=64, sync=True) as service:
            async with trio.open_nursery() as nursery:
                for n in range(1, 301):
                    nursery.start_soon(one, service, n)
            stats = service.statistics()
            store_commits = service.store.stats().commits
            head = await service.head("lobby")
    assert sorted(r.seq for r in results.values()) == list(range(1, 301))
    assert not any(r.duplicate for r in results.values())
    assert head.count == 300
    assert stats.appends == 300
    assert stats.append_commits < 300 // 4, stats  # group commit
    assert 1 < stats.max_batch <= 64
    assert store_commits <= stats.append_commits + 1  # +1: creating the databases


async def test_append_returns_only_after_commit(tmp_path: Path) -> None:
    store = HeldStore(tmp_path / "s", sync=True)
    service = StoreService(store, close_store=True)
    returned = trio.Event()
    results: list[AppendResult] = []
    it = item(1)

    async def append() -> None:
        results.append(await service.append(it))
        returned.set()

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            store.armed = True
            nursery.start_soon(append)
            await wait_in_thread(store.entered)  # the writer is inside commit
            await trio.testing.wait_all_tasks_blocked()
            assert not returned.is_set()
            assert await service.get(it.msg_id) is None  # not committed, not visible
            store.release.set()
            await returned.wait()
            stored = await service.get(it.msg_id)
            assert stored is not None and stored.wire == it.wire
            assert results[0].seq == 1
            nursery.cancel_scope.cancel()
    assert store.closed


async def test_store_full_reaches_the_caller_and_reads_go_on(tmp_path: Path) -> None:
    big = 4000
    with trio.fail_after(DEADLINE):
        async with open_store_service(
            str(tmp_path / "s"), map_size=64 * 1024, max_map_size=1024 * 1024, sync=False
        ) as service:
            n = 0
            with capture_logs() as logs, pytest.raises(StoreFull) as full:
                for _ in range(1000):
                    await service.append_many([item(n + k, size=big) for k in range(1, 9)])
                    n += 8
            assert full.value.reason == "map"
            assert [(e["event"], e["kind"], e["messages"]) for e in logs] == [
                ("store append failed", "StoreFull", 8)
            ]
            assert service.statistics().running
            head = await service.head("lobby")
            assert head.count == n  # the failed batch left nothing behind
            page = await service.read_log("lobby", after=head.last_seq - 2, limit=10)
            assert [m.seq for m in page] == [head.last_seq - 1, head.last_seq]
            with pytest.raises(StoreFull):
                for k in range(1, 50):
                    await service.append(item(n + 100 + k, size=big))
            await service.write(lambda s: s.set_cursor("api", "lobby", head.last_seq))
            assert await service.read(lambda s: s.get_cursor("api", "lobby")) == head.last_seq
            deleted = await service.retention_sweep(
                KeepRules(default=RetentionPolicy(max_count=10)), now_ms=0, budget=32
            )
            assert deleted >= head.count - 10
            result = await service.append(item(10_000, size=big))  # room again
            assert not result.duplicate and result.seq > head.last_seq
            assert await service.read(MessageStore.check) == []


async def test_cancelling_the_service_finishes_the_commit_in_flight(tmp_path: Path) -> None:
    store = HeldStore(tmp_path / "s", sync=False)
    service = StoreService(store, close_store=True)
    outcomes: dict[int, object] = {}

    async def append(n: int) -> None:
        try:
            outcomes[n] = await service.append(item(n))
        except StoreClosed as exc:
            outcomes[n] = exc

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            service_scope = trio.CancelScope()

            async def run_service(task_status: trio.TaskStatus[None]) -> None:
                with service_scope:
                    await service.run(task_status=task_status)

            await nursery.start(run_service)
            store.armed = True
            nursery.start_soon(append, 1)
            await wait_in_thread(store.entered)
            nursery.start_soon(append, 2)
            await trio.testing.wait_all_tasks_blocked()
            assert service.statistics().queued == 1
            service_scope.cancel()
            store.release.set()
    first = outcomes[1]
    assert isinstance(first, AppendResult) and first.seq == 1
    assert isinstance(outcomes[2], StoreClosed)
    assert store.closed
    with pytest.raises(StoreClosed):
        await service.append(item(3))
    reopened = MessageStore(tmp_path / "s", sync=False)
    assert reopened.head("lobby").count == 1
    reopened.close()


async def test_retention_sweep_runs_in_small_steps(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with open_store_service(str(tmp_path / "s"), sync=False) as service:
            await service.append_many([item(n) for n in range(1, 101)])
            await service.append_many([item(n, topic="other") for n in range(101, 121)])
            await service.append_many([item(n, topic="dm/x") for n in range(121, 126)])
            rules = KeepRules(
                default=None,  # a relay-only seed: keep only what is listed
                topics={"lobby": RetentionPolicy(max_count=10)},
                prefixes={"dm/": RetentionPolicy()},  # DMs: no limit
            )
            writes_before = service.statistics().writes
            deleted = await service.retention_sweep(rules, now_ms=0, budget=16)
            steps = service.statistics().writes - writes_before
            heads = {h.topic: h for h in await service.read(MessageStore.topics)}
    assert deleted == 90 + 20
    assert steps == 6 + 2  # ceil(90 / 16) steps for lobby, ceil(20 / 16) for other
    assert (heads["lobby"].count, heads["lobby"].first_seq) == (10, 91)
    assert heads["other"].count == 0 and heads["other"].next_seq == 21
    assert heads["dm/x"].count == 5


async def test_bad_items_fail_their_caller_only(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with open_store_service(str(tmp_path / "s"), sync=False) as service:
            good = await service.append(item(1))
            with pytest.raises(ValueError):
                await service.append(AppendItem(b"short", "lobby", b"\x05" * 32, 2, 2, b"x", 2))
            again = await service.append(item(1))
    assert good.seq == 1 and again.duplicate and again.seq == 1
