"""Spam limits and peer scores of the gossip router, sans-IO with time stepped by
hand; and the local API's answer when the agent publishes over the limit.
"""

from __future__ import annotations

import random
from dataclasses import replace

import httpx
import pytest
import trio

from peer import Identity, Peer, PeerOptions
from peer.api._api import LocalApi
from peer.protocols._gossip import Action, Close, GossipRouter
from peer.protocols._score import Buckets, Scoreboard
from peer.wire import _cbor
from peer.wire._envelope import Content, Envelope, seal_message, split_wire
from peer.wire._errors import ErrorCode, ProtocolError
from peer.wire._frames import decode_frame
from peer.wire._frametypes import Pub
from peer.wire._limits import GossipParams
from tests._gossip_net import (
    TOPIC,
    WALL0,
    Net,
    closes,
    delivers,
    fake_peer,
    feed,
    identity,
    sends,
)

LIMITS = GossipParams(sender_rate=10.0, sender_burst=20.0)


def pub(router: GossipRouter, peer: bytes, env: Envelope, now: float) -> list[Action]:
    raw = Pub(env.wire).encode()
    return router.handle_frame(peer, decode_frame(raw), raw, now, WALL0)


def envelopes(name: str, n: int, topic: str = TOPIC, first: int = 1) -> list[Envelope]:
    ident = identity(name)
    return [
        seal_message(ident, topic=topic, content=Content(f"{name}{i}"), seq=i, ts=WALL0)
        for i in range(first, first + n)
    ]


def relay_with_links(params: GossipParams, n: int) -> tuple[GossipRouter, list[bytes]]:
    """A relay subscribed to TOPIC with ``n`` relay links that each lead to subscribers."""
    router = GossipRouter(fake_peer(0), relay=True, params=params, rng=random.Random(3))
    router.subscribe(TOPIC)
    peers = [fake_peer(i + 1) for i in range(n)]
    for p in peers:
        router.add_link(p, relay=True, now=0.0)
        feed(router, p, "sub", topics=[[TOPIC, 1]])
    return router, peers


# -- per-author and per-link limits -----------------------------------------------


def test_a_flooding_author_is_limited_while_an_honest_one_keeps_flowing() -> None:
    net = Net(params=LIMITS)
    for name in ("spammer", "honest", "relay", "reader"):
        net.add(name, relay=name == "relay")
    for name in ("spammer", "honest", "reader"):
        net.connect(name, "relay")
    net.subscribe("reader")
    honest: list[bytes] = []
    spam: list[bytes] = []
    for tick in range(1000):  # 10 s: the spammer at 200/s (20x its limit), honest at 5/s
        net.now = tick / 100
        for _ in range(2):
            spam.append(net.publish("spammer", "spam").id)
        if tick % 20 == 0:
            honest.append(net.publish("honest", "hello").id)
        if tick % 100 == 0:
            net.heartbeat()
    got = set(net.got("reader"))
    assert set(honest) <= got  # every honest message arrived
    relay = net.routers["relay"]
    allowed = LIMITS.sender_burst + LIMITS.sender_rate * 10
    assert len(got & set(spam)) <= allowed
    assert relay.stats.sender_limited > 0
    # the excess was charged to the spammer's link: it fell below the graylist
    # threshold, was closed with "rate" and is banned
    closed = [(owner, c.peer, c.code) for owner, c in net.closes]
    assert closed == [("relay", net.pid("spammer"), ErrorCode.RATE)]  # the relay kept its links
    reader = net.routers["reader"]
    assert reader.scores.score(net.pid("relay"), net.now) > LIMITS.gossip_threshold
    assert relay.scores.banned(net.pid("spammer"), net.now)
    assert not relay.scores.banned(net.pid("honest"), net.now)
    assert relay.statistics()["scores"][net.pid("honest").hex()[:16]] >= 0


