"""Acceptance 2: 500 sans-IO DHT nodes in one process, in virtual time.

Every RPC travels as bytes (encode -> strict decode) through a heap-ordered
message queue with a random one-way latency of 10-100 ms (tests/_dht_harness.py);
a dead node never answers, so requests to it time out (1 s here). Randomness
is seeded, so a run is reproducible.

1. 500 nodes join one after another (one every 0.5 s) through 3 seeds: each
   meets the seeds, looks up its own id and stores its signed peer record at
   the 20 closest nodes it found.
2. Every node looks up a random id; the answer must be exactly the true 20
   closest nodes (brute force over all nodes) for >= 99% of the lookups, with a
   median of at most ceil(log2 500) = 9 hops.
3. 20 topics get 8 providers each (ADD_PROVIDER at the 20 closest nodes).
4. 30% of the nodes are killed at random. Every live node then runs FIND_PEER
   for a random live id: >= 99% must come back with the target's valid
   signed peer record; and for every topic 5 live nodes run GET_PROVIDERS
   lookups, which must find >= 95% of the live providers.

Hop, query and virtual-latency statistics are printed (``pytest -s``).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import pytest

from dht import DhtConfig, DhtNode, Lookup, PeerLookup, ProviderLookup, topic_key

from ._dht_harness import T0, LookupRun, SimNet

N_NODES = 500
N_SEEDS = 3
JOIN_GAP = 0.5
KILL_FRACTION = 0.3
N_TOPICS = 20
PROVIDERS_PER_TOPIC = 8
PROVIDER_LOOKUPS_PER_TOPIC = 5
MAX_MEDIAN_HOPS = math.ceil(math.log2(N_NODES))
CONFIG = DhtConfig(rpc_timeout=1.0)


@dataclass
class PhaseStats:
    name: str
    lookups: list[Lookup] = field(default_factory=list)
    successes: int = 0

    @property
    def rate(self) -> float:
        return self.successes / len(self.lookups)

    def line(self) -> str:
        hops = sorted(lk.hops for lk in self.lookups)
        lat = sorted(lk.duration or 0.0 for lk in self.lookups)
        queries = [lk.stats.queries for lk in self.lookups]
        timeouts = [lk.stats.timeouts for lk in self.lookups]
        p90 = hops[int(0.9 * (len(hops) - 1))]
        return (
            f"{self.name}: {len(self.lookups)} lookups, success {100 * self.rate:.1f}%, "
            f"hops median {statistics.median(hops)} p90 {p90} max {hops[-1]}, "
            f"queries mean {statistics.mean(queries):.1f}, "
            f"timeouts mean {statistics.mean(timeouts):.1f}, "
            f"virtual latency median {statistics.median(lat):.2f} s "
            f"p90 {lat[int(0.9 * (len(lat) - 1))]:.2f} s"
        )


@dataclass
class SimResult:
    net: SimNet
    random_ids: PhaseStats
    live_ids: PhaseStats
    target_answered: int
    providers: PhaseStats
    providers_expected: int
    providers_found: int
    killed: int


Job = tuple[DhtNode, Callable[[float], Lookup]]


def _run_lookups(net: SimNet, jobs: list[Job], spread: float) -> list[Lookup]:
    """Start every lookup at a random moment within ``spread`` seconds; run to completion."""
    started: list[Lookup | None] = [None] * len(jobs)
    done: list[Lookup] = []

    def finished(run: LookupRun) -> None:
        done.append(run.lookup)

    for i, (node, make) in enumerate(jobs):

        def go(i: int = i, node: DhtNode = node, make: Callable[[float], Lookup] = make) -> None:
            started[i] = lookup = make(net.now)
            net.start_lookup(node, lookup, finished)

        net.after(net.rng.uniform(0, spread), go)
    net.run()
    assert len(done) == len(jobs), "every lookup must finish"
    return [lk for lk in started if lk is not None]


def _join(net: SimNet) -> list[DhtNode]:
    """Phase 1: the seeds know each other; every node joins, one every JOIN_GAP."""
    nodes = [net.add_node(i) for i in range(N_NODES)]
    seeds = nodes[:N_SEEDS]
    for seed in seeds:
        for other in seeds:
            if other is not seed:
                seed.add_contact(other.contact(), net.now)
    for i, node in enumerate(nodes):
        net.at(T0 + i * JOIN_GAP, partial(net.join, node, seeds))
    net.run()
    return nodes


def _random_id_lookups(net: SimNet, rng: random.Random, nodes: list[DhtNode]) -> PhaseStats:
    """Phase 2: every node looks up a random id, checked against the true k closest."""
    random_ids = PhaseStats("random ids, all nodes live")
    jobs: list[Job] = []
    for node in nodes:
        target = rng.getrandbits(256).to_bytes(32, "big")
        jobs.append((node, partial(node.lookup_node, target)))
    for (node, _), lookup in zip(jobs, _run_lookups(net, jobs, 5.0), strict=True):
        truth = net.true_closest(lookup.target, CONFIG.k, exclude=node.id)
        random_ids.lookups.append(lookup)
        random_ids.successes += [c.id for c in lookup.result()] == truth
    return random_ids


def _provide(net: SimNet, rng: random.Random, nodes: list[DhtNode]) -> dict[str, list[DhtNode]]:
    """Phase 3: N_TOPICS topics get PROVIDERS_PER_TOPIC providers each, published."""
    providers_of: dict[str, list[DhtNode]] = {}
    for topic in (f"topic-{i}" for i in range(N_TOPICS)):
        providers_of[topic] = rng.sample(nodes[N_SEEDS:], PROVIDERS_PER_TOPIC)
        for node in providers_of[topic]:
            node.start_providing(topic, net.now)
    for node in nodes:
        if node.providing:
            net.after(rng.uniform(0, 5.0), partial(net.publish_due, node))
    net.run()
    return providers_of


def _live_id_lookups(
    net: SimNet, rng: random.Random, live: list[DhtNode]
) -> tuple[PhaseStats, int]:
    """Phase 4a: every live node runs FIND_PEER for a random live id; returns the
    stats and how many answers had the target among the k closest."""
    live_ids = PhaseStats("live ids after killing 30%")
    jobs: list[Job] = []
    for node in live:
        target = rng.choice([n for n in live if n is not node]).id
        jobs.append((node, partial(node.lookup_peer, target, quorum=0)))
    answered = 0
    for lookup in _run_lookups(net, jobs, 5.0):
        assert isinstance(lookup, PeerLookup)
        live_ids.lookups.append(lookup)
        live_ids.successes += lookup.record is not None and lookup.record.id == lookup.target
        answered += any(c.id == lookup.target for c in lookup.result())
    return live_ids, answered


def _provider_lookups(
    net: SimNet,
    rng: random.Random,
    live: list[DhtNode],
    providers_of: dict[str, list[DhtNode]],
) -> tuple[PhaseStats, int, int]:
    """Phase 4b: live nodes look up each topic's providers; returns the stats and
    the live providers expected and found."""
    provider_stats = PhaseStats("provider lookups after killing 30%")
    expected = found = 0
    jobs: list[Job] = []
    wanted: list[set[bytes]] = []
    for topic, providers in providers_of.items():
        live_providers = {n.id for n in providers if n.id in net.alive}
        for node in rng.sample(live, PROVIDER_LOOKUPS_PER_TOPIC):
            jobs.append((node, partial(node.lookup_providers, topic_key(topic))))
            wanted.append(live_providers)
    for lookup, want in zip(_run_lookups(net, jobs, 5.0), wanted, strict=True):
        assert isinstance(lookup, ProviderLookup)
        got = set(lookup.found) & want
        provider_stats.lookups.append(lookup)
        provider_stats.successes += got == want
        expected += len(want)
        found += len(got)
    return provider_stats, expected, found


def _simulate() -> SimResult:
    rng = random.Random(20240611)
    net = SimNet(rng, CONFIG)
    nodes = _join(net)  # 1. join
    random_ids = _random_id_lookups(net, rng, nodes)  # 2. random ids from every node
    providers_of = _provide(net, rng, nodes)  # 3. providers for 20 topics

    # 4. churn: kill 30%, then look up live ids and providers
    victims = rng.sample(nodes, int(KILL_FRACTION * N_NODES))
    for victim in victims:
        net.kill(victim.id)
    live = [n for n in nodes if n.id in net.alive]
    live_ids, answered = _live_id_lookups(net, rng, live)
    provider_stats, expected, found = _provider_lookups(net, rng, live, providers_of)
    return SimResult(
        net, random_ids, live_ids, answered, provider_stats, expected, found, len(victims)
    )


@pytest.fixture(scope="module")
def sim() -> SimResult:
    result = _simulate()
    net = result.net
    sizes = [len(n.table) for n in net.nodes.values()]
    print()
    print(f"{N_NODES} nodes, {N_SEEDS} seeds, k={CONFIG.k}, alpha={CONFIG.alpha}")
    print(
        f"routing tables: mean {statistics.mean(sizes):.1f} contacts, min {min(sizes)}; "
        f"{net.stats.rpcs} RPCs, {net.stats.bytes / 1e6:.1f} MB, {net.stats.pings} pings, "
        f"{net.stats.lost} requests lost to dead nodes, {net.stats.errors} error replies"
    )
    print(result.random_ids.line())
    print(result.live_ids.line())
    print(
        f"  targets among the answering k closest: "
        f"{100 * result.target_answered / len(result.live_ids.lookups):.1f}%"
    )
    print(result.providers.line())
    print(
        f"  live providers found: {result.providers_found}/{result.providers_expected} "
        f"({100 * result.providers_found / result.providers_expected:.1f}%)"
    )
    return result


def test_join_fills_routing_tables(sim: SimResult) -> None:
    sizes = [len(n.table) for n in sim.net.nodes.values()]
    assert min(sizes) >= CONFIG.k  # every node knows at least k others
    assert sim.net.stats.publish_refused == 0  # every record put was accepted


def test_random_lookups_return_the_true_k_closest(sim: SimResult) -> None:
    assert len(sim.random_ids.lookups) == N_NODES
    assert sim.random_ids.rate >= 0.99


def test_median_hops_within_log2_n(sim: SimResult) -> None:
    hops = [lk.hops for lk in sim.random_ids.lookups]
    assert statistics.median(hops) <= MAX_MEDIAN_HOPS
    assert min(hops) >= 1


def test_lookups_of_live_ids_survive_churn(sim: SimResult) -> None:
    assert sim.killed == int(KILL_FRACTION * N_NODES)
    assert len(sim.live_ids.lookups) == N_NODES - sim.killed
    assert sim.live_ids.rate >= 0.99
    # the dead were really in the way: some requests timed out
    assert sum(lk.stats.timeouts for lk in sim.live_ids.lookups) > 0


def test_provider_lookups_find_live_providers(sim: SimResult) -> None:
    assert len(sim.providers.lookups) == N_TOPICS * PROVIDER_LOOKUPS_PER_TOPIC
    assert sim.providers_expected > 0
    assert sim.providers_found / sim.providers_expected >= 0.95
    for lookup in sim.providers.lookups:
        assert isinstance(lookup, ProviderLookup)
        for record in lookup.found.values():
            assert record.key == lookup.target  # only validated records for the key asked
