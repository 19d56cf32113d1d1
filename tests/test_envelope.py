"""Signed envelopes and DMs (peer/wire/_envelope.py), sans-IO."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.wire._cbor import encode
from peer.wire._envelope import (
    PRESENCE_TOPIC,
    Content,
    Envelope,
    dm_topic,
    inbox_topic,
    message_id,
    open_dm,
    open_envelope,
    payload_value,
    seal_dm,
    seal_message,
    seal_presence,
    split_wire,
)
from peer.wire._errors import ErrorCode, ProtocolError
from peer.wire._identity import Identity
from peer.wire._limits import MAX_BODY_BYTES, MAX_ENVELOPE, MAX_PAYLOAD
from tests._fuzz import fuzz_scale

ENVELOPE_TAG = b"clawmesh/envelope/v1"
MSG_ID_TAG = b"clawmesh/msg-id/v1"

ALICE = Identity.from_seed(b"\x11" * 32)
BOB = Identity.from_seed(b"\x12" * 32)
CAROL = Identity.from_seed(b"\x13" * 32)
TS = 1_700_000_000_000
NONCE = b"\x24" * 24


def message(body: str = "hello", **kwargs: Any) -> Envelope:
    content = Content(body=body, **kwargs)
    return seal_message(ALICE, topic="general", content=content, seq=1, ts=TS)


def wire_parts(wire: bytes) -> tuple[bytes, bytes]:
    """(signed, sig) decoded with plain cbor2, independently of the code under test."""
    signed, sig = cbor2.loads(wire)
    assert isinstance(signed, bytes) and isinstance(sig, bytes)
    return signed, sig


def signed_wire(identity: Identity, fields: dict[str, Any]) -> bytes:
    """An envelope built and signed by hand."""
    signed = encode(fields)
    return encode([signed, identity.sign(ENVELOPE_TAG + signed)])


def refused(wire: bytes) -> ErrorCode:
    with pytest.raises(ProtocolError) as info:
        open_envelope(wire)
    return info.value.code


# -- signing and ids --------------------------------------------------------------


def test_seal_and_open_a_message() -> None:
    env = message("hi there", reply_to=b"\x01" * 32, thread=b"\x02" * 32)
    opened = open_envelope(env.wire)
    assert opened == env
    assert opened.kind == "msg" and opened.topic == "general" and opened.route == "general"
    assert opened.sender == ALICE.peer_id and opened.sender_key == ALICE.public_key
    assert (opened.seq, opened.ts) == (1, TS)
    assert opened.content() == Content("hi there", None, b"\x01" * 32, b"\x02" * 32)


def test_wire_layout_and_signature() -> None:
    env = message()
    signed, sig = wire_parts(env.wire)
    assert split_wire(env.wire) == (signed, sig)
    assert cbor2.loads(signed) == env.fields
    assert ALICE.signing_key.verify_key.verify(ENVELOPE_TAG + signed, sig) == ENVELOPE_TAG + signed


def test_message_id_is_sha256_of_tag_and_signed_bytes() -> None:
    env = message()
    signed, _ = wire_parts(env.wire)
    expected = hashlib.sha256(MSG_ID_TAG + signed).digest()
    assert env.id == message_id(signed) == expected
    assert open_envelope(env.wire).id == expected


def test_message_id_is_stable_and_distinct() -> None:
    assert message("same").id == message("same").id
    assert message("same").wire == message("same").wire  # Ed25519 is deterministic
    assert message("same").id != message("other").id
    other_seq = seal_message(ALICE, topic="general", content=Content("same"), seq=2, ts=TS)
    assert other_seq.id != message("same").id


def test_tampered_signed_bytes_are_refused() -> None:
    env = message("pay 10")
    signed, sig = wire_parts(env.wire)
    fields = cbor2.loads(signed)
    fields["body"] = "pay 1000"
    assert refused(encode([encode(fields), sig])) is ErrorCode.BAD_SIGNATURE
    fields = cbor2.loads(signed)
    fields["seq"] = 2
    assert refused(encode([encode(fields), sig])) is ErrorCode.BAD_SIGNATURE
    # a valid signature by someone else over the same fields
    forged = encode([signed, BOB.sign(ENVELOPE_TAG + signed)])
    assert refused(forged) is ErrorCode.BAD_SIGNATURE


@pytest.mark.parametrize("bit", [0, 7, 255, 511])
def test_tampered_signature_is_refused(bit: int) -> None:
    env = message()
    signed, sig = wire_parts(env.wire)
    bad = bytearray(sig)
    bad[bit // 8] ^= 1 << (bit % 8)
    assert refused(encode([signed, bytes(bad)])) is ErrorCode.BAD_SIGNATURE


def test_signature_without_the_domain_tag_is_refused() -> None:
    env = message()
    signed, _ = wire_parts(env.wire)
    assert refused(encode([signed, ALICE.sign(signed)])) is ErrorCode.BAD_SIGNATURE


def test_signed_and_sig_passed_separately() -> None:
    env = message()
    signed, sig = split_wire(env.wire)
    assert open_envelope(env.wire, signed=signed, sig=sig).id == env.id
    with pytest.raises(ProtocolError) as info:
        open_envelope(env.wire, signed=signed, sig=bytes(64))
    assert info.value.code is ErrorCode.BAD_SIGNATURE


# -- shape refusals ------------------------------------------------------------------


def base_fields(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "v": 1,
        "kind": "msg",
        "topic": "general",
        "from": ALICE.public_key,
        "seq": 1,
        "ts": TS,
        "body": "x",
    }
    fields.update(changes)
    return {k: v for k, v in fields.items() if v is not None}


def test_hand_built_envelope_opens() -> None:
    assert open_envelope(signed_wire(ALICE, base_fields())).content().body == "x"


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"v": 2}, ErrorCode.VERSION),
        ({"v": None}, ErrorCode.VERSION),
        ({"kind": "note"}, ErrorCode.MALFORMED),
        ({"extra": 1}, ErrorCode.MALFORMED),
        ({"box": b"x"}, ErrorCode.MALFORMED),  # a DM field in a message
        ({"topic": "dm/" + "ab" * 32}, ErrorCode.MALFORMED),
        ({"topic": "sys/presence"}, ErrorCode.MALFORMED),
        ({"topic": "bad topic"}, ErrorCode.MALFORMED),
        ({"from": b"\x00" * 31}, ErrorCode.MALFORMED),
        ({"seq": -1}, ErrorCode.MALFORMED),
        ({"ts": 1.5}, ErrorCode.MALFORMED),
        ({"body": None}, ErrorCode.MALFORMED),
        ({"body": b"bytes"}, ErrorCode.MALFORMED),
        ({"body": "x" * (MAX_BODY_BYTES + 1)}, ErrorCode.TOO_LARGE),
        ({"reply_to": b"\x00" * 31}, ErrorCode.MALFORMED),
        ({"thread": "root"}, ErrorCode.MALFORMED),
        ({"payload": "not bytes"}, ErrorCode.MALFORMED),
        ({"payload": bytes.fromhex("1805")}, ErrorCode.NON_CANONICAL),
        ({"payload": bytes.fromhex("c11a514b67b0")}, ErrorCode.MALFORMED),
        ({"payload": b""}, ErrorCode.MALFORMED),
    ],
)
def test_bad_fields_are_refused_even_when_signed(changes: dict[str, Any], code: ErrorCode) -> None:
    assert refused(signed_wire(ALICE, base_fields(**changes))) is code


MALFORMED_WIRE: dict[str, tuple[bytes, ErrorCode]] = {
    "empty": (b"", ErrorCode.MALFORMED),
    "empty array": (encode([]), ErrorCode.MALFORMED),
    "no signature": (encode([b"x"]), ErrorCode.MALFORMED),
    "three parts": (encode([b"x", b"\x00" * 64, b"y"]), ErrorCode.TOO_LARGE),
    "text signed part": (encode(["signed", b"\x00" * 64]), ErrorCode.MALFORMED),
    "short signature": (encode([b"x", b"\x00" * 63]), ErrorCode.MALFORMED),
    "a map": (encode({"signed": b"x"}), ErrorCode.MALFORMED),
    "signed part not a map": (encode([encode([1, 2]), b"\x00" * 64]), ErrorCode.MALFORMED),
    "signed part not CBOR": (encode([b"\xff", b"\x00" * 64]), ErrorCode.MALFORMED),
}


@pytest.mark.parametrize(("wire", "code"), MALFORMED_WIRE.values(), ids=list(MALFORMED_WIRE))
def test_malformed_wire(wire: bytes, code: ErrorCode) -> None:
    assert refused(wire) is code


def test_non_canonical_signed_part_is_refused() -> None:
    fields = base_fields()
    # same map, keys in insertion order instead of canonical order
    signed = cbor2.dumps(fields)
    assert signed != encode(fields)
    wire = encode([signed, ALICE.sign(ENVELOPE_TAG + signed)])
    assert refused(wire) is ErrorCode.NON_CANONICAL


def test_oversize_wire_is_refused() -> None:
    assert refused(b"\x00" * (MAX_ENVELOPE + 1)) is ErrorCode.TOO_LARGE


# -- sizes and payloads ------------------------------------------------------------


def test_body_limit_counts_utf8_bytes() -> None:
    assert message("x" * MAX_BODY_BYTES).content().body == "x" * MAX_BODY_BYTES
    with pytest.raises(ProtocolError) as info:
        message("x" * (MAX_BODY_BYTES + 1))
    assert info.value.code is ErrorCode.TOO_LARGE
    with pytest.raises(ProtocolError) as info:
        message("é" * (MAX_BODY_BYTES // 2 + 1))  # fewer characters, too many bytes
    assert info.value.code is ErrorCode.TOO_LARGE


def test_payload_limit() -> None:
    at_limit = encode(b"\x00" * (MAX_PAYLOAD - 5))  # 5-byte header
    assert len(at_limit) == MAX_PAYLOAD
    env = message(payload=at_limit)
    assert open_envelope(env.wire).content().payload == at_limit
    over = encode(b"\x00" * (MAX_PAYLOAD - 4))
    with pytest.raises(ProtocolError) as info:
        message(payload=over)
    assert info.value.code is ErrorCode.TOO_LARGE


def test_payload_must_be_canonical_cbor() -> None:
    with pytest.raises(ProtocolError) as info:
        message(payload=bytes.fromhex("1805"))
    assert info.value.code is ErrorCode.NON_CANONICAL


def test_non_channel_topic_is_not_a_message_topic() -> None:
    for topic in ("dm/" + "ab" * 32, "sys/presence", "bad topic", ""):
        with pytest.raises(ValueError):
            seal_message(ALICE, topic=topic, content=Content("x"), seq=1, ts=TS)


payloads = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63),
        st.text(max_size=10),
        st.binary(max_size=10),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=fuzz_scale(50), deadline=None)
@given(payloads, st.text(max_size=50))
def test_payload_round_trip(value: object, body: str) -> None:
    env = message(body, payload=encode(value))
    opened = open_envelope(env.wire)
    content = opened.content()
    assert content.body == body
    assert content.payload == encode(value)
    assert payload_value(content.payload) == value


def test_message_without_payload_has_none() -> None:
    env = message()
    assert "payload" not in env.fields
    assert open_envelope(env.wire).content().payload is None


# -- presence ------------------------------------------------------------------------


def test_presence_round_trip() -> None:
    env = seal_presence(ALICE, payload=encode({"name": "alice"}), seq=3, ts=TS)
    opened = open_envelope(env.wire)
    assert opened.kind == "presence" and opened.topic == PRESENCE_TOPIC
    assert payload_value(opened.fields["payload"]) == {"name": "alice"}


def test_presence_payload_limit_on_both_sides() -> None:
    assert open_envelope(seal_presence(ALICE, payload=b"\x00" * 4096, seq=1, ts=TS).wire)
    # seal refuses what open would refuse
    with pytest.raises(ProtocolError) as info:
        seal_presence(ALICE, payload=b"\x00" * 4097, seq=1, ts=TS)
    assert info.value.code is ErrorCode.TOO_LARGE


def test_presence_refusals() -> None:
    presence = {
        "v": 1,
        "kind": "presence",
        "topic": PRESENCE_TOPIC,
        "from": ALICE.public_key,
        "seq": 1,
        "ts": TS,
        "payload": b"",
    }
    assert open_envelope(signed_wire(ALICE, presence)).kind == "presence"
    assert refused(signed_wire(ALICE, {**presence, "topic": "general"})) is ErrorCode.MALFORMED
    big = {**presence, "payload": b"\x00" * 4097}
    assert refused(signed_wire(ALICE, big)) is ErrorCode.TOO_LARGE
    assert refused(signed_wire(ALICE, {**presence, "body": "x"})) is ErrorCode.MALFORMED


# -- DMs -----------------------------------------------------------------------------


def dm(content: Content | None = None) -> Envelope:
    return seal_dm(
        ALICE,
        recipient_key=BOB.public_key,
        content=content or Content("secret", payload=encode([1, 2])),
        seq=5,
        ts=TS,
        nonce=NONCE,
    )


def test_dm_is_readable_by_its_recipient() -> None:
    env = open_envelope(dm().wire)
    assert env.kind == "dm"
    assert env.fields["to"] == BOB.peer_id
    assert env.route == inbox_topic(BOB.peer_id)
    assert env.topic == dm_topic(ALICE.peer_id, BOB.peer_id)
    assert open_dm(BOB, env) == Content("secret", payload=encode([1, 2]))


def test_dm_content_is_not_in_the_clear() -> None:
    env = dm(Content("the launch code is 1234"))
    assert b"launch code" not in env.wire
    assert "body" not in env.fields


def test_dm_is_not_readable_by_anyone_else() -> None:
    env = open_envelope(dm().wire)
    for outsider in (CAROL, ALICE):  # a third party, and the sender itself
        with pytest.raises(ProtocolError) as info:
            open_dm(outsider, env)
        assert info.value.code is ErrorCode.DECRYPT
    # even a third party that rewrites the address to itself cannot decrypt
    readdressed = dataclasses.replace(env, fields={**env.fields, "to": CAROL.peer_id})
    with pytest.raises(ProtocolError) as info:
        open_dm(CAROL, readdressed)
    assert info.value.code is ErrorCode.DECRYPT


def test_dm_with_a_tampered_box_does_not_decrypt() -> None:
    env = open_envelope(dm().wire)
    box = bytearray(env.fields["box"])
    box[-1] ^= 1
    tampered = dataclasses.replace(env, fields={**env.fields, "box": bytes(box)})
    with pytest.raises(ProtocolError) as info:
        open_dm(BOB, tampered)
    assert info.value.code is ErrorCode.DECRYPT
    # a box claimed to be from someone else does not decrypt either
    spoofed = dataclasses.replace(env, sender_key=CAROL.public_key)
    with pytest.raises(ProtocolError) as info:
        open_dm(BOB, spoofed)
    assert info.value.code is ErrorCode.DECRYPT


def test_open_dm_refuses_a_channel_message() -> None:
    with pytest.raises(ProtocolError) as info:
        open_dm(BOB, message())
    assert info.value.code is ErrorCode.DECRYPT


def test_dm_topic_is_symmetric_and_pairwise() -> None:
    a, b, c = ALICE.peer_id, BOB.peer_id, CAROL.peer_id
    assert dm_topic(a, b) == dm_topic(b, a)
    assert dm_topic(a, b) != dm_topic(a, c) != dm_topic(b, c)
    assert dm_topic(a, b).startswith("dm/") and len(dm_topic(a, b)) == 3 + 64
    # both directions of a conversation share the topic
    reply = seal_dm(BOB, recipient_key=ALICE.public_key, content=Content("re"), seq=1, ts=TS)
    assert reply.topic == dm().topic
    assert open_dm(ALICE, open_envelope(reply.wire)).body == "re"


def test_dm_with_a_topic_for_other_peers_is_refused() -> None:
    env = dm()
    fields = dict(env.fields)
    fields["topic"] = dm_topic(ALICE.peer_id, CAROL.peer_id)
    assert refused(signed_wire(ALICE, fields)) is ErrorCode.MALFORMED
    short = {**env.fields, "box": b"\x00" * 39}
    assert refused(signed_wire(ALICE, short)) is ErrorCode.MALFORMED
    assert refused(signed_wire(ALICE, {**env.fields, "body": "x"})) is ErrorCode.MALFORMED


def test_dm_nonces_differ_by_default() -> None:
    one = seal_dm(ALICE, recipient_key=BOB.public_key, content=Content("x"), seq=1, ts=TS)
    two = seal_dm(ALICE, recipient_key=BOB.public_key, content=Content("x"), seq=1, ts=TS)
    assert one.fields["box"][:24] != two.fields["box"][:24]
    assert one.id != two.id
    assert open_dm(BOB, one) == open_dm(BOB, two) == Content("x")


def test_dm_oversize_body_is_refused() -> None:
    with pytest.raises(ProtocolError) as info:
        dm(Content("x" * (MAX_BODY_BYTES + 1)))
    assert info.value.code is ErrorCode.TOO_LARGE


@pytest.mark.parametrize("kind", [[], {}, b"msg", 1, None])
def test_a_kind_that_is_not_text_is_malformed(kind: object) -> None:
    # a list or map as "kind" once escaped as TypeError (unhashable) instead of ProtocolError
    assert refused(encode([encode({"v": 1, "kind": kind}), bytes(64)])) is ErrorCode.MALFORMED
