"""Link frames: their shapes, strict decoding and the stream record layer.

A frame is a canonical CBOR map whose ``"t"`` key names its type
(protocol-spec/frames.cddl). :func:`decode_frame` returns a validated
``Frame`` (type name plus the map) or raises :class:`ProtocolError`; the
validators check every field's type and size so the layers above can index
the map without checking again.

Over a byte stream (TCP, Trio memory streams) each record is preceded by its
length as a 4-byte big-endian integer; :class:`RecordBuffer` reassembles
records from arbitrary chunks. Over WebSocket a record is one binary message.

The ``pub`` frame, which a relay sees once per message, has one canonical
form (``a2 61 65 <bstr> 61 74 63 70 75 62``); :func:`decode_frame` recognises
it by its bytes and gives everything else to the general strict decoder, so
it accepts and refuses exactly what the general path would.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import _cbor
from ._errors import ErrorCode, ProtocolError
from ._limits import (
    MAX_ADDR_BYTES,
    MAX_CAPS,
    MAX_DHT_MESSAGE,
    MAX_ENVELOPE,
    MAX_FRAME_ITEMS,
    MAX_IDS_PER_FRAME,
    MAX_INTEREST_HOPS,
    MAX_LISTEN_ADDRS,
    MAX_PAGE_HEADS,
    MAX_PAGE_MESSAGES,
    MAX_RECORD,
    MAX_REQUEST_ID,
    MAX_TEXT_FIELD,
    MAX_TOPIC_BYTES,
    MAX_TOPICS_PER_FRAME,
)

Map = dict[str, Any]

_TOPIC_RE = re.compile(
    r"(?:[A-Za-z0-9][A-Za-z0-9_.\-]{0,63})"  # a channel
    r"|(?:dm/[0-9a-f]{64})"  # a DM conversation between two peers
    r"|(?:inbox/[0-9a-f]{64})"  # a peer's DM inbox (routing only)
    r"|(?:sys/[a-z0-9\-]{1,32})"  # a system topic
)


def is_topic(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) <= MAX_TOPIC_BYTES
        and _TOPIC_RE.fullmatch(value) is not None
    )


@dataclass(frozen=True, slots=True)
class Frame:
    type: str
    fields: Map


# -- field checks -------------------------------------------------------------


def _fail(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.MALFORMED, message)


def need_bytes(m: Map, key: str, size: int | None = None, max_size: int | None = None) -> bytes:
    value = m.get(key)
    if not isinstance(value, bytes):
        raise _fail(f"field {key!r} must be a byte string")
    if size is not None and len(value) != size:
        raise _fail(f"field {key!r} must be {size} bytes")
    if max_size is not None and len(value) > max_size:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"field {key!r} over {max_size} bytes")
    return value


def need_text(m: Map, key: str, max_bytes: int = MAX_TEXT_FIELD) -> str:
    value = m.get(key)
    if not isinstance(value, str):
        raise _fail(f"field {key!r} must be a text string")
    if len(value.encode()) > max_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"field {key!r} over {max_bytes} bytes")
    return value


def need_uint(m: Map, key: str, max_value: int = 2**64 - 1) -> int:
    value = m.get(key)
    if type(value) is not int or value < 0 or value > max_value:
        raise _fail(f"field {key!r} must be an unsigned integer <= {max_value}")
    return value


def need_list(m: Map, key: str, max_len: int) -> list[Any]:
    value = m.get(key)
    if not isinstance(value, list):
        raise _fail(f"field {key!r} must be an array")
    if len(value) > max_len:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"field {key!r} over {max_len} entries")
    return value


def need_topic(value: object) -> str:
    if not is_topic(value):
        raise _fail(f"not a valid topic: {value!r:.80}")
    assert isinstance(value, str)
    return value


def clip_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, never inside a character."""
    return text.encode()[:max_bytes].decode(errors="ignore")


