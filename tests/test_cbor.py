"""Strict CBOR (peer/wire/_cbor.py): canonical round trips and every refusal.

Sans-IO: bytes in, values or ProtocolError out.
"""

from __future__ import annotations

import math
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peer.wire import _cbor
from peer.wire._cbor import DEFAULT_MAX_ITEMS, MAX_DEPTH, count_items, decode, encode
from peer.wire._errors import ErrorCode, ProtocolError
from tests._fuzz import fuzz_scale


def refused(data: bytes, **kwargs: Any) -> ErrorCode:
    """Decode ``data``, which must fail with ProtocolError; return the code."""
    with pytest.raises(ProtocolError) as info:
        decode(data, **kwargs)
    return info.value.code


# -- canonical round trips ----------------------------------------------------

CANONICAL: list[tuple[object, str]] = [
    (0, "00"),
    (23, "17"),
    (24, "1818"),
    (255, "18ff"),
    (256, "190100"),
    (65536, "1a00010000"),
    (2**32, "1b0000000100000000"),
    (2**64 - 1, "1bffffffffffffffff"),
    (-1, "20"),
    (-(2**64), "3bffffffffffffffff"),
    (b"", "40"),
    (b"\x01\x02", "420102"),
    ("", "60"),
    ("a", "6161"),
    ("ü", "62c3bc"),
    ([], "80"),
    ([1, [2, 3]], "8201820203"),
    ({}, "a0"),
    ({"a": 1, "b": [2]}, "a261610161628102"),
    ({"b": 1, "aa": 2}, "a261620162616102"),  # shorter key first
    (False, "f4"),
    (True, "f5"),
    (None, "f6"),
    (1.5, "f93e00"),
    (1.0, "f93c00"),
    (0.1, "fb3fb999999999999a"),
    (100000.0, "fa47c35000"),
    (math.inf, "f97c00"),
]


@pytest.mark.parametrize(("value", "hex_bytes"), CANONICAL)
def test_canonical_encoding_and_round_trip(value: object, hex_bytes: str) -> None:
    data = bytes.fromhex(hex_bytes)
    assert encode(value) == data
    back = decode(data)
    assert back == value
    assert type(back) is type(value)
    assert encode(back) == data


def test_map_key_order_is_canonical_whatever_the_insertion_order() -> None:
    a = encode({"zz": 1, "a": 2, b"\x00": 3})
    b = encode({b"\x00": 3, "a": 2, "zz": 1})
    assert a == b
    assert decode(a) == {"zz": 1, "a": 2, b"\x00": 3}


def test_nesting_up_to_max_depth_is_accepted() -> None:
    value: object = 0
    for _ in range(MAX_DEPTH):
        value = [value]
    assert decode(encode(value)) == value


def test_item_count_boundary() -> None:
    # an array of n zeros is n + 1 data items
    ok = encode([0] * (DEFAULT_MAX_ITEMS - 1))
    assert count_items(ok, DEFAULT_MAX_ITEMS) == DEFAULT_MAX_ITEMS
    assert decode(ok) == [0] * (DEFAULT_MAX_ITEMS - 1)
    assert refused(encode([0] * DEFAULT_MAX_ITEMS)) is ErrorCode.TOO_LARGE
    # a map's keys and values both count
    assert count_items(encode({"a": 1, "b": [2, 3]}), 100) == 7
    assert refused(encode({"a": 1, "b": [2, 3]}), max_items=6) is ErrorCode.TOO_LARGE


def test_long_strings_count_as_one_item() -> None:
    data = encode([b"x" * 100_000, "y" * 100_000])
    assert count_items(data, 3) == 3
    assert decode(data, max_items=3) == [b"x" * 100_000, "y" * 100_000]


# -- semantic tags --------------------------------------------------------------

TAGGED = {
    "datetime string (0)": "c074323031332d30332d32315432303a30343a30305a",
    "epoch datetime (1)": "c11a514b67b0",
    "positive bignum (2)": "c249010000000000000000",
    "negative bignum (3)": "c349010000000000000000",
    "decimal fraction (4)": "c482211903e8",
    "decimal with a huge exponent (4)": "c4821b7fffffffffffffff01",
    "bigfloat (5)": "c5822003",
    "shared reference (28)": "d81c80",
    "shared reference index (29)": "d81d00",
    "regex (35)": "d8236161",
    "uuid (37)": "d82550000102030405060708090a0b0c0d0e0f",
    "set (258)": "d9010280",
    "self-describe (55799)": "d9d9f700",
    "unknown tag (99)": "d86300",
    "tag inside an array": "8201c11a514b67b0",
    "tag inside a map value": "a16161c24101",
}


