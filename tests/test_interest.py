"""Split-horizon interest in O(N) (peer/protocols/_interest.py) gives every link the
answer the pass over every other carrier gives, and the router's skipped links
(``_refresh(changed=...)``) were told exactly what they would have been."""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest

from peer.protocols import _gossip, _siblingrouter
from peer.protocols._gossip import GossipRouter
from peer.protocols._interest import Nearest, nearest, with_carrier
from peer.protocols._siblingrouter import SiblingRouter, sibling_key
from peer.wire._frametypes import Sub, Unsub
from peer.wire._limits import MAX_INTEREST_HOPS


def _brute(member: bool, relay: bool, carriers: dict[bytes, int], peer: bytes) -> int | None:
    if member:
        return 0
    if not relay:
        return None
    others = [hops + 1 for p, hops in carriers.items() if p != peer]
    best = min(others, default=None)
    return None if best is None or best > MAX_INTEREST_HOPS else best


def test_nearest_matches_the_pass_over_every_other_carrier() -> None:
    rng = random.Random(5)
    peers = [bytes([i]) * 32 for i in range(12)]
    for _ in range(3000):
        carriers = {
            p: rng.randint(0, MAX_INTEREST_HOPS + 1) for p in rng.sample(peers, rng.randint(0, 6))
        }
        member, relay = rng.random() < 0.1, rng.random() < 0.9
        near = nearest(member, relay, carriers.items())
        for peer in peers:
            assert near.excluding(peer, MAX_INTEREST_HOPS) == _brute(member, relay, carriers, peer)


def test_the_router_tells_every_link_what_the_brute_force_says() -> None:
    rng = random.Random(11)
    router = GossipRouter(b"\xff" * 32, rng=random.Random(1))
    peers = [bytes([i]) * 32 for i in range(10)]
    topics = ["a", "b", "c"]
    up: set[bytes] = set()
    for step in range(1500):
        op = rng.random()
        peer = rng.choice(peers)
        if op < 0.15:
            if peer in up:
                router.remove_link(peer)
                up.discard(peer)
            else:
                router.add_link(peer, relay=rng.random() < 0.5, now=float(step))
                up.add(peer)
        elif op < 0.75 and peer in up:
            frame = Sub(((rng.choice(topics), rng.randint(0, MAX_INTEREST_HOPS)),))
            router.handle_frame(peer, frame, frame.encode(), float(step), step)
        elif op < 0.9 and peer in up:
            unsub = Unsub((rng.choice(topics),))
            router.handle_frame(peer, unsub, unsub.encode(), float(step), step)
        elif op < 0.95:
            router.subscribe(rng.choice(topics))
        else:
            router.unsubscribe(rng.choice(topics))
        links = router._links
        for p in up:
            for topic in topics:
                carriers = {q: links[q].interest[topic] for q in up if topic in links[q].interest}
                want = _brute(topic in router._members, True, carriers, p)
                assert links[p].told.get(topic) == want, (step, p.hex()[:2], topic)


def test_adding_a_carrier_in_one_step_matches_the_full_pass() -> None:
    rng = random.Random(9)
    peers = [bytes([i]) * 32 for i in range(10)]
    for _ in range(3000):
        carriers = {p: rng.randint(0, 4) for p in rng.sample(peers, rng.randint(0, 6))}
        member = rng.random() < 0.1
        before = nearest(member, True, carriers.items())
        new = rng.choice([p for p in peers if p not in carriers])
        hops = rng.randint(0, 4)
        carriers[new] = hops
        assert with_carrier(before, new, hops) == nearest(member, True, carriers.items())
    assert with_carrier(None, peers[0], 0) is None  # unknown before: worked out in full


def _sibling_brute(
    member: bool, carriers: dict[bytes, int], siblings: set[bytes], peer: bytes
) -> int | None:
    """The seed's answer to ``peer``: a sibling's hops cost nothing, a sibling hears only
    what the outside links reach."""
    if member:
        return 0
    dists = [
        hops if p in siblings else hops + 1
        for p, hops in carriers.items()
        if p != peer and not (peer in siblings and p in siblings)
    ]
    best = min(dists, default=None)
    return None if best is None or best > MAX_INTEREST_HOPS else best


