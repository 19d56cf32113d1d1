"""Issue 18, acceptance 1 (simulation): the agent directory on 500 DHT nodes in virtual time.

Every RPC travels as bytes (encode -> strict decode) through the heap-ordered
message queue of tests/_dht_harness.py, with a random one-way latency of
10-100 ms; a dead node never answers (requests to it time out after 1 s).
Randomness is seeded, so a run is reproducible.

1. 500 card-serving nodes join one after another through 3 seeds.
2. 100 of them are agents: each declares 1 or 2 of 20 skills, each tagged with
   one of 6 tags, and publishes its signed card under every skill and tag key.
3. For every skill, 5 random nodes look it up (GET_CARDS): each must find
   exactly the agents declaring it (100%), with a median of at most
   ceil(log2 500) = 9 hops; tags likewise.
4. Churn: 30% of the nodes are killed and as many new nodes join. For every
   skill 5 random live nodes look it up again: at least 99% of the live
   agents declaring it must be found (no republication in between).

Figures are printed with ``pytest -s``; ``CARDS_SIM_NODES=2000`` runs a bigger
mesh (not in CI).
"""

from __future__ import annotations

import math
import os
import random
import statistics
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest

from dht import Cards, DhtConfig, DhtNode, GetCards, Op, Response
from dht._card import skill_key, tag_key
from dht._cards import CARDS_CAP, CardLookup, CardPage

from ._dht_harness import T0, LookupRun, SimNet

N_NODES = int(os.environ.get("CARDS_SIM_NODES", "500"))
N_SEEDS = 3
JOIN_GAP = 0.5
N_AGENTS = 100 * N_NODES // 500
N_SKILLS = 20
TAGS = ("text", "vision", "audio", "code", "math", "search")
LOOKUPS_PER_SKILL = 5
CHURN = 0.3
MAX_MEDIAN_HOPS = math.ceil(math.log2(N_NODES))
CONFIG = DhtConfig(rpc_timeout=1.0)
CAPS = ("relay", "dht", CARDS_CAP)


@dataclass
class Phase:
    name: str
    lookups: list[CardLookup] = field(default_factory=list)
    exact: int = 0  # lookups that found every (live) agent wanted
    wanted: int = 0
    found: int = 0

    def line(self) -> str:
        hops = sorted(lk.hops for lk in self.lookups)
        queries = [lk.stats.queries for lk in self.lookups]
        lat = sorted(lk.duration or 0.0 for lk in self.lookups)
        return (
            f"{self.name}: {len(self.lookups)} lookups, {self.found}/{self.wanted} agents found "
            f"({100 * self.found / max(1, self.wanted):.2f}%), exact {self.exact}, hops median "
            f"{statistics.median(hops)} max {hops[-1]}, queries mean {statistics.mean(queries):.1f}"
            f", virtual latency median {statistics.median(lat):.2f} s"
        )


def _card(rng: random.Random, index: int) -> dict[str, Any]:
    skills = []
    for sid in rng.sample(range(N_SKILLS), rng.randint(1, 2)):
        tags = rng.sample(TAGS, 1)
        skills.append({"id": f"skill-{sid}", "name": f"Skill {sid}", "tags": tags})
    return {"name": f"agent-{index}", "description": "simulated", "skills": skills}


def _page(net: SimNet, node: DhtNode, lookup: CardLookup, out: list[CardLookup]) -> None:
    """Ask the storers that had more cards for their next pages, until none has."""
    wanted = lookup.pages_wanted()
    if not wanted:
        out.append(lookup)
        return
    left = [len(wanted)]

    def on_page(contact_id: bytes, resp: Response) -> None:
        if isinstance(resp, Cards):
            lookup.on_cards(contact_id, CardPage(resp.cards, resp.more), net.now)
        else:
            lookup.more_from.pop(contact_id, None)
        left[0] -= 1
        if left[0] == 0:
            _page(net, node, lookup, out)

    for contact, cursor in wanted:
        req = GetCards(node.next_rid(), lookup.target, cursor, node.serving)
        net.send(node, contact, req, partial(on_page, contact.id))


def _run(net: SimNet, jobs: list[tuple[DhtNode, bytes]]) -> list[CardLookup]:
    out: list[CardLookup] = []

    def done(run: LookupRun) -> None:
        assert isinstance(run.lookup, CardLookup)
        _page(net, run.node, run.lookup, out)

    for node, key in jobs:

        def go(node: DhtNode = node, key: bytes = key) -> None:
            net.start_lookup(node, node.lookup_cards(key, net.now), done)

        net.after(net.rng.uniform(0, 5.0), go)
    net.run()
    assert len(out) == len(jobs), "every lookup must finish"
    return out


def _publish_card(net: SimNet, agent: DhtNode) -> None:
    for pub in agent.due_publications(net.now):
        if pub.op is Op.PUT_CARD:  # (the peer record is not what this test is about)
            net.publish(agent, pub)