@pytest.mark.parametrize("hex_bytes", TAGGED.values(), ids=list(TAGGED))
def test_semantic_tags_are_refused(hex_bytes: str) -> None:
    assert refused(bytes.fromhex(hex_bytes)) is ErrorCode.MALFORMED


@pytest.mark.parametrize("hex_bytes", TAGGED.values(), ids=list(TAGGED))
def test_tags_are_refused_even_without_the_header_scan(
    hex_bytes: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cbor2 decodes its built-in tags without tag_hook; the decoder must still refuse."""
    monkeypatch.setattr(_cbor, "count_items", lambda data, max_items: 1)
    assert refused(bytes.fromhex(hex_bytes)) is ErrorCode.MALFORMED


def test_encoding_a_value_that_needs_a_tag_does_not_decode() -> None:
    # cbor2 writes ints beyond 64 bits as bignums (tag 2): not in our profile
    data = encode(2**64)
    assert data[0] == 0xC2
    assert refused(data) is ErrorCode.MALFORMED


# -- structural refusals ----------------------------------------------------------

STRUCTURAL = {
    "indefinite byte string": ("5f42010243030405ff", ErrorCode.MALFORMED),
    "indefinite text string": ("7f61616162ff", ErrorCode.MALFORMED),
    "indefinite array": ("9f0102ff", ErrorCode.MALFORMED),
    "indefinite map": ("bf616101ff", ErrorCode.MALFORMED),
    "empty indefinite array": ("9fff", ErrorCode.MALFORMED),
    "lone break": ("ff", ErrorCode.MALFORMED),
    "reserved additional info 28": ("1c", ErrorCode.MALFORMED),
    "reserved additional info 30": ("5e", ErrorCode.MALFORMED),
    "duplicate text keys": ("a2616101616102", ErrorCode.MALFORMED),
    "duplicate byte keys": ("a2410001410002", ErrorCode.MALFORMED),
    "int map key": ("a10102", ErrorCode.MALFORMED),
    "negative int map key": ("a12002", ErrorCode.MALFORMED),
    "float map key": ("a1f93e0002", ErrorCode.MALFORMED),
    "array map key": ("a1800102", ErrorCode.MALFORMED),
    "null map key": ("a1f602", ErrorCode.MALFORMED),
    "invalid utf-8": ("62c328", ErrorCode.MALFORMED),
    "bad two-byte simple value": ("f813", ErrorCode.MALFORMED),
    "trailing byte": ("0000", ErrorCode.MALFORMED),
    "trailing item after a map": ("a0a0", ErrorCode.MALFORMED),
    "empty input": ("", ErrorCode.MALFORMED),
    "truncated argument": ("19ff", ErrorCode.MALFORMED),
    "truncated string": ("430102", ErrorCode.MALFORMED),
    "truncated array": ("830102", ErrorCode.MALFORMED),
    "truncated map": ("a16161", ErrorCode.MALFORMED),
    "truncated double": ("fb3ff80000", ErrorCode.MALFORMED),
    "string length far beyond the input": ("5bffffffffffffffff00", ErrorCode.MALFORMED),
}


@pytest.mark.parametrize(("hex_bytes", "code"), STRUCTURAL.values(), ids=list(STRUCTURAL))
def test_structural_refusals(hex_bytes: str, code: ErrorCode) -> None:
    assert refused(bytes.fromhex(hex_bytes)) is code


def test_depth_over_limit_is_refused() -> None:
    too_deep = b"\x81" * (MAX_DEPTH + 1) + b"\x00"
    assert refused(too_deep) is ErrorCode.MALFORMED
    map_deep = b"\xa1\x61a" * (MAX_DEPTH + 1) + b"\x00"
    assert refused(map_deep) is ErrorCode.MALFORMED


def test_every_truncation_of_a_valid_item_is_refused() -> None:
    data = encode({"t": "hello", "ids": [b"\x01" * 32, b"\x02" * 32], "n": 70000, "f": 0.1})
    decode(data)
    for cut in range(len(data)):
        assert refused(data[:cut]) is ErrorCode.MALFORMED, cut


# -- non-canonical forms ------------------------------------------------------------

NON_CANONICAL = {
    "int 5 in one extra byte": "1805",
    "int 24 in two bytes": "190018",
    "int 255 in four bytes": "1a000000ff",
    "int 65535 in eight bytes": "1b000000000000ffff",
    "negative int in one extra byte": "3800",
    "byte string length in one extra byte": "580141",
    "text string length in two bytes": "79000161",
    "array length in one extra byte": "980100",
    "map length in one extra byte": "b801616100",
    "map keys out of order": "a2616201616100",
    "longer key before shorter": "a262616101616202",
    "1.5 as a double": "fb3ff8000000000000",
    "1.5 as a single": "fa3fc00000",
    "NaN as a single": "fa7fc00000",
    "NaN with payload": "f97e01",
    "infinity as a double": "fb7ff0000000000000",
}


@pytest.mark.parametrize("hex_bytes", NON_CANONICAL.values(), ids=list(NON_CANONICAL))
def test_non_canonical_encodings_are_refused(hex_bytes: str) -> None:
    data = bytes.fromhex(hex_bytes)
    # it is well-formed CBOR that a lax decoder accepts...
    cbor2.loads(data)
    # ...but not what we would have written
    assert refused(data) is ErrorCode.NON_CANONICAL


# -- item bombs -----------------------------------------------------------------------


def test_array_of_empty_arrays_bomb_is_refused_before_cbor2_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A megabyte of empty arrays would cost tens of MB in cbor2: the scan refuses it."""
    n = 1024 * 1024
    bomb = b"\x9a" + n.to_bytes(4, "big") + b"\x80" * n
    calls: list[bytes] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0])
        raise AssertionError("cbor2 must not see an item bomb")

    monkeypatch.setattr(cbor2, "loads", spy)
    assert refused(bomb) is ErrorCode.TOO_LARGE
    # nested bombs whose every array is small are refused just the same
    nested = b"\x98\x40" + b"".join(b"\x98\x40" + b"\x80" * 64 for _ in range(64))
    assert refused(nested) is ErrorCode.TOO_LARGE
    assert calls == []


