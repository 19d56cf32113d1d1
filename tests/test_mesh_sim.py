"""Acceptance: a 50-peer mesh in one process, over memory streams, in virtual time.

Fifty peers are linked in a seeded random connected topology (a random
spanning tree plus random extra edges, average degree about four) over
``memory_link_pair`` transports, under ``MockClock(autojump_threshold=0)``
(pytest-trio's ``autojump_clock`` fixture): heartbeats, presence and
keepalives run in virtual time, so the whole run costs a few seconds of real
time. Eight peers are relay-only seeds that subscribe to nothing; the others
subscribe to random subsets of five channels.

After links, interest and presence have settled, random publishers (subscribed
to the channel or not) send 200 channel messages and 20 DMs, and the test
checks, by message id and exactly: every subscriber holds every message of its
channels, nobody else holds any, relay-only seeds hold nothing, each DM is
held by its two ends only, and a third party that carried a DM cannot open
it. A second test cuts links mid-run (partitioning the mesh) and checks that
routing re-converges and each component still delivers within itself. A third,
small one is a regression test: a message that reaches relays before their
first heartbeat (no transit mesh yet) must still get through.

Every wait is bounded by ``trio.fail_after`` in virtual time and wakes on an
event: a link, inbox, or handled-frame signal. Fixed virtual-time sleeps are
used only to pace publishing and to give strays and duplicates a chance to
show before the exact checks.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs
from structlog.typing import EventDict

from peer import (
    AnyFrame,
    Content,
    Deliver,
    Envelope,
    GossipRouter,
    Identity,
    Peer,
    PeerOptions,
    ProtocolError,
    inbox_topic,
    memory_link_pair,
    open_dm,
    open_envelope,
)
from peer.node._transport import StreamTransport
from peer.protocols._gossip import Action

N_PEERS = 50
N_RELAY_ONLY = 8
AVERAGE_DEGREE = 4
CHANNELS = ("alpha", "beta", "gamma", "delta", "epsilon")
N_MESSAGES = 200
N_DMS = 20
SETTLE = 5.0  # virtual seconds after delivery in which strays or duplicates would show

Edge = tuple[int, int]


# -- topology ------------------------------------------------------------------------


def random_topology(rng: random.Random, n: int, average_degree: int) -> list[Edge]:
    """A random spanning tree (so it is connected) plus random extra edges."""
    order = list(range(n))
    rng.shuffle(order)
    edges: set[Edge] = set()
    for i in range(1, n):
        u, v = order[i], order[rng.randrange(i)]
        edges.add((min(u, v), max(u, v)))
    while len(edges) < n * average_degree // 2:
        u, v = rng.sample(range(n), 2)
        edges.add((min(u, v), max(u, v)))
    return sorted(edges)


def neighbours(n: int, edges: Iterable[Edge]) -> list[set[int]]:
    out: list[set[int]] = [set() for _ in range(n)]
    for u, v in edges:
        out[u].add(v)
        out[v].add(u)
    return out


def components(n: int, edges: Iterable[Edge]) -> list[frozenset[int]]:
    """Component of each node, as a list indexed by node."""
    adj = neighbours(n, edges)
    comp: list[frozenset[int]] = [frozenset()] * n
    seen: set[int] = set()
    for start in range(n):
        if start in seen:
            continue
        members = {start}
        frontier = [start]
        while frontier:
            u = frontier.pop()
            for v in adj[u] - members:
                members.add(v)
                frontier.append(v)
        seen |= members
        for u in members:
            comp[u] = frozenset(members)
    return comp


# -- the simulated mesh --------------------------------------------------------------------


class Signal:
    """A re-armable event: ``fire`` wakes every current waiter."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait(self) -> None:
        await self._event.wait()


class CountingRouter(GossipRouter):
    """A gossip router that counts, per message id, what it hands to its peer.

    The inbox ignores a second copy of an id, so counting the router's
    ``Deliver`` decisions is what shows that a message arrives exactly once.
    Each frame it handles also fires the mesh-wide ``handled`` signal, which
    is what the test waits on for routing state (interest, meshes, presence).
    """

    def __init__(self, peer: Peer, seed: int, handled: Signal) -> None:
        super().__init__(
            peer.peer_id,
            relay=peer.options.relay,
            params=peer.options.gossip,
            rng=random.Random(seed),
            keepalive=peer.options.keepalive,
            idle_timeout=peer.options.idle_timeout,
        )
        self.deliveries: Counter[bytes] = Counter()
        self._handled = handled

    def handle_frame(
        self, peer: bytes, frame: AnyFrame, raw: bytes, now: float, wall_ms: int
    ) -> list[Action]:
        actions = super().handle_frame(peer, frame, raw, now, wall_ms)
        self._handled.fire()
        for action in actions:
            if isinstance(action, Deliver):
                self.deliveries[action.envelope.id] += 1
        return actions


