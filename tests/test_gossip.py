"""The gossip router (peer/protocols/_gossip.py), sans-IO: interest and forwarding.

Routers are driven against each other through ``tests._gossip_net``; time is
a number the test moves by hand.
"""

from __future__ import annotations

import random

import pytest

from peer.protocols._gossip import GossipRouter
from peer.wire._envelope import Content, inbox_topic, seal_dm
from peer.wire._frames import AnyFrame
from peer.wire._limits import GossipParams
from tests._gossip_net import (
    TOPIC,
    Net,
    delivers,
    fake_peer,
    feed,
    line,
    sends,
)

# -- interest -------------------------------------------------------------------------


@pytest.mark.parametrize("ends_relay", [False, True])
def test_interest_crosses_an_unsubscribed_relay(ends_relay: bool) -> None:
    net = line(("A", ends_relay), ("R", True), ("B", ends_relay))
    A, R, B = (net.routers[n] for n in "ARB")
    assert not A.reachable(TOPIC)
    net.subscribe("B")
    assert R.interest_of(net.pid("B")) == {TOPIC: 0}
    assert A.interest_of(net.pid("R")) == {TOPIC: 1}
    assert A.reachable(TOPIC)
    assert R.subscriptions == frozenset()

    env = net.publish("A")
    assert net.got("B") == [env.id]
    assert net.got("R") == [] and net.got("A") == []
    assert len(net.frames("pub", "A", "R")) == 1
    assert len(net.frames("pub", "R", "B")) == 1
    assert len(net.frames("pub")) == 2
    assert B.stats.duplicates == 0
    assert net.closes == []


def test_message_crosses_a_chain_of_relays_exactly_once() -> None:
    net = line(("A", False), ("R1", True), ("R2", True), ("R3", True), ("B", False))
    net.subscribe("B")
    assert net.routers["A"].interest_of(net.pid("R1")) == {TOPIC: 3}
    net.heartbeat()  # the relays build their transit meshes
    assert net.routers["R1"].mesh_of(TOPIC) == {net.pid("R2")}
    envs = [net.publish("A", f"m{i}") for i in range(5)]
    assert net.got("B") == [e.id for e in envs]
    for r in ("R1", "R2", "R3"):
        assert net.got(r) == []
    assert sum(net.routers[n].stats.duplicates for n in net.routers) == 0
    assert net.closes == []


def test_non_relay_in_the_middle_does_not_forward() -> None:
    net = line(("A", True), ("M", False), ("B", True))
    A, M = net.routers["A"], net.routers["M"]
    net.subscribe("B")
    assert M.interest_of(net.pid("B")) == {TOPIC: 0}
    assert A.interest_of(net.pid("M")) == {}  # M does not advertise what it cannot carry
    assert not A.reachable(TOPIC)
    net.subscribe("M")
    assert A.interest_of(net.pid("M")) == {TOPIC: 0}  # only its own subscription
    net.heartbeat()

    env = net.publish("A")
    assert net.got("M") == [env.id]
    assert net.got("B") == []
    assert net.frames("pub", "M") == []
    assert M.stats.forwarded == 0


def test_withdrawal_after_unsubscribe() -> None:
    net = line(("A", False), ("R1", True), ("R2", True), ("B", False))
    net.subscribe("B")
    net.heartbeat()
    first = net.publish("A", "before")
    assert net.got("B") == [first.id]

    net.unsubscribe("B")
    assert net.frames("unsub", "B", "R2") != []
    for upstream, downstream in (("A", "R1"), ("R1", "R2"), ("R2", "B")):
        assert net.routers[upstream].interest_of(net.pid(downstream)) == {}
    assert not net.routers["A"].reachable(TOPIC)
    net.heartbeat()
    assert net.routers["R1"].mesh_of(TOPIC) == frozenset()

    pubs_before = len(net.frames("pub"))
    net.publish("A", "after")
    net.heartbeat()
    assert len(net.frames("pub")) == pubs_before  # nobody forwards anything
    assert net.got("B") == [first.id]


