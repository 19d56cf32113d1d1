"""Answers to our own IWANT (``peer.protocols._asked``), sans-IO with time stepped by hand.

The flake this pins down (``test_live_processes``, a peer killed with SIGKILL and
restarted): the restarted peer's router had forgotten every author, asked its only
neighbour, a busy author, for the ids of its IHAVE, and found the answers over the
quarter second of rate a never-seen author starts with; it muted the author on its own
link, charged the link for each honest message that followed, and closed and banned it
for five minutes, catching up nothing meanwhile.
"""

from __future__ import annotations

import random
from dataclasses import replace

from peer.protocols._asked import AskBook
from peer.protocols._checkahead import plan
from peer.protocols._gossip import GossipRouter
from peer.wire._frametypes import AnyFrame, IWant, Pub
from peer.wire._limits import MAX_IDS_PER_FRAME, GossipParams
from tests._gossip_net import TOPIC, Net, delivers, fake_peer, feed, identity, sends
from tests.test_score import envelopes, pub

LIMITS = GossipParams(sender_rate=10.0, sender_burst=20.0, link_pub_rate=0.0)
FRESH = int(LIMITS.sender_rate * LIMITS.sender_fresh_s)  # 2 tokens for a new author


def _router(params: GossipParams, *links: bytes) -> GossipRouter:
    """A relay subscribed to ``TOPIC``, linked (as relays) to ``links``."""
    router = GossipRouter(fake_peer(0), relay=True, params=params, rng=random.Random(3))
    router.subscribe(TOPIC)
    for link in links:
        router.add_link(link, relay=True, now=0.0)
    return router


def _ids(frames: list[AnyFrame]) -> list[tuple[bytes, ...]]:
    """The ids of each IWANT among ``frames``."""
    return [f.ids for f in frames if isinstance(f, IWant)]


def test_a_restarted_peer_takes_what_it_asked_its_busy_author_for() -> None:
    """Defaults throughout: the author publishes a heartbeat window's worth while its
    neighbour is down, advertises it once the neighbour is back (fresh, knowing no
    author), is asked for all of it and goes on publishing at 300/s: nothing is dropped,
    nobody is muted, the link stays open."""
    net = Net()
    net.add("author")
    net.add("b")
    net.subscribe("b")
    net.connect("author", "b")
    net.publish("author")
    assert len(net.delivered["b"]) == 1
    net.disconnect("author", "b")
    missed = [net.publish("author").id for _ in range(MAX_IDS_PER_FRAME)]  # b is down
    net.add("b")  # restarted: a new router, the same identity
    net.delivered["b"] = []
    net.subscribe("b")
    net.connect("author", "b")
    net.heartbeat("author")  # its IHAVE: every id of its recent windows
    iwant = net.frames("iwant", src="b", dst="author")
    assert iwant and set(missed) <= {i for ids in _ids(iwant) for i in ids}
    live = []
    for _ in range(600):  # and on, at 300/s
        net.now += 1 / 300
        live.append(net.publish("author").id)
        if int(net.now) != int(net.now - 1 / 300):
            net.heartbeat()
    b = net.routers["b"]
    assert net.closes == []
    assert b.stats.sender_limited == 0 and b.stats.graylisted == 0
    assert set(missed + live) <= set(net.got("b"))
    assert b.scores.score(net.pid("author"), net.now) >= 0


def test_only_what_we_asked_that_link_for_passes_the_author_limit() -> None:
    """An answer passes its author's limit, spending nothing; the same author's messages
    that were not asked for (pushed by it, by another link, or asked too long ago) meet
    the limit as before, and over it on its own link the author is muted."""
    params = replace(LIMITS, sender_rate=1.0, sender_fresh_s=4.0, iwant_deadline=0.05)
    fresh = 4  # tokens a new author starts with; refills at 1/s (0.06 over this test)
    author, other = identity("author").peer_id, fake_peer(1)
    router = _router(params, author, other)
    for link in (author, other):
        feed(router, link, "sub", topics=[[TOPIC, 0]])
    envs = envelopes("author", 30)
    asked, late, pushed = envs[:10], envs[10:12], envs[12:]
    feed(router, author, "ihave", topic=TOPIC, ids=tuple(e.id for e in asked + late), now=0.0)
    assert all(delivers(pub(router, author, e, 0.0)) for e in asked)  # 10 > fresh: all in
    assert router.stats.sender_limited == 0
    # late: asked of the author's link but sent over another one, then past the deadline
    assert delivers(pub(router, other, late[0], 0.0))  # a token spent
    assert delivers(pub(router, author, late[1], 0.06))  # another
    taken = [e for e in pushed if delivers(pub(router, author, e, 0.06))]
    assert len(taken) == fresh - 2  # what the answers left: all of it
    assert router.stats.sender_limited == len(pushed) - len(taken)
    assert not delivers(pub(router, other, envelopes("author", 1, first=31)[0], 10.0))  # muted