def deliveries(p: Peer) -> Counter[bytes]:
    assert isinstance(p.router, CountingRouter)
    return p.router.deliveries


@dataclass
class Sim:
    rng: random.Random
    peers: list[Peer]
    relay_only: frozenset[int]
    subs: list[frozenset[str]]
    edges: set[Edge]
    handled: Signal
    transports: dict[Edge, StreamTransport] = field(default_factory=dict)
    logs: list[EventDict] = field(default_factory=list)
    # what was sent: message id -> (publisher, channel, body)
    messages: dict[bytes, tuple[int, str, str]] = field(default_factory=dict)
    # DM id -> (sender, recipient, body, envelope)
    dms: dict[bytes, tuple[int, int, str, Envelope]] = field(default_factory=dict)

    @property
    def talkers(self) -> list[int]:
        return [i for i in range(len(self.peers)) if i not in self.relay_only]

    def component(self) -> list[frozenset[int]]:
        return components(len(self.peers), self.edges)

    def inbox_ids(self, i: int) -> set[bytes]:
        return {m.id for m in self.peers[i].inbox}


async def settle(sim: Sim, what: str, predicate: Callable[[], bool], limit: float) -> None:
    """Wait until ``predicate`` holds, re-checking after each burst of frames.

    A burst is over when every task is blocked: with memory streams and a
    MockClock that means nothing is in flight at this virtual instant.
    Bounded by ``limit`` virtual seconds.
    """
    try:
        with trio.fail_after(limit):
            await trio.testing.wait_all_tasks_blocked()
            while not predicate():
                await sim.handled.wait()
                await trio.testing.wait_all_tasks_blocked()
    except trio.TooSlowError:
        raise AssertionError(f"not true after {limit} virtual s: {what}") from None


def build_sim(seed: int) -> Sim:
    rng = random.Random(seed)
    relay_only = frozenset(rng.sample(range(N_PEERS), N_RELAY_ONLY))
    subs: list[frozenset[str]] = []
    for i in range(N_PEERS):
        if i in relay_only:
            subs.append(frozenset())
        else:
            subs.append(frozenset(c for c in CHANNELS if rng.random() < 0.4))
    for c in CHANNELS:  # every channel has at least three subscribers
        while sum(c in s for s in subs) < 3:
            i = rng.choice([j for j in range(N_PEERS) if j not in relay_only])
            subs[i] = subs[i] | {c}
    peers = [
        Peer(
            Identity.from_seed(rng.randbytes(32)),
            PeerOptions(channels=tuple(sorted(subs[i])), relay_only=i in relay_only, seed=i),
        )
        for i in range(N_PEERS)
    ]
    handled = Signal()
    for i, p in enumerate(peers):
        p.router = CountingRouter(p, seed * 1000 + i, handled)
    edges = set(random_topology(rng, N_PEERS, AVERAGE_DEGREE))
    return Sim(rng, peers, relay_only, subs, edges, handled)


def interest_converged(sim: Sim) -> bool:
    """Each peer routes exactly the topics that have a member elsewhere in its component."""
    comp = sim.component()
    for i, p in enumerate(sim.peers):
        for c in CHANNELS:
            wanted = any(c in sim.subs[j] for j in comp[i] if j != i)
            if p.router.reachable(c) != wanted:
                return False
        for j in sim.talkers:
            if j != i and p.router.reachable(inbox_topic(sim.peers[j].peer_id)) != (j in comp[i]):
                return False
    return True


def meshes_formed(sim: Sim) -> bool:
    """Every peer with relays beyond it for a channel has grafted some of them."""
    for p in sim.peers:
        for c in CHANNELS:
            transit = [q for q in p.router.links() if p.router.interest_of(q).get(c, 0) > 0]
            if transit and not p.router.mesh_of(c):
                return False
    return True