def _join(net: SimNet, first: int, count: int, seeds: list[DhtNode]) -> list[DhtNode]:
    nodes = [net.add_node(i, caps=CAPS) for i in range(first, first + count)]
    start = net.now
    for i, node in enumerate(nodes):
        net.at(start + i * JOIN_GAP, partial(net.join, node, seeds, publish=False))
    net.run()
    return nodes


def _check(
    net: SimNet, phase: Phase, lookups: list[CardLookup], want_of: dict[bytes, set[bytes]]
) -> None:
    for lookup in lookups:
        want = {a for a in want_of[lookup.target] if a in net.alive}
        got = set(lookup.found) & want
        assert set(lookup.found) <= want_of[lookup.target]  # nothing that does not declare it
        phase.lookups.append(lookup)
        phase.wanted += len(want)
        phase.found += len(got)
        phase.exact += got == want


@dataclass
class Result:
    net: SimNet
    skills: Phase
    tags: Phase
    churn: Phase
    per_key: list[int]


def _simulate() -> Result:
    rng = random.Random(18_2026)
    net = SimNet(rng, CONFIG)
    seeds = [net.add_node(i, caps=CAPS) for i in range(N_SEEDS)]
    for seed in seeds:
        for other in seeds:
            if other is not seed:
                seed.add_contact(other.contact(), net.now)
    nodes = seeds + _join(net, N_SEEDS, N_NODES - N_SEEDS, seeds)
    want_of: dict[bytes, set[bytes]] = {}
    for i, agent in enumerate(rng.sample(nodes, N_AGENTS)):
        record = agent.set_card(_card(rng, i), net.now)
        assert record is not None
        for key in record.keys:
            want_of.setdefault(key, set()).add(agent.id)
        net.after(rng.uniform(0, 5.0), partial(_publish_card, net, agent))
    net.run()
    skill_keys = [skill_key(f"skill-{s}") for s in range(N_SKILLS)]
    tag_keys = [tag_key(t) for t in TAGS]
    for key in skill_keys + tag_keys:
        want_of.setdefault(key, set())

    skills, tags, churn = Phase("by skill"), Phase("by tag"), Phase("by skill after 30% churn")
    jobs = [(n, k) for k in skill_keys for n in rng.sample(nodes, LOOKUPS_PER_SKILL)]
    _check(net, skills, _run(net, jobs), want_of)
    jobs = [(n, k) for k in tag_keys for n in rng.sample(nodes, 2)]
    _check(net, tags, _run(net, jobs), want_of)

    for victim in rng.sample(nodes, int(CHURN * N_NODES)):
        net.kill(victim.id)
    live_seeds = [n for n in nodes if n.id in net.alive][:N_SEEDS]
    _join(net, N_NODES, int(CHURN * N_NODES), live_seeds)
    live = [n for n in net.nodes.values() if n.id in net.alive]
    jobs = [(n, k) for k in skill_keys for n in rng.sample(live, LOOKUPS_PER_SKILL)]
    _check(net, churn, _run(net, jobs), want_of)
    return Result(net, skills, tags, churn, [len(want_of[k]) for k in skill_keys])


@pytest.fixture(scope="module")
def sim() -> Result:
    result = _simulate()
    print()
    print(
        f"{N_NODES} nodes, {N_AGENTS} agents, {N_SKILLS} skills "
        f"({min(result.per_key)}..{max(result.per_key)} agents each), k={CONFIG.k}; "
        f"{result.net.stats.rpcs} RPCs, {result.net.stats.bytes / 1e6:.1f} MB, "
        f"{result.net.stats.publish_refused} puts refused"
    )
    for phase in (result.skills, result.tags, result.churn):
        print(phase.line())
    return result


def test_lookup_by_skill_finds_every_agent(sim: Result) -> None:
    assert len(sim.skills.lookups) == N_SKILLS * LOOKUPS_PER_SKILL
    assert sim.skills.wanted > 0
    assert sim.skills.found == sim.skills.wanted  # 100%
    assert sim.skills.exact == len(sim.skills.lookups)
    assert sim.net.stats.publish_refused == 0


def test_lookup_by_tag_finds_every_agent(sim: Result) -> None:
    assert sim.tags.found == sim.tags.wanted > 0
    # (paging through storers with more than one reply's worth: tests/test_dht_cards.py)


def test_median_hops_within_log2_n(sim: Result) -> None:
    hops = [lk.hops for lk in sim.skills.lookups]
    assert statistics.median(hops) <= MAX_MEDIAN_HOPS
    assert min(hops) >= 1


def test_after_churn_99_percent_are_found(sim: Result) -> None:
    assert sim.churn.wanted > 0
    assert sim.churn.found / sim.churn.wanted >= 0.99
    assert sum(lk.stats.timeouts for lk in sim.churn.lookups) > 0  # the dead were in the way


def test_cards_found_are_valid_and_for_the_key(sim: Result) -> None:
    for lookup in sim.skills.lookups + sim.churn.lookups:
        for record in lookup.found.values():
            assert lookup.target in record.keys
            assert record.expires > T0
