"""The gossip router, sans-IO: the transit mesh, budgets and refusals, keepalive
and the heartbeat timer.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.protocols._gossip import Close, GossipRouter, Send
from peer.wire._cbor import encode
from peer.wire._errors import ErrorCode
from peer.wire._frames import AnyFrame
from peer.wire._limits import MAX_TOPICS_PER_FRAME, MAX_TOPICS_PER_PEER, GossipParams
from tests._fuzz import fuzz_scale
from tests._gossip_net import (
    TOPIC,
    WALL0,
    Net,
    closes,
    delivers,
    fake_peer,
    feed,
    line,
    sends,
)

# -- mesh ----------------------------------------------------------------------------------


def transit_router(n: int, *, relay: bool = True) -> tuple[GossipRouter, list[bytes]]:
    """A router with ``n`` relay links that each lead to subscribers of TOPIC."""
    router = GossipRouter(fake_peer(0), relay=relay, rng=random.Random(5))
    peers = [fake_peer(i + 1) for i in range(n)]
    for p in peers:
        router.add_link(p, relay=True, now=0.0)
        feed(router, p, "sub", topics=[[TOPIC, 1]])
    assert router.reachable(TOPIC)
    return router, peers


def test_mesh_stays_within_mesh_high_after_many_grafts() -> None:
    router, peers = transit_router(30)
    high = router.params.mesh_high
    pruned: list[bytes] = []
    for p in peers:
        actions = feed(router, p, "graft", topic=TOPIC)
        pruned.extend(q for q, f in sends(actions, "prune") if f.to_map()["topic"] == TOPIC)
        assert len(router.mesh_of(TOPIC)) <= high
    assert len(router.mesh_of(TOPIC)) == high
    assert pruned == peers[high:]
    for p in peers[:high]:  # a repeated graft changes nothing
        assert feed(router, p, "graft", topic=TOPIC) == []
    for step in range(1, 4):
        router.heartbeat(float(step))
        assert router.params.mesh_low <= len(router.mesh_of(TOPIC)) <= high


def test_heartbeat_grafts_up_to_the_mesh_degree() -> None:
    router, _ = transit_router(20)
    actions = router.heartbeat(1.0)
    grafted = [p for p, f in sends(actions, "graft")]
    mesh = router.mesh_of(TOPIC)
    assert len(mesh) == router.params.mesh_degree
    assert set(grafted) == mesh
    # a peer that prunes us leaves the mesh; the next heartbeat does not regraft
    # while the mesh is at least mesh_low
    victim = next(iter(mesh))
    feed(router, victim, "prune", topic=TOPIC, now=1.0)
    assert victim not in router.mesh_of(TOPIC)
    assert sends(router.heartbeat(2.0), "graft") == []


def test_mesh_tops_up_when_it_falls_below_mesh_low() -> None:
    router, _ = transit_router(20)
    router.heartbeat(1.0)
    for victim in sorted(router.mesh_of(TOPIC))[:3]:
        feed(router, victim, "prune", topic=TOPIC, now=1.0)
    assert len(router.mesh_of(TOPIC)) == router.params.mesh_degree - 3 < router.params.mesh_low
    grafted = sends(router.heartbeat(2.0), "graft")
    assert len(grafted) == 3
    assert len(router.mesh_of(TOPIC)) == router.params.mesh_degree


def test_mesh_members_that_lose_interest_leave_it() -> None:
    router, peers = transit_router(3)
    router.heartbeat(1.0)
    assert router.mesh_of(TOPIC) == set(peers)
    feed(router, peers[0], "unsub", topics=[TOPIC], now=1.0)
    router.heartbeat(2.0)
    assert router.mesh_of(TOPIC) == set(peers[1:])


def test_non_relay_refuses_grafts() -> None:
    router, peers = transit_router(2, relay=False)
    actions = feed(router, peers[0], "graft", topic=TOPIC)
    assert [(p, f.TYPE) for p, f in sends(actions)] == [(peers[0], "prune")]
    assert router.mesh_of(TOPIC) == frozenset()
    assert router.heartbeat(1.0) == []
    # a non-relay keeps no mesh state, however many topics it is grafted for
    # (it never runs mesh maintenance, so nothing would ever clean it up)
    for i in range(100):
        feed(router, peers[1], "graft", topic=f"t{i}", now=1.0)
    assert router._mesh == {}


# -- budgets and refusals ------------------------------------------------------------------


def test_frame_budget_closes_the_link() -> None:
    params = GossipParams(frames_per_second=1.0, frame_burst=5.0)
    router = GossipRouter(fake_peer(0), params=params, rng=random.Random(1))
    peer = fake_peer(1)
    router.add_link(peer, relay=True, now=0.0)
    for n in range(5):
        assert [f.to_map()["n"] for _, f in sends(feed(router, peer, "ping", n=n), "pong")] == [n]
    actions = feed(router, peer, "ping", n=5)
    assert [(c.peer, c.code) for c in closes(actions)] == [(peer, ErrorCode.RATE)]
    assert sends(actions) == []
    assert router.stats.rejected == 1


def test_frame_budget_refills_with_time() -> None:
    params = GossipParams(frames_per_second=1.0, frame_burst=5.0)
    router = GossipRouter(fake_peer(0), params=params, rng=random.Random(1))
    peer = fake_peer(1)
    router.add_link(peer, relay=True, now=0.0)
    for n in range(200):  # one frame a second forever is within budget
        assert closes(feed(router, peer, "ping", n=n, now=float(n))) == []
    assert router.stats.rejected == 0


def test_byte_budget_closes_the_link() -> None:
    params = GossipParams(bytes_per_second=100.0, byte_burst=1000.0)
    router = GossipRouter(fake_peer(0), params=params, rng=random.Random(1))
    peer = fake_peer(1)
    router.add_link(peer, relay=True, now=0.0)
    assert closes(feed(router, peer, "ping", n=1)) == []
    big = [[f"topic{i}", 0] for i in range(200)]  # > 1000 bytes in one frame
    assert [c.code for c in closes(feed(router, peer, "sub", topics=big))] == [ErrorCode.RATE]


def test_bad_signature_closes_the_link_and_is_not_delivered() -> None:
    net = line(("A", False), ("R", True), ("B", False))
    net.subscribe("R")
    net.subscribe("B")
    env = net.seal("A")
    # the wire is [signed, sig] and sig is its last 64 bytes: flip one bit of it
    flipped = bytearray(env.wire)
    flipped[-64] ^= 1
    forged = bytes(flipped)
    assert len(forged) == len(env.wire) and forged != env.wire
    R = net.routers["R"]
    actions = feed(R, net.pid("A"), "pub", e=forged)
    assert [(c.peer, c.code) for c in closes(actions)] == [(net.pid("A"), ErrorCode.BAD_SIGNATURE)]
    assert delivers(actions) == [] and sends(actions) == []
    assert not R.seen(env.id)  # a forgery does not poison the seen cache
    # the genuine message still gets through afterwards
    net.apply("A", net.routers["A"].publish(env, net.now))
    net.run()
    assert net.got("R") == [env.id] and net.got("B") == [env.id]


def test_malformed_envelope_closes_the_link() -> None:
    router = GossipRouter(fake_peer(0), rng=random.Random(1))
    peer = fake_peer(1)
    router.add_link(peer, relay=True, now=0.0)
    actions = feed(router, peer, "pub", e=encode([b"x"]))
    assert [c.code for c in closes(actions)] == [ErrorCode.MALFORMED]


@pytest.mark.parametrize(
    ("age_ms", "fresh"),
    [
        (0, True),
        (540_000, True),  # exactly max_age old
        (540_001, False),
        (3_600_000, False),
        (-120_000, True),  # exactly max_skew in the future
        (-120_001, False),
    ],
)
def test_stale_envelopes_are_neither_delivered_nor_forwarded(age_ms: int, fresh: bool) -> None:
    net = line(("A", False), ("R", True), ("B", False))
    net.subscribe("R")
    net.subscribe("B")
    env = net.seal("A", ts=net.wall_ms - age_ms)
    net.apply("A", net.routers["A"].publish(env, net.now))
    net.run()
    R = net.routers["R"]
    if fresh:
        assert net.got("R") == [env.id] and net.got("B") == [env.id]
        assert R.stats.stale == 0
    else:
        assert net.got("R") == [] and net.got("B") == []
        assert net.frames("pub", "R", "B") == []
        assert R.stats.stale == 1
    assert net.closes == []


def test_handshake_frames_after_the_handshake_close_the_link() -> None:
    router = GossipRouter(fake_peer(0), rng=random.Random(1))
    peer = fake_peer(1)
    router.add_link(peer, relay=True, now=0.0)
    actions = feed(router, peer, "auth", sig=b"\x00" * 64)
    assert [c.code for c in closes(actions)] == [ErrorCode.UNEXPECTED]
    actions = feed(router, peer, "error", code="shutdown", msg="bye")
    assert [c.code for c in closes(actions)] == [ErrorCode.SHUTDOWN]


def test_too_many_topics_from_one_peer() -> None:
    router = GossipRouter(fake_peer(0), relay=False, rng=random.Random(1))
    peer = fake_peer(1)
    router.add_link(peer, relay=True, now=0.0)
    topics = [f"t{i}" for i in range(MAX_TOPICS_PER_PEER + 1)]
    for i in range(0, MAX_TOPICS_PER_PEER, MAX_TOPICS_PER_FRAME):
        chunk = [[t, 0] for t in topics[i : i + MAX_TOPICS_PER_FRAME]]
        assert closes(feed(router, peer, "sub", topics=chunk)) == []
    assert len(router.interest_of(peer)) == MAX_TOPICS_PER_PEER
    actions = feed(router, peer, "sub", topics=[[topics[-1], 0]])
    assert [c.code for c in closes(actions)] == [ErrorCode.TOO_LARGE]
    # changing the hops of a known topic is still fine
    assert closes(feed(router, peer, "sub", topics=[[topics[0], 3]])) == []


def test_frames_from_unknown_links_are_ignored() -> None:
    router = GossipRouter(fake_peer(0), rng=random.Random(1))
    assert feed(router, fake_peer(9), "ping", n=1) == []
    assert router.stats.frames_in == 0


def test_adding_a_link_twice_is_an_error() -> None:
    router = GossipRouter(fake_peer(0), rng=random.Random(1))
    router.add_link(fake_peer(1), relay=True, now=0.0)
    with pytest.raises(ValueError):
        router.add_link(fake_peer(1), relay=True, now=0.0)
    assert router.remove_link(fake_peer(2)) == []


# -- keepalive ------------------------------------------------------------------------------


def test_keepalive_ping_and_idle_timeout() -> None:
    router = GossipRouter(fake_peer(0), rng=random.Random(1), keepalive=15.0, idle_timeout=45.0)
    peer = fake_peer(1)
    router.add_link(peer, relay=True, now=0.0)
    assert router.heartbeat(10.0) == []
    pings = sends(router.heartbeat(16.0), "ping")
    assert [p for p, _ in pings] == [peer]
    assert router.heartbeat(17.0) == []  # one ping per silence
    # an answer resets the silence
    assert feed(router, peer, "pong", n=pings[0][1].to_map()["n"], now=20.0) == []
    assert router.heartbeat(30.0) == []
    second = sends(router.heartbeat(36.0), "ping")
    assert len(second) == 1
    assert second[0][1].to_map()["n"] != pings[0][1].to_map()["n"]
    assert router.heartbeat(60.0) == []
    timeout = closes(router.heartbeat(65.5))
    assert [(c.peer, c.code) for c in timeout] == [(peer, ErrorCode.TIMEOUT)]


def test_silent_link_times_out_and_busy_link_does_not() -> None:
    router = GossipRouter(fake_peer(0), rng=random.Random(1), keepalive=15.0, idle_timeout=45.0)
    silent, busy = fake_peer(1), fake_peer(2)
    router.add_link(silent, relay=True, now=0.0)
    router.add_link(busy, relay=True, now=0.0)
    for t in range(1, 50):
        feed(router, busy, "ping", n=t, now=float(t))
        actions = router.heartbeat(float(t))
        assert all(a.peer == silent for a in actions if isinstance(a, Send | Close))
    assert [(c.peer, c.code) for c in closes(router.heartbeat(50.0))] == [
        (silent, ErrorCode.TIMEOUT)
    ]


def test_ping_is_answered_with_the_same_number() -> None:
    router = GossipRouter(fake_peer(0), rng=random.Random(1))
    peer = fake_peer(1)
    router.add_link(peer, relay=True, now=0.0)
    [(target, frame)] = sends(feed(router, peer, "ping", n=2**64 - 1))
    assert target == peer and frame.TYPE == "pong" and frame.to_map()["n"] == 2**64 - 1


# -- a property over random meshes ------------------------------------------------------------


@settings(max_examples=fuzz_scale(25), deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_random_meshes_deliver_every_message_exactly_once(seed: int) -> None:
    rng = random.Random(seed)
    n_relays = rng.randint(1, 7)
    net = Net()
    relays = [f"R{i}" for i in range(n_relays)]
    for name in relays:
        net.add(name)
    # a random tree, plus extra edges while every relay has at most 3 relay links
    degree = dict.fromkeys(relays, 0)
    edges: set[tuple[str, str]] = set()
    for i in range(1, n_relays):
        options = [r for r in relays[:i] if degree[r] < 3]
        parent = rng.choice(options)
        edges.add((parent, relays[i]))
        degree[parent] += 1
        degree[relays[i]] += 1
    for _ in range(n_relays):
        a, b = rng.sample(relays, 2) if n_relays > 1 else (relays[0], relays[0])
        fresh = (a, b) not in edges and (b, a) not in edges
        if a != b and fresh and degree[a] < 3 and degree[b] < 3:
            edges.add((a, b))
            degree[a] += 1
            degree[b] += 1
    for a, b in sorted(edges):
        net.connect(a, b)
    agents = [f"a{i}" for i in range(rng.randint(2, 6))]
    for name in agents:
        net.add(name, relay=False)
        for home in rng.sample(relays, rng.randint(1, min(2, n_relays))):
            net.connect(name, home)
    subscribers = {a for a in agents if rng.random() < 0.6}
    for name in sorted(subscribers):
        net.subscribe(name)
    net.heartbeat()
    net.heartbeat()

    published = [net.publish(name, f"from {name}") for name in agents]
    everything = sorted(e.id for e in published)
    for name in agents:
        # subscribers get every message once (their own from publish itself)
        expected = everything if name in subscribers else []
        assert sorted(net.got(name)) == expected, name
    for name in relays:
        assert net.got(name) == []
    assert net.closes == []

    # withdrawing every subscription leaves no interest anywhere
    for name in sorted(subscribers):
        net.unsubscribe(name)
    for name, router in net.routers.items():
        assert not router.reachable(TOPIC), name


def test_old_envelopes_are_remembered_and_future_ones_are_not() -> None:
    net = line(("A", False), ("R", True))
    router = GossipRouter(fake_peer(0), rng=random.Random(1))
    peer = fake_peer(1)
    router.add_link(peer, relay=True, now=0.0)
    old = net.seal("A", ts=WALL0 - 3_600_000)
    early = net.seal("A", ts=WALL0 + 3_600_000)
    for env in (old, old, early, early):
        assert feed(router, peer, "pub", e=env.wire) == []
    # the old one is verified once, then dropped as a duplicate; the early one may
    # still come into its window, so each copy is checked again
    assert router.stats.stale == 3
    assert router.stats.duplicates == 1
    assert router.seen(old.id) and not router.seen(early.id)


# -- the heartbeat timer ----------------------------------------------------------------------


def test_the_heartbeat_runs_at_its_deadline_and_not_before() -> None:
    router = GossipRouter(
        fake_peer(0), params=GossipParams(heartbeat=1.0), keepalive=15.0, idle_timeout=45.0
    )
    assert router.next_deadline() is None  # not started: no timer
    router.start(10.0)
    assert router.next_deadline() == 11.0
    router.add_link(fake_peer(1), relay=True, now=10.0)
    assert router.handle_timer(10.9) == [] and router.next_deadline() == 11.0
    router.handle_timer(11.0)
    assert router.next_deadline() == 12.0
    # stepping by deadlines reaches the keepalive ping after 15 s of silence, once
    pings = []
    while router.next_deadline() <= 27.0:  # type: ignore[operator]
        pings += sends(router.handle_timer(router.next_deadline()), "ping")  # type: ignore[arg-type]
    assert len(pings) == 1
    # late calls do not pile up missed heartbeats: one run, the next a period later
    router.handle_timer(100.0)
    assert router.next_deadline() == 101.0


def test_timers_alone_repair_a_dropped_message_through_relays() -> None:
    """Only deadlines move time: a message whose every first copy is dropped
    still reaches the subscriber through IHAVE/IWANT at the next heartbeats."""
    net = line(("A", False), ("R1", True), ("R2", True), ("B", False))
    net.start_timers()
    net.subscribe("B")
    net.step()  # the relays build their transit meshes
    lost: list[AnyFrame] = []

    def lose_first_copies(src: str, dst: str, frame: AnyFrame) -> bool:
        if frame.TYPE == "pub" and len(lost) < 2:
            lost.append(frame)
            return True  # the first copy, and the first one served after an IWANT
        return False

    net.drop = lose_first_copies
    env = net.publish("A")
    assert len(lost) == 1 and net.got("B") == []
    for _ in range(6):
        net.step()
        if net.got("B"):
            break
    assert net.got("B") == [env.id] and len(lost) == 2
    assert len(net.frames("iwant", "R1", "A")) == 2  # asked again after the lost answer


def test_an_idle_link_is_closed_by_the_timer_alone() -> None:
    net = line(("A", True), ("B", True), params=GossipParams(heartbeat=1.0))
    net.routers["A"]._idle_timeout = 5.0  # the constructor default is 45 s
    net.start_timers()
    net.drop = lambda src, dst, frame: True  # B goes silent: everything is lost
    while not net.closes and net.now < 30:
        net.step()
    assert [(owner, c.code) for owner, c in net.closes] == [("A", ErrorCode.TIMEOUT)]
    assert 5.0 < net.now <= 7.0