def directories_full(sim: Sim) -> bool:
    comp = sim.component()
    return all(
        sim.peers[i].directory.get(sim.peers[j].peer_id) is not None
        for i in range(N_PEERS)
        for j in comp[i]
        if j != i
    )


async def wait_links(sim: Sim) -> None:
    """Every peer is linked to exactly its neighbours in ``sim.edges``."""
    adj = neighbours(N_PEERS, sim.edges)
    with trio.fail_after(30):
        for i, p in enumerate(sim.peers):
            want = {sim.peers[j].peer_id for j in adj[i]}
            while set(p.links) != want:
                await p.wait_links_changed()


@asynccontextmanager
async def running(seed: int) -> AsyncIterator[Sim]:
    sim = build_sim(seed)
    with capture_logs() as logs:
        sim.logs = logs
        async with trio.open_nursery() as nursery:
            for p in sim.peers:
                await nursery.start(p.run)
            for u, v in sorted(sim.edges):
                ta, tb = memory_link_pair(f"mem-{v}", f"mem-{u}")
                sim.transports[(u, v)] = ta
                sim.peers[u].start_link(ta, initiator=True)
                sim.peers[v].start_link(tb, initiator=False)
            await wait_links(sim)
            await settle(sim, "interest propagated", lambda: interest_converged(sim), 30)
            await settle(sim, "directories full", lambda: directories_full(sim), 200)
            await settle(sim, "transit meshes formed", lambda: meshes_formed(sim), 30)
            assert_healthy(sim)
            yield sim
            nursery.cancel_scope.cancel()


def assert_healthy(sim: Sim) -> None:
    """Nothing was refused, crashed or dropped for being slow anywhere."""
    for i, p in enumerate(sim.peers):
        c = p.counters
        assert c.refused == {}, (i, c.refused)
        assert (c.handshakes_failed, c.link_errors, c.dm_undecryptable) == (0, 0, 0), (i, c)
        assert p.inbox.dropped == 0
    bad = [e for e in sim.logs if e["log_level"] in ("warning", "error", "critical")]
    assert bad == []


# -- traffic ------------------------------------------------------------------------


def publish_one(sim: Sim, tag: str) -> bytes:
    i = sim.rng.choice(sim.talkers)
    channel = sim.rng.choice(CHANNELS)
    body = f"{tag} from {i} on {channel} #{len(sim.messages)}"
    env = sim.peers[i].publish(channel, Content(body))
    sim.messages[env.id] = (i, channel, body)
    return env.id


def dm_one(sim: Sim, tag: str) -> bytes:
    sender, recipient = sim.rng.sample(sim.talkers, 2)
    body = f"{tag} secret from {sender} to {recipient} #{len(sim.dms)}"
    env = sim.peers[sender].send_dm(sim.peers[recipient].peer_id, Content(body))
    sim.dms[env.id] = (sender, recipient, body, env)
    return env.id


def expected_inbox(sim: Sim, i: int, ids: Iterable[bytes]) -> set[bytes]:
    """Of ``ids``, the ones peer ``i`` must hold: its channels' messages and its DMs."""
    out: set[bytes] = set()
    for mid in ids:
        if mid in sim.messages:
            if sim.messages[mid][1] in sim.subs[i]:
                out.add(mid)
        else:
            sender, recipient, _, _ = sim.dms[mid]
            if i in (sender, recipient):
                out.add(mid)
    return out


def origin(sim: Sim, mid: bytes) -> int:
    return sim.messages[mid][0] if mid in sim.messages else sim.dms[mid][0]


async def wait_delivered(sim: Sim, expected: list[set[bytes]], limit: float) -> None:
    missing: dict[int, int] = {}
    try:
        with trio.fail_after(limit):
            for i, p in enumerate(sim.peers):
                while not expected[i] <= sim.inbox_ids(i):
                    missing = {i: len(expected[i] - sim.inbox_ids(i))}
                    await p.wait_inbox_changed()
    except trio.TooSlowError:
        raise AssertionError(f"after {limit} virtual s, peer: missing = {missing}") from None


