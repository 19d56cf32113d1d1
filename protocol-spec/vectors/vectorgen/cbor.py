"""cbor.json: the CBOR profile on its own, accepted and refused items."""

from __future__ import annotations

from peer import ProtocolError
from peer.wire import _cbor

from .common import Json, c, hx, nested_arrays, raw_map

# -- the bare CBOR profile -------------------------------------------------------------


def build_cbor() -> Json:
    accepted: list[tuple[str, bytes, str]] = [
        ("depth-16", nested_arrays(16, b"\x00"),
         "an integer inside 16 nested arrays: depth 16, the deepest allowed"),
        ("depth-16-empty", nested_arrays(16, b"\x80"),
         "17 arrays, but the innermost (empty) one is at depth 16"),
        ("length-first-key-order", raw_map((c("b"), c(0)), (c(b"zz"), c(0))),
         "keys sorted by encoded length first: \"b\" (2 bytes) before h'7a7a' (3 bytes)"),
        ("float16", bytes.fromhex("f93e00"), "1.5 in its shortest (half precision) form"),
        ("float64", c(0.1), "0.1 needs double precision"),
        ("nan", bytes.fromhex("f97e00"), "the one accepted NaN encoding"),
        ("uint64-max", c(2**64 - 1), "largest unsigned integer"),
        ("nint64-min", c(-(2**64)), "smallest negative integer"),
        ("simple-values", c([False, True, None]), "false, true, null: the only simple values"),
        ("max-items", c([0] * 4095),
         "an array of 4095 integers: 4096 data items, the most a frame may hold"),
        ("utf8", c({"text": "Grüße 👋"}), "text is UTF-8"),
    ]
    rejected: list[tuple[str, bytes, str, str]] = [
        ("empty", b"", "malformed", "no data item at all"),
        ("truncated", bytes.fromhex("62ff"), "malformed", "text string shorter than its header"),
        ("trailing-bytes", bytes.fromhex("0000"), "malformed", "two items where one is expected"),
        ("tag-epoch", bytes.fromhex("c11a5f5e1000"), "malformed", "tag 1 (epoch time)"),
        ("tag-bignum", bytes.fromhex("c249010000000000000000"), "malformed", "tag 2 (bignum)"),
        ("tag-selfdescribe", bytes.fromhex("d9d9f700"), "malformed", "tag 55799"),
        ("indefinite-array", bytes.fromhex("9f00ff"), "malformed", "indefinite-length array"),
        ("indefinite-map", bytes.fromhex("bf616100ff"), "malformed", "indefinite-length map"),
        ("indefinite-bytes", bytes.fromhex("5f4100ff"), "malformed",
         "indefinite-length byte string"),
        ("lone-break", bytes.fromhex("ff"), "malformed", "break stop code outside any item"),
        ("reserved-info", bytes.fromhex("1c"), "malformed", "additional information 28"),
        ("depth-17", nested_arrays(17, b"\x00"), "malformed",
         "an integer inside 17 nested arrays: depth 17"),
        ("duplicate-key", raw_map((c("a"), c(0)), (c("a"), c(1))), "malformed",
         "the same key twice"),
        ("integer-key", raw_map((c(1), c(0))), "malformed", "map key is an integer"),
        ("array-key", raw_map((c([]), c(0))), "malformed", "map key is an array"),
        ("bad-utf8", bytes.fromhex("62c328"), "malformed", "invalid UTF-8 in a text string"),
        ("bad-simple", bytes.fromhex("f818"), "malformed",
         "simple value 24 in the two-byte form (reserved)"),
        ("undefined", bytes.fromhex("f7"), "malformed", "undefined (simple value 23)"),
        ("simple-0", bytes.fromhex("e0"), "malformed", "simple value 0"),
        ("simple-19", bytes.fromhex("f3"), "malformed", "simple value 19"),
        ("simple-255", bytes.fromhex("f8ff"), "malformed", "simple value 255 (two-byte form)"),
        ("non-canonical-int", bytes.fromhex("1817"), "non-canonical",
         "23 in two bytes (fits in the initial byte)"),
        ("non-canonical-length", bytes.fromhex("780161"), "non-canonical",
         "one-byte text string with a two-byte length"),
        ("non-canonical-float", bytes.fromhex("fa3fc00000"), "non-canonical",
         "1.5 in single precision (half would do)"),
        ("non-canonical-nan", bytes.fromhex("f97e01"), "non-canonical", "NaN with a payload"),
        ("non-canonical-key-order", raw_map((c("b"), c(0)), (c("a"), c(0))), "non-canonical",
         "keys out of order"),
        ("bytewise-key-order", raw_map((c(b"zz"), c(0)), (c("b"), c(0))), "non-canonical",
         "RFC 8949 bytewise order, not the length-first order this profile uses"),
        ("too-many-items", c([0] * 4096), "too-large", "4097 data items"),
        ("huge-count", bytes.fromhex("9b0000000100000000"), "too-large",
         "an array header announcing 2^32 elements (refused before reading them)"),
    ]
    for name, data, _note in accepted:
        value = _cbor.decode(data)
        assert c(value) == data, name
    for name, data, code, _note in rejected:
        try:
            _cbor.decode(data)
        except ProtocolError as exc:
            assert exc.code.value == code, (name, exc)
        else:
            raise AssertionError(f"{name} was accepted")
    return {
        "description": (
            "The strict CBOR profile on its own: each hex string is one complete input "
            "to the decoder, with the default limit of 4096 data items."
        ),
        "spec": "README.md#2-cbor-profile",
        "max_items": 4096,
        "accepted": [{"name": n, "hex": hx(d), "note": note} for n, d, note in accepted],
        "rejected": [
            {"name": n, "layer": "cbor", "hex": hx(d), "code": code, "note": note}
            for n, d, code, note in rejected
        ],
    }
