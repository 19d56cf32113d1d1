"""Checked records between a seed's workers (``peer.wire._checked`` and
``SiblingRouter.handle_checked``): the fast path gives what the general one
gives, is taken from a sibling only, and delivers exactly once."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

import peer
from peer.protocols._siblingrouter import Close, Deliver, Send, SiblingRouter, sibling_key
from peer.wire._blobframes import Attachment
from peer.wire._checked import CHECKED, CHECKED_FREE, checked_record, open_checked, split_checked
from peer.wire._envelope import (
    Content,
    Envelope,
    open_envelope,
    seal_dm,
    seal_message,
    seal_presence,
    seal_receipt,
)
from peer.wire._errors import ErrorCode, ProtocolError
from peer.wire._frames import decode_frame
from peer.wire._frametypes import IHave, IWant, Pub, Sub
from peer.wire._limits import MAX_ENVELOPE, MAX_RECORD, GossipParams
from tests._gossip_net import WALL0, identity
from tests.test_workers_router import TOPIC, Seed


def _envelopes() -> list[Envelope]:
    alice, bob = identity("alice"), identity("bob")
    att = Attachment(b"\x01" * 32, "a.txt", "text/plain", 1234)
    reply = Content("re", b"\xa1\x61k\x01", b"\x02" * 32, b"\x03" * 32, (att,))
    return [
        seal_message(alice, topic=TOPIC, content=Content("hi"), seq=1, ts=WALL0),
        seal_message(alice, topic=TOPIC, content=reply, seq=2, ts=WALL0 + 1, prev=b"\x04" * 32),
        seal_dm(alice, recipient_key=bob.public_key, content=Content("secret"), seq=1, ts=WALL0),
        seal_receipt(bob, recipient=alice.peer_id, ids=[b"\x05" * 32], seq=1, ts=WALL0),
        seal_presence(alice, payload=b"\xa0", seq=3, ts=WALL0),
    ]


def test_the_checked_record_of_the_largest_envelope_fits_a_sibling_record() -> None:
    """The sibling reader refuses records over ``MAX_RECORD`` (closing the link): the
    id and marker a checked record adds must fit beside the largest ``pub`` frame."""
    largest = Pub(b"\x00" * MAX_ENVELOPE).encode()
    assert len(checked_record(b"\x00" * 32, largest)) <= MAX_RECORD


def test_open_checked_gives_what_the_strict_open_gives() -> None:
    for env in _envelopes():
        frame = Pub(env.wire).encode()
        record = checked_record(env.id, frame)
        assert record[:1] == CHECKED
        mid, got_frame, free = split_checked(record) or (b"", b"", True)
        assert (mid, got_frame, free) == (env.id, frame, False)
        assert split_checked(checked_record(env.id, frame, free=True)) == (env.id, frame, True)
        assert open_checked(mid, got_frame) == open_envelope(env.wire) == env
    assert split_checked(frame) is None  # a plain frame is not a checked record
    with pytest.raises(ProtocolError):
        split_checked(CHECKED + b"\x00" * 32)  # no frame behind the id
    with pytest.raises(ProtocolError):  # not a pub frame
        open_checked(b"\x00" * 32, Sub(((TOPIC, 0),)).encode())
    with pytest.raises(ProtocolError):  # a pub whose envelope does not open
        open_checked(b"\x00" * 32, Pub(b"\x82\x41\x00\x58\x40" + b"\x00" * 64).encode())


def _worker(observe_all: bool) -> SiblingRouter:
    """Worker 1 of a seed: linked to worker 0, to a subscriber and to a transit relay."""
    w = SiblingRouter(identity("seed").peer_id, params=GossipParams(), rng=random.Random(3),
                      observe_all=observe_all)  # fmt: skip
    w.add_sibling(sibling_key(0), 0.0)
    sub = Sub(((TOPIC, 0), ("inbox/" + identity("alice").peer_id.hex(), 0)))
    for name, relay, hops in (("s1", False, 0), ("s2", False, 0), ("r1", True, 1)):
        key = identity(name).peer_id
        w.add_link(key, relay=relay, now=0.0)
        frame = Sub(tuple((t, hops) for t, _ in sub.topics)) if relay else sub
        raw = frame.encode()
        assert not [a for a in w.handle_frame(key, frame, raw, 0.0, WALL0) if isinstance(a, Close)]
    return w


@pytest.mark.parametrize("observe_all", [False, True])
def test_a_checked_record_is_routed_as_the_plain_frame_would_be(observe_all: bool) -> None:
    """Same deliveries, same sends, same counters as a plain ``pub`` from the sibling
    (the general path, which opens the envelope strictly)."""
    fast, general = _worker(observe_all), _worker(observe_all)
    key = sibling_key(0)
    for env in _envelopes() * 2:  # the second time: duplicates
        frame = Pub(env.wire).encode()
        got = fast.handle_checked(key, env.id, frame, False, 1.0, WALL0)
        want = general.handle_frame(key, decode_frame(frame), frame, 1.0, WALL0)
        assert _summary(got) == _summary(want)
    for name in ("received", "delivered", "forwarded", "duplicates", "rejected"):
        assert getattr(fast.stats, name) == getattr(general.stats, name), name
    assert fast.stats.received == 5 and fast.stats.duplicates == 5
    assert fast.stats.forwarded >= 6  # both channel messages went to s1, s2 and r1


def _summary(actions: list[Send | Deliver | Close]) -> tuple[object, ...]:
    sends = sorted((a.peer, a.frame) for a in actions if isinstance(a, Send))
    delivers = [(a.envelope, a.member) for a in actions if isinstance(a, Deliver)]
    closes = [a for a in actions if isinstance(a, Close)]
    return sends, delivers, closes


def test_a_checked_record_from_a_link_that_is_no_sibling_is_refused() -> None:
    w = _worker(observe_all=True)
    outside = identity("s1").peer_id
    env = _envelopes()[0]
    frame = Pub(env.wire).encode()
    out = w.handle_checked(outside, env.id, frame, False, 1.0, WALL0)
    assert out == [Close(outside, ErrorCode.UNEXPECTED, "a checked record from a non-sibling")]
    assert w.stats.rejected == 1 and w.stats.received == 0
    # and it left nothing behind: the real message, when it comes, is taken
    taken = w.handle_frame(identity("r1").peer_id, decode_frame(frame), frame, 1.0, WALL0)
    assert any(isinstance(a, Deliver) for a in taken)
    # a sibling that is gone is no sibling either
    w.remove_link(sibling_key(0))
    out = w.handle_checked(sibling_key(0), env.id, frame, False, 1.0, WALL0)
    assert [type(a) for a in out] == [Close]
    # a checked record never decodes as a frame: a network link's reader refuses it
    with pytest.raises(ProtocolError):
        decode_frame(checked_record(env.id, frame))


def _limited_worker(observe_all: bool = True) -> tuple[SiblingRouter, bytes]:
    """A worker whose authors may send 3 messages at one instant, with alice
    (an author) linked to it directly."""
    params = GossipParams(sender_rate=12.0, sender_burst=3.0)  # a new author: 0.25 s of it
    w = SiblingRouter(identity("seed").peer_id, params=params, rng=random.Random(3),
                      observe_all=observe_all)  # fmt: skip
    w.add_sibling(sibling_key(0), 0.0)
    alice = identity("alice").peer_id
    w.add_link(alice, relay=False, now=0.0)
    w.add_link(identity("r1").peer_id, relay=True, now=0.0)
    return w, alice


def _pub(seq: int, author: str = "alice") -> tuple[Envelope, bytes]:
    env = seal_message(identity(author), topic=TOPIC, content=Content(f"m{seq}"), seq=seq,
                       ts=WALL0)  # fmt: skip
    return env, Pub(env.wire).encode()


def _taken(actions: list[Send | Deliver | Close]) -> bool:
    return any(isinstance(a, Deliver) for a in actions)


@pytest.mark.parametrize("free", [True, False])
def test_a_sibling_charges_an_author_only_for_what_the_first_worker_charged(free: bool) -> None:
    """Answers to worker 0's own IWANT were free of their author's limit there: worker
    1 takes them free too, so the author's own next message on its own link at worker
    1 is taken (charged ones use up its 3 and that message is dropped, the author
    muted, as one process would have done)."""
    w, alice = _limited_worker()
    for seq in range(1, 6):
        _, frame = _pub(seq)
        env = _pub(seq)[0]
        assert _taken(w.handle_checked(sibling_key(0), env.id, frame, free, 1.0, WALL0))
    env, frame = _pub(6)
    out = w.handle_frame(alice, decode_frame(frame), frame, 1.0, WALL0)
    assert _taken(out) is free
    assert w.stats.sender_limited == (0 if free else 1)


def test_a_flooder_held_here_meets_its_limit_through_a_siblings_free_answers() -> None:
    """A flooder held back at this worker (something of it dropped over its limit
    lately) does not come back in as answers its sibling asked for: they meet the
    limit here, dropped once it is spent, and the relay is not charged for them."""
    w, _ = _limited_worker()
    relay = identity("r1").peer_id
    pushed = [_pub(seq, "flood") for seq in range(1, 7)]
    took = [_taken(w.handle_frame(relay, decode_frame(f), f, 1.0, WALL0)) for _, f in pushed]
    assert took == [True] * 3 + [False] * 3  # over its 3: held back here
    answers = [_pub(seq, "flood") for seq in range(7, 12)]
    took = [_taken(w.handle_checked(sibling_key(0), e.id, f, True, 1.0, WALL0))
            for e, f in answers]  # fmt: skip
    assert took == [False] * 5
    assert w.scores.score(sibling_key(0), 1.0) >= 0  # nothing charged to the sibling link
    assert w.scores.score(relay, 1.0) >= 0 and w.stats.sender_limited == 8


def test_the_first_worker_marks_what_it_took_free() -> None:
    """An answer to this worker's own IWANT goes to its sibling marked free; a message
    pushed unasked goes marked charged."""
    w = _worker(observe_all=False)
    sib, relay = sibling_key(0), identity("r1").peer_id
    want = Sub(((TOPIC, 1),))
    w.handle_frame(sib, want, want.encode(), 0.0, WALL0)
    asked, _ = _pub(1)
    ihave = IHave(TOPIC, (asked.id,))
    sent = w.handle_frame(relay, ihave, ihave.encode(), 1.0, WALL0)
    assert [a.frame for a in sent if isinstance(a, Send)] == [IWant((asked.id,)).encode()]
    for env, mark in ((asked, CHECKED_FREE), (_pub(2)[0], CHECKED)):
        frame = Pub(env.wire).encode()
        out = w.handle_frame(relay, decode_frame(frame), frame, 1.0, WALL0)
        to_sib = [a.frame for a in out if isinstance(a, Send) and a.peer == sib]
        assert [f for f in to_sib if f[:1] in (CHECKED, CHECKED_FREE)] == [
            checked_record(env.id, frame, free=mark == CHECKED_FREE)
        ]


def test_siblings_get_checked_records_and_deliver_exactly_once() -> None:
    """Worker 0 hands what it took to worker 1 as checked records; a message that
    reaches both workers from two outside relays is still delivered once to each
    subscriber (the seen-id dedup), and no checked record goes back."""
    seed = Seed(2)
    seed.outside("pub", 0)
    seed.outside("r0", 0, relay=True)
    seed.outside("r1", 1, relay=True)
    subs = ["a0", "b0", "a1", "b1"]
    for n, name in enumerate(subs):
        seed.outside(name, n // 2)
        seed.subscribe(name)
    envs = [seed.publish("pub", f"m{i}") for i in range(4)]
    assert seed.checked_in.get("W1", 0) == 4 and seed.checked_in.get("W0", 0) == 0
    # the same message reaching both workers, from relays r0 (on W0) and r1 (on W1)
    late = seal_message(identity("far"), topic=TOPIC, content=Content("both"), seq=1, ts=WALL0)
    frame = Pub(late.wire).encode()
    for relay, worker in (("r0", "W0"), ("r1", "W1")):
        as_seen = identity(relay).peer_id
        seed.apply(worker, seed.routers[worker].handle_frame(as_seen, decode_frame(frame), frame,
                                                             0.0, WALL0))  # fmt: skip
    seed.run()
    ids = [e.id for e in envs] + [late.id]
    for name in subs:
        assert seed.delivered[name] == ids, name
    assert seed.closes == []


async def test_a_checked_record_over_a_network_link_closes_it(tmp_path: Path) -> None:
    """A peer that sends a checked record over its (encrypted, authenticated) link:
    the seed refuses the record and closes the link; nothing is taken from it."""
    options = peer.PeerOptions(relay_only=True, dht=False)
    async with peer.open_peer(tmp_path / "seed", options=options, store=False) as seed:
        boot = f"{seed.listen_urls[0]}#{seed.peer_id.hex()}"
        them = peer.PeerOptions(dht=False, channels=(TOPIC,))
        async with peer.open_peer(tmp_path / "x", bootstrap=[boot], options=them,
                                  store=False, listen=None) as x:  # fmt: skip
            with trio.fail_after(10):
                while seed.peer_id not in x.links or x.peer_id not in seed.links:  # noqa: ASYNC110
                    await trio.sleep(0.01)  # (no event says a link is up on both sides)
            env = seal_message(identity("alice"), topic=TOPIC, content=Content("forged"),
                               seq=1, ts=seed.wall_ms())  # fmt: skip
            link = x.links[seed.peer_id]
            link.enqueue(checked_record(env.id, Pub(env.wire).encode()))
            with trio.fail_after(10):
                await link.closed.wait()
            assert env.id not in seed.router._seen  # neither taken nor remembered
            assert sum(seed.counters.refused.values()) >= 1
