"""cards.json: the agent directory's records and messages (dht.md section 14).

An agent card record of the ``owner`` seed (the one dht.md section 13 uses),
its index keys, a PUT_CARD and GET_CARDS request and a GET_CARDS reply, and
records every node must refuse, each with the reason. Everything is built by
the reference code in ``dht/`` and checked back through it.
"""

from __future__ import annotations

from typing import Any

from dht import (
    CARD_RECORD_TAG,
    Cards,
    Contact,
    GetCards,
    PutCard,
    RecordError,
    encode_request,
    encode_response,
    sign_card_record,
    skill_key,
    tag_key,
    verify_card_record,
)
from peer import Identity
from peer.wire import _cbor

from .common import Json, hx

NOW = 1_700_000_000
OWNER_SEED = bytes([1]) * 32
ADDR = "ws://192.0.2.1:7433"
SEQ = 1_700_000_000_002
EXP = 1_700_001_200


def card_of(owner: Identity) -> dict[str, Any]:
    return {
        "name": "translator",
        "description": "translates text between languages",
        "version": "1.0",
        "availability": "available",
        "skills": [
            {
                "id": "translate",
                "name": "Translate",
                "description": "any language pair",
                "tags": ["text", "language"],
                "inputModes": ["text/plain"],
                "outputModes": ["text/plain"],
            }
        ],
        "supportedInterfaces": [
            {"protocolBinding": "clawmesh", "url": f"clawmesh:{owner.peer_id.hex()}"}
        ],
    }


def _forge(owner: Identity, fields: dict[str, Any]) -> bytes:
    body = _cbor.encode(fields)
    return _cbor.encode([body, owner.sign(CARD_RECORD_TAG + body)])


def _fields(owner: Identity, card: Any, exp: int = EXP) -> dict[str, Any]:
    return {
        "v": 1, "id": owner.peer_id, "pk": owner.public_key, "addrs": [ADDR], "relays": [],
        "card": card, "seq": SEQ, "exp": exp,
    }


def _rejected(owner: Identity, wire: bytes) -> list[Json]:
    card = card_of(owner)
    bad_sig = bytearray(wire)
    bad_sig[-1] ^= 1
    upper = {**card, "skills": [{**card["skills"][0], "id": "Translate"}]}
    unknown = {**card, "price": "free"}
    big = {**card, "skills": [
        {"id": f"s{i}", "name": "x" * 64, "description": "y" * 500} for i in range(16)
    ]}
    mallory = Identity.from_seed(bytes([2]) * 32)
    other_pk = {**_fields(owner, card), "pk": mallory.public_key}
    cases: list[tuple[str, bytes, str, str | None]] = [
        ("bad signature", bytes(bad_sig), "bad-signature", None),
        ("skill id not lower case", _forge(owner, _fields(owner, upper)), "malformed", None),
        ("unknown card field", _forge(owner, _fields(owner, unknown)), "malformed", None),
        ("over 8192 bytes", _forge(owner, _fields(owner, big)), "too-large", None),
        ("expired", _forge(owner, _fields(owner, card, exp=NOW)), "expired", None),
        ("id is not the key's", _forge(owner, other_pk), "id-mismatch", None),
        ("for a tag it does not declare", wire, "wrong-key", "vision"),
    ]
    out: list[Json] = []
    for name, record, reason, tag in cases:
        key = tag_key(tag) if tag is not None else None
        try:
            verify_card_record(record, NOW, key=key)
        except RecordError as exc:
            assert exc.reason.value == reason, (name, exc.reason)
        else:
            raise AssertionError(f"{name}: accepted")
        entry: Json = {"name": name, "record": hx(record), "reason": reason}
        if tag is not None:
            entry["key"] = hx(key or b"")
        out.append(entry)
    return out


def build_cards() -> Json:
    owner = Identity.from_seed(OWNER_SEED)
    card = card_of(owner)
    record = sign_card_record(owner, card, addrs=[ADDR], seq=SEQ, expires=EXP)
    key = skill_key("translate")
    assert verify_card_record(record.wire, NOW, key=key) == record
    contact = Contact(owner.peer_id, owner.public_key, (ADDR,), ("relay", "dht", "cards"))
    return {
        "now": NOW,
        "owner_seed": hx(OWNER_SEED),
        "owner_id": hx(owner.peer_id),
        "card": card,
        "addrs": [ADDR],
        "seq": SEQ,
        "exp": EXP,
        "skill_key_translate": hx(key),
        "tag_key_text": hx(tag_key("text")),
        "tag_key_language": hx(tag_key("language")),
        "card_record_body": hx(record.body),
        "card_record": hx(record.wire),
        "put_card_request": hx(encode_request(PutCard(43, key, record.wire))),
        "get_cards_request": hx(encode_request(GetCards(44, key))),
        "get_cards_request_after": hx(encode_request(GetCards(45, key, bytes(32)))),
        "cards_response": hx(encode_response(Cards(44, (record.wire,), (contact,), False))),
        "rejected": _rejected(owner, record.wire),
    }
