"""The faults, one schedule per scenario, each bounded in count and in time.

- ``churn`` (D1): ``kill -9`` of seeds and relaying peers at random moments,
  each restarted on the same ports after a random downtime; ``parallel``
  killers, never two on the same node.
- ``offline`` (D2): random offline spells of subscribing peers (killed,
  away for a random while, restarted): they must catch up on their own.
- ``partition`` (D3): every link between two halves of the mesh is cut for
  ``partition_s`` seconds, then healed, ``partitions`` times.
- ``loss`` (D4): every link is lossy for ``loss_s`` seconds.

Partitions and loss go through a :class:`Breaker`: the fault proxy
(:class:`ProxyBreaker`: closed and refused connections; for loss, resets
and stalls, what loss does to TCP, see ``_proxy.py``) or network namespaces
(:class:`NetnsBreaker`: nftables drop rules; for loss, ``loss_pct``% of the
packets dropped at random on every link).

A schedule returns when its count is reached or ``max_s`` has passed;
whatever it took down is up again by then (a restart is never cancelled).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from ._cluster import Cluster, Node
from ._netns import Lab
from ._proxy import FaultProxy, Loss

UNDO_S = 30.0  # a heal gets this long even when the run is being cancelled


@dataclass
class FaultPlan:
    kills: int = 50
    parallel: int = 3
    kill_gap_s: float = 0.5  # a killer waits a random 0..gap before each kill
    down_s: float = 1.5  # a killed node stays down a random 0.1..down_s
    spells: int = 20
    spell_s: float = 5.0  # an offline spell lasts a random 0.5..spell_s
    partitions: int = 1
    partition_s: float = 30.0
    loss_s: float = 60.0
    reset_p: float = 0.05  # per connection per 0.5 s tick
    stall_p: float = 0.10
    loss_pct: int = 10  # netns: packets dropped per hundred
    max_s: float = 600.0


@dataclass
class FaultLog:
    done: int = 0
    down_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"done": self.done, "down_s": round(self.down_s, 1), "errors": self.errors[:20]}


async def _bounce(cluster: Cluster, node: Node, down: float, log: FaultLog) -> None:
    """Kill ``node`` with SIGKILL, keep it down ``down`` seconds, start it again."""
    node.kill()
    log.done += 1
    try:
        await trio.sleep(down)  # the fault's own duration: nothing to wait for
    finally:  # even when the run's time is up (``max_s``): no node is left down
        with trio.CancelScope(shield=True):
            try:
                await cluster.restart(node)
            except Exception as exc:  # reported in the results; the run goes on
                log.errors.append(f"{node.name}: {exc!r}"[:500])
        log.down_s += down


async def _killers(
    cluster: Cluster, pool: list[Node], count: int, parallel: int,
    gap: float, down: tuple[float, float], rng: random.Random, max_s: float,
) -> FaultLog:  # fmt: skip
    log = FaultLog()
    busy: set[str] = set()
    left = [count]

    async def killer() -> None:
        while left[0] > 0:
            await trio.sleep(rng.uniform(0.01, max(gap, 0.01)))
            free = [n for n in pool if n.name not in busy and n.up.is_set()]
            if not free or left[0] <= 0:
                continue
            left[0] -= 1
            node = rng.choice(free)
            busy.add(node.name)
            try:
                await _bounce(cluster, node, rng.uniform(*down), log)
            finally:
                busy.discard(node.name)

    with trio.move_on_after(max_s):
        async with trio.open_nursery() as nursery:
            for _ in range(max(1, parallel)):
                nursery.start_soon(killer)
    return log


async def churn(cluster: Cluster, plan: FaultPlan, rng: random.Random) -> FaultLog:
    return await _killers(
        cluster, cluster.nodes, plan.kills, plan.parallel, plan.kill_gap_s,
        (0.1, plan.down_s), rng, plan.max_s,
    )  # fmt: skip


async def offline(cluster: Cluster, plan: FaultPlan, rng: random.Random) -> FaultLog:
    return await _killers(
        cluster, cluster.peers, plan.spells, plan.parallel, plan.kill_gap_s,
        (0.5, plan.spell_s), rng, plan.max_s,
    )  # fmt: skip


def halves(cluster: Cluster) -> tuple[set[str], set[str]]:
    """Seeds and peers split in two, each side with its share of both."""
    a = {n.name for n in cluster.seeds[: (len(cluster.seeds) + 1) // 2]}
    a |= {n.name for n in cluster.peers[: len(cluster.peers) // 2]}
    return a, {n.name for n in cluster.nodes} - a


class Breaker(Protocol):
    async def cut(self, side_a: set[str], side_b: set[str]) -> None: ...
    async def heal(self) -> None: ...
    async def lossy(self, on: bool) -> None: ...
    def stats(self) -> dict[str, int]: ...


@dataclass
class ProxyBreaker:
    proxy: FaultProxy
    loss: Loss

    async def cut(self, side_a: set[str], side_b: set[str]) -> None:
        self.proxy.cut(side_a, side_b)

    async def heal(self) -> None:
        self.proxy.heal()

    async def lossy(self, on: bool) -> None:
        self.proxy.lossy(self.loss if on else Loss())

    def stats(self) -> dict[str, int]:
        return self.proxy.stats.to_json()


@dataclass
class NetnsBreaker:
    lab: Lab
    loss_pct: int

    async def cut(self, side_a: set[str], side_b: set[str]) -> None:
        await self.lab.cut(side_a, side_b)

    async def heal(self) -> None:
        await self.lab.heal()

    async def lossy(self, on: bool) -> None:
        await self.lab.lossy(self.loss_pct if on else 0)

    def stats(self) -> dict[str, int]:
        return dict(self.lab.stats)


async def _undo(step: Callable[[], Awaitable[None]]) -> None:
    """Undo a fault even while the run is being cancelled (Ctrl-C), bounded."""
    with trio.CancelScope(shield=True), trio.move_on_after(UNDO_S):
        await step()


async def partition(
    cluster: Cluster, plan: FaultPlan, breaker: Breaker, rng: random.Random
) -> FaultLog:
    log = FaultLog()
    side_a, side_b = halves(cluster)
    with trio.move_on_after(plan.max_s):
        for _ in range(plan.partitions):
            await trio.sleep(rng.uniform(1.0, 3.0))  # traffic on a whole mesh first
            try:
                await breaker.cut(side_a, side_b)
                log.done += 1
                await trio.sleep(plan.partition_s)  # the partition's own duration
            finally:
                await _undo(breaker.heal)
            log.down_s += plan.partition_s
    return log


async def loss(cluster: Cluster, plan: FaultPlan, breaker: Breaker, rng: random.Random) -> FaultLog:
    log = FaultLog()
    await trio.sleep(rng.uniform(1.0, 3.0))
    try:
        await breaker.lossy(True)
        await trio.sleep(min(plan.loss_s, plan.max_s))  # the fault's own duration
    finally:
        await _undo(lambda: breaker.lossy(False))
    log.done = 1
    log.down_s = plan.loss_s
    return log
