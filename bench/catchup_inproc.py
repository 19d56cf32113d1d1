"""Catch-up CPU per message, in one process: ``python -m bench.catchup_inproc [N] [RUNS]``.

A relay-only seed whose store already holds N chained 300 B messages of one
author (written straight into its store: no publisher, no fill phase), and a
peer in that channel on a memory link to it; the clock runs from the link to
the peer's N-th stored message. Printed per run: wall time, msg/s, the
process's CPU per message (every thread, the seed's page reads included), the
main (Trio) thread's share, CPU spent in Python's garbage collector, and the
commits. What start-up made is frozen out of the collector's way
(``gc.freeze()``, as ``python -m peer`` does). Both peers and their worker
threads share the process, so this is a
figure to compare before/after in the same sitting (the real-process
scenario is ``python -m bench --scenarios catchup``, which counts the
returning peer alone); on a loaded machine compare the lowest of a few runs.
"""

from __future__ import annotations

import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path

import trio

from peer import Identity, Peer, PeerOptions, memory_link_pair
from peer.wire._envelope import Content, seal_message
from store import AppendItem, MessageStore

TOPIC = "bench"


def _seed_store(path: Path, n: int) -> None:
    author = Identity.generate()
    now = int(time.time() * 1000)
    store = MessageStore(str(path))
    try:
        prev, batch = None, []
        for seq in range(1, n + 1):
            env = seal_message(author, topic=TOPIC, seq=seq, ts=now, prev=prev,
                               content=Content(body="x" * 300))
            prev = env.id
            batch.append(AppendItem.from_envelope(env, received_ms=now, topic=TOPIC))
            if len(batch) == 2000 or seq == n:
                store.append_batch(batch)
                batch = []
    finally:
        store.close()


class _GcClock:
    """CPU time the collector spends (this thread's clock: it runs in whichever
    thread allocates)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0
        gc.callbacks.append(self._on)

    def _on(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.thread_time()
        else:
            self.seconds += time.thread_time() - self._start


async def _run(home: Path, n: int, gc_clock: _GcClock) -> str:
    seed = Peer(Identity.generate(),
                PeerOptions(store_path=str(home / "seed"), dht=False, relay_only=True))
    peer = Peer(Identity.generate(),
                PeerOptions(store_path=str(home / "peer"), dht=False, channels=(TOPIC,)))
    async with trio.open_nursery() as nursery:
        await nursery.start(seed.run)
        await nursery.start(peer.run)
        assert peer.storage is not None
        ta, tb = memory_link_pair()
        gc_clock.seconds = 0.0
        cpu, wall, main = time.process_time(), time.perf_counter(), time.thread_time()
        seed.start_link(ta, initiator=True)
        peer.start_link(tb, initiator=False)
        with trio.fail_after(600):
            while peer.storage.counters.stored < n:
                with trio.move_on_after(0.2):
                    await peer.wait_changed()
        cpu = time.process_time() - cpu
        wall = time.perf_counter() - wall
        main = time.thread_time() - main
        commits = peer.storage.counters.commits
        nursery.cancel_scope.cancel()
    us = 1e6 / n
    return (f"{n:,} messages in {wall:.2f} s = {n / wall:,.0f} msg/s; CPU {cpu * us:.1f} us/msg "
            f"(main thread {main * us:.1f}, garbage collector {gc_clock.seconds * us:.1f}); "
            f"{commits} commits")


def main(argv: list[str]) -> None:
    n = int(argv[0]) if argv else 20_000
    runs = int(argv[1]) if len(argv) > 1 else 3
    gc_clock = _GcClock()
    for i in range(runs):
        home = Path(tempfile.mkdtemp(prefix="clawmesh-catchup-"))
        try:
            _seed_store(home / "seed", n)
            gc.collect()
            gc.freeze()  # as ``python -m peer`` does before it starts the peer
            print(f"run {i + 1}: {trio.run(_run, home, n, gc_clock)}", flush=True)
        finally:
            gc.unfreeze()
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
