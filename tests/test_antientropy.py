"""Anti-entropy, sans IO: two ``AntiEntropy`` behaviours over a fake lossy link.

Each side has a fake store (topic -> sender -> sequence numbers held) and a
fake shell that performs the commands: ``ReadHeads`` reads its heads,
``SendHeads`` goes over a link that may drop it, ``Lack`` computes what to
ask for with ``wanted`` and records those range requests, then copies the
ranges from the other side (as a page would bring them). Time is stepped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from peer.protocols._antientropy import (
    ANTI_ENTROPY_INTERVAL,
    MAX_DIGEST_TOPICS,
    MAX_LACKS_IN_FLIGHT,
    PUSH_INTERVAL,
    AntiEntropy,
    Command,
    Lack,
    ReadHeads,
    SendHeads,
    wanted,
)
from peer.wire._frametypes import Heads

ALICE, BOB, CAROL = b"a" * 32, b"b" * 32, b"c" * 32


def ranges(seqs: set[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for n in sorted(seqs):
        if out and out[-1][1] == n - 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return out


@dataclass
class Side:
    me: bytes
    topics: list[str]
    whole: bool = False  # a relay-only seed
    held: dict[str, dict[bytes, set[int]]] = field(default_factory=dict)
    asked: list[tuple[bytes, str, bytes, int, int]] = field(default_factory=list)
    lacks: list[Lack] = field(default_factory=list)
    read_topics: list[tuple[str, ...]] = field(default_factory=list)
    behaviour: AntiEntropy = field(init=False)

    def __post_init__(self) -> None:
        self.behaviour = AntiEntropy(
            lambda peer: self.topics, lambda topic: topic in self.topics, random.Random(1)
        )

    def hold(self, topic: str, sender: bytes, *seqs: int) -> None:
        self.held.setdefault(topic, {}).setdefault(sender, set()).update(seqs)

    def heads(self, topic: str) -> list[tuple[bytes, int]]:
        return sorted((s, max(n)) for s, n in self.held.get(topic, {}).items() if n)


class Net:
    """Two sides on one link; ``drop`` frames are lost, in order."""

    def __init__(self, a: Side, b: Side) -> None:
        self.sides = {a.me: a, b.me: b}
        self.drop = 0
        self.frames = 0

    def other(self, side: Side) -> Side:
        return next(s for s in self.sides.values() if s is not side)

    def up(self, now: float) -> None:
        a, b = self.sides.values()
        to_a = a.behaviour.on_link_up(b.me, ("store",), now)  # both know the link
        to_b = b.behaviour.on_link_up(a.me, ("store",), now)  # before frames cross it
        self.run(a, to_a)
        self.run(b, to_b)

    def tick(self, now: float) -> None:
        for side in self.sides.values():
            self.run(side, side.behaviour.handle_timer(now))

    def run(self, side: Side, commands: list[Command]) -> None:
        for command in commands:
            match command:
                case ReadHeads(peer, topics):
                    side.read_topics.append(topics)
                    for topic in topics:
                        heads = side.heads(topic)
                        self.run(side, side.behaviour.heads_read(peer, topic, heads, False))
                case SendHeads(peer, frame):
                    self.frames += 1
                    if self.drop:
                        self.drop -= 1
                        continue
                    decoded = Heads.from_map(_roundtrip(frame))
                    receiver = self.sides[peer]
                    self.run(receiver, receiver.behaviour.on_heads(side.me, decoded))
                case Lack():
                    side.lacks.append(command)
                    self.fill(side, command)

    def fill(self, side: Side, lack: Lack) -> None:
        """What the shell does with a Lack: ask for what ``wanted`` says, copy it over."""
        source = self.other(side)
        settled = []
        for sender, head in lack.heads:
            if sender == side.me:
                settled.append((sender, head))
                continue
            have = ranges(side.held.get(lack.topic, {}).get(sender, set()))
            for first, last in wanted(have, head, whole=side.whole):
                side.asked.append((lack.peer, lack.topic, sender, first, last))
                there = source.held.get(lack.topic, {}).get(sender, set())
                side.hold(lack.topic, sender, *(n for n in there if first <= n <= last))
            settled.append((sender, head))
        side.behaviour.lack_done(lack.peer, lack.topic, settled)


def _roundtrip(frame: Heads) -> dict[str, object]:
    from peer.wire import _cbor

    decoded = _cbor.decode(frame.encode())
    assert isinstance(decoded, dict)
    return decoded


def pair(topics: list[str] | None = None) -> tuple[Side, Side, Net]:
    topics = topics or ["general"]
    a, b = Side(ALICE, list(topics)), Side(BOB, list(topics))
    return a, b, Net(a, b)


def test_a_gap_on_either_side_is_asked_for() -> None:
    a, b, net = pair()
    a.hold("general", ALICE, 1, 2, 3, 4, 5)  # a's own, unrouted while b was away
    a.hold("general", CAROL, 1)
    b.hold("general", ALICE, 1)
    b.hold("general", CAROL, 1, 2, 3)
    net.up(0.0)
    assert b.asked == [(ALICE, "general", ALICE, 2, 5)]
    assert a.asked == [(BOB, "general", CAROL, 2, 3)]
    assert a.held == b.held


def test_a_sender_never_heard_from_is_asked_whole_only_by_a_seed() -> None:
    a, b, net = pair()
    a.hold("general", CAROL, 1, 2, 3)
    b.whole = True
    net.up(0.0)
    assert b.asked == [(ALICE, "general", CAROL, 1, 3)]
    c, d, net2 = pair()
    c.hold("general", CAROL, 1, 2, 3)
    net2.up(0.0)
    assert d.asked == []  # a member walks the carrier's log for it instead
    assert [lack.heads for lack in d.lacks] == [((CAROL, 3),)]


def test_a_dropped_digest_is_made_up_by_the_next_round() -> None:
    a, b, net = pair()
    a.hold("general", ALICE, 1, 2, 3)
    b.hold("general", ALICE, 1)
    net.drop = 2  # both link-up digests are lost
    net.up(0.0)
    assert b.asked == []
    net.tick(ANTI_ENTROPY_INTERVAL * 0.5)  # not due yet
    assert b.asked == []
    net.tick(ANTI_ENTROPY_INTERVAL * 1.3)
    assert b.asked == [(ALICE, "general", ALICE, 2, 3)]


def test_a_peer_with_nothing_new_asks_nothing() -> None:
    a, b, net = pair()
    for side in (a, b):
        side.hold("general", ALICE, 1, 2)
        side.hold("general", CAROL, 1, 2, 3)
    net.up(0.0)
    assert a.asked == b.asked == []
    assert len(b.lacks) == 1  # the first digest is looked at once...
    frames = net.frames
    net.tick(ANTI_ENTROPY_INTERVAL * 1.3)
    assert net.frames == frames + 2  # digests still go out every round
    assert len(b.lacks) == 1 and len(a.lacks) == 1  # ...and unchanged heads cost nothing
    a.hold("general", CAROL, 4)
    net.tick(ANTI_ENTROPY_INTERVAL * 2.6)
    assert [lack.heads for lack in b.lacks[1:]] == [((CAROL, 4),)]  # only what changed
    assert b.asked == [(ALICE, "general", CAROL, 4, 4)]


def test_digests_are_bounded_per_round_and_go_round_robin() -> None:
    topics = [f"t{i:02}" for i in range(20)]
    a, _, net = pair(topics)
    net.up(0.0)
    now = 0.0
    for _ in range(2):
        now += ANTI_ENTROPY_INTERVAL * 1.3
        net.tick(now)
    rounds = a.read_topics
    assert [len(r) for r in rounds] == [MAX_DIGEST_TOPICS] * 3
    assert sorted({t for r in rounds for t in r}) == topics  # every topic within 3 rounds
    assert rounds[2][:4] == ("t16", "t17", "t18", "t19") and rounds[2][4] == "t00"


def test_rounds_are_jittered_around_the_interval() -> None:
    a, _, net = pair()
    net.up(0.0)
    deadline = a.behaviour.next_deadline()
    assert deadline is not None
    assert 0.8 * ANTI_ENTROPY_INTERVAL <= deadline <= 1.2 * ANTI_ENTROPY_INTERVAL
    assert deadline != ANTI_ENTROPY_INTERVAL


def test_digests_in_flight_are_bounded_per_link() -> None:
    topics = [f"t{i}" for i in range(MAX_LACKS_IN_FLIGHT + 2)]
    ae = AntiEntropy(lambda peer: topics, lambda topic: topic in topics, random.Random(1))
    ae.on_link_up(ALICE, ("store",), 0.0)
    heads = ((CAROL, 3),)
    out = [c for t in topics for c in ae.on_heads(ALICE, Heads(t, heads))]
    assert len(out) == MAX_LACKS_IN_FLIGHT  # the others wait for a later round
    assert ae.on_heads(ALICE, Heads(topics[0], heads)) == []  # same topic under way
    ae.lack_done(ALICE, topics[0], [])  # nothing settled: asked about again
    assert ae.on_heads(ALICE, Heads(topics[0], heads)) == [Lack(ALICE, topics[0], heads)]
    assert ae.dropped == 3


def test_no_digests_with_a_peer_that_does_not_store() -> None:
    ae = AntiEntropy(lambda peer: ["general"], lambda t: t == "general", random.Random(1))
    assert ae.on_link_up(ALICE, ("relay",), 0.0) == []
    assert ae.next_deadline() is None
    assert ae.on_heads(ALICE, Heads("general", ((CAROL, 3),))) == []
    assert ae.on_link_up(BOB, ("store",), 0.0) == [ReadHeads(BOB, ("general",))]
    assert ae.on_heads(BOB, Heads("other", ((CAROL, 3),))) == []  # not a topic we keep
    ae.on_link_down(BOB)
    assert ae.heads_read(BOB, "general", [(CAROL, 3)], False) == []  # the link went
    assert ae.next_deadline() is None


def test_wanted() -> None:
    assert wanted([(1, 3), (6, 8)], 10, whole=False) == [(4, 5), (9, 10)]
    assert wanted([], 10, whole=False) == []
    assert wanted([], 10, whole=True) == [(1, 10)]
    assert wanted([], 0, whole=True) == []
    assert wanted([(1, 10)], 10, whole=True) == []


def test_the_digest_vector() -> None:
    """catchup.json ``digest``: the frame's bytes, and what a member and a seed ask for."""
    from peer.wire._frames import decode_frame

    from ._vectors import h, load

    doc = load("catchup.json")["digest"]
    frame = decode_frame(h(doc["hex"]))
    assert isinstance(frame, Heads)
    assert frame.topic == doc["topic"] and not frame.more
    assert [[s.hex(), n] for s, n in frame.heads] == doc["h"]
    assert Heads(frame.topic, frame.heads).encode() == h(doc["hex"])
    held = {bytes.fromhex(k): [tuple(r) for r in v] for k, v in doc["receiver_holds"].items()}
    for whole, key in ((False, "member_asks"), (True, "seed_asks")):
        asks = {
            s.hex(): [list(r) for r in wanted(held.get(s, []), n, whole=whole)]
            for s, n in frame.heads
        }
        assert asks == doc[key]


def test_what_a_repair_stored_is_offered_to_the_other_links_at_once() -> None:
    p1, p2, p3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    behaviour = AntiEntropy(lambda peer: ["lobby"], lambda topic: True, random.Random(3))
    for peer in (p1, p2, p3):
        behaviour.on_link_up(peer, ["store"], 0.0)
    out = behaviour.repaired("lobby", p1, 1.0)
    assert sorted(c.peer for c in out if isinstance(c, ReadHeads)) == [p2, p3]
    assert all(c.topics == ("lobby",) for c in out if isinstance(c, ReadHeads))
    assert behaviour.repaired("other", p1, 1.1) == []  # not a topic shared with them
    assert behaviour.repaired("lobby", p1, 1.5) == []  # one early digest a second per link
    assert behaviour.next_deadline() == 1.0 + PUSH_INTERVAL  # ... and the round comes sooner
    later = behaviour.repaired("lobby", p3, 1.0 + PUSH_INTERVAL)
    assert [c.peer for c in later if isinstance(c, ReadHeads)] == [p1, p2]
