"""The sibling rules of a seed's workers (``SiblingRouter``), sans-IO.

Workers W0..W2 share one identity; outside peers each link to one worker;
workers are linked pairwise by sibling links. Frames are decoded and handed
on in FIFO order; time is a number.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

import pytest

from peer.cli._workers import check_workers
from peer.node._siblings import frame_record, split_records
from peer.protocols._gossip import GossipRouter
from peer.protocols._siblingrouter import (
    Close,
    Deliver,
    Send,
    SiblingRouter,
    is_sibling,
    sibling_key,
)
from peer.wire._checked import split_checked
from peer.wire._envelope import Content, Envelope, seal_message
from peer.wire._errors import ProtocolError
from peer.wire._frames import decode_frame
from peer.wire._frametypes import Pub
from peer.wire._limits import GossipParams
from tests._gossip_net import WALL0, identity

TOPIC = "general"


@dataclass
class Seed:
    """Workers of one seed and outside peers, joined by FIFO links."""

    workers: int
    routers: dict[str, GossipRouter] = field(default_factory=dict)
    # (owner, key the owner uses) -> (other end, key the other end uses for the owner)
    wires: dict[tuple[str, bytes], tuple[str, bytes]] = field(default_factory=dict)
    queue: deque[tuple[str, bytes, bytes]] = field(default_factory=deque)
    delivered: dict[str, list[bytes]] = field(default_factory=dict)
    pubs_in: dict[str, int] = field(default_factory=dict)
    checked_in: dict[str, int] = field(default_factory=dict)  # checked records taken
    closes: list[Close] = field(default_factory=list)
    seq: int = 0

    def __post_init__(self) -> None:
        self.seed = identity("seed")
        params = GossipParams()
        for i in range(self.workers):
            name = f"W{i}"
            self.routers[name] = SiblingRouter(
                self.seed.peer_id, params=params, rng=random.Random(i), observe_all=False
            )
            self.delivered[name] = []
        for i in range(self.workers):
            for j in range(i + 1, self.workers):
                self.wires[(f"W{i}", sibling_key(j))] = (f"W{j}", sibling_key(i))
                self.wires[(f"W{j}", sibling_key(i))] = (f"W{i}", sibling_key(j))
                wi, wj = self.worker(i), self.worker(j)
                self.apply(f"W{i}", wi.add_sibling(sibling_key(j), 0.0))
                self.apply(f"W{j}", wj.add_sibling(sibling_key(i), 0.0))
        self.run()

    def worker(self, i: int) -> SiblingRouter:
        router = self.routers[f"W{i}"]
        assert isinstance(router, SiblingRouter)
        return router

    def outside(self, name: str, worker: int, *, relay: bool = False) -> None:
        ident = identity(name)
        self.routers[name] = GossipRouter(ident.peer_id, relay=relay, rng=random.Random(name))
        self.delivered[name] = []
        w = f"W{worker}"
        self.wires[(name, self.seed.peer_id)] = (w, ident.peer_id)
        self.wires[(w, ident.peer_id)] = (name, self.seed.peer_id)
        self.apply(name, self.routers[name].add_link(self.seed.peer_id, relay=True, now=0.0))
        self.apply(w, self.routers[w].add_link(ident.peer_id, relay=relay, now=0.0))
        self.run()

    def apply(self, owner: str, actions: list[Send | Deliver | Close]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.queue.append((owner, action.peer, action.frame))
            elif isinstance(action, Deliver):
                self.delivered[owner].append(action.envelope.id)
            else:
                self.closes.append(action)

    def run(self) -> None:
        steps = 0
        while self.queue:
            steps += 1
            assert steps < 10_000, "the network does not quiesce"
            owner, key, raw = self.queue.popleft()
            dst, as_seen = self.wires[(owner, key)]
            checked = split_checked(raw)
            if checked is not None:  # a sibling's checked record (as _siblings reads it)
                self.checked_in[dst] = self.checked_in.get(dst, 0) + 1
                self.pubs_in[dst] = self.pubs_in.get(dst, 0) + 1
                router = self.routers[dst]
                assert isinstance(router, SiblingRouter)
                self.apply(dst, router.handle_checked(as_seen, *checked, 0.0, WALL0))
                continue
            frame = decode_frame(raw)
            if isinstance(frame, Pub):
                self.pubs_in[dst] = self.pubs_in.get(dst, 0) + 1
            self.apply(dst, self.routers[dst].handle_frame(as_seen, frame, raw, 0.0, WALL0))

    def subscribe(self, name: str) -> None:
        self.apply(name, self.routers[name].subscribe(TOPIC))
        self.run()

    def publish(self, name: str, body: str) -> Envelope:
        self.seq += 1
        env = seal_message(identity(name), topic=TOPIC, content=Content(body), seq=self.seq,
                           ts=WALL0)  # fmt: skip
        self.apply(name, self.routers[name].publish(env, 0.0))
        self.run()
        return env


def test_sibling_keys_are_not_peer_ids() -> None:
    keys = {sibling_key(i) for i in range(64)}
    assert len(keys) == 64 and all(len(k) == 32 and is_sibling(k) for k in keys)
    assert not is_sibling(identity("x").peer_id)
    with pytest.raises(ValueError):
        sibling_key(64)


@pytest.mark.parametrize("workers", [2, 3])
def test_a_message_reaches_every_subscriber_of_every_worker_exactly_once(workers: int) -> None:
    seed = Seed(workers)
    seed.outside("pub", 0)
    subs = [f"s{i}" for i in range(2 * workers)]
    for n, name in enumerate(subs):
        seed.outside(name, n % workers)
        seed.subscribe(name)
    envs = [seed.publish("pub", f"m{i}") for i in range(5)]
    ids = [e.id for e in envs]
    for name in subs:
        assert seed.delivered[name] == ids
    # each worker took each message once: no loop between siblings, no echo
    for i in range(workers):
        w = seed.worker(i)
        assert w.stats.duplicates == 0
        assert seed.pubs_in[f"W{i}"] == len(ids)
    assert seed.pubs_in.get("pub", 0) == 0
    assert seed.closes == []
    assert seed.worker(0).statistics()["siblings"] == workers - 1
    assert "siblings" not in seed.routers["pub"].statistics()


def test_outside_peers_see_the_hops_of_one_seed() -> None:
    seed = Seed(2)
    seed.outside("a", 0)
    seed.outside("b", 1)
    seed.subscribe("b")
    # b subscribes on W1; a on W0 hears the seed has a subscriber one hop away, as
    # from a single process: the sibling hop costs nothing
    assert seed.routers["a"].interest_of(seed.seed.peer_id) == {TOPIC: 1}
    # and W1 was not told back what it told W0 (split horizon between siblings)
    assert TOPIC not in seed.worker(1).interest_of(sibling_key(0))


def test_a_sibling_is_neither_verified_again_nor_limited() -> None:
    params = GossipParams(link_pub_rate=5, link_pub_burst=5)
    w = SiblingRouter(identity("seed").peer_id, params=params, rng=random.Random(0))
    key = sibling_key(1)
    w.add_sibling(key, 0.0)
    w.subscribe(TOPIC)
    sent = 0
    for i in range(50):  # well over the per-link limit, from many authors
        env = seal_message(identity(f"a{i % 10}"), topic=TOPIC, content=Content("x"),
                           seq=i + 1, ts=WALL0)  # fmt: skip
        raw = Pub(env.wire).encode()
        actions = w.handle_frame(key, decode_frame(raw), raw, 0.0, WALL0)
        assert not any(isinstance(a, Close) for a in actions)
        sent += sum(isinstance(a, Deliver) for a in actions)
    assert sent == 50
    assert w.verify  # only skipped while handling a sibling's frame
    # an outside link with the same traffic is held to its limit
    other = identity("o").peer_id
    w.add_link(other, relay=True, now=0.0)
    taken = 0
    for i in range(20):
        env = seal_message(identity(f"b{i}"), topic=TOPIC, content=Content("y"), seq=1, ts=WALL0)
        raw = Pub(env.wire).encode()
        taken += sum(isinstance(a, Deliver) for a in w.handle_frame(other, decode_frame(raw),
                                                                    raw, 0.0, WALL0))
    assert taken <= 5


def test_records_split_at_any_boundary() -> None:
    frames = [bytes([i]) * (i * 37 % 300) for i in range(40)]
    stream = b"".join(frame_record(f) for f in frames)
    rng = random.Random(7)
    for _ in range(20):
        buffer, got = bytearray(), []
        pos = 0
        while pos < len(stream):
            step = rng.randint(1, 64)
            buffer += stream[pos : pos + step]
            pos += step
            got.extend(split_records(buffer))
        assert got == frames and not buffer
    with pytest.raises(ProtocolError):
        split_records(bytearray(frame_record(b"x" * 100)), limit=10)


def test_worker_counts_a_seed_cannot_run_are_refused() -> None:
    check_workers(1, False)
    check_workers(4, True)
    for workers, relay_only, listens, why in [
        (0, True, True, "1 or more"),
        (65, True, True, "at most 64"),
        (2, False, True, "for --relay-only seeds"),
        (2, True, False, "--no-listen"),
    ]:
        with pytest.raises(SystemExit, match=why):
            check_workers(workers, relay_only, listens)


def test_a_sibling_may_carry_more_topics_than_one_peer_and_is_never_banned() -> None:
    """A sibling speaks for all its links: more topics than one peer may send are taken,
    and a frame of it that is refused closes it without a score, so it relinks at once
    (a ban would split the seed into its workers)."""
    from peer.wire._frametypes import Sub
    from peer.wire._limits import MAX_TOPICS_PER_PEER

    router = SiblingRouter(identity("seed").peer_id, params=GossipParams(), rng=random.Random(1))
    key = sibling_key(1)
    router.add_sibling(key, 0.0)
    topics = tuple((f"t{i}", 0) for i in range(MAX_TOPICS_PER_PEER + 10))
    for start in range(0, len(topics), 200):
        sub = Sub(topics[start : start + 200])
        raw = sub.encode()
        out = router.handle_frame(key, decode_frame(raw), raw, 1.0, WALL0)
        assert not [a for a in out if isinstance(a, Close)]
    assert router.reachable("t4100")
    bad = Pub(b"\x00" * 10).encode()  # an envelope that does not open
    out = router.handle_frame(key, decode_frame(bad), bad, 2.0, WALL0)
    assert [a.peer for a in out if isinstance(a, Close)] == [key]
    router.remove_link(key)
    again = router.add_sibling(key, 3.0)  # relinked: not refused as banned
    assert not [a for a in again if isinstance(a, Close)]