def test_item_scan_stops_at_the_first_header_of_a_bomb() -> None:
    """The scan refuses a claimed count at once, without walking the body."""
    n = 1024 * 1024
    with pytest.raises(ProtocolError) as info:
        # the body is absent: a full walk would report truncation instead
        count_items(b"\x9a" + n.to_bytes(4, "big"), DEFAULT_MAX_ITEMS)
    assert info.value.code is ErrorCode.TOO_LARGE
    with pytest.raises(ProtocolError) as info:
        count_items(b"\xba" + (DEFAULT_MAX_ITEMS // 2 + 1).to_bytes(4, "big"), DEFAULT_MAX_ITEMS)
    assert info.value.code is ErrorCode.TOO_LARGE


# -- properties ---------------------------------------------------------------------------

keys = st.one_of(st.text(max_size=8), st.binary(max_size=8))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)


def cbor_values(depth: int) -> st.SearchStrategy[object]:
    if depth == 0:
        return scalars
    inner = cbor_values(depth - 1)
    return st.one_of(
        scalars,
        st.lists(inner, max_size=4),
        st.dictionaries(keys, inner, max_size=4),
    )


@settings(max_examples=fuzz_scale(300), deadline=None)
@given(cbor_values(4))
def test_random_values_round_trip(value: object) -> None:
    data = encode(value)
    back = decode(data)
    assert back == value
    assert encode(back) == data


def _only_protocol_errors(data: bytes) -> None:
    try:
        value = decode(data)
    except ProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)
    else:
        # whatever decodes is canonical: it re-encodes to the very same bytes
        assert encode(value) == data


