"""Lookup state machines (dht/_lookup.py) against scripted replies: the
stopping rule, parallelism, timeouts and late replies, liars, unsolicited
replies, the query bound, hop counting, and record-collecting lookups."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence

from dht import (
    Contact,
    Lookup,
    PeerLookup,
    ProviderLookup,
    sign_peer_record,
    sign_provider_record,
    topic_key,
)
from peer.wire._identity import Identity

K = 20
ALPHA = 3
TIMEOUT = 1.0
NOW = 1_700_000_000.0

# A script says what a contact answers: (contacts, value), or None for silence.
Reply = tuple[Sequence[Contact], object] | None
Script = Callable[[Contact, float], Reply]


def make_contact(rng: random.Random) -> Contact:
    return Contact.of_key(rng.getrandbits(256).to_bytes(32, "big"), ["ws://192.0.2.1:7433"])


def closest(pool: Sequence[Contact], target: bytes, n: int) -> list[Contact]:
    t = int.from_bytes(target, "big")
    return sorted(pool, key=lambda c: c.num ^ t)[:n]


def drive(lookup: Lookup, script: Script, now: float = NOW, max_rounds: int = 10_000) -> float:
    """Run a lookup to completion: replies arrive 10 ms after the request, silence
    waits for the next deadline. Checks the parallelism bound on every step."""
    pending: list[Contact] = []
    for _ in range(max_rounds):
        sent = lookup.next_requests(now)
        assert lookup.in_flight <= lookup.alpha
        pending.extend(sent)
        if lookup.done:
            return now
        replies = [(c, script(c, now)) for c in pending]
        pending = []
        answered = [(c, r) for c, r in replies if r is not None]
        now += 0.01
        for c, r in answered:
            assert r is not None
            lookup.on_response(c.id, r[0], now, r[1])
        if not answered:
            deadline = lookup.next_deadline()
            assert deadline is not None, "nothing in flight yet not done"
            now = max(now, deadline)
    raise AssertionError("lookup did not finish")


def honest(pool: Sequence[Contact], target: bytes, dead: set[bytes] = frozenset()) -> Script:  # type: ignore[assignment]
    def script(c: Contact, _now: float) -> Reply:
        if c.id in dead:
            return None
        return closest([p for p in pool if p.id != c.id], target, K), None

    return script


def test_honest_network_finds_the_true_k_closest() -> None:
    rng = random.Random(1)
    pool = [make_contact(rng) for _ in range(400)]
    for trial in range(10):
        target = rng.getrandbits(256).to_bytes(32, "big")
        lookup = Lookup(target, K, ALPHA, rng.sample(pool, 3), NOW, TIMEOUT)
        drive(lookup, honest(pool, target))
        assert lookup.done
        assert [c.id for c in lookup.result()] == [c.id for c in closest(pool, target, K)], trial
        assert 1 <= lookup.hops <= 6
        assert K <= lookup.stats.queries <= lookup.max_queries
        assert lookup.stats.liars == lookup.stats.timeouts == 0
        assert lookup.duration is not None and lookup.duration > 0


def test_stopping_rule_k_closest_answered() -> None:
    rng = random.Random(2)
    target = os.urandom(32)
    a, b, c, d = closest([make_contact(rng) for _ in range(4)], target, 4)  # a is nearest
    script: dict[bytes, list[Contact]] = {c.id: [a], a.id: [b], b.id: []}
    lookup = Lookup(target, 2, 1, [d, c], NOW, TIMEOUT)
    asked = []
    now = NOW
    for expected in ([c], [a], [b]):
        sent = lookup.next_requests(now)
        assert [x.id for x in sent] == [x.id for x in expected]
        assert not lookup.done  # a nearer candidate is unanswered
        asked.extend(sent)
        assert lookup.next_requests(now) == []  # alpha = 1: one at a time
        lookup.on_response(sent[0].id, script[sent[0].id], now)
    # a and b, the 2 nearest seen, have answered: done without ever asking d
    assert lookup.done
    assert [x.id for x in lookup.result()] == [a.id, b.id]
    assert d.id not in {x.id for x in asked}
    assert lookup.next_requests(now) == []


def test_exhausted_lookup_is_done_with_fewer_than_k() -> None:
    rng = random.Random(3)
    pool = [make_contact(rng) for _ in range(5)]
    target = os.urandom(32)
    lookup = Lookup(target, K, ALPHA, pool[:2], NOW, TIMEOUT)
    drive(lookup, honest(pool, target))
    assert lookup.done and len(lookup.result()) == 5
    assert Lookup(target, K, ALPHA, [], NOW, TIMEOUT).done  # nobody to ask


def test_timeouts_fail_silent_nodes_and_are_reported() -> None:
    rng = random.Random(4)
    pool = [make_contact(rng) for _ in range(300)]
    dead = {c.id for c in rng.sample(pool, 90)}
    live = [c for c in pool if c.id not in dead]
    for _ in range(5):
        target = rng.getrandbits(256).to_bytes(32, "big")
        seeds = rng.sample(live, 3)
        lookup = Lookup(target, K, ALPHA, seeds, NOW, TIMEOUT)
        drive(lookup, honest(pool, target, dead))
        got = [c.id for c in lookup.result()]
        # honest replies name the K nearest overall, dead or alive: every live one of
        # those is found, no dead node is, and the rest are the nearest live ones seen
        assert got and not set(got) & dead
        assert {c.id for c in closest(pool, target, K)} - dead <= set(got)
        assert got == [c.id for c in closest([c for c in live if c.id in set(got)], target, K)]
        timed_out = lookup.take_timed_out()
        assert timed_out and set(timed_out) <= dead
        assert lookup.stats.timeouts == len(timed_out)
        assert lookup.take_timed_out() == []  # reported once


def test_timeout_frees_the_slot_and_late_reply_is_used() -> None:
    rng = random.Random(5)
    target = os.urandom(32)
    near, far, extra = closest([make_contact(rng) for _ in range(3)], target, 3)
    lookup = Lookup(target, 2, 1, [near, far], NOW, TIMEOUT)
    assert [c.id for c in lookup.next_requests(NOW)] == [near.id]
    assert lookup.next_deadline() == NOW + TIMEOUT
    assert lookup.next_requests(NOW + 0.5) == []  # still within its deadline
    assert [c.id for c in lookup.next_requests(NOW + TIMEOUT)] == [far.id]
    assert lookup.take_timed_out() == [near.id]
    assert lookup.on_response(far.id, [extra], NOW + 1.1)
    # near counts as failed, so extra is needed to make up k = 2
    assert [c.id for c in lookup.next_requests(NOW + 1.1)] == [extra.id]
    assert not lookup.done
    # the late reply from near still counts (it was asked): near and far are the
    # 2 nearest and both answered, so the lookup is done with extra still in flight
    assert lookup.on_response(near.id, [], NOW + 1.2)
    assert lookup.done
    assert [c.id for c in lookup.result()] == [near.id, far.id]
    assert not lookup.on_response(extra.id, [], NOW + 1.3)
    assert lookup.stats.late == 1


def test_liar_with_unbound_contact_is_ignored_and_counted() -> None:
    rng = random.Random(6)
    pool = [make_contact(rng) for _ in range(200)]
    target = os.urandom(32)
    liar = closest(pool, target, 1)[0]  # the nearest node lies
    victim = make_contact(rng)
    forged = Contact(victim.id, os.urandom(32), ("ws://203.0.113.9:1",))  # id not from this key
    decoy = make_contact(rng)

    def script(c: Contact, now: float) -> Reply:
        if c.id == liar.id:
            return [decoy, forged], None
        return honest(pool, target)(c, now)

    lookup = Lookup(target, K, ALPHA, [liar, *rng.sample(pool, 2)], NOW, TIMEOUT)
    drive(lookup, script)
    assert lookup.stats.liars == 1 and lookup.liars == [liar.id]
    ids = [c.id for c in lookup.result()]
    assert liar.id not in ids
    assert ids == [c.id for c in closest([p for p in pool if p.id != liar.id], target, K)]
    # nothing from the lying reply was taken up, not even its well-formed decoy
    assert decoy.id not in ids and forged.id not in ids


def test_unsolicited_and_duplicate_replies_are_ignored() -> None:
    rng = random.Random(7)
    target = os.urandom(32)
    a, b, stranger, intruder = (make_contact(rng) for _ in range(4))
    lookup = Lookup(target, 2, 1, [a, b], NOW, TIMEOUT)
    first = lookup.next_requests(NOW)[0]
    # a peer we never asked, and one we know but have not asked yet
    not_yet = b if first.id == a.id else a
    assert not lookup.on_response(stranger.id, [intruder], NOW)
    assert not lookup.on_response(not_yet.id, [intruder], NOW)
    assert lookup.stats.unsolicited == 2
    assert lookup.on_response(first.id, [], NOW)
    assert not lookup.on_response(first.id, [intruder], NOW)  # twice
    assert lookup.stats.unsolicited == 3
    assert [c.id for c in lookup.next_requests(NOW)] == [not_yet.id]  # intruder never queued


def test_failure_counts_and_our_own_id_is_skipped() -> None:
    rng = random.Random(8)
    target = os.urandom(32)
    me, a, b = (make_contact(rng) for _ in range(3))
    lookup = Lookup(target, 3, 2, [a, b, me], NOW, TIMEOUT, own_id=me.id)
    sent = lookup.next_requests(NOW)
    assert {c.id for c in sent} == {a.id, b.id}
    lookup.on_failure(a.id)
    lookup.on_failure(me.id)  # not asked: no effect
    assert lookup.stats.failures == 1
    lookup.on_response(b.id, [me], NOW)
    assert lookup.done
    assert [c.id for c in lookup.result()] == [b.id]


def test_query_bound_against_endless_fresh_contacts() -> None:
    """Colluding sybils that each answer with fresh nodes nearer than any seen
    cannot keep a lookup alive past ``max_queries``."""
    rng = random.Random(9)
    target = os.urandom(32)
    sybils = closest([make_contact(rng) for _ in range(3000)], target, 3000)[::-1]  # far first
    handed = [1]

    def script(_c: Contact, _now: float) -> Reply:
        start = handed[0]
        handed[0] += K
        return sybils[start : start + K], None

    lookup = Lookup(target, K, ALPHA, sybils[:1], NOW, TIMEOUT, max_queries=60)
    drive(lookup, script)
    assert lookup.done
    assert lookup.stats.queries == 60
    assert handed[0] < len(sybils)  # the supply was not exhausted: the bound stopped it


def test_hops_count_the_answer_chain() -> None:
    rng = random.Random(10)
    target = os.urandom(32)
    chain = closest([make_contact(rng) for _ in range(5)], target, 5)  # nearest first
    nxt = {chain[i].id: [chain[i - 1]] for i in range(1, 5)} | {chain[0].id: []}

    def script(c: Contact, _now: float) -> Reply:
        return nxt[c.id], None

    lookup = Lookup(target, 1, 1, [chain[4]], NOW, TIMEOUT)
    drive(lookup, script)
    assert [c.id for c in lookup.result()] == [chain[0].id]
    assert lookup.hops == 5


def test_reply_with_too_many_contacts_is_a_lie() -> None:
    rng = random.Random(11)
    target = os.urandom(32)
    a = make_contact(rng)
    lookup = Lookup(target, K, ALPHA, [a], NOW, TIMEOUT)
    lookup.next_requests(NOW)
    assert not lookup.on_response(a.id, [make_contact(rng) for _ in range(K + 1)], NOW)
    assert lookup.stats.liars == 1 and lookup.done and lookup.result() == []


# -- record lookups ----------------------------------------------------------------------


def test_peer_lookup_collects_a_verified_record() -> None:
    rng = random.Random(12)
    owner = Identity.from_seed(bytes(32))
    good = sign_peer_record(owner, addrs=["ws://192.0.2.5:1"], seq=7, expires=int(NOW) + 600)
    newer = sign_peer_record(owner, addrs=["ws://192.0.2.6:1"], seq=8, expires=int(NOW) + 600)
    holders = [make_contact(rng) for _ in range(3)]
    lookup = PeerLookup(owner.peer_id, K, ALPHA, holders, NOW, TIMEOUT, quorum=2)
    sent = lookup.next_requests(NOW)
    assert lookup.on_response(sent[0].id, [], NOW, good.wire)
    assert not lookup.done and lookup.record == good
    assert lookup.on_response(sent[1].id, [], NOW, newer.wire)
    assert lookup.done and lookup.record == newer  # quorum of 2, highest sequence kept


def test_peer_lookup_treats_forged_records_as_lies() -> None:
    rng = random.Random(13)
    owner = Identity.from_seed(bytes(32))
    other = Identity.from_seed(b"\x01" * 32)
    record = sign_peer_record(owner, seq=1, expires=int(NOW) + 600)
    bad_sig = record.wire[:-3] + bytes(b ^ 0xFF for b in record.wire[-3:])
    someone_else = sign_peer_record(other, seq=1, expires=int(NOW) + 600).wire
    expired = sign_peer_record(owner, seq=2, expires=int(NOW) - 1).wire
    holders = [make_contact(rng) for _ in range(4)]
    lookup = PeerLookup(owner.peer_id, K, 4, holders, NOW, TIMEOUT)
    sent = lookup.next_requests(NOW)
    assert not lookup.on_response(sent[0].id, [], NOW, bad_sig)
    assert not lookup.on_response(sent[1].id, [], NOW, someone_else)  # not the id we asked for
    assert not lookup.on_response(sent[2].id, [], NOW, b"\xa0")
    assert lookup.stats.liars == 3 and lookup.stats.bad_records == 3
    assert lookup.on_response(sent[3].id, [], NOW, expired)  # a clock matter, not a lie
    assert lookup.stats.clock_records == 1
    assert lookup.record is None and lookup.done


def test_provider_lookup_collects_verified_providers() -> None:
    rng = random.Random(14)
    key = topic_key("general")
    provs = [Identity.from_seed(bytes([i]) * 32) for i in range(1, 6)]
    recs = [
        sign_provider_record(p, key=key, addrs=["ws://192.0.2.7:1"], seq=1, expires=int(NOW) + 600)
        for p in provs
    ]
    wrong_key = sign_provider_record(
        provs[0], key=topic_key("other"), seq=2, expires=int(NOW) + 600
    )
    holders = [make_contact(rng) for _ in range(4)]
    lookup = ProviderLookup(key, K, 4, holders, NOW, TIMEOUT, max_providers=5)
    sent = lookup.next_requests(NOW)
    assert lookup.on_response(sent[0].id, [], NOW, [r.wire for r in recs[:3]])
    assert lookup.on_response(sent[1].id, [], NOW, [r.wire for r in recs[1:3]])  # duplicates
    assert len(lookup.found) == 3 and not lookup.done
    assert not lookup.on_response(sent[2].id, [], NOW, [recs[3].wire, wrong_key.wire])
    assert lookup.stats.liars == 1 and recs[3].id not in lookup.found  # the whole reply is dropped
    assert lookup.on_response(sent[3].id, [], NOW, [r.wire for r in recs[3:]])
    assert lookup.done  # max_providers reached
    assert {r.id for r in lookup.providers()} == {p.peer_id for p in provs}
