"""Agent cards in the DHT (dht/_card.py, dht/_cards.py): the spec's vectors, the
card's validation, and the store's refusals (unsigned, oversize, stale,
flooded, not the owner's, full), each counted; paging; the card lookup."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from dht import (
    CARD_RECORD_TAG,
    CARDS_CAP,
    CardLimits,
    CardPage,
    Cards,
    CardStore,
    Contact,
    DhtConfig,
    DhtNode,
    ErrorReply,
    GetCards,
    Mode,
    PutCard,
    RateLimiter,
    Reason,
    RecordError,
    Stored,
    check_card,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    sign_card_record,
    skill_key,
    tag_key,
    verify_card_record,
)
from peer.wire._cbor import encode
from peer.wire._errors import ProtocolError
from peer.wire._identity import Identity

VECTORS = Path(__file__).resolve().parents[1] / "protocol-spec" / "vectors" / "cards.json"
NOW = 1_700_000_000.0
EXP = int(NOW) + 1200


def ident(i: int) -> Identity:
    return Identity.from_seed(i.to_bytes(32, "big"))


def card(*skills: str, tags: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "name": "agent",
        "skills": [{"id": s, "name": s, "tags": list(tags)} for s in skills],
    }


def record(who: Identity, c: dict[str, Any], seq: int = 1, exp: int = EXP) -> bytes:
    return sign_card_record(who, c, seq=seq, expires=exp).wire


def store(**limits: Any) -> CardStore:
    lim = CardLimits(**limits)
    return CardStore(DhtConfig(), lim, RateLimiter(lim.updates_per_second, lim.update_burst, 64))


# -- the spec's vectors -----------------------------------------------------------------


def test_vectors_are_what_the_code_builds() -> None:
    v = json.loads(VECTORS.read_text())
    owner = Identity.from_seed(bytes.fromhex(v["owner_seed"]))
    assert owner.peer_id.hex() == v["owner_id"]
    assert skill_key("translate").hex() == v["skill_key_translate"]
    assert tag_key("text").hex() == v["tag_key_text"]
    assert tag_key("language").hex() == v["tag_key_language"]
    rec = sign_card_record(owner, v["card"], addrs=v["addrs"], seq=v["seq"], expires=v["exp"])
    assert rec.wire.hex() == v["card_record"] and rec.body.hex() == v["card_record_body"]
    got = verify_card_record(bytes.fromhex(v["card_record"]), v["now"], key=skill_key("translate"))
    assert got.card == v["card"] and got.keys == (
        skill_key("translate"), tag_key("text"), tag_key("language"),
    )
    put = decode_request(bytes.fromhex(v["put_card_request"]))
    assert put == PutCard(43, skill_key("translate"), rec.wire)
    assert encode_request(put).hex() == v["put_card_request"]
    assert decode_request(bytes.fromhex(v["get_cards_request"])) == GetCards(
        44, skill_key("translate")
    )
    after = decode_request(bytes.fromhex(v["get_cards_request_after"]))
    assert isinstance(after, GetCards) and after.after == bytes(32)
    resp = decode_response(bytes.fromhex(v["cards_response"]))
    assert isinstance(resp, Cards) and resp.cards == (rec.wire,) and resp.more is False
    assert resp.nodes[0].caps == ("relay", "dht", CARDS_CAP)
    assert encode_response(resp).hex() == v["cards_response"]


@pytest.mark.parametrize(
    "case", json.loads(VECTORS.read_text())["rejected"], ids=lambda c: str(c["name"])
)
def test_vector_records_are_refused_for_their_reason(case: dict[str, str]) -> None:
    key = bytes.fromhex(case["key"]) if "key" in case else None
    with pytest.raises(RecordError) as err:
        verify_card_record(bytes.fromhex(case["record"]), NOW, key=key)
    assert err.value.reason.value == case["reason"]


# -- the card ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ({"skills": []}, "lacks name"),
        ({"name": "a"}, "lacks skills"),
        ({"name": "", "skills": []}, "name must not be empty"),
        ({"name": "a", "skills": [], "extra": 1}, "unknown field 'extra'"),
        ({"name": "a", "skills": "translate"}, "skills must be a list"),
        ({"name": "a", "skills": [{"id": "x"}]}, "lacks name"),
        ({"name": "a", "skills": [{"id": "UP", "name": "x"}]}, "skill id 'UP'"),
        ({"name": "a", "skills": [{"id": "x", "name": "x"}] * 2}, "same id"),
        ({"name": "a", "skills": [{"id": "x", "name": "x", "tags": ["A B"]}]}, "valid tag"),
        ({"name": "a", "skills": [{"id": "x", "name": "x", "inputModes": ["text"]}]}, "media"),
        ({"name": "a", "skills": [], "availability": "asleep"}, "availability"),
        ({"name": "a" * 65, "skills": []}, "over 64 bytes"),
        ({"name": "a", "skills": [{"id": f"s{i}", "name": "x"} for i in range(17)]}, "16"),
        ({"name": "a", "skills": [], "supportedInterfaces": [{"url": "x"}]}, "protocolBinding"),
        ([1, 2], "must be a map"),
    ],
)
def test_invalid_cards_are_refused_with_a_clear_message(bad: Any, words: str) -> None:
    with pytest.raises(RecordError) as err:
        check_card(bad)
    assert words in err.value.message


def test_too_many_index_keys_is_too_large() -> None:
    skills = [
        {"id": f"s{i}", "name": "x", "tags": [f"t{i}-{j}" for j in range(2)]} for i in range(11)
    ]
    with pytest.raises(RecordError) as err:
        check_card({"name": "a", "skills": skills})
    assert err.value.reason is Reason.TOO_LARGE


# -- the store ---------------------------------------------------------------------------


def test_store_files_a_card_under_its_keys_only_and_returns_it() -> None:
    s = store()
    alice = ident(1)
    wire = record(alice, card("translate", tags=("text",)))
    s.put(skill_key("translate"), wire, NOW, alice.peer_id)
    s.put(tag_key("text"), wire, NOW, alice.peer_id)  # the same bytes: filed once more
    assert s.accepted["card"] == 1 and s.accepted["unchanged"] == 1
    assert [r.wire for r in s.get(skill_key("translate"), NOW)[0]] == [wire]
    assert [r.wire for r in s.get(tag_key("text"), NOW)[0]] == [wire]
    s.put(skill_key("ocr"), wire, NOW, alice.peer_id)  # the held bytes: nothing changes
    assert s.get(skill_key("ocr"), NOW) == ([], False)
    with pytest.raises(RecordError) as err:  # a key its card does not declare
        s.put(skill_key("ocr"), record(ident(7), card("translate")), NOW, ident(7).peer_id)
    assert err.value.reason is Reason.WRONG_KEY
    assert len(s) == 1


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda w: w[:-1] + bytes([w[-1] ^ 1]), Reason.BAD_SIGNATURE),
        (lambda w: b"\x00" * 9000, Reason.TOO_LARGE),
        (lambda w: encode([w, b"\x00" * 64]), Reason.MALFORMED),
    ],
)
def test_store_refuses_unsigned_and_oversize_records_and_counts_them(
    mutate: Any, reason: Reason
) -> None:
    s = store()
    alice = ident(1)
    with pytest.raises(RecordError) as err:
        s.put(skill_key("x"), mutate(record(alice, card("x"))), NOW, alice.peer_id)
    assert err.value.reason is reason
    assert s.refused[reason] == 1 and len(s) == 0
    assert s.statistics().to_json()[f"cards_refused_{reason.value}"] == 1


def test_store_refuses_others_records_stale_and_expired_ones() -> None:
    s = store()
    alice, mallory = ident(1), ident(2)
    newer = record(alice, card("x"), seq=5)
    s.put(skill_key("x"), newer, NOW, alice.peer_id)
    checks = [
        (record(alice, card("x"), seq=6), mallory.peer_id, Reason.NOT_OWNER),
        (record(alice, card("x"), seq=4), alice.peer_id, Reason.STALE),
        (record(alice, card("x"), seq=5, exp=int(NOW) + 10), alice.peer_id, Reason.STALE),
        (record(alice, card("x"), seq=9, exp=int(NOW)), alice.peer_id, Reason.EXPIRED),
        (record(alice, card("x"), seq=9, exp=int(NOW) + 90_000), alice.peer_id,
         Reason.TOO_FAR_FUTURE),
    ]
    for wire, sender, reason in checks:
        with pytest.raises(RecordError) as err:
            s.put(skill_key("x"), wire, NOW, sender)
        assert err.value.reason is reason
        assert s.refused[reason] >= 1
    assert s.get(skill_key("x"), NOW)[0][0].wire == newer


def test_a_flood_of_resigned_cards_from_one_agent_is_refused_rate() -> None:
    s = store(update_burst=3, updates_per_second=0.01)
    alice, bob = ident(1), ident(2)
    for seq in range(1, 4):
        s.put(skill_key("x"), record(alice, card("x"), seq=seq), NOW, alice.peer_id)
    with pytest.raises(RecordError) as err:
        s.put(skill_key("x"), record(alice, card("x"), seq=10), NOW, alice.peer_id)
    assert err.value.reason is Reason.RATE and s.refused[Reason.RATE] == 1
    assert s.get(skill_key("x"), NOW)[0][0].seq == 3  # the flood changed nothing
    s.put(skill_key("x"), record(bob, card("x")), NOW, bob.peer_id)  # others are unaffected
    s.put(skill_key("x"), record(alice, card("x"), seq=11), NOW + 200, alice.peer_id)  # later ok


def test_an_updated_card_leaves_the_keys_it_no_longer_declares() -> None:
    s = store()
    alice = ident(1)
    s.put(skill_key("a"), record(alice, card("a", "b"), seq=1), NOW, alice.peer_id)
    s.put(skill_key("b"), record(alice, card("a", "b"), seq=1), NOW, alice.peer_id)
    s.put(skill_key("a"), record(alice, card("a"), seq=2), NOW, alice.peer_id)
    assert s.get(skill_key("b"), NOW) == ([], False)
    assert [r.seq for r in s.get(skill_key("a"), NOW)[0]] == [2]


def test_a_full_key_keeps_the_records_that_expire_last() -> None:
    s = store(max_cards_per_key=3)
    agents = [ident(i) for i in range(1, 5)]
    for n, who in enumerate(agents[:3]):
        s.put(skill_key("x"), record(who, card("x"), exp=EXP + n), NOW, who.peer_id)
    with pytest.raises(RecordError) as err:
        s.put(skill_key("x"), record(agents[3], card("x"), exp=EXP - 1), NOW, agents[3].peer_id)
    assert err.value.reason is Reason.FULL
    s.put(skill_key("x"), record(agents[3], card("x"), exp=EXP + 9), NOW, agents[3].peer_id)
    held = {r.id for r in s.get(skill_key("x"), NOW)[0]}
    assert held == {a.peer_id for a in agents[1:]}
    assert len(s) == 3  # the displaced agent's record is gone with its last key


def test_the_store_holds_at_most_max_cards_agents() -> None:
    s = store(max_cards=2)
    for i in (1, 2):
        s.put(skill_key("x"), record(ident(i), card("x")), NOW, ident(i).peer_id)
    with pytest.raises(RecordError) as err:
        s.put(skill_key("y"), record(ident(3), card("y")), NOW, ident(3).peer_id)
    assert err.value.reason is Reason.FULL
    # ... until records expire
    s.put(skill_key("y"), record(ident(3), card("y"), exp=EXP + 5000), EXP + 1, ident(3).peer_id)
    assert len(s) == 1


def test_pages_cover_every_agent_once_in_id_order() -> None:
    s = store()
    agents = [ident(i) for i in range(1, 31)]
    for who in agents:
        s.put(skill_key("x"), record(who, card("x")), NOW, who.peer_id)
    seen: list[bytes] = []
    after = None
    while True:
        page, more = s.get(skill_key("x"), NOW, after=after, limit=7)
        seen += [r.id for r in page]
        if not more:
            break
        after = page[-1].id
    assert seen == sorted(a.peer_id for a in agents)
    assert s.get(skill_key("x"), EXP) == ([], False)  # expired: never returned


# -- RPC strictness ---------------------------------------------------------------------------


def test_get_cards_request_fields_are_strict() -> None:
    good = {"v": 1, "m": "q", "op": "get_cards", "rid": 1, "srv": True, "key": bytes(32)}
    assert decode_request(encode(good)) == GetCards(1, bytes(32))
    for bad in (
        {**good, "after": bytes(31)},
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "key"},
        {**good, "op": "put_card"},  # no record
    ):
        with pytest.raises(ProtocolError):
            decode_request(encode(bad))


def test_cards_reply_is_bounded() -> None:
    base = {"v": 1, "m": "r", "op": "get_cards", "rid": 1, "nodes": [], "more": False}
    with pytest.raises(ProtocolError):
        decode_response(encode({**base, "cards": [b"x"] * 65}))
    with pytest.raises(ProtocolError):
        decode_response(encode({**base, "cards": [b"x" * 8193]}))
    with pytest.raises(ProtocolError):
        decode_response(encode({**base, "cards": [], "more": 1}))


# -- node and lookup -------------------------------------------------------------------------


def node(i: int, caps: tuple[str, ...] = ("dht", CARDS_CAP)) -> DhtNode:
    return DhtNode(
        ident(i), rng=random.Random(i), now=NOW, addrs=(f"ws://10.0.{i}.1:1",), caps=caps
    )


def test_a_node_serves_put_and_get_cards_and_refuses_a_flood() -> None:
    server, alice = node(1), node(2)
    alice.set_card(card("translate"), NOW)
    pubs = alice.due_publications(NOW)
    put = next(p for p in pubs if p.key == skill_key("translate"))
    req = alice.publish_request(put)
    assert isinstance(req, PutCard)
    assert isinstance(server.handle_request(alice.contact(), req, NOW), Stored)
    resp = server.handle_request(alice.contact(), GetCards(9, skill_key("translate")), NOW)
    assert isinstance(resp, Cards) and resp.cards == (put.record,)
    mallory = node(3)
    forged = server.handle_request(mallory.contact(), PutCard(10, put.key, put.record), NOW)
    assert isinstance(forged, ErrorReply) and forged.code == "not-owner"
    assert server.statistics().to_json()["refused_not-owner"] == 1


def test_card_lookup_asks_only_card_serving_nodes_and_collects_cards() -> None:
    me = node(1)
    old, new = node(2, caps=("dht",)), node(3)
    for other in (old, new):
        me.add_contact(other.contact(), NOW)
    lookup = me.lookup_cards(skill_key("x"), NOW)
    asked = me.step(lookup, NOW)
    assert [c.id for c in asked] == [new.id]  # an older peer never sees a card request
    agent = ident(9)
    page = CardPage((record(agent, card("x")),), False)
    assert lookup.on_response(new.id, [], NOW, page)
    assert lookup.done and [r.id for r in lookup.cards()] == [agent.peer_id]


def test_card_lookup_treats_a_forged_card_as_a_lie() -> None:
    me, liar = node(1), node(2)
    me.add_contact(liar.contact(), NOW)
    lookup = me.lookup_cards(skill_key("x"), NOW)
    me.step(lookup, NOW)
    wrong = CardPage((record(ident(9), card("y")),), False)  # filed under another skill
    assert not me.on_reply(lookup, liar.contact(), Cards(1, wrong.cards, (), False), NOW)
    assert liar.id in lookup.liars and lookup.stats.bad_records == 1
    assert lookup.found == {}


def test_card_lookup_pages_through_a_storer_with_more() -> None:
    me, storer = node(1), node(2)
    me.add_contact(storer.contact(), NOW)
    lookup = me.lookup_cards(skill_key("x"), NOW)
    me.step(lookup, NOW)
    agents = sorted((ident(i) for i in range(10, 14)), key=lambda a: a.peer_id)
    first = CardPage(tuple(record(a, card("x")) for a in agents[:2]), True)
    assert lookup.on_response(storer.id, [], NOW, first)
    lookup.note_more(storer.id, first)
    [(contact, cursor)] = lookup.pages_wanted()
    assert contact.id == storer.id and cursor == agents[1].peer_id
    rest = CardPage(tuple(record(a, card("x")) for a in agents[2:]), False)
    assert lookup.on_cards(storer.id, rest, NOW)
    assert lookup.pages_wanted() == []
    assert [r.id for r in lookup.cards()] == [a.peer_id for a in agents]


def test_a_client_node_publishes_its_card_too() -> None:
    client = DhtNode(ident(5), rng=random.Random(5), now=NOW, mode=Mode.CLIENT)
    client.set_card(card("ocr"), NOW)
    pubs = [p for p in client.due_publications(NOW) if p.key == skill_key("ocr")]
    assert len(pubs) == 1
    req = client.publish_request(pubs[0])
    assert isinstance(req, PutCard) and req.serving is False
    assert verify_card_record(req.record, NOW, key=skill_key("ocr")).addrs == ()


def test_the_card_is_republished_with_a_higher_sequence() -> None:
    alice = node(2)
    first = alice.set_card(card("x"), NOW)
    assert first is not None
    alice.due_publications(NOW)
    later = NOW + alice.config.republish_interval
    assert alice.next_deadline() <= later
    again = [p for p in alice.due_publications(later) if p.key == skill_key("x")]
    rec = verify_card_record(again[0].record, later, key=skill_key("x"))
    assert rec.seq > first.seq and rec.expires > first.expires
    assert CARD_RECORD_TAG == b"clawmesh/dht/agent-card/v1"
    _ = Contact  # re-exported for callers


def test_a_newer_card_withdraws_the_agent_from_keys_it_dropped() -> None:
    s = store()
    alice, mallory = ident(1), ident(2)
    old = record(alice, card("a", "b"), seq=1)
    s.put(skill_key("a"), old, NOW, alice.peer_id)
    s.put(skill_key("b"), old, NOW, alice.peer_id)
    # a put under a key the card does not declare: refused unless it withdraws a held one
    with pytest.raises(RecordError) as err:
        s.put(skill_key("c"), record(mallory, card("a")), NOW, mallory.peer_id)
    assert err.value.reason is Reason.WRONG_KEY
    with pytest.raises(RecordError) as err:
        s.put(skill_key("b"), record(alice, card("a"), seq=1), NOW, alice.peer_id)
    assert err.value.reason is Reason.STALE
    new = record(alice, card("a"), seq=2)
    s.put(skill_key("b"), new, NOW, alice.peer_id)  # the withdrawal
    assert s.get(skill_key("b"), NOW) == ([], False)
    assert [r.wire for r in s.get(skill_key("a"), NOW)[0]] == [new]
    s.put(skill_key("b"), new, NOW, alice.peer_id)  # again: no change, no error
    assert s.accepted["withdrawn"] == 1
    tomb = record(alice, {"name": "agent", "skills": []}, seq=3)
    s.put(skill_key("a"), tomb, NOW, alice.peer_id)
    assert s.get(skill_key("a"), NOW) == ([], False) and len(s) == 0


def test_a_changed_or_deleted_card_is_sent_to_the_keys_it_left() -> None:
    alice = node(2)
    alice.set_card(card("a", "b"), NOW)
    alice.due_publications(NOW)
    alice.set_card(card("a"), NOW + 1)
    pubs = alice.due_publications(NOW + 1)
    keys = [p.key for p in pubs if p.op.value == "put_card"]
    assert sorted(keys) == sorted([skill_key("a"), skill_key("b")])  # b: the withdrawal
    alice.set_card(None, NOW + 2)
    gone = [p for p in alice.due_publications(NOW + 2) if p.op.value == "put_card"]
    assert [p.key for p in gone] == [skill_key("a")]
    assert verify_card_record(gone[0].record, NOW + 2).card["skills"] == []
    assert alice.next_deadline() < float("inf") and alice.own_card_record is None
    assert [p for p in alice.due_publications(NOW + 700) if p.op.value == "put_card"] == []


def test_a_refused_put_displaces_nobody() -> None:
    s = store(max_cards_per_key=2)
    a, b, c = ident(1), ident(2), ident(3)
    for who in (a, b):
        s.put(skill_key("x"), record(who, card("x")), NOW, who.peer_id)
    forged = record(c, card("x"), exp=EXP + 99)
    forged = forged[:-1] + bytes([forged[-1] ^ 1])  # would displace, but is not signed
    with pytest.raises(RecordError) as err:
        s.put(skill_key("x"), forged, NOW, c.peer_id)
    assert err.value.reason is Reason.BAD_SIGNATURE
    assert {r.id for r in s.get(skill_key("x"), NOW)[0]} == {a.peer_id, b.peer_id}


def test_mangled_card_records_only_raise_record_errors() -> None:
    """A cheap fuzz of the card record decoder: flips, cuts and splices of a valid
    record, and random card shapes, are refused with RecordError and nothing else."""
    rng = random.Random(18)
    alice = ident(1)
    good = record(alice, card("translate", "ocr", tags=("text",)))
    refused = bad_cards = 0
    for _ in range(1500):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            choice = rng.random()
            if choice < 0.5 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif choice < 0.75:
                del data[rng.randrange(len(data) + 1) :]
            else:
                at = rng.randrange(len(data) + 1)
                data[at:at] = rng.randbytes(rng.randint(1, 8))
        try:
            verify_card_record(bytes(data), NOW, key=skill_key("translate"))
        except RecordError:
            refused += 1
    atoms: list[Any] = [None, True, 1, -1, 1.5, "", "x", "a/b", b"x", [], {}, ["x"], {"id": 1}]
    for _ in range(1500):
        shape = {
            k: rng.choice(atoms)
            for k in rng.sample(["name", "skills", "description", "availability", "tags"], 3)
        }
        if rng.random() < 0.5:
            shape["skills"] = [
                {k: rng.choice(atoms) for k in rng.sample(["id", "name", "tags", "inputModes"], 3)}
            ]
        try:
            check_card(shape)
        except RecordError:
            bad_cards += 1
    assert refused >= 1400 and bad_cards >= 1400  # (an unlucky mutation may change nothing)