@settings(max_examples=fuzz_scale(500), deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    _only_protocol_errors(data)


@settings(max_examples=fuzz_scale(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cbor_values(3), st.data())
def test_mutated_encodings_decode_or_raise_protocol_error(
    value: object, data: st.DataObject
) -> None:
    raw = bytearray(encode(value))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = data.draw(st.integers(0, len(raw)))
        if op == "flip" and pos < len(raw):
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "insert":
            raw[pos:pos] = bytes([data.draw(st.integers(0, 255))])
        elif op == "delete" and pos < len(raw):
            del raw[pos]
        elif op == "truncate":
            del raw[pos:]
    _only_protocol_errors(bytes(raw))


@pytest.mark.parametrize(
    "hex_bytes",
    ["f7", "e5", "f820", "f8ff", "81f7", "a16161f7"],  # undefined, simple(5), simple(32), ...
)
def test_simple_values_other_than_false_true_null_are_refused(hex_bytes: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(bytes.fromhex(hex_bytes))
    assert info.value.code is ErrorCode.MALFORMED


def test_false_true_null_and_floats_are_accepted() -> None:
    assert decode(bytes.fromhex("83f4f5f6")) == [False, True, None]
    assert decode(encode(1.5)) == 1.5



@settings(max_examples=fuzz_scale(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cbor_values(3), st.data())
def test_the_short_way_accepts_exactly_what_the_scanned_way_does(
    value: object, data: st.DataObject
) -> None:
    """Input no longer than its item bound skips the header scan; what it
    accepts, the reference way (scan, decode, compare) accepts too, with the
    same value, and what it refuses goes the reference way for the error."""
    raw = bytearray(encode(value))
    for _ in range(data.draw(st.integers(0, 3))):
        pos = data.draw(st.integers(0, len(raw)))
        raw[pos:pos] = bytes([data.draw(st.sampled_from([0xF7, 0xE5, 0xF8, 0xC1, 0x9F, 0xFF, 0]))])
    blob = bytes(raw)
    short = _cbor._decode_short(blob)
    try:
        reference = _cbor._decode_scanned(blob, len(blob) + 1)
    except ProtocolError:
        assert short is _cbor._NOT_SHORT
    else:
        assert short is not _cbor._NOT_SHORT
        assert encode(short) == encode(reference) == blob


def _reordered(value: object, data: st.DataObject) -> object:
    """``value`` with the keys of each map in an order drawn by Hypothesis."""
    if isinstance(value, list):
        return [_reordered(v, data) for v in value]
    if isinstance(value, dict):
        order = data.draw(st.permutations(list(value)))
        return {k: _reordered(value[k], data) for k in order}
    return value


@settings(max_examples=fuzz_scale(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cbor_values(3), st.data())
def test_the_short_way_refuses_maps_out_of_order_as_the_scanned_way_does(
    value: object, data: st.DataObject
) -> None:
    """The short way checks text-keyed maps without sorting them again; any key
    order but the canonical one must still be refused, exactly as the reference
    way refuses it."""
    blob = cbor2.dumps(_reordered(value, data))  # plain encoding: keys as drawn
    short = _cbor._decode_short(blob)
    try:
        reference = _cbor._decode_scanned(blob, len(blob) + 1)
    except ProtocolError as exc:
        assert short is _cbor._NOT_SHORT
        assert exc.code is ErrorCode.NON_CANONICAL
    else:
        assert short is not _cbor._NOT_SHORT
        assert encode(short) == encode(reference) == blob


@settings(max_examples=fuzz_scale(300), deadline=None)
@given(st.lists(st.text(max_size=30), min_size=2, max_size=6, unique=True), st.data())
def test_text_key_order_agrees_with_cbor2_canonical_order(
    names: list[str], data: st.DataObject
) -> None:
    canonical = tuple(_cbor._loads(encode(dict.fromkeys(names, 0))))  # decoding keeps order
    order = tuple(data.draw(st.permutations(names)))
    assert _cbor._text_keys_in_order(order) is (order == canonical)


def test_key_order_memo_is_bounded() -> None:
    """Network input chooses map keys: only small key sets are remembered, and
    only so many of them."""
    big = {("k" * 200) + str(i): i for i in range(3)}
    assert decode(encode(big)) == big
    assert tuple(big) not in _cbor._KEY_ORDER
    for i in range(_cbor._KEY_ORDER_MAX + 10):
        decode(encode({f"a{i}": 0, f"b{i}": 1}))
    assert 0 < len(_cbor._KEY_ORDER) <= _cbor._KEY_ORDER_MAX
    assert ("a0", "b0") not in _cbor._KEY_ORDER  # forgotten when the memo filled up
