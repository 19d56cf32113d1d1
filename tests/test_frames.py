"""Frame validation, the frame classes and stream records (peer/wire/_frames.py), sans-IO."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.wire._cbor import encode
from peer.wire._errors import ErrorCode, ProtocolError
from peer.wire._frames import (
    FRAME_TYPES,
    RecordBuffer,
    decode_frame,
    encode_frame,
    frame_record,
    is_topic,
)
from peer.wire._frametypes import CuPage, CuReq, Deposited, Hello, Ping, Pong, Pub, Sub
from peer.wire._limits import (
    MAX_ADDR_BYTES,
    MAX_CAPS,
    MAX_DHT_MESSAGE,
    MAX_ENVELOPE,
    MAX_IDS_PER_FRAME,
    MAX_INTEREST_HOPS,
    MAX_LISTEN_ADDRS,
    MAX_PAGE_HEADS,
    MAX_PAGE_MESSAGES,
    MAX_RECORD,
    MAX_TEXT_FIELD,
    MAX_TOPICS_PER_FRAME,
)
from tests._fuzz import fuzz_scale

PEER = bytes(range(32))
HEX_ID = "ab" * 32


def valid_fields() -> dict[str, dict[str, Any]]:
    """One well-formed example of every frame type (without its "t")."""
    return {
        "hello": {
            "versions": [1],
            "id": PEER,
            "pk": b"\x02" * 32,
            "eph": b"\x03" * 32,
            "nonce": b"\x04" * 32,
            "caps": ["relay"],
            "listen": ["ws://127.0.0.1:7000"],
            "agent": "clawmesh/0.1",
        },
        "auth": {"sig": b"\x05" * 64},
        "error": {"code": "rate", "msg": "slow down"},
        "sub": {"topics": [["general", 0], ["dm/" + HEX_ID, MAX_INTEREST_HOPS]]},
        "unsub": {"topics": ["general", "inbox/" + HEX_ID]},
        "pub": {"e": b"\x82\x41\x00\x58\x40" + b"\x00" * 64},
        "graft": {"topic": "general"},
        "prune": {"topic": "sys/presence"},
        "ihave": {"topic": "general", "ids": [b"\x06" * 32, b"\x07" * 32]},
        "iwant": {"ids": [b"\x06" * 32]},
        "ping": {"n": 0},
        "pong": {"n": 2**64 - 1},
        "dht": {"m": b"\xa0"},
        "cureq": {
            "r": 7,
            "topic": "general",
            "after": 0,
            "since": 1_700_000_000_000,
            "limit": MAX_PAGE_MESSAGES,
            "sender": PEER,
            "first": 3,
            "last": 9,
        },
        "cupage": {
            "r": 7,
            "topic": "inbox/" + HEX_ID,
            "m": [b"\x82\x41\x00\x58\x40" + b"\x00" * 64],
            "next": 12,
            "more": False,
            "heads": [[PEER, 12]],
        },
        "heads": {"topic": "general", "h": [[PEER, 12]]},  # "more" is optional
        "push": {"e": b"\x82\x41\x00\x58\x40" + b"\x00" * 64},
        "deposit": {"r": 9, "e": b"\x82\x41\x00\x58\x40" + b"\x00" * 64},
        "deposited": {"r": 9},  # "err" is optional
        "blob-want": {"r": 3, "id": b"\x08" * 32, "hops": 2},  # "i", "src" are optional
        "blob-have": {"r": 3, "size": 5, "h": b"\x09" * 32},
        "blob-chunk": {"r": 3, "d": b"hello"},
        "blob-none": {"r": 3, "err": "unknown"},
    }


def test_every_frame_type_has_an_example() -> None:
    assert set(valid_fields()) == set(FRAME_TYPES)
    assert all(kind == cls.TYPE for kind, cls in FRAME_TYPES.items())


@pytest.mark.parametrize("kind", sorted(FRAME_TYPES))
def test_valid_frames_decode(kind: str) -> None:
    fields = valid_fields()[kind]
    raw = encode_frame(kind, **fields)
    frame = decode_frame(raw)
    assert type(frame) is FRAME_TYPES[kind]
    assert frame.to_map() == {"t": kind, **fields}
    assert frame.encode() == raw  # the class encodes byte for byte what encode_frame does
    assert type(frame).from_map(frame.to_map()) == frame
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(frame, dataclasses.fields(frame)[0].name, None)  # frames are immutable


@pytest.mark.parametrize("kind", sorted(FRAME_TYPES))
def test_missing_fields_are_refused(kind: str) -> None:
    fields = valid_fields()[kind]
    for key in fields:
        partial = {k: v for k, v in fields.items() if k != key}
        with pytest.raises(ProtocolError) as info:
            decode_frame(encode_frame(kind, **partial))
        assert info.value.code is ErrorCode.MALFORMED, key


@pytest.mark.parametrize("kind", sorted(FRAME_TYPES))
def test_unknown_fields_are_refused(kind: str) -> None:
    fields = {**valid_fields()[kind], "extra": 1}
    with pytest.raises(ProtocolError) as info:
        decode_frame(encode_frame(kind, **fields))
    assert info.value.code is ErrorCode.MALFORMED


@pytest.mark.parametrize(
    "obj",
    [
        [],
        "hello",
        0,
        {},
        {"t": "nope"},
        {"t": 1},
        {"t": b"ping", "n": 1},
        {"x": "ping", "n": 1},
    ],
)
def test_not_a_frame(obj: object) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_frame(encode(obj))
    assert info.value.code is ErrorCode.MALFORMED


TOPIC_LONG = "a" * 64

BAD: list[tuple[str, str, object, ErrorCode]] = [
    # hello
    ("hello", "versions", [], ErrorCode.MALFORMED),
    ("hello", "versions", [0], ErrorCode.MALFORMED),
    ("hello", "versions", [2**16], ErrorCode.MALFORMED),
    ("hello", "versions", [-1], ErrorCode.MALFORMED),
    ("hello", "versions", [True], ErrorCode.MALFORMED),
    ("hello", "versions", ["1"], ErrorCode.MALFORMED),
    ("hello", "versions", 1, ErrorCode.MALFORMED),
    ("hello", "versions", [1] * 9, ErrorCode.TOO_LARGE),
    ("hello", "id", b"\x00" * 31, ErrorCode.MALFORMED),
    ("hello", "id", b"\x00" * 33, ErrorCode.MALFORMED),
    ("hello", "id", "00" * 32, ErrorCode.MALFORMED),
    ("hello", "pk", b"\x00" * 31, ErrorCode.MALFORMED),
    ("hello", "eph", b"", ErrorCode.MALFORMED),
    ("hello", "nonce", None, ErrorCode.MALFORMED),
    ("hello", "caps", ["relay", ""], ErrorCode.MALFORMED),
    ("hello", "caps", ["x" * 33], ErrorCode.MALFORMED),
    ("hello", "caps", [1], ErrorCode.MALFORMED),
    ("hello", "caps", "relay", ErrorCode.MALFORMED),
    ("hello", "caps", ["c"] * (MAX_CAPS + 1), ErrorCode.TOO_LARGE),
    ("hello", "listen", [b"ws://x"], ErrorCode.MALFORMED),
    ("hello", "listen", ["é" * (MAX_ADDR_BYTES // 2 + 1)], ErrorCode.MALFORMED),
    ("hello", "listen", ["ws://x"] * (MAX_LISTEN_ADDRS + 1), ErrorCode.TOO_LARGE),
    ("hello", "agent", b"clawmesh", ErrorCode.MALFORMED),
    ("hello", "agent", "a" * 65, ErrorCode.TOO_LARGE),
    # auth
    ("auth", "sig", b"\x00" * 63, ErrorCode.MALFORMED),
    ("auth", "sig", b"\x00" * 65, ErrorCode.MALFORMED),
    ("auth", "sig", "00" * 64, ErrorCode.MALFORMED),
    # error
    ("error", "code", 1, ErrorCode.MALFORMED),
    ("error", "code", "c" * 33, ErrorCode.TOO_LARGE),
    ("error", "msg", None, ErrorCode.MALFORMED),
    ("error", "msg", "m" * (MAX_TEXT_FIELD + 1), ErrorCode.TOO_LARGE),
    # sub
    ("sub", "topics", "general", ErrorCode.MALFORMED),
    ("sub", "topics", ["general"], ErrorCode.MALFORMED),
    ("sub", "topics", [["general"]], ErrorCode.MALFORMED),
    ("sub", "topics", [["general", 0, 0]], ErrorCode.MALFORMED),
    ("sub", "topics", [["general", -1]], ErrorCode.MALFORMED),
    ("sub", "topics", [["general", MAX_INTEREST_HOPS + 1]], ErrorCode.MALFORMED),
    ("sub", "topics", [["general", False]], ErrorCode.MALFORMED),
    ("sub", "topics", [["general", 0.0]], ErrorCode.MALFORMED),
    ("sub", "topics", [["", 0]], ErrorCode.MALFORMED),
    ("sub", "topics", [[TOPIC_LONG + "a", 0]], ErrorCode.MALFORMED),
    ("sub", "topics", [["-general", 0]], ErrorCode.MALFORMED),
    ("sub", "topics", [["gen eral", 0]], ErrorCode.MALFORMED),
    ("sub", "topics", [["dm/" + "AB" * 32, 0]], ErrorCode.MALFORMED),
    ("sub", "topics", [["dm/" + "ab" * 31, 0]], ErrorCode.MALFORMED),
    ("sub", "topics", [["other/x", 0]], ErrorCode.MALFORMED),
    ("sub", "topics", [["sys/", 0]], ErrorCode.MALFORMED),
    ("sub", "topics", [[b"general", 0]], ErrorCode.MALFORMED),
    ("sub", "topics", [["t", 0]] * (MAX_TOPICS_PER_FRAME + 1), ErrorCode.TOO_LARGE),
    # unsub
    ("unsub", "topics", "general", ErrorCode.MALFORMED),
    ("unsub", "topics", [["general", 0]], ErrorCode.MALFORMED),
    ("unsub", "topics", ["no/such"], ErrorCode.MALFORMED),
    ("unsub", "topics", ["t"] * (MAX_TOPICS_PER_FRAME + 1), ErrorCode.TOO_LARGE),
    # pub
    ("pub", "e", "envelope", ErrorCode.MALFORMED),
    ("pub", "e", [b"x"], ErrorCode.MALFORMED),
    ("pub", "e", b"\x00" * (MAX_ENVELOPE + 1), ErrorCode.TOO_LARGE),
    # graft / prune
    ("graft", "topic", "bad topic", ErrorCode.MALFORMED),
    ("graft", "topic", 7, ErrorCode.MALFORMED),
    ("prune", "topic", "sys/UPPER", ErrorCode.MALFORMED),
    # ihave / iwant
    ("ihave", "topic", "", ErrorCode.MALFORMED),
    ("ihave", "ids", [b"\x00" * 31], ErrorCode.MALFORMED),
    ("ihave", "ids", ["00" * 32], ErrorCode.MALFORMED),
    ("ihave", "ids", b"\x00" * 32, ErrorCode.MALFORMED),
    ("ihave", "ids", [b"\x00" * 32] * (MAX_IDS_PER_FRAME + 1), ErrorCode.TOO_LARGE),
    ("iwant", "ids", [b"\x00" * 33], ErrorCode.MALFORMED),
    ("iwant", "ids", [b"\x00" * 32] * (MAX_IDS_PER_FRAME + 1), ErrorCode.TOO_LARGE),
    # ping / pong
    ("ping", "n", -1, ErrorCode.MALFORMED),
    ("ping", "n", True, ErrorCode.MALFORMED),
    ("ping", "n", 1.0, ErrorCode.MALFORMED),
    ("pong", "n", "1", ErrorCode.MALFORMED),
    # dht (its content is checked by dht.decode_message)
    ("dht", "m", "text", ErrorCode.MALFORMED),
    ("dht", "m", b"\x00" * (MAX_DHT_MESSAGE + 1), ErrorCode.TOO_LARGE),
    # catch-up
    ("cureq", "r", 2**32, ErrorCode.MALFORMED),
    ("cureq", "topic", "~inbox", ErrorCode.MALFORMED),
    ("cureq", "limit", 0, ErrorCode.MALFORMED),
    ("cureq", "limit", MAX_PAGE_MESSAGES + 1, ErrorCode.MALFORMED),
    ("cureq", "since", -1, ErrorCode.MALFORMED),
    ("cureq", "sender", b"\x00" * 31, ErrorCode.MALFORMED),
    ("cureq", "first", 10, ErrorCode.MALFORMED),
    ("cupage", "m", [b"x"] * (MAX_PAGE_MESSAGES + 1), ErrorCode.TOO_LARGE),
    ("cupage", "m", ["text"], ErrorCode.MALFORMED),
    ("cupage", "m", [b"\x00" * (MAX_ENVELOPE + 1)], ErrorCode.MALFORMED),
    ("cupage", "more", 1, ErrorCode.MALFORMED),
    ("cupage", "heads", [[PEER]], ErrorCode.MALFORMED),
    ("cupage", "heads", [[PEER, -1]], ErrorCode.MALFORMED),
    ("cupage", "heads", [[b"\x00", 1]], ErrorCode.MALFORMED),
    ("cupage", "heads", [[PEER, 1]] * (MAX_PAGE_HEADS + 1), ErrorCode.TOO_LARGE),
    ("cupage", "err", "e" * 33, ErrorCode.TOO_LARGE),
    ("push", "e", "envelope", ErrorCode.MALFORMED),
    ("push", "e", b"\x00" * (MAX_ENVELOPE + 1), ErrorCode.TOO_LARGE),
    # mailboxes
    ("deposit", "r", 2**32, ErrorCode.MALFORMED),
    ("deposit", "r", -1, ErrorCode.MALFORMED),
    ("deposit", "e", "envelope", ErrorCode.MALFORMED),
    ("deposit", "e", b"\x00" * (MAX_ENVELOPE + 1), ErrorCode.TOO_LARGE),
    ("deposited", "r", "9", ErrorCode.MALFORMED),
    ("deposited", "err", 5, ErrorCode.MALFORMED),
    ("deposited", "err", "e" * 33, ErrorCode.TOO_LARGE),
]


@pytest.mark.parametrize(
    ("kind", "key", "value", "code"),
    BAD,
    ids=[f"{k}.{f}-{i}" for i, (k, f, _, _) in enumerate(BAD)],
)
def test_bad_fields_are_refused(kind: str, key: str, value: object, code: ErrorCode) -> None:
    fields = {**valid_fields()[kind], key: value}
    with pytest.raises(ProtocolError) as info:
        decode_frame(encode_frame(kind, **fields))
    assert info.value.code is code


def test_a_deposit_answer_carries_its_refusal() -> None:
    raw = encode_frame("deposited", r=9, err="quota-sender")
    frame = decode_frame(raw)
    assert frame == Deposited(9, "quota-sender") and frame.encode() == raw
    assert decode_frame(Deposited(9).encode()) == Deposited(9, None)


def test_limits_themselves_are_accepted() -> None:
    frames = [
        encode_frame(
            "sub", topics=[[f"t{i}", MAX_INTEREST_HOPS] for i in range(MAX_TOPICS_PER_FRAME)]
        ),
        encode_frame("iwant", ids=[i.to_bytes(32, "big") for i in range(MAX_IDS_PER_FRAME)]),
        encode_frame("error", code="c" * 32, msg="m" * MAX_TEXT_FIELD),
        encode_frame("graft", topic="a" * 64),
        encode_frame("graft", topic="sys/" + "a" * 32),
        encode_frame("pub", e=b"\x00" * MAX_ENVELOPE),
    ]
    for raw in frames:
        assert decode_frame(raw).TYPE in FRAME_TYPES


def test_topic_names() -> None:
    good = ["a", "General-1", "a.b_c", "a" * 64, "dm/" + HEX_ID, "inbox/" + HEX_ID, "sys/presence"]
    bad = ["", ".a", "a" * 65, "dm/x", "inbox/" + HEX_ID + "0", "sys/", "sys/" + "a" * 33, "a/b", 1]
    assert all(is_topic(t) for t in good)
    assert not any(is_topic(t) for t in bad)


def test_frame_size_limit() -> None:
    raw = encode_frame("ping", n=1)
    assert decode_frame(raw, max_size=len(raw)) == Ping(1)
    with pytest.raises(ProtocolError) as info:
        decode_frame(raw, max_size=len(raw) - 1)
    assert info.value.code is ErrorCode.TOO_LARGE
    with pytest.raises(ProtocolError) as info:
        decode_frame(b"\x00" * (MAX_RECORD + 1))
    assert info.value.code is ErrorCode.TOO_LARGE


def test_non_canonical_frame_is_refused() -> None:
    # {"t": "ping", "n": 1}: canonical order puts "n" first
    raw = bytes.fromhex("a2" + "616e01" + "6174" + "6470696e67")
    swapped = bytes.fromhex("a2" + "6174" + "6470696e67" + "616e01")
    assert decode_frame(raw) == Ping(1)
    with pytest.raises(ProtocolError) as info:
        decode_frame(swapped)
    assert info.value.code is ErrorCode.NON_CANONICAL


# -- records --------------------------------------------------------------------------

FRAME_KINDS = sorted(FRAME_TYPES)


@st.composite
def valid_frames(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(FRAME_KINDS))
    fields = valid_fields()[kind]
    if kind in ("ping", "pong"):
        fields = {"n": draw(st.integers(0, 2**64 - 1))}
    elif kind == "pub":
        fields = {"e": draw(st.binary(max_size=300))}
    elif kind == "error":
        fields = {"code": "x", "msg": draw(st.text(max_size=40))}
    elif kind == "iwant":
        fields = {"ids": draw(st.lists(st.binary(min_size=32, max_size=32), max_size=5))}
    return encode_frame(kind, **fields)


def test_record_buffer_reassembles_records() -> None:
    a, b = encode_frame("ping", n=1), encode_frame("pong", n=1)
    buf = RecordBuffer()
    assert buf.feed(b"") == []
    stream = frame_record(a) + frame_record(b)
    assert buf.feed(stream[:3]) == []
    assert buf.pending == 3
    assert buf.feed(stream[3 : 4 + len(a)]) == [a]
    assert buf.pending == 0
    assert buf.feed(stream[4 + len(a) :]) == [b]
    assert buf.pending == 0


def test_empty_record() -> None:
    assert RecordBuffer().feed(frame_record(b"") * 3) == [b"", b"", b""]


@settings(max_examples=fuzz_scale(200), deadline=None)
@given(st.lists(valid_frames(), max_size=12), st.integers(0, 2**32 - 1))
def test_any_split_of_a_record_stream_gives_the_same_frames(frames: list[bytes], seed: int) -> None:
    stream = b"".join(frame_record(f) for f in frames)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(len(stream) + 1), min(len(stream) + 1, rng.randint(0, 20))))
    pieces = [stream[i:j] for i, j in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert b"".join(pieces) == stream
    buf = RecordBuffer()
    out: list[bytes] = []
    for piece in pieces:
        out.extend(buf.feed(piece))
    assert out == frames
    assert buf.pending == 0
    assert [decode_frame(r) for r in out] == [decode_frame(f) for f in frames]


@settings(max_examples=fuzz_scale(100), deadline=None)
@given(st.lists(valid_frames(), min_size=1, max_size=6))
def test_byte_at_a_time(frames: list[bytes]) -> None:
    stream = b"".join(frame_record(f) for f in frames)
    buf = RecordBuffer()
    out: list[bytes] = []
    for i in range(len(stream)):
        out.extend(buf.feed(stream[i : i + 1]))
    assert out == frames


def test_oversize_length_prefix_is_refused() -> None:
    buf = RecordBuffer(max_record=100)
    assert buf.feed(frame_record(b"x" * 100)) == [b"x" * 100]
    with pytest.raises(ProtocolError) as info:
        # refused from the prefix alone, without waiting for the body
        buf.feed((101).to_bytes(4, "big"))
    assert info.value.code is ErrorCode.TOO_LARGE

    with pytest.raises(ProtocolError) as info:
        RecordBuffer().feed(b"\xff\xff\xff\xff")
    assert info.value.code is ErrorCode.TOO_LARGE
    with pytest.raises(ProtocolError) as info:
        RecordBuffer().feed((MAX_RECORD + 1).to_bytes(4, "big"))
    assert info.value.code is ErrorCode.TOO_LARGE


def test_oversize_record_after_good_ones_in_the_same_chunk() -> None:
    buf = RecordBuffer(max_record=10)
    with pytest.raises(ProtocolError) as info:
        buf.feed(frame_record(b"ok") + (11).to_bytes(4, "big"))
    assert info.value.code is ErrorCode.TOO_LARGE


# -- fuzz -------------------------------------------------------------------------------


@settings(max_examples=fuzz_scale(600), deadline=None)
@given(valid_frames(), st.data())
def test_mutated_frames_decode_or_raise_protocol_error(raw: bytes, data: st.DataObject) -> None:
    mutated = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = data.draw(st.integers(0, len(mutated)))
        if op == "flip" and pos < len(mutated):
            mutated[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "insert":
            mutated[pos:pos] = bytes([data.draw(st.integers(0, 255))])
        elif op == "delete" and pos < len(mutated):
            del mutated[pos]
        elif op == "truncate":
            del mutated[pos:]
    try:
        frame = decode_frame(bytes(mutated))
    except ProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)
    else:
        # whatever is accepted is a valid frame: it re-encodes to the same bytes
        assert frame.TYPE in FRAME_TYPES
        assert frame.encode() == bytes(mutated)
        assert frame == decode_frame(bytes(mutated))


# -- the frame classes ------------------------------------------------------------------


def test_classes_encode_like_encode_frame() -> None:
    pairs = [
        (Ping(0), encode_frame("ping", n=0)),
        (Pong(2**64 - 1), encode_frame("pong", n=2**64 - 1)),
        (Pub(b"\x82"), encode_frame("pub", e=b"\x82")),
        (
            Sub((("general", 0), ("sys/presence", 3))),
            encode_frame("sub", topics=[["general", 0], ["sys/presence", 3]]),
        ),
        (
            Hello((1,), PEER, PEER, PEER, PEER, ("relay",), (), "clawmesh/0.1"),
            encode_frame(
                "hello", versions=[1], id=PEER, pk=PEER, eph=PEER, nonce=PEER,
                caps=["relay"], listen=[], agent="clawmesh/0.1",
            ),
        ),
        (CuReq(3, "general", 5), encode_frame("cureq", r=3, topic="general", after=5,
                                              since=0, limit=MAX_PAGE_MESSAGES)),
        (CuPage(3, "general", [b"x"], 4, True, [(PEER, 9)], "busy"),
         encode_frame("cupage", r=3, topic="general", m=[b"x"], next=4, more=True,
                      heads=[[PEER, 9]], err="busy")),
    ]
    for frame, raw in pairs:
        assert frame.encode() == raw
        assert decode_frame(raw) == frame


def test_page_fields_stay_tuples_and_round_trip() -> None:
    page = CuPage(1, "general", [b"a", b"b"], 2, False, [(PEER, 1)])
    assert page == CuPage(1, "general", (b"a", b"b"), 2, False, ((PEER, 1),))
    assert page.messages == (b"a", b"b") and page.heads == ((PEER, 1),)
    assert page.fields() == {"r": 1, "topic": "general", "m": [b"a", b"b"], "next": 2,
                             "more": False, "heads": [[PEER, 1]]}
    assert CuPage.from_fields(page.fields()) == page
    request = CuReq(1, "general", 0, 0, 9, PEER, 2, 3)
    assert CuReq.from_fields(request.fields()) == request
    assert CuReq.from_fields(CuReq(1, "general").fields()).sender is None


def test_fast_path_gives_a_pub() -> None:
    frame = decode_frame(encode_frame("pub", e=b"\x82\x41\x00"))
    assert type(frame) is Pub and frame.envelope == b"\x82\x41\x00"