def test_closing_a_link_withdraws_the_interest_learned_over_it() -> None:
    net = line(("A", False), ("R", True), ("B", False))
    net.subscribe("B")
    assert net.routers["A"].reachable(TOPIC)
    net.disconnect("R", "B")
    assert not net.routers["A"].reachable(TOPIC)
    assert net.routers["A"].interest_of(net.pid("R")) == {}


def test_split_horizon() -> None:
    net = line(("A", True), ("R1", True), ("R2", True), ("B", True))
    net.subscribe("B")
    # no relay ever advertised the topic back over the link it learned it from
    for src, dst in (("R2", "B"), ("R1", "R2"), ("A", "R1")):
        assert not any(
            entry[0] == TOPIC for f in net.frames("sub", src, dst) for entry in f.to_map()["topics"]
        ), (src, dst)
    assert net.routers["R2"].interest_of(net.pid("R1")) == {}
    assert net.routers["B"].interest_of(net.pid("R2")) == {}
    # a second subscriber on another link is advertised to the first, and back
    net.subscribe("A")
    assert net.routers["B"].interest_of(net.pid("R2")) == {TOPIC: 2}
    assert net.routers["A"].interest_of(net.pid("R1")) == {TOPIC: 2}


def ring(n: int) -> Net:
    net = Net()
    for i in range(n):
        net.add(f"R{i}")
    for i in range(n):
        net.connect(f"R{i}", f"R{(i + 1) % n}")
    net.add("B", relay=False)
    net.add("A", relay=False)
    net.connect("B", "R0")
    net.connect("A", f"R{n // 2}")
    return net


@pytest.mark.parametrize("size", [3, 4, 6, 9])
def test_ring_withdraws_completely(size: int) -> None:
    net = ring(size)
    net.subscribe("B")
    net.subscribe("A")
    assert net.routers["R0"].reachable(TOPIC)
    net.unsubscribe("B")
    assert net.routers[f"R{size // 2}"].interest_of(net.pid("A")) == {TOPIC: 0}
    net.unsubscribe("A")  # must not count to infinity forever
    for name, router in net.routers.items():
        for peer in router.links():
            assert router.interest_of(peer) == {}, (name, net.names[peer])


def test_ring_carries_shortest_hops_and_withdraws_completely() -> None:
    net = ring(6)
    net.subscribe("B")
    # hops count links from the advertiser to the subscriber, shortest way round
    assert net.routers["R1"].interest_of(net.pid("R0")) == {TOPIC: 1}
    assert net.routers["R3"].interest_of(net.pid("R2")) == {TOPIC: 3}
    assert net.routers["R3"].interest_of(net.pid("R4")) == {TOPIC: 3}
    assert net.routers["A"].interest_of(net.pid("R3")) == {TOPIC: 4}
    net.heartbeat()
    env = net.publish("A")
    assert net.got("B") == [env.id]

    net.unsubscribe("B")  # must not count to infinity forever
    for name, router in net.routers.items():
        for peer in router.links():
            assert router.interest_of(peer) == {}, (name, net.names[peer])
        assert not router.reachable(TOPIC)


# -- forwarding --------------------------------------------------------------------------


def test_duplicates_are_counted_and_delivered_once() -> None:
    net = Net()
    for name, relay in (("A", False), ("R1", True), ("R2", True), ("B", False)):
        net.add(name, relay=relay)
    for a, b in (("A", "R1"), ("A", "R2"), ("R1", "B"), ("R2", "B")):
        net.connect(a, b)
    net.subscribe("B")
    env = net.publish("A")
    B = net.routers["B"]
    assert net.got("B") == [env.id]
    assert len(net.frames("pub", dst="B")) == 2
    assert B.stats.duplicates == 1
    assert B.seen(env.id)

    # the same pub once more, straight from a neighbour
    again = feed(B, net.pid("R1"), "pub", e=env.wire)
    assert again == []
    assert B.stats.duplicates == 2
    assert net.got("B") == [env.id]


def test_own_message_is_delivered_locally_once() -> None:
    net = line(("A", True), ("B", True))
    net.subscribe("A")
    net.subscribe("B")
    env = net.seal("A")
    A = net.routers["A"]
    actions = A.publish(env, net.now)
    assert delivers(actions) == [env]
    assert [p for p, _ in sends(actions, "pub")] == [net.pid("B")]
    assert A.publish(env, net.now) == []  # publishing again does nothing
    net.apply("A", actions)
    net.run()
    assert net.got("B") == [env.id]
    assert net.frames("pub", "B", "A") == []  # never echoed to its author


