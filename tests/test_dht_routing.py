"""The routing table (dht/_routing.py): exact k closest against a brute-force
oracle, eviction only after two missed replies, address-range limits, refresh."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dht import Contact, ObserveKind, Refusal, RoutingTable, distance
from dht._contact import address_range
from tests._fuzz import fuzz_scale

K = 20


def make_contact(rng: random.Random, addr: str | None = None) -> Contact:
    """A bound contact: the id is derived from a random 32-byte "public key"."""
    pk = rng.getrandbits(256).to_bytes(32, "big")
    return Contact.of_key(pk, [addr or f"ws://{rng.randrange(1, 2**32):08x}.example:7433"])


def open_table(own: bytes) -> RoutingTable:
    """A table with the address-range limits off (random test addresses)."""
    return RoutingTable(
        own, K, rng=random.Random(1), max_per_range_bucket=None, max_per_range_table=None
    )


def contacts_in_bucket(
    table: RoutingTable, index: int, n: int, rng: random.Random
) -> list[Contact]:
    out: list[Contact] = []
    while len(out) < n:
        c = make_contact(rng)
        if table.bucket_index(c.id) == index:
            out.append(c)
    return out


def brute_force(contacts: list[Contact], target: bytes, n: int) -> list[bytes]:
    return [c.id for c in sorted(contacts, key=lambda c: distance(c.id, target))[:n]]


# -- the oracle ------------------------------------------------------------------------


@settings(max_examples=fuzz_scale(60), deadline=None)
@given(
    seed=st.integers(0, 2**32), size=st.integers(0, 1500), n=st.sampled_from([1, 3, 20, 57, 400])
)
def test_closest_matches_brute_force_oracle(seed: int, size: int, n: int) -> None:
    rng = random.Random(seed)
    own = rng.getrandbits(256).to_bytes(32, "big")
    table = open_table(own)
    for _ in range(size):
        table.observe(make_contact(rng), float(rng.randrange(1000)))
    held = table.contacts()
    assert len(held) == len(table) <= size
    # bucket invariants: at most k each, every contact in the bucket its prefix says
    per_bucket: dict[int, int] = {}
    for c in held:
        per_bucket[table.bucket_index(c.id)] = per_bucket.get(table.bucket_index(c.id), 0) + 1
    assert all(v <= K for v in per_bucket.values())
    targets = [own, rng.getrandbits(256).to_bytes(32, "big")]
    targets += [c.id for c in rng.sample(held, min(3, len(held)))]
    # ids that share long prefixes with our own id probe the deep buckets
    targets += [table.random_id_in_bucket(rng.randrange(0, 12)) for _ in range(3)]
    for target in targets:
        got = [c.id for c in table.closest(target, n)]
        assert got == brute_force(held, target, n)


def test_closest_over_many_random_tables() -> None:
    rng = random.Random(7)
    for _ in range(15):
        own = os.urandom(32)
        table = open_table(own)
        for _ in range(rng.randrange(50, 3000)):
            table.observe(make_contact(rng), 0.0)
        held = table.contacts()
        assert len(held) > K
        for _ in range(20):
            target = rng.getrandbits(256).to_bytes(32, "big")
            assert [c.id for c in table.closest(target, K)] == brute_force(held, target, K)


def test_closest_healthy_skips_contacts_that_missed_a_reply() -> None:
    rng = random.Random(3)
    table = open_table(os.urandom(32))
    for _ in range(400):
        table.observe(make_contact(rng), 0.0)
    failing = rng.sample(table.contacts(), 30)
    for c in failing:
        table.ping_result(c.id, False, 1.0)
    bad = {c.id for c in failing}
    healthy = [c for c in table.contacts() if c.id not in bad]
    target = os.urandom(32)
    assert [c.id for c in table.closest(target, K, healthy=True)] == brute_force(healthy, target, K)
    assert bad & {c.id for c in table.closest(target, 400)}  # the plain query includes them


def test_closest_returns_copies() -> None:
    rng = random.Random(4)
    table = open_table(os.urandom(32))
    c = make_contact(rng)
    table.observe(c, 5.0)
    got = table.closest(c.id, 1)[0]
    got.failures = 99
    held = table.get(c.id)
    assert held is not None and held.failures == 0 and held.last_seen == 5.0


@given(seed=st.integers(0, 2**32), index=st.integers(0, 255))
def test_random_id_in_bucket_lands_in_that_bucket(seed: int, index: int) -> None:
    table = RoutingTable(
        random.Random(seed).getrandbits(256).to_bytes(32, "big"), rng=random.Random(seed)
    )
    assert table.bucket_index(table.random_id_in_bucket(index)) == index


# -- admission ---------------------------------------------------------------------------


def test_refuses_self_unbound_and_addressless_contacts() -> None:
    rng = random.Random(5)
    me = make_contact(rng)
    table = open_table(me.id)
    assert table.observe(me, 0.0).reason is Refusal.SELF
    liar = make_contact(rng)
    forged = Contact(liar.id, os.urandom(32), liar.addrs)  # id does not match the key
    assert table.observe(forged, 0.0).reason is Refusal.UNBOUND
    assert table.observe(Contact.of_key(os.urandom(32)), 0.0).reason is Refusal.NO_ADDRESS
    assert len(table) == 0
    assert table.refused == {Refusal.SELF: 1, Refusal.UNBOUND: 1, Refusal.NO_ADDRESS: 1}


def test_observe_known_contact_updates_and_moves_it_to_the_end() -> None:
    rng = random.Random(6)
    table = open_table(os.urandom(32))
    a, b = contacts_in_bucket(table, 0, 2, rng)
    assert table.observe(a, 1.0).kind is ObserveKind.ADDED
    assert table.observe(b, 2.0).kind is ObserveKind.ADDED
    table.ping_result(a.id, False, 2.5)
    obs = table.observe(a, 3.0)
    assert obs.kind is ObserveKind.UPDATED
    assert obs.contact.last_seen == 3.0 and obs.contact.failures == 0
    assert [s["index"] for s in table.buckets_summary()] == [0]
    # a is now the most recently seen: a full bucket would ask to ping b first
    for c in contacts_in_bucket(table, 0, K - 2, rng):
        table.observe(c, 4.0)
    obs = table.observe(contacts_in_bucket(table, 0, 1, rng)[0], 5.0)
    assert obs.kind is ObserveKind.PING
    assert obs.ping is not None and obs.ping.id == b.id


# -- eviction -------------------------------------------------------------------------------


def full_bucket(rng: random.Random) -> tuple[RoutingTable, list[Contact]]:
    table = open_table(os.urandom(32))
    members = contacts_in_bucket(table, 1, K, rng)
    for t, c in enumerate(members):
        assert table.observe(c, float(t)).kind is ObserveKind.ADDED
    return table, members


def test_full_bucket_asks_to_ping_least_recently_seen() -> None:
    rng = random.Random(8)
    table, members = full_bucket(rng)
    newcomer, second = contacts_in_bucket(table, 1, 2, rng)
    obs = table.observe(newcomer, 100.0)
    assert obs.kind is ObserveKind.PING
    assert obs.ping is not None and obs.ping.id == members[0].id
    assert newcomer.id not in table  # only held as a replacement
    # while that ping is out, more newcomers are only held
    assert table.observe(second, 101.0).kind is ObserveKind.PENDING
    assert table.buckets_summary()[0]["replacements"] == 2
    assert len(table) == K


def test_answered_ping_keeps_the_old_contact() -> None:
    rng = random.Random(9)
    table, members = full_bucket(rng)
    newcomer = contacts_in_bucket(table, 1, 1, rng)[0]
    table.observe(newcomer, 100.0)
    outcome = table.ping_result(members[0].id, True, 101.0)
    assert outcome.evicted is None and outcome.promoted is None
    assert members[0].id in table and newcomer.id not in table
    # the answer made it most recently seen: the next candidate pings members[1]
    obs = table.observe(contacts_in_bucket(table, 1, 1, rng)[0], 102.0)
    assert obs.ping is not None and obs.ping.id == members[1].id


def test_one_missed_reply_does_not_evict_two_do() -> None:
    rng = random.Random(10)
    table, members = full_bucket(rng)
    lrs = members[0]
    newcomer = contacts_in_bucket(table, 1, 1, rng)[0]
    table.observe(newcomer, 100.0)
    first = table.ping_result(lrs.id, False, 105.0)
    assert first.evicted is None and first.promoted is None
    assert lrs.id in table
    held = table.get(lrs.id)
    assert held is not None and held.failures == 1
    assert first.retry is not None and first.retry.id == lrs.id  # a replacement waits: ask again
    second = table.ping_result(lrs.id, False, 110.0)
    assert second.evicted is not None and second.evicted.id == lrs.id
    assert second.promoted is not None and second.promoted.id == newcomer.id
    assert lrs.id not in table and newcomer.id in table
    assert len(table) == K


def test_missed_replies_must_be_consecutive() -> None:
    rng = random.Random(11)
    table, members = full_bucket(rng)
    c = members[5]
    table.ping_result(c.id, False, 1.0)
    table.observe(c, 2.0)  # it answered something in between
    assert table.ping_result(c.id, False, 3.0).evicted is None
    assert c.id in table
    assert table.ping_result(c.id, False, 4.0).evicted is not None


def test_eviction_without_replacement_frees_the_slot() -> None:
    rng = random.Random(12)
    table, members = full_bucket(rng)
    table.ping_result(members[3].id, False, 1.0)
    outcome = table.ping_result(members[3].id, False, 2.0)
    assert outcome.evicted is not None and outcome.promoted is None
    assert len(table) == K - 1
    assert table.observe(contacts_in_bucket(table, 1, 1, rng)[0], 3.0).kind is ObserveKind.ADDED


def test_remove_promotes_a_replacement() -> None:
    rng = random.Random(13)
    table, members = full_bucket(rng)
    newcomer = contacts_in_bucket(table, 1, 1, rng)[0]
    table.observe(newcomer, 100.0)
    removed = table.remove(members[7].id, 101.0)
    assert removed is not None and removed.id == members[7].id
    assert newcomer.id in table and len(table) == K
    assert table.remove(members[7].id) is None


def test_stale_ping_does_not_block_forever() -> None:
    rng = random.Random(14)
    table, _ = full_bucket(rng)
    a, b = contacts_in_bucket(table, 1, 2, rng)
    assert table.observe(a, 100.0).kind is ObserveKind.PING
    assert table.observe(b, 100.0 + table.ping_grace + 1).kind is ObserveKind.PING


def test_replacements_are_bounded() -> None:
    rng = random.Random(15)
    table = RoutingTable(
        os.urandom(32),
        K,
        rng=rng,
        replacements=5,
        max_per_range_bucket=None,
        max_per_range_table=None,
    )
    for c in contacts_in_bucket(table, 0, K + 50, rng):
        table.observe(c, 1.0)
    assert table.buckets_summary()[0]["replacements"] == 5


# -- address ranges ----------------------------------------------------------------------------


def test_address_ranges() -> None:
    assert address_range("ws://192.0.2.17:7433") == "192.0.2.0/24"
    assert address_range("wss://[2001:db8:1:2::5]:443/x") == "2001:db8:1::/48"
    assert address_range("ws://[::ffff:192.0.2.9]:1") == "192.0.2.0/24"
    assert address_range("ws://Seed.Example.org:7433") == "host:seed.example.org"
    assert address_range("not a url") == "addr:not a url"


def test_per_bucket_address_range_limit() -> None:
    rng = random.Random(16)
    table = RoutingTable(
        os.urandom(32), K, rng=rng, max_per_range_bucket=2, max_per_range_table=None
    )
    same = [
        Contact.of_key(c.public_key, [f"ws://198.51.100.{i}:7433"])
        for i, c in enumerate(contacts_in_bucket(table, 0, 3, rng))
    ]
    assert table.observe(same[0], 0.0).kind is ObserveKind.ADDED
    assert table.observe(same[1], 0.0).kind is ObserveKind.ADDED
    obs = table.observe(same[2], 0.0)
    assert obs.kind is ObserveKind.REFUSED and obs.reason is Refusal.ADDRESS_RANGE
    other = contacts_in_bucket(table, 0, 1, rng)[0]
    other = Contact.of_key(other.public_key, ["ws://198.51.101.1:7433"])
    assert table.observe(other, 0.0).kind is ObserveKind.ADDED
    assert table.refused[Refusal.ADDRESS_RANGE] == 1


def test_table_wide_address_range_limit() -> None:
    rng = random.Random(17)
    table = RoutingTable(
        os.urandom(32), K, rng=rng, max_per_range_bucket=None, max_per_range_table=3
    )
    added = refused = 0
    for i in range(10):
        c = make_contact(rng)
        obs = table.observe(Contact.of_key(c.public_key, [f"ws://[2001:db8:7::{i}]:1"]), 0.0)
        added += obs.kind is ObserveKind.ADDED
        refused += obs.kind is ObserveKind.REFUSED
    assert (added, refused) == (3, 7)
    # evicting one frees room for another from that range
    victim = table.contacts()[0]
    table.ping_result(victim.id, False, 1.0)
    table.ping_result(victim.id, False, 2.0)
    c = make_contact(rng)
    assert (
        table.observe(Contact.of_key(c.public_key, ["ws://[2001:db8:7::99]:1"]), 3.0).kind
        is ObserveKind.ADDED
    )


def test_loopback_needs_the_limit_off() -> None:
    rng = random.Random(18)
    on = RoutingTable(os.urandom(32), K, rng=rng)
    off = open_table(os.urandom(32))
    kinds_on, kinds_off = [], []
    for port in range(30):
        c = make_contact(rng)
        loop = Contact.of_key(c.public_key, [f"ws://127.0.0.1:{7000 + port}"])
        kinds_on.append(on.observe(loop, 0.0).kind)
        kinds_off.append(off.observe(loop, 0.0).kind)
    assert len(on) <= 10 and ObserveKind.REFUSED in kinds_on
    assert ObserveKind.REFUSED not in kinds_off and len(off) > 10


# -- refresh ------------------------------------------------------------------------------------


def test_stale_buckets_and_refresh() -> None:
    rng = random.Random(19)
    table = open_table(os.urandom(32))
    assert table.stale_buckets(0.0, 3600.0) == []  # nothing to refresh through
    for _ in range(300):
        table.observe(make_contact(rng), 0.0)
    deepest = max(int(str(s["index"])) for s in table.buckets_summary())
    # buckets that got contacts at t=0 are fresh; empty ones up to deepest+1 are stale
    stale = table.stale_buckets(10.0, 3600.0)
    populated = {int(str(s["index"])) for s in table.buckets_summary()}
    assert sorted(table.bucket_index(t) for t in stale) == sorted(
        set(range(deepest + 2)) - populated
    )
    # an hour later every bucket up to deepest+1 wants a refresh, each with an id inside it
    stale = table.stale_buckets(3600.0, 3600.0)
    assert sorted(table.bucket_index(t) for t in stale) == list(range(deepest + 2))
    for target in stale:
        table.mark_refreshed(target, 3600.0)
    assert table.stale_buckets(3601.0, 3600.0) == []
    assert len(table.stale_buckets(7300.0, 3600.0)) == deepest + 2


def test_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        RoutingTable(b"short")
    with pytest.raises(ValueError):
        RoutingTable(os.urandom(32), 0)
    table = RoutingTable(b"\x01" * 32)
    with pytest.raises(ValueError):
        table.bucket_index(b"\x01" * 32)
    assert table.get(b"\x01" * 32) is None