def assert_inboxes(sim: Sim, ids: set[bytes], expected: list[set[bytes]]) -> None:
    """Of the messages ``ids``, each peer holds exactly its expected ones, correctly."""
    for i in range(N_PEERS):
        held = [m for m in sim.peers[i].inbox if m.id in ids]
        got = [m.id for m in held]
        assert len(got) == len(set(got)), f"peer {i} holds a message twice"
        assert set(got) == expected[i], (
            f"peer {i} (subs {sorted(sim.subs[i])}, relay-only {i in sim.relay_only}): "
            f"{len(expected[i] - set(got))} missing, {len(set(got) - expected[i])} unexpected"
        )
        # What the network handed over: each expected message from another peer
        # exactly once, nothing else (a peer's own messages never come back).
        counts = deliveries(sim.peers[i])
        for mid in ids:
            want = 1 if mid in expected[i] and origin(sim, mid) != i else 0
            assert counts[mid] == want, f"peer {i} was handed a message {counts[mid]} times"
        for m in held:
            if m.id in sim.messages:
                publisher, channel, body = sim.messages[m.id]
                assert (m.kind, m.channel, m.body) == ("msg", channel, body)
                assert m.sender == sim.peers[publisher].peer_id
                assert m.outgoing == (publisher == i)
            else:
                sender, recipient, body, _ = sim.dms[m.id]
                other = recipient if i == sender else sender
                assert (m.kind, m.body, m.channel) == ("dm", body, None)
                assert m.sender == sim.peers[sender].peer_id
                assert m.peer == sim.peers[other].peer_id
                assert m.outgoing == (i == sender)


# -- the tests ------------------------------------------------------------------------


async def test_fifty_peers_deliver_exactly_once(autojump_clock: trio.testing.MockClock) -> None:
    async with running(seed=20240501) as sim:
        assert len(sim.edges) == N_PEERS * AVERAGE_DEGREE // 2
        dm_slots = set(sim.rng.sample(range(N_MESSAGES + N_DMS), N_DMS))
        for k in range(N_MESSAGES + N_DMS):
            if k in dm_slots:
                dm_one(sim, "static")
            else:
                publish_one(sim, "static")
            await trio.sleep(sim.rng.uniform(0, 0.05))
        assert len(sim.messages) == N_MESSAGES and len(sim.dms) == N_DMS
        # Both kinds of publisher occurred: subscribed to the channel, and not.
        own = [sim.messages[m][1] in sim.subs[sim.messages[m][0]] for m in sim.messages]
        assert any(own) and not all(own)

        ids = set(sim.messages) | set(sim.dms)
        expected = [expected_inbox(sim, i, ids) for i in range(N_PEERS)]
        await wait_delivered(sim, expected, limit=60)
        await trio.sleep(SETTLE)
        assert_inboxes(sim, ids, expected)

        for i in sim.relay_only:
            assert len(sim.peers[i].inbox) == 0
        assert sum(sim.peers[i].router.stats.forwarded for i in sim.relay_only) > 0
        assert_dms_sealed(sim)
        assert_healthy(sim)


def assert_dms_sealed(sim: Sim) -> None:
    """Carriers of a DM see a valid signature but cannot read the content."""
    tried = 0
    for mid, (sender, recipient, body, env) in sim.dms.items():
        carried = open_envelope(env.wire)  # what any relay holds: it verifies...
        assert carried.id == mid and carried.kind == "dm"
        assert body.encode() not in env.wire
        reader = sim.peers[recipient].identity
        assert open_dm(reader, carried).body == body
        carriers = [
            i
            for i in range(N_PEERS)
            if i not in (sender, recipient) and sim.peers[i].router.seen(mid)
        ]
        for i in carriers[:3]:
            third = sim.peers[i].identity
            with pytest.raises(ProtocolError):
                open_dm(third, carried)
            # ...even pretending the DM was addressed to it, the box does not open.
            readdressed = dataclasses.replace(
                carried, fields={**carried.fields, "to": third.peer_id}
            )
            with pytest.raises(ProtocolError):
                open_dm(third, readdressed)
            tried += 1
    assert tried >= len(sim.dms), "DMs crossed relays that could have read them"


