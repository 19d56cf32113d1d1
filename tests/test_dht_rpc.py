"""DHT RPC messages (dht/_rpc.py): round trips, strict refusals, and fuzzing:
any bytes either decode to a valid message or raise ProtocolError."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dht import (
    MAX_CONTACTS_PER_REPLY,
    MAX_MESSAGE,
    MAX_PROVIDERS_PER_REPLY,
    AddProvider,
    Contact,
    ErrorReply,
    FindNode,
    FindPeer,
    GetProviders,
    Message,
    Nodes,
    Op,
    PeerFound,
    Ping,
    Pong,
    Providers,
    PutPeer,
    Stored,
    answers,
    decode_message,
    decode_request,
    decode_response,
    encode_message,
)
from peer.wire._cbor import decode, encode
from peer.wire._errors import ErrorCode, ProtocolError
from tests._fuzz import fuzz_scale


def contact(i: int) -> Contact:
    return Contact.of_key(bytes([i]) * 32, [f"ws://192.0.2.{i}:7433"], ["relay"])


NODES = tuple(contact(i) for i in range(1, 21))
EXAMPLES: list[Message] = [
    Ping(1),
    Ping(2**64 - 1, serving=False),
    FindNode(3, b"\x01" * 32),
    FindPeer(4, b"\x02" * 32, serving=False),
    PutPeer(5, b"\x82" + b"\x00" * 100),
    AddProvider(6, b"rec"),
    GetProviders(7, b"\x03" * 32),
    Pong(1),
    Nodes(3, NODES),
    Nodes(3, ()),
    PeerFound(4, NODES[:3], b"record"),
    PeerFound(4, (), None),
    Stored(5, Op.PUT_PEER),
    Stored(6, Op.ADD_PROVIDER),
    Providers(7, (b"a" * 2048,) * MAX_PROVIDERS_PER_REPLY, NODES),
    ErrorReply(8, "rate", "slow down"),
]


def same(a: Message, b: Message) -> bool:
    """Messages are equal; contacts compare by their wire fields."""
    if type(a) is not type(b):
        return False
    fa = {k: getattr(a, k) for k in a.__slots__}
    fb = {k: getattr(b, k) for k in b.__slots__}
    if "nodes" in fa:
        fa["nodes"] = [c.to_wire() for c in fa["nodes"]]
        fb["nodes"] = [c.to_wire() for c in fb["nodes"]]
    return fa == fb


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: Message) -> None:
    data = encode_message(msg)
    assert len(data) <= MAX_MESSAGE
    back = decode_message(data)
    assert same(back, msg)
    assert encode_message(back) == data  # canonical


def test_request_and_response_decoders_check_the_direction() -> None:
    assert decode_request(encode_message(Ping(1))) == Ping(1)
    assert decode_response(encode_message(Pong(1))) == Pong(1)
    with pytest.raises(ProtocolError):
        decode_request(encode_message(Pong(1)))
    with pytest.raises(ProtocolError):
        decode_response(encode_message(Ping(1)))


def test_answers_matches_rid_and_operation() -> None:
    req = FindNode(9, bytes(32))
    assert answers(req, Nodes(9, ()))
    assert answers(req, ErrorReply(9, "rate"))
    assert not answers(req, Nodes(10, ()))
    assert not answers(req, PeerFound(9, ()))
    assert answers(PutPeer(1, b""), Stored(1, Op.PUT_PEER))
    assert not answers(PutPeer(1, b""), Stored(1, Op.ADD_PROVIDER))


def wire(msg: Message) -> dict[str, Any]:
    m = decode(encode_message(msg))
    assert isinstance(m, dict)
    return m


def refuse(m: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_message(encode(m))
    return info.value


@pytest.mark.parametrize(
    ("base", "change"),
    [
        (Ping(1), {"v": 2}),
        (Ping(1), {"v": True}),
        (Ping(1), {"m": "x"}),
        (Ping(1), {"op": "store"}),
        (Ping(1), {"op": 5}),
        (Ping(1), {"rid": -1}),
        (Ping(1), {"rid": 2**64}),
        (Ping(1), {"srv": 1}),
        (Ping(1), {"extra": 0}),
        (FindNode(1, bytes(32)), {"target": bytes(31)}),
        (FindNode(1, bytes(32)), {"target": "x"}),
        (GetProviders(1, bytes(32)), {"key": None}),
        (PutPeer(1, b"r"), {"rec": b"r" * 2049}),
        (Nodes(1, ()), {"nodes": [[bytes(32), bytes(32), [], []]] * (MAX_CONTACTS_PER_REPLY + 1)}),
        (Nodes(1, ()), {"nodes": [[bytes(32), bytes(32), []]]}),
        (Nodes(1, ()), {"nodes": [[bytes(32), bytes(31), [], []]]}),
        (Nodes(1, ()), {"nodes": [[bytes(32), bytes(32), [""], []]]}),
        (Nodes(1, ()), {"nodes": [[bytes(32), bytes(32), ["ws://a"] * 5, []]]}),
        (Nodes(1, ()), {"nodes": [[bytes(32), bytes(32), ["a" * 257], []]]}),
        (Nodes(1, ()), {"nodes": [{"id": bytes(32)}]}),
        (Nodes(1, ()), {"rec": b""}),  # only find_peer replies carry a record
        (Providers(1, (), ()), {"provs": [b"x"] * (MAX_PROVIDERS_PER_REPLY + 1)}),
        (Providers(1, (), ()), {"provs": ["x"]}),
        (ErrorReply(1, "rate"), {"code": 7}),
        (ErrorReply(1, "rate"), {"op": "ping"}),
    ],
)
def test_malformed_messages_are_refused(base: Message, change: dict[str, Any]) -> None:
    m = wire(base)
    m.update(change)
    refuse(m)


def test_missing_fields_are_refused() -> None:
    for msg in EXAMPLES:
        m = wire(msg)
        for key in list(m):
            if key == "rec" and isinstance(msg, PeerFound):
                continue  # optional
            refuse({k: v for k, v in m.items() if k != key})


def test_size_and_shape_limits() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_message(b"\x00" * (MAX_MESSAGE + 1))
    assert info.value.code is ErrorCode.TOO_LARGE
    assert refuse([1, 2]).code is ErrorCode.MALFORMED
    data = encode_message(Ping(1))
    with pytest.raises(ProtocolError):
        decode_message(data + b"\x00")  # trailing bytes
    with pytest.raises(ValueError):
        encode_message(Nodes(1, (*NODES, contact(99))))
    with pytest.raises(ProtocolError):
        encode_message(PutPeer(1, b"x" * (MAX_MESSAGE + 1)))


def test_error_text_is_truncated_on_encode() -> None:
    back = decode_message(encode_message(ErrorReply(1, "x" * 40, "é" * 300)))
    assert isinstance(back, ErrorReply)
    assert len(back.code) == 32 and len(back.message.encode()) <= 200


# -- fuzz ---------------------------------------------------------------------------------------


@settings(max_examples=fuzz_scale(400), deadline=None)
@given(data=st.binary(max_size=600))
def test_any_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    try:
        msg = decode_message(data)
    except ProtocolError:
        return
    assert encode_message(msg) == data


@settings(max_examples=fuzz_scale(400), deadline=None)
@given(
    index=st.integers(0, len(EXAMPLES) - 1),
    pos=st.integers(0, 10_000),
    byte=st.integers(0, 255),
    cut=st.booleans(),
)
def test_mutated_messages_decode_or_raise_protocol_error(
    index: int, pos: int, byte: int, cut: bool
) -> None:
    data = bytearray(encode_message(EXAMPLES[index]))
    pos %= len(data)
    if cut:
        del data[pos:]
    else:
        data[pos] = byte
    try:
        msg = decode_message(bytes(data))
    except ProtocolError:
        return
    assert encode_message(msg) == bytes(data)


@settings(max_examples=fuzz_scale(100), deadline=None)
@given(
    m=st.dictionaries(
        st.sampled_from(
            ["v", "m", "op", "rid", "srv", "target", "rec", "key", "nodes", "provs", "code", "msg"]
        ),
        st.one_of(
            st.integers(-2, 2**64),
            st.booleans(),
            st.binary(max_size=40),
            st.sampled_from(["q", "r", "e", *[o.value for o in Op]]),
            st.lists(st.binary(max_size=33), max_size=3),
        ),
    )
)
def test_fuzzed_maps_decode_or_raise_protocol_error(m: dict[str, Any]) -> None:
    data = encode(m)
    try:
        msg = decode_message(data)
    except ProtocolError:
        return
    assert encode_message(msg) == data


def test_random_contacts_never_escape_as_other_exceptions() -> None:
    for _ in range(200):
        fields = [os.urandom(32), os.urandom(32), [os.urandom(3).hex()], [os.urandom(40).hex()]]
        m = wire(Nodes(1, ()))
        m["nodes"] = [fields]
        with pytest.raises(ProtocolError):
            decode_message(encode(m))  # a 80-character capability is too long
