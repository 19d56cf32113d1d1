"""A ``pub``'s mesh fill (``MeshFill._fill_on_pub``) decides exactly as ``_fill_mesh``.

Two relays, one as built and one whose ``pub`` calls ``_fill_mesh`` itself
(the general path), get the same random mix of links coming and going,
``sub`` (hops 0 and transit), ``unsub``, ``pub`` frames of several topics and
heartbeats, from the same random seed: every step returns the same actions,
and their meshes and random generators end alike. The cache is really used
(a subscribers-only topic is remembered), and forgotten when a transit relay
subscribes.
"""

from __future__ import annotations

import random
import time
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from peer.protocols._gossip import GossipRouter
from peer.protocols._gossiptypes import Action, Close, Deliver, Send
from peer.protocols._meshfill import NO_TRANSIT_MAX
from peer.wire._envelope import Content, seal_message
from peer.wire._identity import Identity
from tests._fuzz import fuzz_scale
from tests._gossip_net import fake_peer, feed

_TOPICS = ["a", "b", "c"]
_AUTHOR = Identity.generate()
_WALL = int(time.time() * 1000)
_ENVS = [
    seal_message(_AUTHOR, topic=t, content=Content(body=f"m{i}"), seq=i + 1, ts=_WALL)
    for i, t in enumerate(_TOPICS * 12)
]

_BY_TOPIC = {t: [e for e in _ENVS if e.topic == t] for t in _TOPICS}


def _general(router: GossipRouter) -> GossipRouter:
    router._fill_on_pub = router._fill_mesh  # type: ignore[method-assign]
    return router


def _key(actions: list[Action]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for a in actions:
        if isinstance(a, Send):
            out.append(("send", a.peer, a.frame))
        elif isinstance(a, Deliver):
            out.append(("deliver", a.envelope.id, a.member))
        else:
            assert isinstance(a, Close)
            out.append(("close", a.peer, a.code))
    return out


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["up", "down", "sub", "unsub", "pub", "beat"]),
        st.integers(0, 7),  # peer
        st.sampled_from(_TOPICS),
        st.integers(0, 3),  # hops
    ),
    max_size=80,
)


def _step(router: GossipRouter, op: tuple[str, int, str, int], now: float, n: int) -> list[Action]:
    kind, i, topic, hops = op
    peer = fake_peer(i)
    if kind == "up":
        return [] if peer in router._links else router.add_link(peer, relay=True, now=now)
    if peer not in router._links and kind != "beat":
        return []
    if kind == "down":
        return router.remove_link(peer)
    if kind == "sub":
        return feed(router, peer, "sub", now=now, wall_ms=_WALL, topics=[[topic, hops]])
    if kind == "unsub":
        return feed(router, peer, "unsub", now=now, wall_ms=_WALL, topics=[topic])
    if kind == "pub":
        env = _BY_TOPIC[topic][n % len(_BY_TOPIC[topic])]
        return feed(router, peer, "pub", now=now, wall_ms=_WALL, e=env.wire)
    return router.handle_timer(now + 1.0)


_GRAFT_ON_PUB = [("up", 1, "a", 0), ("up", 2, "a", 0), ("sub", 1, "a", 2), ("pub", 2, "a", 0)]


@settings(max_examples=fuzz_scale(150), deadline=None)
@given(ops=_OPS, seed=st.integers(0, 2**32))
@example(ops=_GRAFT_ON_PUB, seed=1)
def test_pub_fill_is_the_general_fill(ops: list[tuple[str, int, str, int]], seed: int) -> None:
    me = fake_peer(99)
    built = GossipRouter(me, relay=True, rng=random.Random(seed), verify=False)
    general = _general(GossipRouter(me, relay=True, rng=random.Random(seed), verify=False))
    for n, op in enumerate(ops):
        now = n * 0.5
        assert _key(_step(built, op, now, n)) == _key(_step(general, op, now, n)), op
    assert built._mesh == general._mesh
    assert built._rng.getstate() == general._rng.getstate()


def test_a_subscribers_only_topic_is_remembered_until_a_transit_relay_subscribes() -> None:
    me = fake_peer(99)
    router = GossipRouter(me, relay=True, rng=random.Random(1), verify=False)
    subs, relay = [fake_peer(i) for i in range(3)], fake_peer(5)
    for p in [*subs, relay]:
        router.add_link(p, relay=True, now=0.0)
    for p in subs:
        feed(router, p, "sub", topics=[["a", 0]])
    publisher = subs[0]
    feed(router, publisher, "pub", e=_ENVS[0].wire, wall_ms=_WALL)  # topic "a"
    assert "a" in router._no_transit
    calls: list[str] = []
    fill = router._fill_mesh

    def counted(topic: str, now: float) -> list[Action]:
        calls.append(topic)
        return fill(topic, now)

    router._fill_mesh = counted  # type: ignore[method-assign]
    feed(router, publisher, "pub", e=_ENVS[3].wire, wall_ms=_WALL)
    assert calls == []  # remembered: no scan
    feed(router, relay, "sub", topics=[["a", 2]])  # a transit relay
    assert "a" not in router._no_transit
    actions = feed(router, publisher, "pub", e=_ENVS[6].wire, wall_ms=_WALL)
    assert calls == ["a"]
    assert router._mesh["a"] == {relay}  # grafted at once, as before
    assert any(isinstance(a, Send) and a.peer == relay for a in actions)


def test_the_cache_is_bounded() -> None:
    router = GossipRouter(fake_peer(99), relay=True, verify=False)
    for n in range(NO_TRANSIT_MAX + 5):
        router._fill_on_pub(f"t{n}", 0.0)
    assert 0 < len(router._no_transit) <= NO_TRANSIT_MAX