def test_relays_forwarding_a_flood_within_their_own_limits_are_not_punished() -> None:
    """Each relay's bucket lets a different share of a flood through; together they
    pass the reader's limit. The reader drops the excess but charges neither relay
    (a flooder must not get honest relays closed); the author's own link it does."""
    reader = GossipRouter(fake_peer(0), relay=False, params=LIMITS, rng=random.Random(3))
    reader.subscribe(TOPIC)
    r1, r2 = fake_peer(1), fake_peer(2)
    for link in (r1, r2):
        reader.add_link(link, relay=True, now=0.0)
    flood = envelopes("flooder", 400)
    closes = [
        a for i, env in enumerate(flood)
        for a in pub(reader, r1 if i % 2 else r2, env, i / 1000) if isinstance(a, Close)
    ]  # fmt: skip
    assert closes == []
    assert reader.stats.sender_limited > 300
    assert reader.scores.score(r1, 0.4) >= 0 and reader.scores.score(r2, 0.4) >= 0
    author = identity("flooder").peer_id
    reader.add_link(author, relay=False, now=0.4)
    more = envelopes("flooder", 100, first=401)
    closed = [a for env in more for a in pub(reader, author, env, 0.5) if isinstance(a, Close)]
    assert [c.peer for c in closed] == [author]  # over the limit from the author itself


def test_an_author_over_its_limit_costs_no_signature_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import peer.protocols._checkahead as checks  # where the router's check is made
    from peer.wire._envelope import check_signature as real

    checked: list[bytes] = []

    def counting(key: bytes, signed: bytes, sig: bytes) -> None:
        checked.append(signed)
        real(key, signed, sig)

    monkeypatch.setattr(checks, "check_signature", counting)
    params = replace(LIMITS, link_pub_rate=0.0)
    router, (link, *_) = relay_with_links(params, 2)
    flood = envelopes("flooder", 100)
    delivered = [e for e in flood if delivers(pub(router, link, e, 0.0))]
    fresh = int(LIMITS.sender_rate * LIMITS.sender_fresh_s)  # a new author's first tokens
    assert len(delivered) == fresh
    assert len(checked) == fresh  # the other 90 were never verified
    assert router.stats.sender_limited == 100 - fresh


def test_a_forged_copy_of_a_limited_authors_message_does_not_hide_the_real_one() -> None:
    router, (link, other) = relay_with_links(replace(LIMITS, link_pub_rate=0.0), 2)
    burst = envelopes("author", int(LIMITS.sender_burst) + 1)
    for env in burst[:-1]:
        pub(router, link, env, 0.0)
    real = burst[-1]
    signed, _ = split_wire(real.wire)
    forged = Pub(_cbor.encode([signed, bytes(64)])).encode()  # the same id, a bad signature
    limited = router.stats.sender_limited
    assert not delivers(router.handle_frame(other, decode_frame(forged), forged, 0.0, WALL0))
    assert router.stats.sender_limited == limited + 1  # dropped by the limit, unverified
    assert delivers(pub(router, link, real, 1.0))  # a token came back: not a "duplicate"


def test_a_new_author_earns_its_burst_by_staying_under_the_rate() -> None:
    """A never-seen author starts with a quarter second of its rate, not the whole burst (a
    fresh identity cannot land a burst the moment it appears); quiet, it fills up to the
    burst; our own bucket starts full."""
    me = b"m" * 32
    buckets = Buckets.for_authors(LIMITS, me)
    fresh = int(LIMITS.sender_rate * LIMITS.sender_fresh_s)
    assert sum(buckets.take(b"new", 0.0) for _ in range(100)) == fresh
    assert sum(buckets.take(me, 0.0) for _ in range(100)) == LIMITS.sender_burst
    assert sum(buckets.take(b"quiet", 0.0) for _ in range(1)) == 1  # met once, then quiet
    later = LIMITS.sender_burst / LIMITS.sender_rate + 1.0  # long enough to fill up
    assert sum(buckets.take(b"quiet", later) for _ in range(100)) == LIMITS.sender_burst


def test_an_author_over_its_limit_on_its_own_link_is_muted_everywhere_here() -> None:
    """Over its limit on its own link, an author is relayed no more for ``over_limit_mute_s``,
    whoever forwards its messages; then it starts again."""
    params = replace(LIMITS, link_pub_rate=0.0, over_limit_mute_s=30.0)
    router = GossipRouter(fake_peer(0), relay=True, params=params, rng=random.Random(3))
    router.subscribe(TOPIC)
    relay = fake_peer(1)
    author = identity("flooder").peer_id
    for link in (relay, author):
        router.add_link(link, relay=True, now=0.0)
    flood = envelopes("flooder", 60)
    fresh = int(LIMITS.sender_rate * LIMITS.sender_fresh_s)
    own = [e for e in flood[:40] if delivers(pub(router, author, e, 0.0))]
    assert len(own) == fresh  # then over: muted
    assert not delivers(pub(router, relay, flood[40], 10.0))  # its tokens are back, but muted
    assert router.stats.sender_limited == 40 - fresh + 1
    later = [e for e in flood[41:] if delivers(pub(router, relay, e, 31.0))]
    assert len(later) == len(flood[41:])  # the mute is over, the bucket full again


