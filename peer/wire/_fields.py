"""Field checks for decoded CBOR maps: frames, envelopes and DHT messages.

Each ``need_*`` reads one key of a decoded map and returns its value, or
raises :class:`ProtocolError` (``malformed`` for a wrong type or shape,
``too-large`` for a value over its limit), so a validated map can be indexed
without checking again. Pure functions; no I/O.
"""

from __future__ import annotations

import re
from typing import Any

from ._errors import ErrorCode, ProtocolError
from ._limits import MAX_TEXT_FIELD, MAX_TOPIC_BYTES

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


def fail(message: str) -> ProtocolError:
    """A ``malformed`` error to raise."""
    return ProtocolError(ErrorCode.MALFORMED, message)


def need_bytes(m: Map, key: str, size: int | None = None, max_size: int | None = None) -> bytes:
    value = m.get(key)
    if not isinstance(value, bytes):
        raise fail(f"field {key!r} must be a byte string")
    if size is not None and len(value) != size:
        raise fail(f"field {key!r} must be {size} bytes")
    if max_size is not None and len(value) > max_size:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"field {key!r} over {max_size} bytes")
    return value


def need_text(m: Map, key: str, max_bytes: int = MAX_TEXT_FIELD) -> str:
    value = m.get(key)
    if not isinstance(value, str):
        raise fail(f"field {key!r} must be a text string")
    if len(value.encode()) > max_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"field {key!r} over {max_bytes} bytes")
    return value


def need_uint(m: Map, key: str, max_value: int = 2**64 - 1) -> int:
    value = m.get(key)
    if type(value) is not int or value < 0 or value > max_value:
        raise fail(f"field {key!r} must be an unsigned integer <= {max_value}")
    return value


def need_list(m: Map, key: str, max_len: int) -> list[Any]:
    value = m.get(key)
    if not isinstance(value, list):
        raise fail(f"field {key!r} must be an array")
    if len(value) > max_len:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"field {key!r} over {max_len} entries")
    return value


def need_topic(value: object) -> str:
    if not is_topic(value):
        raise fail(f"not a valid topic: {value!r:.80}")
    assert isinstance(value, str)
    return value


def only_keys(m: Map, allowed: frozenset[str]) -> None:
    extra = m.keys() - allowed
    if extra:
        raise fail(f"unknown fields {sorted(extra, key=repr)!r:.80}")


def clip_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, never inside a character."""
    return text.encode()[:max_bytes].decode(errors="ignore")