def test_asking_is_bounded_per_link_per_heartbeat_and_in_all() -> None:
    book = AskBook(per_link=3, window=1.0, deadline=3.0, max_ids=5)
    ids = tuple(bytes([i]) * 32 for i in range(10))
    a, b = b"a" * 32, b"b" * 32
    assert book.ask(a, ids, 0.0) == ids[:3]  # this link's budget for the window
    assert book.ask(a, ids[3:], 0.5) == ()
    # the table holds 5 at most: another link is still asked, the oldest ask forgotten
    assert book.ask(b, ids[3:], 0.5) == ids[3:6] and len(book) == 5
    assert not book.asked(a, ids[0], 0.6) and book.asked(a, ids[1], 0.6)
    assert book.asked(b, ids[3], 0.6) and not book.asked(b, ids[1], 0.6)
    assert book.answered(a, ids[1], 0.6) and not book.answered(a, ids[1], 0.6)  # once
    # an IHAVE round a little early (jitter) finds a new window
    assert book.ask(a, ids[6:], 0.95) == ids[6:9] and len(book) == 5
    assert not book.answered(b, ids[4], 3.6)  # expired
    assert book.ask(b, ids[9:], 3.6) == ids[9:] and len(book) <= 5


def test_a_full_table_takes_from_the_link_with_the_most_asks_not_an_honest_one() -> None:
    book = AskBook(per_link=4, window=1.0, deadline=3.0, max_ids=6)
    honest, hostile = b"h" * 32, b"x" * 32
    mine = tuple(bytes([i]) * 32 for i in range(2))
    junk = tuple(bytes([100 + i]) * 32 for i in range(40))
    assert book.ask(honest, mine, 0.0) == mine  # the oldest asks in the table
    for n in range(5):  # IHAVE after IHAVE of ids nobody has
        assert book.ask(hostile, junk[4 * n : 4 * n + 4], float(n)) == junk[4 * n : 4 * n + 4]
        assert len(book) <= 6
    assert book.answered(honest, mine[0], 2.5) and book.answered(honest, mine[1], 2.5)


def test_an_ihave_longer_than_a_links_budget_is_asked_for_in_part() -> None:
    params = replace(LIMITS, iwant_per_heartbeat=4)
    link = fake_peer(1)
    router = _router(params, link)
    ids = tuple(bytes([i]) * 32 for i in range(10))
    first = sends(feed(router, link, "ihave", topic=TOPIC, ids=ids, now=0.0), "iwant")
    assert _ids([f for _, f in first]) == [ids[:4]]
    assert sends(feed(router, link, "ihave", topic=TOPIC, ids=ids[4:], now=0.5)) == []
    again = sends(feed(router, link, "ihave", topic=TOPIC, ids=ids[4:], now=1.5), "iwant")
    assert _ids([f for _, f in again]) == [ids[4:8]]


def test_check_ahead_plans_the_answers_it_asked_for_beyond_the_authors_tokens() -> None:
    author = identity("author").peer_id
    router = _router(LIMITS, author)
    envs = envelopes("author", 10)
    feed(router, author, "ihave", topic=TOPIC, ids=tuple(e.id for e in envs[:6]), now=0.0)
    burst = [(Pub(e.wire), 100) for e in envs]
    checks = plan(burst, router.seen, (), router.foresight(author, 0.1))
    assert [c.mid for c in checks] == [e.id for e in envs[: 6 + FRESH]]


def test_answers_about_an_author_held_back_for_flooding_meet_its_limit_unpunished() -> None:
    """An author dropped over its limit lately (a flood) is limited by IWANT too, so what
    relays let through of its flood does not come back in that way; a drop among answers
    still mutes nobody and charges no link (we asked)."""
    author, relay = identity("flooder").peer_id, fake_peer(1)
    router = _router(LIMITS, author, relay)
    flood = envelopes("flooder", 20)
    taken = [e for e in flood[:5] if delivers(pub(router, relay, e, 0.0))]
    assert len(taken) == FRESH and router.held_back(author, 0.0)  # held; a relay: no mute
    asked = flood[5:15]
    feed(router, author, "ihave", topic=TOPIC, ids=tuple(e.id for e in asked), now=0.0)
    assert not any(delivers(pub(router, author, e, 0.0)) for e in asked)  # held: limited
    assert router.stats.sender_limited == 5 - FRESH + len(asked)
    assert router.scores.score(author, 0.0) == 0.0  # its link not charged
    later = envelopes("flooder", 1, first=21)[0]
    assert delivers(pub(router, author, later, 1.0))  # nor the author muted: tokens back


def test_check_ahead_plans_no_answer_about_an_author_held_back() -> None:
    author, relay = identity("author").peer_id, fake_peer(1)
    router = _router(LIMITS, author, relay)
    envs = envelopes("author", 10)
    for e in envs[:5]:
        pub(router, relay, e, 0.0)
    assert router.held_back(author, 0.0)
    feed(router, author, "ihave", topic=TOPIC, ids=tuple(e.id for e in envs[5:]), now=0.0)
    burst = [(Pub(e.wire), 100) for e in envs[5:]]
    assert plan(burst, router.seen, (), router.foresight(author, 0.0)) == []