def test_dm_is_routed_on_the_recipients_inbox_topic() -> None:
    net = line(("A", False), ("R", True), ("B", False), ("C", False))
    net.subscribe("B", inbox_topic(net.pid("B")))
    env = seal_dm(
        net.ids["A"],
        recipient_key=net.ids["B"].public_key,
        content=Content("psst"),
        seq=1,
        ts=net.wall_ms,
    )
    net.apply("A", net.routers["A"].publish(env, net.now))
    net.run()
    assert net.got("B") == [env.id]
    assert net.got("C") == [] and net.got("R") == []
    assert net.frames("pub", dst="C") == []


def test_ihave_iwant_repairs_a_dropped_message() -> None:
    net = line(("A", False), ("R1", True), ("R2", True), ("B", False))
    net.subscribe("B")
    net.heartbeat()
    dropped: list[AnyFrame] = []

    def lose_first_pub(src: str, dst: str, frame: AnyFrame) -> bool:
        if src == "A" and dst == "R1" and frame.TYPE == "pub" and not dropped:
            dropped.append(frame)
            return True
        return False

    net.drop = lose_first_pub
    env = net.publish("A")
    assert dropped and net.got("B") == []
    assert not net.routers["R1"].seen(env.id)

    net.now += net.params.heartbeat
    net.heartbeat("A")
    ihave = net.frames("ihave", "A", "R1")
    assert len(ihave) == 1 and ihave[0].to_map()["ids"] == [env.id]
    iwant = net.frames("iwant", "R1", "A")
    assert len(iwant) == 1 and iwant[0].to_map()["ids"] == [env.id]
    assert net.got("B") == [env.id]
    assert net.routers["R1"].stats.iwant_sent == 1
    assert net.routers["A"].stats.iwant_served == 1

    # gossip about a message everyone has asks for nothing
    net.now += net.params.heartbeat
    net.heartbeat("A")
    assert len(net.frames("iwant")) == 1
    assert net.got("B") == [env.id]


def test_iwant_is_bounded_per_heartbeat_and_by_history() -> None:
    params = GossipParams(iwant_per_heartbeat=2, history_windows=2)
    peer = fake_peer(1)
    net = Net()
    net.add("A")
    envs = [net.seal("A", f"m{i}") for i in range(3)]
    router = GossipRouter(net.pid("A"), params=params, rng=random.Random(1))
    router.add_link(peer, relay=True, now=0.0)
    for env in envs:
        router.publish(env, 0.0)
    ids = [e.id for e in envs]
    served = sends(feed(router, peer, "iwant", ids=ids), "pub")
    assert [f.to_map()["e"] for _, f in served] == [envs[0].wire, envs[1].wire]
    assert feed(router, peer, "iwant", ids=ids) == []  # budget spent
    router.heartbeat(1.0)
    assert len(sends(feed(router, peer, "iwant", ids=ids, now=1.0), "pub")) == 2
    router.heartbeat(2.0)  # the messages leave the cache after history_windows heartbeats
    assert feed(router, peer, "iwant", ids=ids, now=2.0) == []
    assert feed(router, peer, "iwant", ids=[b"\x00" * 32], now=2.0) == []


def test_ihave_asks_only_for_unseen_ids() -> None:
    router = GossipRouter(fake_peer(0), rng=random.Random(1))
    peer = fake_peer(1)
    router.add_link(peer, relay=True, now=0.0)
    net = Net()
    net.add("X")
    env = net.seal("X")
    router.publish(env, 0.0)
    fresh = b"\x07" * 32
    actions = feed(router, peer, "ihave", topic=TOPIC, ids=[env.id, fresh])
    [(target, frame)] = sends(actions)
    assert target == peer and frame.TYPE == "iwant" and frame.to_map()["ids"] == [fresh]
    assert feed(router, peer, "ihave", topic=TOPIC, ids=[env.id]) == []