def test_a_worker_tells_every_link_and_sibling_what_the_brute_force_says() -> None:
    rng = random.Random(17)
    router = SiblingRouter(b"\xff" * 32, rng=random.Random(2))
    siblings = {sibling_key(1), sibling_key(2)}
    for key in sorted(siblings):
        router.add_sibling(key, now=0.0)
    peers = [bytes([i]) * 32 for i in range(10)]
    everyone = [*peers, *sorted(siblings)]
    topics = ["a", "b", "c"]
    up: set[bytes] = set(siblings)
    for step in range(1500):
        op = rng.random()
        peer = rng.choice(everyone)
        if op < 0.15 and peer not in siblings:
            if peer in up:
                router.remove_link(peer)
                up.discard(peer)
            else:
                router.add_link(peer, relay=rng.random() < 0.5, now=float(step))
                up.add(peer)
        elif op < 0.75 and peer in up:
            frame = Sub(((rng.choice(topics), rng.randint(0, MAX_INTEREST_HOPS)),))
            router.handle_frame(peer, frame, frame.encode(), float(step), step)
        elif op < 0.9 and peer in up:
            unsub = Unsub((rng.choice(topics),))
            router.handle_frame(peer, unsub, unsub.encode(), float(step), step)
        elif op < 0.95:
            router.subscribe(rng.choice(topics))
        else:
            router.unsubscribe(rng.choice(topics))
        links = router._links
        for p in up:
            for topic in topics:
                carriers = {q: links[q].interest[topic] for q in up if topic in links[q].interest}
                want = _sibling_brute(topic in router._members, carriers, siblings, p)
                assert links[p].told.get(topic) == want, (step, p.hex()[:2], topic)


def test_a_new_subscriber_costs_one_pass_over_the_carriers_not_one_per_link(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1,000 subscribers one by one: a pass over every carrier for every link made a
    seed O(N^3) in its subscribers (its handshakes slowed to a crawl by 1,000 links);
    the worker's router (``--workers``, or none) must not bring that back."""
    calls = 0

    def counting(*args: object) -> object:
        nonlocal calls
        calls += 1
        return nearest(*args)  # type: ignore[arg-type]

    for router in (GossipRouter(b"\xff" * 32), SiblingRouter(b"\xff" * 32)):
        monkeypatch.setattr(_gossip, "nearest", counting)
        monkeypatch.setattr(_siblingrouter, "nearest", counting, raising=False)
        for i in range(200):
            peer = i.to_bytes(2, "big") * 16
            router.add_link(peer, relay=False, now=0.0)
            calls = 0
            frame = Sub((("room", 0),))
            router.handle_frame(peer, frame, frame.encode(), 0.0, 0)
            assert calls <= 2, (type(router).__name__, i, calls)


def test_a_worker_with_siblings_takes_a_subscriber_without_a_pass_over_the_carriers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a sibling (a seed run with ``--workers``), a new subscriber of a topic many
    links carry is added to the topic's two ``Nearest`` in one step: no carrier is
    visited (a pass per subscription made 10,000 links cost ~50 s of CPU)."""
    visited = 0

    def counting(member: bool, relay: bool, carriers: Iterable[tuple[bytes, int]]) -> Nearest:
        nonlocal visited
        listed = list(carriers)
        visited += len(listed)
        return nearest(member, relay, listed)

    monkeypatch.setattr(_siblingrouter, "nearest", counting)
    router = SiblingRouter(b"\xff" * 32)
    router.add_sibling(sibling_key(1), now=0.0)
    for i in range(300):
        peer = i.to_bytes(2, "big") * 16
        router.add_link(peer, relay=False, now=0.0)
        visited = 0
        frame = Sub((("room", 0),))
        router.handle_frame(peer, frame, frame.encode(), 0.0, 0)
        assert visited <= 2, (i, visited)
    frame = Sub((("room", 0),))  # the sibling's subscribers too: still right for everyone
    router.handle_frame(sibling_key(1), frame, frame.encode(), 0.0, 0)
    links = router._links
    assert links[sibling_key(1)].told.get("room") == 1
    assert all(links[i.to_bytes(2, "big") * 16].told.get("room") == 0 for i in range(300))