def _only_keys(m: Map, allowed: frozenset[str]) -> None:
    extra = m.keys() - allowed
    if extra:
        raise _fail(f"unknown fields {sorted(extra, key=repr)!r:.80}")


# -- per-type validators -------------------------------------------------------


def _check_hello(m: Map) -> None:
    versions = need_list(m, "versions", 8)
    if not versions or any(type(v) is not int or not 0 < v < 2**16 for v in versions):
        raise _fail("versions must be a non-empty array of small unsigned integers")
    need_bytes(m, "id", 32)
    need_bytes(m, "pk", 32)
    need_bytes(m, "eph", 32)
    need_bytes(m, "nonce", 32)
    caps = need_list(m, "caps", MAX_CAPS)
    if any(not isinstance(c, str) or not 0 < len(c) <= 32 for c in caps):
        raise _fail("caps must be short text strings")
    listen = need_list(m, "listen", MAX_LISTEN_ADDRS)
    if any(not isinstance(a, str) or len(a.encode()) > MAX_ADDR_BYTES for a in listen):
        raise _fail("listen must be text addresses")
    need_text(m, "agent", 64)


def _check_auth(m: Map) -> None:
    need_bytes(m, "sig", 64)


def _check_error(m: Map) -> None:
    need_text(m, "code", 32)
    need_text(m, "msg")


def _check_sub(m: Map) -> None:
    entries = need_list(m, "topics", MAX_TOPICS_PER_FRAME)
    for entry in entries:
        if not isinstance(entry, list) or len(entry) != 2:
            raise _fail("sub entries are [topic, hops]")
        need_topic(entry[0])
        hops = entry[1]
        if type(hops) is not int or not 0 <= hops <= MAX_INTEREST_HOPS:
            raise _fail(f"hops must be 0..{MAX_INTEREST_HOPS}")


def _check_unsub(m: Map) -> None:
    for topic in need_list(m, "topics", MAX_TOPICS_PER_FRAME):
        need_topic(topic)


def _check_pub(m: Map) -> None:
    need_bytes(m, "e", max_size=MAX_ENVELOPE)


def _check_topic_only(m: Map) -> None:
    need_topic(m.get("topic"))


def _check_ids(ids: list[Any]) -> None:
    if any(not isinstance(i, bytes) or len(i) != 32 for i in ids):
        raise _fail("ids must be 32-byte strings")


def _check_ihave(m: Map) -> None:
    need_topic(m.get("topic"))
    _check_ids(need_list(m, "ids", MAX_IDS_PER_FRAME))


def _check_iwant(m: Map) -> None:
    _check_ids(need_list(m, "ids", MAX_IDS_PER_FRAME))


def _check_dht(m: Map) -> None:
    need_bytes(m, "m", max_size=MAX_DHT_MESSAGE)


def _check_cureq(m: Map) -> None:
    need_uint(m, "r", MAX_REQUEST_ID)
    need_topic(m.get("topic"))
    need_uint(m, "after")
    need_uint(m, "since")
    limit = need_uint(m, "limit", MAX_PAGE_MESSAGES)
    if limit < 1:
        raise _fail("limit must be at least 1")
    ranged = [k in m for k in ("sender", "first", "last")]
    if any(ranged) and not all(ranged):
        raise _fail("sender, first and last come together")
    if all(ranged):
        need_bytes(m, "sender", 32)
        if need_uint(m, "first") > need_uint(m, "last"):
            raise _fail("first is after last")


def _check_cupage(m: Map) -> None:
    need_uint(m, "r", MAX_REQUEST_ID)
    need_topic(m.get("topic"))
    msgs = need_list(m, "m", MAX_PAGE_MESSAGES)
    if not all(isinstance(e, bytes) and len(e) <= MAX_ENVELOPE for e in msgs):
        raise _fail("m holds envelopes (byte strings)")
    need_uint(m, "next")
    if not isinstance(m.get("more"), bool):
        raise _fail("more must be a boolean")
    heads = need_list(m, "heads", MAX_PAGE_HEADS)
    for entry in heads:
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or not isinstance(entry[0], bytes)
            or len(entry[0]) != 32
            or type(entry[1]) is not int
            or not 0 <= entry[1] < 2**64
        ):
            raise _fail("heads entries are [peer id, sequence]")
    if "err" in m:
        need_text(m, "err", 32)


