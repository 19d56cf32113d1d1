"""Signed DHT records (dht/_records.py) and acceptance 3: forged records (bad
signature, id not matching key, lower sequence, expired) and floods of
records from one peer are refused and counted, and the table is not poisoned."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest

from dht import (
    PEER_RECORD_TAG,
    PROVIDER_RECORD_TAG,
    AddProvider,
    Contact,
    DhtConfig,
    DhtNode,
    ErrorReply,
    FindNode,
    Nodes,
    PutPeer,
    Reason,
    RecordError,
    RecordStore,
    Relay,
    Stored,
    answers,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    sign_peer_record,
    sign_provider_record,
    topic_key,
    verify_peer_record,
    verify_provider_record,
)
from peer.wire._cbor import decode, encode
from peer.wire._errors import ErrorCode, ProtocolError
from peer.wire._identity import Identity, peer_id_of, verify_signature

NOW = 1_700_000_000.0
EXP = int(NOW) + 3600
ALICE = Identity.from_seed(b"\x0a" * 32)
MALLORY = Identity.from_seed(b"\x0b" * 32)


def identity(i: int) -> Identity:
    return Identity.from_seed(i.to_bytes(32, "big"))


def forge(signer: Identity, fields: dict[str, Any], tag: bytes = PEER_RECORD_TAG) -> bytes:
    """A record with arbitrary fields, signed by ``signer``."""
    body = encode(fields)
    return encode([body, signer.sign(tag + body)])


def peer_fields(who: Identity, **over: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "v": 1,
        "id": who.peer_id,
        "pk": who.public_key,
        "addrs": ["ws://192.0.2.1:7433"],
        "relays": [],
        "caps": ["relay"],
        "seq": 5,
        "exp": EXP,
    }
    fields.update(over)
    return fields


def refused(fn: Any, *args: Any, **kw: Any) -> RecordError:
    with pytest.raises(RecordError) as info:
        fn(*args, **kw)
    assert isinstance(info.value, ProtocolError)
    return info.value


# -- format --------------------------------------------------------------------------------


def test_peer_record_signs_the_tagged_canonical_body() -> None:
    relay = Relay(identity(9).peer_id, "ws://198.51.100.1:7433")
    rec = sign_peer_record(
        ALICE, addrs=["ws://192.0.2.1:7433"], relays=[relay], caps=["relay"], seq=3, expires=EXP
    )
    body, sig = decode(rec.wire)
    assert (body, sig) == (rec.body, rec.sig)
    assert decode(body) == {
        "v": 1,
        "id": ALICE.peer_id,
        "pk": ALICE.public_key,
        "addrs": ["ws://192.0.2.1:7433"],
        "relays": [[relay.id, relay.addr]],
        "caps": ["relay"],
        "seq": 3,
        "exp": EXP,
    }
    assert encode(decode(body)) == body  # canonical
    assert verify_signature(ALICE.public_key, PEER_RECORD_TAG + body, sig)
    assert not verify_signature(ALICE.public_key, PROVIDER_RECORD_TAG + body, sig)
    assert verify_peer_record(rec.wire, NOW) == rec
    assert rec.relays == (relay,) and rec.contact().is_bound()


def test_provider_record_round_trip_and_topic_key() -> None:
    key = topic_key("general")
    assert key == hashlib.sha256(b"clawmesh/dht/topic/v1general").digest()
    rec = sign_provider_record(ALICE, key=key, addrs=["ws://192.0.2.1:1"], seq=1, expires=EXP)
    assert verify_provider_record(rec.wire, NOW, key=key) == rec
    body = decode(rec.wire)[0]
    assert verify_signature(ALICE.public_key, PROVIDER_RECORD_TAG + body, rec.sig)
    assert (
        refused(verify_provider_record, rec.wire, NOW, key=topic_key("x")).reason
        is Reason.WRONG_KEY
    )


# -- forged and stale records ----------------------------------------------------------------


def test_bad_signature_is_refused() -> None:
    rec = sign_peer_record(ALICE, seq=1, expires=EXP)
    flipped = rec.wire[:-1] + bytes([rec.wire[-1] ^ 1])
    err = refused(verify_peer_record, flipped, NOW)
    assert err.reason is Reason.BAD_SIGNATURE and err.code is ErrorCode.BAD_SIGNATURE
    # signed by someone else over Alice's fields
    err = refused(verify_peer_record, forge(MALLORY, peer_fields(ALICE)), NOW)
    assert err.reason is Reason.BAD_SIGNATURE


def test_id_not_matching_key_is_refused() -> None:
    # Mallory claims Alice's id with her own key, and signs correctly
    wire = forge(MALLORY, peer_fields(MALLORY, id=ALICE.peer_id))
    err = refused(verify_peer_record, wire, NOW)
    assert err.reason is Reason.ID_MISMATCH and err.code is ErrorCode.AUTH
    store = RecordStore()
    refused(store.put_peer, wire, NOW, ALICE.peer_id)
    assert store.get_peer(ALICE.peer_id, NOW) is None


def test_expired_and_far_future_records_are_refused() -> None:
    err = refused(verify_peer_record, sign_peer_record(ALICE, seq=1, expires=int(NOW)).wire, NOW)
    assert err.reason is Reason.EXPIRED
    cfg = DhtConfig()
    too_far = int(NOW + cfg.max_record_ttl + cfg.clock_skew) + 1
    err = refused(verify_peer_record, sign_peer_record(ALICE, seq=1, expires=too_far).wire, NOW)
    assert err.reason is Reason.TOO_FAR_FUTURE


@pytest.mark.parametrize(
    "change",
    [
        {"v": 2},
        {"seq": -1},
        {"seq": "5"},
        {"addrs": ["ws://x"] * 5},
        {"addrs": [""]},
        {"caps": ["x" * 33]},
        {"relays": [[b"\x00" * 31, "ws://r"]]},
        {"pk": b"\x00" * 31},
        {"extra": 1},
    ],
)
def test_malformed_records_are_refused(change: dict[str, Any]) -> None:
    fields = peer_fields(ALICE, **change)
    err = refused(verify_peer_record, forge(ALICE, fields), NOW)
    assert err.reason in (Reason.MALFORMED, Reason.TOO_LARGE, Reason.ID_MISMATCH)


def test_malformed_outer_shapes_are_refused() -> None:
    rec = sign_peer_record(ALICE, seq=1, expires=EXP)
    for wire in (
        b"",
        b"\xa0",
        rec.wire + b"\x00",
        encode([rec.body]),
        encode([rec.body, rec.sig, 1]),
        encode([rec.body, rec.sig[:63]]),
        encode([encode([1]), rec.sig]),
        b"\x00" * 3000,
    ):
        assert refused(verify_peer_record, wire, NOW).reason in (Reason.MALFORMED, Reason.TOO_LARGE)
    # a provider record is not a peer record, and vice versa
    prov = sign_provider_record(ALICE, key=topic_key("t"), seq=1, expires=EXP)
    assert refused(verify_peer_record, prov.wire, NOW).reason is Reason.MALFORMED
    assert refused(verify_provider_record, rec.wire, NOW).reason is Reason.MALFORMED


def test_store_sequence_rules() -> None:
    store = RecordStore()
    five = sign_peer_record(ALICE, seq=5, expires=EXP)
    store.put_peer(five.wire, NOW, ALICE.peer_id)
    lower = sign_peer_record(ALICE, seq=4, expires=EXP)
    assert refused(store.put_peer, lower.wire, NOW, ALICE.peer_id).reason is Reason.STALE
    same_seq = sign_peer_record(ALICE, addrs=["ws://192.0.2.99:1"], seq=5, expires=EXP)
    assert refused(store.put_peer, same_seq.wire, NOW, ALICE.peer_id).reason is Reason.STALE
    store.put_peer(five.wire, NOW, ALICE.peer_id)  # the very same bytes: a harmless no-op
    assert store.accepted["unchanged"] == 1
    six = sign_peer_record(ALICE, seq=6, expires=EXP)
    store.put_peer(six.wire, NOW, ALICE.peer_id)
    held = store.get_peer(ALICE.peer_id, NOW)
    assert held is not None and held.seq == 6
    assert store.refused == {Reason.STALE: 2}


def test_store_validates_on_get_and_expires() -> None:
    store = RecordStore()
    store.put_peer(sign_peer_record(ALICE, seq=1, expires=int(NOW) + 10).wire, NOW, ALICE.peer_id)
    key = topic_key("t")
    store.add_provider(
        sign_provider_record(ALICE, key=key, seq=1, expires=int(NOW) + 10).wire, NOW, ALICE.peer_id
    )
    assert store.get_peer(ALICE.peer_id, NOW + 9) is not None
    assert len(store.get_providers(key, NOW + 9)) == 1
    assert store.get_peer(ALICE.peer_id, NOW + 10) is None
    assert store.get_providers(key, NOW + 10) == []
    assert store.peer_count == store.provider_count == 0
    store.add_provider(
        sign_provider_record(ALICE, key=key, seq=2, expires=int(NOW) + 30).wire, NOW, ALICE.peer_id
    )
    assert store.expire(NOW + 31) == 1 and store.statistics()["provider_keys"] == 0


def test_every_refusal_is_counted_by_reason() -> None:
    store = RecordStore()
    good = sign_peer_record(ALICE, seq=5, expires=EXP)
    store.put_peer(good.wire, NOW, ALICE.peer_id)
    attempts = [
        (good.wire[:-1] + bytes([good.wire[-1] ^ 1]), Reason.STALE),  # seq 5 again, checked first
        (forge(MALLORY, peer_fields(ALICE, seq=9)), Reason.BAD_SIGNATURE),
        (forge(MALLORY, peer_fields(MALLORY, id=ALICE.peer_id, seq=9)), Reason.ID_MISMATCH),
        (sign_peer_record(ALICE, seq=4, expires=EXP).wire, Reason.STALE),
        (sign_peer_record(ALICE, seq=9, expires=int(NOW) - 5).wire, Reason.EXPIRED),
        (b"junk", Reason.MALFORMED),
    ]
    for wire, reason in attempts:
        assert refused(store.put_peer, wire, NOW, ALICE.peer_id).reason is reason
    assert store.refused == {
        Reason.STALE: 2,
        Reason.BAD_SIGNATURE: 1,
        Reason.ID_MISMATCH: 1,
        Reason.EXPIRED: 1,
        Reason.MALFORMED: 1,
    }
    held = store.get_peer(ALICE.peer_id, NOW)
    assert held is not None and held.wire == good.wire  # nothing replaced the good record
    stats = store.statistics()
    assert stats["refused_stale"] == 2 and stats["accepted_peer"] == 1


# -- providers ---------------------------------------------------------------------------------


def test_providers_capped_per_key_latest_expiry_wins() -> None:
    cfg = DhtConfig(max_providers_per_key=8)
    store = RecordStore(cfg)
    key = topic_key("busy")
    people = [identity(100 + i) for i in range(10)]
    for i, who in enumerate(people[:8]):
        rec = sign_provider_record(who, key=key, seq=1, expires=EXP + i)
        store.add_provider(rec.wire, NOW, who.peer_id)
    # a record expiring no later than all held ones is refused ...
    early = sign_provider_record(people[8], key=key, seq=1, expires=EXP)
    assert refused(store.add_provider, early.wire, NOW, people[8].peer_id).reason is Reason.FULL
    # ... one expiring later displaces the one that expires first
    late = sign_provider_record(people[9], key=key, seq=1, expires=EXP + 100)
    store.add_provider(late.wire, NOW, people[9].peer_id)
    held = {r.id for r in store.get_providers(key, NOW)}
    assert len(held) == 8 and people[9].peer_id in held and people[0].peer_id not in held
    assert store.get_providers(key, NOW, 3)[0].id == people[9].peer_id  # latest expiry first


def test_provider_records_only_from_their_owner() -> None:
    store = RecordStore()
    rec = sign_provider_record(ALICE, key=topic_key("t"), seq=1, expires=EXP)
    assert refused(store.add_provider, rec.wire, NOW, MALLORY.peer_id).reason is Reason.NOT_OWNER
    assert store.provider_count == 0


# -- floods and poisoning, through a node -------------------------------------------------------


def node_under_attack(**cfg: Any) -> DhtNode:
    config = DhtConfig(max_per_range_bucket=None, max_per_range_table=None, **cfg)
    return DhtNode(
        identity(1), rng=random.Random(1), now=NOW, config=config, addrs=["ws://192.0.2.10:7433"]
    )


def contact_of(who: Identity, host: int) -> Contact:
    return Contact.of_key(who.public_key, [f"ws://192.0.2.{host}:7433"])


def test_flood_of_provider_records_from_one_peer_is_refused_and_counted() -> None:
    node = node_under_attack(max_keys_per_provider=16, requests_per_second=1e6, request_burst=1e6)
    sender = contact_of(MALLORY, 66)
    codes = []
    for i in range(100):
        rec = sign_provider_record(MALLORY, key=topic_key(f"spam-{i}"), seq=1, expires=EXP)
        reply = node.handle_request(sender, AddProvider(i, rec.wire), NOW)
        codes.append(reply.code if isinstance(reply, ErrorReply) else "stored")
    assert codes.count("stored") == 16 and codes.count(Reason.QUOTA.value) == 84
    assert node.store.provider_count == 16
    assert node.store.refused[Reason.QUOTA] == 84
    assert node.counters["refused_quota"] == 84
    # honest publishers are unaffected
    rec = sign_provider_record(ALICE, key=topic_key("spam-0"), seq=1, expires=EXP)
    assert isinstance(
        node.handle_request(contact_of(ALICE, 7), AddProvider(999, rec.wire), NOW), Stored
    )


def test_flood_of_other_peoples_records_is_refused_without_verifying() -> None:
    node = node_under_attack(requests_per_second=1e6, request_burst=1e6)
    sender = contact_of(MALLORY, 66)
    victims = [identity(200 + i) for i in range(50)]
    for i, victim in enumerate(victims):
        wire = sign_peer_record(victim, seq=1, expires=EXP).wire  # genuinely signed, wrong sender
        reply = node.handle_request(sender, PutPeer(i, wire), NOW)
        assert isinstance(reply, ErrorReply) and reply.code == Reason.NOT_OWNER.value
    assert node.store.peer_count == 0
    assert node.store.refused == {Reason.NOT_OWNER: 50}


def test_request_flood_from_one_peer_is_rate_limited_and_counted() -> None:
    node = node_under_attack(requests_per_second=10.0, request_burst=20.0)
    sender = contact_of(MALLORY, 66)
    replies = [node.handle_request(sender, FindNode(i, bytes(32)), NOW) for i in range(100)]
    limited = [r for r in replies if isinstance(r, ErrorReply)]
    assert len(limited) == 80 and {r.code for r in limited} == {Reason.RATE.value}
    assert node.counters["refused_rate"] == 80
    # another peer still gets answers, and the budget refills with time
    assert isinstance(node.handle_request(contact_of(ALICE, 7), FindNode(1, bytes(32)), NOW), Nodes)
    assert isinstance(node.handle_request(sender, FindNode(2, bytes(32)), NOW + 1.0), Nodes)


def test_table_is_not_poisoned_by_forged_records_or_contacts() -> None:
    node = node_under_attack(requests_per_second=1e6, request_burst=1e6)
    honest = [identity(300 + i) for i in range(30)]
    for i, who in enumerate(honest):
        node.add_contact(contact_of(who, 20 + i), NOW)
    before = {c.id for c in node.table.contacts()}
    assert len(before) == 30
    attacker = contact_of(MALLORY, 66)
    # forged records of every flavour, sent by the attacker
    wires = [
        forge(MALLORY, peer_fields(MALLORY, id=ALICE.peer_id)),
        forge(MALLORY, peer_fields(ALICE, seq=99)),
        sign_peer_record(MALLORY, seq=1, expires=int(NOW) - 1).wire,
    ] + [sign_peer_record(identity(400 + i), seq=1, expires=EXP).wire for i in range(20)]
    for i, wire in enumerate(wires):
        assert isinstance(node.handle_request(attacker, PutPeer(i, wire), NOW), ErrorReply)
    # a "server" whose id does not match its key is not added either
    impostor = Contact(ALICE.peer_id, MALLORY.public_key, ("ws://192.0.2.67:7433",))
    node.handle_request(impostor, FindNode(1, bytes(32), serving=True), NOW)
    after = {c.id for c in node.table.contacts()}
    assert after - before <= {MALLORY.peer_id}  # only the (genuine) attacker itself, as a contact
    assert ALICE.peer_id not in after
    assert all(peer_id_of(c.public_key) == c.id for c in node.table.contacts())
    reply = node.handle_request(contact_of(honest[0], 20), FindNode(2, ALICE.peer_id), NOW)
    assert isinstance(reply, Nodes)
    assert all(c.is_bound() for c in reply.nodes)
    assert ALICE.peer_id not in {c.id for c in reply.nodes}
    assert node.store.peer_count == 0


# -- the spec's test vectors ---------------------------------------------------------------


def spec_vectors() -> dict[str, Any]:
    text = (Path(__file__).resolve().parents[1] / "protocol-spec" / "dht.md").read_text()
    section = text[text.index("## 13. Test vectors") :]
    block = section[
        section.index("```json") + len("```json") : section.index(
            "```", section.index("```json") + 7
        )
    ]
    vectors = json.loads(block)
    assert isinstance(vectors, dict)
    return vectors


def test_spec_vectors() -> None:
    v = spec_vectors()
    now = float(v["now"])
    owner = Identity.from_seed(bytes.fromhex(v["owner_seed"]))
    client = Identity.from_seed(bytes.fromhex(v["client_seed"]))
    assert owner.public_key.hex() == v["owner_pk"] and owner.peer_id.hex() == v["owner_id"]
    addr = "ws://192.0.2.1:7433"
    peer = sign_peer_record(
        owner, addrs=[addr], caps=["relay"], seq=1700000000000, expires=1700003600
    )
    assert peer.wire.hex() == v["peer_record"] and peer.body.hex() == v["peer_record_body"]
    assert verify_peer_record(bytes.fromhex(v["peer_record"]), now, node_id=owner.peer_id) == peer
    relay = Relay(owner.peer_id, addr)
    cli = sign_peer_record(client, relays=[relay], seq=7, expires=1700003600)
    assert cli.wire.hex() == v["client_record"]
    assert verify_peer_record(cli.wire, now).relays == (relay,)
    key = topic_key(v["topic"])
    assert key.hex() == v["topic_key"]
    prov = sign_provider_record(owner, key=key, addrs=[addr], seq=1700000000001, expires=1700001200)
    assert prov.wire.hex() == v["provider_record"]
    assert verify_provider_record(prov.wire, now, key=key) == prov
    req = FindNode(42, key)
    assert encode_request(req).hex() == v["find_node_request"]
    assert decode_request(bytes.fromhex(v["find_node_request"])) == req
    resp = decode_response(bytes.fromhex(v["nodes_response"]))
    assert isinstance(resp, Nodes) and answers(req, resp)
    assert [c.to_wire() for c in resp.nodes] == [peer.contact().to_wire()]
    assert encode_response(Nodes(42, (peer.contact(),))).hex() == v["nodes_response"]
