"""The relay's byte-slicing fast paths accept exactly what the strict decoder does.

``decode_frame`` reads a canonical ``pub`` frame, and ``split_wire`` a
canonical envelope array, by slicing bytes; everything else goes to the
general decoder. These properties compare them with the general path
(``decode_frame_general``, ``split_wire_general``) on valid inputs and on
mutations of them: same result, or the same ProtocolError code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.wire._cbor import bstr_at, encode
from peer.wire._envelope import split_wire, split_wire_general
from peer.wire._errors import ProtocolError
from peer.wire._frames import decode_frame, decode_frame_general, encode_frame
from peer.wire._frametypes import Pub
from peer.wire._limits import MAX_ENVELOPE
from tests._fuzz import fuzz_scale

# byte-string lengths around every header-width boundary, and the size limit
_BOUNDARY_SIZES = [0, 1, 23, 24, 25, 255, 256, 257, 65535, 65536, 65537]
_SIZES = st.one_of(
    st.sampled_from(_BOUNDARY_SIZES),
    st.integers(0, 600),
    st.sampled_from([MAX_ENVELOPE - 67, MAX_ENVELOPE - 66, MAX_ENVELOPE - 65]),
)


def _outcome(fn: Callable[[bytes], Any], data: bytes) -> tuple[str, Any]:
    try:
        return ("ok", fn(data))
    except ProtocolError as exc:
        return ("error", exc.code)


def _wire(size: int, fill: int) -> bytes:
    return encode([bytes([fill]) * size, bytes([fill ^ 0x55]) * 64])


@st.composite
def _mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """``valid`` unchanged, or with one of the edits a hostile peer might try."""
    data = bytearray(valid)
    kind = draw(st.integers(0, 8))
    pos = draw(st.integers(0, max(0, len(data) - 1)))
    head = draw(st.integers(0, min(len(data), 12)))  # edits near the headers matter most
    if kind == 1 and data:
        data[pos] = draw(st.integers(0, 255))
    elif kind == 2 and data:
        data[head if head < len(data) else pos] = draw(st.integers(0, 255))
    elif kind == 3:
        data.insert(draw(st.sampled_from([pos, head])), draw(st.integers(0, 255)))
    elif kind == 4 and data:
        del data[draw(st.sampled_from([pos, head])) % len(data)]
    elif kind == 5:
        data = data[: draw(st.integers(0, len(data)))]
    elif kind == 6:
        data += draw(st.binary(min_size=1, max_size=4))
    elif kind == 7:
        # a longer header than needed for the same length (non-canonical)
        for i, b in enumerate(data[:6]):
            if 0x40 <= b < 0x58 and i in (1, 3):
                data[i : i + 1] = bytes([0x58, b - 0x40])
                break
            if b == 0x58 and i in (1, 3):
                data[i : i + 2] = bytes([0x59, 0, data[i + 1]])
                break
    elif kind == 8:
        data[-1:] = draw(st.binary(max_size=2))
    return bytes(data)


@st.composite
def _wires(draw: st.DrawFn) -> bytes:
    return draw(_mutated(_wire(draw(_SIZES), draw(st.integers(0, 255)))))


@st.composite
def _pub_frames(draw: st.DrawFn) -> bytes:
    size = draw(st.one_of(_SIZES, st.just(MAX_ENVELOPE + 1)))
    e = bytes([draw(st.integers(0, 255))]) * size
    if draw(st.booleans()):
        e = _wire(max(0, size - 67), 7)
    return draw(_mutated(encode_frame("pub", e=e)))


@settings(max_examples=fuzz_scale(600), deadline=None)
@given(_wires())
def test_split_wire_fast_path_matches_general(wire: bytes) -> None:
    assert _outcome(split_wire, wire) == _outcome(split_wire_general, wire)


@settings(max_examples=fuzz_scale(600), deadline=None)
@given(_pub_frames())
def test_pub_fast_path_matches_general(frame: bytes) -> None:
    assert _outcome(decode_frame, frame) == _outcome(decode_frame_general, frame)


@settings(max_examples=fuzz_scale(300), deadline=None)
@given(st.binary(max_size=80))
def test_fast_paths_match_general_on_random_bytes(data: bytes) -> None:
    for prefix in (b"", b"\x82", b"\xa2\x61e"):
        blob = prefix + data
        assert _outcome(split_wire, blob) == _outcome(split_wire_general, blob)
        assert _outcome(decode_frame, blob) == _outcome(decode_frame_general, blob)
        tailed = blob + b"\x61t\x63pub"
        assert _outcome(decode_frame, tailed) == _outcome(decode_frame_general, tailed)


@pytest.mark.parametrize("size", _BOUNDARY_SIZES)
def test_bstr_at_reads_canonical_headers_only(size: int) -> None:
    data = cbor2.dumps(b"x" * size)
    assert bstr_at(data, 0) == (len(data) - size, len(data))
    assert bstr_at(data[:-1], 0) is None  # contents cut short
    if size < 256:  # the same length in a longer header is not canonical
        longer = b"\x59" + size.to_bytes(2, "big") + b"x" * size
        assert bstr_at(longer, 0) is None


def test_fast_paths_return_what_the_general_decoder_returns() -> None:
    wire = _wire(300, 1)
    frame = encode_frame("pub", e=wire)
    fast, general = decode_frame(frame), decode_frame_general(frame)
    assert fast == general and isinstance(fast, Pub) and type(fast.envelope) is bytes
    assert split_wire(wire) == split_wire_general(wire)