def test_a_relay_forwarding_an_author_over_the_limit_does_not_mute_it() -> None:
    """Only the author's own link mutes it: what relays let through does not."""
    params = replace(LIMITS, link_pub_rate=0.0)
    router = GossipRouter(fake_peer(0), relay=True, params=params, rng=random.Random(3))
    router.subscribe(TOPIC)
    r1 = fake_peer(1)
    router.add_link(r1, relay=True, now=0.0)
    flood = envelopes("busy", 30)
    for env in flood[:20]:
        pub(router, r1, env, 0.0)  # 10 pass, 10 over the limit: dropped, nobody muted
    assert delivers(pub(router, r1, flood[20], 1.0))  # one second later: a token again


def test_the_link_pub_limit_drops_frames_beyond_its_burst() -> None:
    params = GossipParams(link_pub_rate=5.0, link_pub_burst=5.0)
    router, (link, *_) = relay_with_links(params, 1)
    envs = [e for i in range(8) for e in envelopes(f"author{i}", 1)]  # 8 authors, 1 each
    got = [len(delivers(pub(router, link, env, 0.0))) for env in envs]
    assert got == [1] * 5 + [0] * 3
    assert router.stats.link_limited == 3
    assert router.scores.score(link, 0.0) < 0
    # a second later, 5 more tokens
    assert delivers(pub(router, link, envelopes("late", 1)[0], 1.0))


def test_our_own_publishing_is_limited_before_signing() -> None:
    router = GossipRouter(identity("me").peer_id, params=LIMITS)
    envs = envelopes("me", 25)
    for env in envs[:20]:
        router.check_publish(0.0)
        router.publish(env, 0.0)
    with pytest.raises(ProtocolError) as refused:
        router.check_publish(0.0)
    assert refused.value.code is ErrorCode.RATE
    router.check_publish(0.1)  # 10/s: one token back after 0.1 s


# -- scores ---------------------------------------------------------------------------


def test_a_duplicate_flood_prunes_then_graylists_and_bans_the_link() -> None:
    params = GossipParams(duplicate_rate=1.0, duplicate_burst=5.0, duplicate_penalty=1.0)
    router, _ = relay_with_links(params, 8)
    router.heartbeat(1.0)
    mesh = router.mesh_of(TOPIC)
    flooder = sorted(mesh)[0]
    env = envelopes("author", 1)[0]
    assert delivers(pub(router, flooder, env, 1.0))
    for _ in range(50):  # 5 free, then -1 each: about -45
        assert not closes(pub(router, flooder, env, 1.0))
    assert params.graylist_threshold < router.scores.score(flooder, 1.0) < params.prune_threshold
    beat = router.heartbeat(2.0)
    assert (flooder, TOPIC) in [(p, f.to_map()["topic"]) for p, f in sends(beat, "prune")]
    assert flooder not in router.mesh_of(TOPIC)
    # its grafts are refused while it is that low, and the heartbeat does not pick it
    assert sends(feed(router, flooder, "graft", topic=TOPIC, now=2.0), "prune")
    for step in range(3, 6):
        router.heartbeat(float(step))
        assert flooder not in router.mesh_of(TOPIC)
    # more duplicates: below the graylist threshold, closed with "rate" and banned
    refused = [c for _ in range(60) for c in closes(pub(router, flooder, env, 5.0))]
    assert [(c.peer, c.code) for c in refused] == [(flooder, ErrorCode.RATE)]
    assert router.stats.graylisted == 1
    assert pub(router, flooder, envelopes("author", 1, first=2)[0], 5.0) == []  # ignored
    assert router.scores.banned(flooder, 5.0)
    router.remove_link(flooder)
    redial = router.add_link(flooder, relay=True, now=6.0)
    assert [(c.peer, c.code) for c in closes(redial)] == [(flooder, ErrorCode.RATE)]
    router.remove_link(flooder)
    # the ban ends
    assert not router.scores.banned(flooder, 6.0 + params.ban_seconds)
    assert closes(router.add_link(flooder, relay=True, now=6.0 + params.ban_seconds)) == []


