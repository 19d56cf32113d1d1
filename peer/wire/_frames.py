"""Link frames on the wire: strict decoding into typed frames, and the stream record layer.

A frame is a canonical CBOR map whose ``"t"`` key names its type
(protocol-spec/frames.cddl). :func:`decode_frame` returns the validated frame
as an instance of its class (:mod:`._frametypes`: ``Pub``, ``Sub``, ...) or
raises :class:`ProtocolError`; a frame is sent as ``Pong(n=7).encode()``.

Over a byte stream (TCP, Trio memory streams) each record is preceded by its
length as a 4-byte big-endian integer; :class:`RecordBuffer` reassembles
records from arbitrary chunks. Over WebSocket a record is one binary message.

The ``pub`` frame, which a relay sees once per message, has one canonical
form (``a2 61 65 <bstr> 61 74 63 70 75 62``); :func:`decode_frame` recognises
it by its bytes and gives everything else to the general strict decoder, so
it accepts and refuses exactly what the general path would.
"""

from __future__ import annotations

import struct
from typing import Any

from . import _cbor
from ._errors import ErrorCode, ProtocolError
from ._fields import (
    Map,
    clip_utf8,
    fail,
    is_topic,
    need_bytes,
    need_list,
    need_text,
    need_topic,
    need_uint,
)
from ._frametypes import FRAME_TYPES, AnyFrame, Pub
from ._limits import MAX_ENVELOPE, MAX_FRAME_ITEMS, MAX_RECORD

__all__ = [
    "FRAME_TYPES",
    "AnyFrame",
    "Map",
    "RecordBuffer",
    "clip_utf8",
    "decode_frame",
    "decode_frame_general",
    "encode_frame",
    "frame_record",
    "is_topic",
    "need_bytes",
    "need_list",
    "need_text",
    "need_topic",
    "need_uint",
]

_PUB_HEAD = b"\xa2\x61e"  # a map of two entries, first key "e"
_PUB_TAIL = b"\x61t\x63pub"  # last entry "t": "pub"
_PUB_TAIL_LEN = len(_PUB_TAIL)


def _fast_pub(data: bytes, max_size: int) -> Pub | None:
    """A canonical ``pub`` frame read by slicing; None for anything else."""
    if (
        type(data) is not bytes
        or not data.startswith(_PUB_HEAD)
        or not data.endswith(_PUB_TAIL)
        or len(data) > max_size
    ):
        return None
    span = _cbor.bstr_at(data, 3)
    if span is None or span[1] != len(data) - _PUB_TAIL_LEN or span[1] - span[0] > MAX_ENVELOPE:
        return None
    return Pub(data[span[0] : span[1]])


def decode_frame(data: bytes, max_size: int = MAX_RECORD) -> AnyFrame:
    """Decode and validate one frame, or raise ProtocolError."""
    fast = _fast_pub(data, max_size)
    if fast is not None:
        return fast
    return decode_frame_general(data, max_size)


def decode_frame_general(data: bytes, max_size: int = MAX_RECORD) -> AnyFrame:
    """:func:`decode_frame` without the ``pub`` fast path (the reference for tests)."""
    if len(data) > max_size:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"frame of {len(data)} bytes over {max_size}")
    obj = _cbor.decode(data, max_items=MAX_FRAME_ITEMS)
    if not isinstance(obj, dict):
        raise fail("a frame is a CBOR map")
    kind = obj.get("t")
    cls = FRAME_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise fail(f"unknown frame type {kind!r:.40}")
    return cls.from_map(obj)


def encode_frame(kind: str, **fields: Any) -> bytes:
    """Encode a map as a frame of type ``kind``, unchecked: for tests that build
    frames the classes cannot (unknown or bad fields). Code sends ``Cls(...).encode()``."""
    fields["t"] = kind
    return _cbor.encode(fields)


# -- stream records ------------------------------------------------------------

_LEN = struct.Struct(">I")


def frame_record(payload: bytes) -> bytes:
    """Prefix ``payload`` with its length for a byte-stream transport."""
    return _LEN.pack(len(payload)) + payload


class RecordBuffer:
    """Reassembles length-prefixed records from a byte stream, any split."""

    def __init__(self, max_record: int = MAX_RECORD) -> None:
        self._buf = bytearray()
        self._max = max_record

    def feed(self, data: bytes | bytearray) -> list[bytes]:
        """Add bytes; return the complete records they finish, in order."""
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= 4:
            (size,) = _LEN.unpack_from(self._buf)
            if size > self._max:
                raise ProtocolError(ErrorCode.TOO_LARGE, f"record of {size} bytes over {self._max}")
            if len(self._buf) < 4 + size:
                break
            out.append(bytes(self._buf[4 : 4 + size]))
            del self._buf[: 4 + size]
        return out

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a whole record."""
        return len(self._buf)