async def test_mesh_survives_dropped_links(autojump_clock: trio.testing.MockClock) -> None:
    async with running(seed=777) as sim:
        # Phase 1, everything connected.
        before = {publish_one(sim, "before") for _ in range(40)}
        before |= {dm_one(sim, "before") for _ in range(5)}
        expected = [expected_inbox(sim, i, before) for i in range(N_PEERS)]
        await wait_delivered(sim, expected, limit=60)

        # Choose the cut: a BFS ball of ten peers is severed from the rest, plus
        # eight random other links, which may split things further.
        adj = neighbours(N_PEERS, sim.edges)
        ball = [sim.rng.choice(sim.talkers)]
        while len(ball) < 10:
            frontier = sorted({v for u in ball for v in adj[u]} - set(ball))
            ball.append(sim.rng.choice(frontier))
        cut = {e for e in sim.edges if (e[0] in ball) != (e[1] in ball)}
        others = sorted(sim.edges - cut)
        cut |= set(sim.rng.sample(others, 8))

        # Phase 2, mid-run: messages keep flowing while the links go down.
        during: set[bytes] = set()
        for e in sorted(cut, key=lambda _: sim.rng.random()):
            during.add(publish_one(sim, "during"))
            await trio.sleep(sim.rng.uniform(0, 0.02))
            await sim.transports[e].aclose()  # the link breaks under both peers
            sim.edges.discard(e)
        await wait_links(sim)
        comp = sim.component()
        assert len(set(comp)) >= 2, "the cut partitions the mesh"
        await settle(sim, "interest re-converged", lambda: interest_converged(sim), 30)
        await trio.sleep(SETTLE)
        # Safety for messages in flight during the cut: only subscribers hold them.
        for i in range(N_PEERS):
            for mid in sim.inbox_ids(i) & during:
                assert sim.messages[mid][1] in sim.subs[i]

        # Phase 3, partitioned: each component delivers within itself, and only there.
        after = {publish_one(sim, "after") for _ in range(60)}
        after |= {dm_one_within(sim, comp, "after") for _ in range(10)}
        expected = [
            {m for m in expected_inbox(sim, i, after) if origin(sim, m) in comp[i]}
            for i in range(N_PEERS)
        ]
        await wait_delivered(sim, expected, limit=60)
        await trio.sleep(SETTLE)
        assert_inboxes(sim, after, expected)
        assert_inboxes(sim, before, [expected_inbox(sim, i, before) for i in range(N_PEERS)])
        for i in sim.relay_only:
            assert len(sim.peers[i].inbox) == 0
        assert_healthy(sim)


def dm_one_within(sim: Sim, comp: list[frozenset[int]], tag: str) -> bytes:
    """A DM between two talkers of the same component (a DM needs a route)."""
    while True:
        sender, recipient = sim.rng.sample(sim.talkers, 2)
        if recipient in comp[sender]:
            break
    body = f"{tag} secret from {sender} to {recipient} #{len(sim.dms)}"
    env = sim.peers[sender].send_dm(sim.peers[recipient].peer_id, Content(body))
    sim.dms[env.id] = (sender, recipient, body, env)
    return env.id


async def test_publish_before_transit_meshes_form(autojump_clock: trio.testing.MockClock) -> None:
    """X - R - B - C in a line, only C subscribed: X publishes as soon as it has a route.

    R and B carry the channel as transit (hops > 0) and have not had a heartbeat
    yet, so their meshes are empty when the message passes. (Before the router
    grafted on receipt, the message was neither pushed nor IHAVE'd to B: lost.)
    """
    ids = [Identity.from_seed(bytes([k]) * 32) for k in range(4)]
    x, r, b, c = (
        Peer(ids[0], PeerOptions(seed=0)),
        Peer(ids[1], PeerOptions(relay_only=True, seed=1)),
        Peer(ids[2], PeerOptions(seed=2)),
        Peer(ids[3], PeerOptions(channels=("alpha",), seed=3)),
    )
    handled = Signal()
    x.router = CountingRouter(x, 0, handled)
    async with trio.open_nursery() as nursery:
        for p in (x, r, b, c):
            await nursery.start(p.run)
        for left, right in ((x, r), (r, b), (b, c)):
            ta, tb = memory_link_pair()
            left.start_link(ta, initiator=True)
            right.start_link(tb, initiator=False)
        with trio.fail_after(5):
            while not x.router.reachable("alpha"):
                await handled.wait()
        assert trio.current_time() < x.options.gossip.heartbeat  # no heartbeat yet
        env = x.publish("alpha", Content("early"))
        with trio.fail_after(30):
            while c.inbox.get(env.id) is None:
                await c.wait_inbox_changed()
        nursery.cancel_scope.cancel()