def test_broken_iwant_promises_cost_score_and_gossip() -> None:
    params = GossipParams(broken_promise_penalty=6.0)
    router, peers = relay_with_links(params, 2)
    liar, honest = peers
    router.publish(envelopes("me", 1)[0], 0.0)  # something to gossip about
    for n in range(2):  # two broken promises: -12, below the gossip threshold (-10)
        fake_ids = (bytes([n]) * 32, bytes([n + 100]) * 32)
        asked = sends(feed(router, liar, "ihave", topic=TOPIC, ids=fake_ids, now=float(n)))
        assert [f.TYPE for _, f in asked] == ["iwant"]
        router.heartbeat(n + params.iwant_deadline + 0.5)
    assert router.stats.broken_promises == 2
    assert router.scores.score(liar, 4.0) < params.gossip_threshold
    # its IHAVEs are ignored, and it gets none
    ids = (b"\x07" * 32,)
    assert feed(router, liar, "ihave", topic=TOPIC, ids=ids, now=4.0) == []
    router.publish(envelopes("me", 1, first=2)[0], 4.0)
    ihave_to = {p for p, _ in sends(router.heartbeat(4.0), "ihave")}
    assert liar not in ihave_to
    # a promise kept costs nothing
    env = envelopes("author", 1)[0]
    feed(router, honest, "ihave", topic=TOPIC, ids=(env.id,), now=4.0)
    pub(router, honest, env, 5.0)
    router.heartbeat(10.0)
    assert router.stats.broken_promises == 2
    assert router.scores.score(honest, 10.0) > 0  # a first delivery in our topic


def test_scores_decay_back_and_the_peer_is_grafted_again() -> None:
    params = GossipParams(mesh_low=1, mesh_degree=1)
    router, (peer,) = relay_with_links(params, 1)
    router.scores.penalize(peer, 60.0, 0.0)
    assert sends(router.heartbeat(0.0), "graft") == []  # too low to graft
    half = params.score_half_life
    assert router.scores.score(peer, half) == pytest.approx(-30.0)
    assert router.scores.score(peer, 2 * half) == pytest.approx(-15.0)
    assert [p for p, _ in sends(router.heartbeat(2 * half), "graft")] == [peer]
    assert router.scores.score(peer, 20 * half) == 0.0
    # rewards are capped
    for _ in range(1000):
        router.scores.reward(peer, 20 * half)
    assert router.scores.score(peer, 20 * half) == params.score_cap


# -- bounds ---------------------------------------------------------------------------


def test_sender_seen_and_score_tables_stay_bounded_under_many_senders() -> None:
    params = GossipParams(senders_max=50, seen_max=300, score_max_peers=40, promises_max=10)
    router, (link, *_) = relay_with_links(params, 1)
    for i in range(400):
        for env in envelopes(f"author{i}", 2):
            pub(router, link, env, i * 0.01)
    stats = router.statistics(4.0)
    assert stats["senders_tracked"] == 50
    assert stats["seen_cache"] <= 300
    assert router.stats.received == 800  # none of them was over its own limit
    board = Scoreboard(params)
    for i in range(100):
        board.penalize(fake_peer(i), 1.0, 0.0)
        board.promise(fake_peer(i), bytes([i]) * 32, 0.0)
        board.ban(fake_peer(i), 0.0)
    assert len(board) == 40
    assert board.sizes() == {"scores_kept": 40, "promises": 10, "bans": 100}
    small = Scoreboard(replace(params, ban_max=3))
    for i in range(10):
        small.ban(fake_peer(i), 0.0)
    assert small.sizes()["bans"] == 3 and small.banned(fake_peer(9), 1.0)
    assert not small.banned(fake_peer(0), 1.0)


def test_a_zero_rate_turns_a_limit_off() -> None:
    buckets = Buckets(0.0, 0.0, 10)
    assert all(buckets.take(b"k", 0.0) for _ in range(1000))
    assert len(buckets) == 0