def _check_ping(m: Map) -> None:
    need_uint(m, "n")


_SPEC: dict[str, tuple[frozenset[str], Callable[[Map], None]]] = {
    "hello": (
        frozenset({"t", "versions", "id", "pk", "eph", "nonce", "caps", "listen", "agent"}),
        _check_hello,
    ),
    "auth": (frozenset({"t", "sig"}), _check_auth),
    "error": (frozenset({"t", "code", "msg"}), _check_error),
    "sub": (frozenset({"t", "topics"}), _check_sub),
    "unsub": (frozenset({"t", "topics"}), _check_unsub),
    "pub": (frozenset({"t", "e"}), _check_pub),
    "graft": (frozenset({"t", "topic"}), _check_topic_only),
    "prune": (frozenset({"t", "topic"}), _check_topic_only),
    "ihave": (frozenset({"t", "topic", "ids"}), _check_ihave),
    "iwant": (frozenset({"t", "ids"}), _check_iwant),
    "ping": (frozenset({"t", "n"}), _check_ping),
    "dht": (frozenset({"t", "m"}), _check_dht),
    "pong": (frozenset({"t", "n"}), _check_ping),
    "cureq": (
        frozenset({"t", "r", "topic", "after", "since", "limit", "sender", "first", "last"}),
        _check_cureq,
    ),
    "cupage": (
        frozenset({"t", "r", "topic", "m", "next", "more", "heads", "err"}),
        _check_cupage,
    ),
    "push": (frozenset({"t", "e"}), _check_pub),
}

FRAME_TYPES = frozenset(_SPEC)


_PUB_HEAD = b"\xa2\x61e"  # a map of two entries, first key "e"
_PUB_TAIL = b"\x61t\x63pub"  # last entry "t": "pub"


def _fast_pub(data: bytes, max_size: int) -> Frame | None:
    """A canonical ``pub`` frame read by slicing; None for anything else."""
    if (
        type(data) is not bytes
        or not data.startswith(_PUB_HEAD)
        or not data.endswith(_PUB_TAIL)
        or len(data) > max_size
    ):
        return None
    span = _cbor.bstr_at(data, 3)
    if span is None or span[1] != len(data) - len(_PUB_TAIL) or span[1] - span[0] > MAX_ENVELOPE:
        return None
    return Frame("pub", {"e": data[span[0] : span[1]], "t": "pub"})


def decode_frame(data: bytes, max_size: int = MAX_RECORD) -> Frame:
    """Decode and validate one frame, or raise ProtocolError."""
    fast = _fast_pub(data, max_size)
    if fast is not None:
        return fast
    return decode_frame_general(data, max_size)


def decode_frame_general(data: bytes, max_size: int = MAX_RECORD) -> Frame:
    """:func:`decode_frame` without the ``pub`` fast path (the reference for tests)."""
    if len(data) > max_size:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"frame of {len(data)} bytes over {max_size}")
    obj = _cbor.decode(data, max_items=MAX_FRAME_ITEMS)
    if not isinstance(obj, dict):
        raise _fail("a frame is a CBOR map")
    kind = obj.get("t")
    if not isinstance(kind, str) or kind not in _SPEC:
        raise _fail(f"unknown frame type {kind!r:.40}")
    allowed, check = _SPEC[kind]
    _only_keys(obj, allowed)
    check(obj)
    return Frame(kind, obj)


def encode_frame(kind: str, **fields: Any) -> bytes:
    """Encode a frame of type ``kind``; the caller supplies well-formed fields."""
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
