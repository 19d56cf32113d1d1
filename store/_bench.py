"""Measure the store: durable appends one per commit vs group commit, and replay speed.

``python -m store._bench [--messages N] [--size BYTES] [--dir DIR]`` prints a
table and writes nothing outside a temporary directory (removed afterwards).
All appends use ``sync=True``: each commit is fsynced before it returns, as
in production, so "one per commit" is bounded by the disk's fsync latency
and group commit amortizes it.

Rows:

* ``append, 1 per commit``: ``append_batch([item])`` in a loop.
* ``append, 100 per commit``: ``append_batch`` of 100 items.
* ``service, N concurrent``: ``StoreService.append`` from N Trio tasks at once;
  the writer groups whatever is queued (up to ``max_batch``) into one commit.
* ``replay``: ``read(topic, after, limit=1000)`` pages over the whole log.
* ``get by id``: random ``get(msg_id)`` lookups.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio

from ._log import AppendItem, MessageStore
from ._service import StoreService


def _items(n: int, size: int, topic: str, start: int = 0) -> list[AppendItem]:
    out = []
    for k in range(start, start + n):
        wire = (k.to_bytes(8, "big") + os.urandom(24)) * (size // 32 + 1)
        wire = wire[:size]
        out.append(AppendItem(hashlib.sha256(wire).digest(), topic, b"\x07" * 32, k + 1,
                              k, wire, k))
    return out


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench(messages: int, size: int, base: Path) -> list[tuple[str, int, float, str]]:
    rows: list[tuple[str, int, float, str]] = []
    with MessageStore(base / "single", sync=True) as store:
        one = min(messages // 10, 1000)
        items = _items(one, size, "t")
        c0 = store.stats().commits
        dt = _timed(lambda: [store.append_batch([it]) for it in items])
        rows.append(("append, 1 per commit", one, dt, f"{store.stats().commits - c0} commits"))

    with MessageStore(base / "group", sync=True) as store:
        items = _items(messages, size, "t")
        c0 = store.stats().commits
        dt = _timed(lambda: [store.append_batch(items[i : i + 100])
                             for i in range(0, len(items), 100)])
        rows.append(("append, 100 per commit", messages, dt,
                     f"{store.stats().commits - c0} commits"))

        pages = [0]

        def replay() -> None:
            after = 0
            while True:
                page = store.read("t", after, 1000)
                if not page:
                    return
                pages[0] += 1
                after = page[-1].seq

        dt = _timed(replay)
        rows.append(("replay (read, pages of 1000)", messages, dt, f"{pages[0]} pages"))
        ids = [it.msg_id for it in random.Random(1).sample(items, min(messages, 10_000))]
        dt = _timed(lambda: [store.get(i) for i in ids])
        rows.append(("get by id", len(ids), dt, ""))

    tasks = 1000
    with MessageStore(base / "service", sync=True) as store:
        service = StoreService(store, max_batch=128, queue_size=tasks)
        items = _items(messages, size, "t")

        async def main() -> float:
            async with trio.open_nursery() as nursery:
                await nursery.start(service.run)
                limiter = trio.CapacityLimiter(tasks)
                t0 = time.perf_counter()
                async with trio.open_nursery() as producers:
                    for it in items:
                        async def one(it: AppendItem = it) -> None:
                            async with limiter:
                                await service.append(it)
                        producers.start_soon(one)
                dt = time.perf_counter() - t0
                nursery.cancel_scope.cancel()
            return dt

        dt = trio.run(main)
        stats = service.statistics()
        rows.append((f"service, {tasks} concurrent appenders", messages, dt,
                     f"{stats.append_commits} commits, max batch {stats.max_batch}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=512, help="wire bytes per message")
    parser.add_argument("--dir", default=None, help="where to put the temporary stores")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="clawmesh-bench-", dir=args.dir))
    try:
        rows = bench(args.messages, args.size, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"{args.size}-byte messages, sync=True (fsync per commit), directory {base.parent}")
    print(f"{'operation':<36} {'n':>7} {'seconds':>8} {'per second':>11}  notes")
    for name, n, dt, notes in rows:
        print(f"{name:<36} {n:>7} {dt:>8.3f} {n / dt:>11,.0f}  {notes}")


if __name__ == "__main__":
    main()