# -- the local API --------------------------------------------------------------------


async def test_send_over_the_limit_is_a_json_429(nursery: trio.Nursery) -> None:
    params = GossipParams(sender_rate=0.001, sender_burst=3.0)
    peer = Peer(Identity.generate(), PeerOptions(channels=("lobby",), gossip=params, seed=1))
    await nursery.start(peer.run)
    token = "test-token-0123456789"
    app = LocalApi(peer, token).app
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://127.0.0.1",
        headers={"Authorization": f"Bearer {token}"},
    ) as api:
        codes = []
        for i in range(5):
            r = await api.post("/send", json={"channel": "lobby", "body": f"m{i}"})
            codes.append(r.status_code)
        assert codes == [200, 200, 200, 429, 429]
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["error"]["code"] == "rate"
        assert "publishing limit" in r.json()["error"]["message"]
    assert [m.body for m in peer.inbox.query()] == ["m0", "m1", "m2"]  # nothing half-sent


def test_an_author_dropped_over_its_limit_is_held_back_from_repair_for_a_while() -> None:
    """Dropped over its limit (from any link), an author is ``held_back`` for
    ``over_limit_mute_s`` after the last drop: gap repair leaves its gaps for later.
    An author under its limit never is."""
    params = replace(LIMITS, link_pub_rate=0.0, over_limit_mute_s=30.0)
    router, (relay, _) = relay_with_links(params, 2)
    honest = envelopes("honest", 2)
    assert all(delivers(pub(router, relay, e, 0.0)) for e in honest)
    flood = envelopes("flooder", 20)
    fresh = int(LIMITS.sender_rate * LIMITS.sender_fresh_s)
    assert sum(bool(delivers(pub(router, relay, e, 0.0))) for e in flood[:10]) == fresh
    flooder, author = identity("flooder").peer_id, identity("honest").peer_id
    assert router.held_back(flooder, 0.0) and router.held_back(flooder, 29.9)
    assert not router.held_back(author, 0.0)
    assert not router.held_back(flooder, 30.1)  # it stayed away long enough
    assert not router.held_back(router.me, 0.0)  # never ourselves


def test_unchecked_copies_cannot_keep_a_hold_alive() -> None:
    """A hold is extended only by a drop that follows a checked envelope of its author
    (or a mute on its own link): copies dropped unchecked, forged ones among them, find
    the author held but do not push the hold on; its own new envelopes do."""
    params = replace(LIMITS, link_pub_rate=0.0, over_limit_mute_s=30.0)
    router = GossipRouter(fake_peer(0), relay=True, params=params, rng=random.Random(3))
    router.subscribe(TOPIC)
    relay = fake_peer(1)
    author = identity("flooder").peer_id
    for link in (relay, author):
        router.add_link(link, relay=True, now=0.0)
    flood = envelopes("flooder", 110)
    own = [e for e in flood[:20] if delivers(pub(router, author, e, 0.0))]
    assert 0 < len(own) < 20
    assert router.held_back(author, 0.0)  # over its limit on its own link: muted, held
    # forged copies (new ids, bad signatures) through a relay all through the mute:
    # each is dropped unchecked while the author is muted, and none is refused
    for t in range(1, 30):
        forged = _forged(flood[20 + t])
        assert pub(router, relay, forged, float(t)) == []
    assert router.held_back(author, 29.9)
    assert not router.held_back(author, 30.1)  # not extended by what was never checked
    # the real author over its limit again through the relay: a new hold (to 61) ...
    assert 0 < sum(bool(delivers(pub(router, relay, e, 31.0))) for e in flood[50:80]) < 30
    assert router.held_back(author, 60.9) and not router.held_back(author, 61.1)
    # ... which its checked envelopes, then drops after them, extend (to 80)
    assert 0 < sum(bool(delivers(pub(router, relay, e, 50.0))) for e in flood[80:110]) < 30
    assert router.held_back(author, 79.9) and not router.held_back(author, 80.1)


def _forged(env: Envelope) -> Envelope:
    """``env`` with one bit of its signature flipped (its id is unchanged: a new one
    is made by the caller's choice of ``env``)."""
    wire = env.wire[:-1] + bytes([env.wire[-1] ^ 1])
    return replace(env, wire=wire)
