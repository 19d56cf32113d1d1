"""JSON in and out of the local API: errors, query parameters, payload values,
and the one JSON form of an inbox message (``/messages``, streams, webhooks).

Payloads are JSON values, carried as CBOR in the envelope; an object
``{"$b64": "..."}`` stands for raw bytes both ways, so files and images
travel without base64 inside the CBOR.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse

from peer.node._inbox import InboxMessage
from peer.wire._blobframes import (
    MAX_ATTACHMENT_NAME,
    MAX_ATTACHMENTS,
    MAX_BLOB_SIZE,
    MAX_MEDIA_TYPE,
    Attachment,
)
from peer.wire._frames import is_topic
from peer.wire._identity import parse_peer_id

MAX_WAIT = 60.0


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def digits(raw: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also takes ``²`` and other digits ``int`` refuses."""
    return raw.isascii() and raw.isdigit()


def no_constant(name: str) -> Any:
    raise ApiError(400, "invalid", f"{name} is not a JSON number (no NaN or Infinity)")


def check_json_value(value: Any, depth: int = 0) -> None:
    """Refuse what the wire or a reader could not carry: lone surrogates in text,
    numbers that overflowed to infinity (``1e999``), nesting past 64 levels."""
    if depth > 64:
        raise ApiError(400, "invalid", "request body nests too deeply")
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(400, "invalid", "text holds a lone surrogate") from None
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ApiError(400, "invalid", "numbers must be finite")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_json_value(key, depth + 1)
            check_json_value(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_json_value(item, depth + 1)


def json_to_cbor_value(value: Any, depth: int = 0) -> Any:
    """A JSON value as the CBOR value we put in a payload (bytes for {"$b64": ...})."""
    if depth > 12:
        raise ApiError(400, "invalid", "payload nests too deeply")
    if isinstance(value, dict):
        if set(value) == {"$b64"} and isinstance(value["$b64"], str):
            try:
                return base64.b64decode(value["$b64"], validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(400, "invalid", "$b64 is not base64") from None
        return {str(k): json_to_cbor_value(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [json_to_cbor_value(v, depth + 1) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str | float):
        return value
    if isinstance(value, int):
        if not -(2**64) <= value < 2**64:
            raise ApiError(400, "invalid", "payload integers must fit in 64 bits")
        return value
    raise ApiError(400, "invalid", f"unsupported payload value {type(value).__name__}")


def cbor_to_json_value(value: Any) -> Any:
    """The inverse of :func:`json_to_cbor_value` for what a peer received."""
    if isinstance(value, bytes):
        return {"$b64": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {_json_key(k): cbor_to_json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [cbor_to_json_value(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):  # no JSON form: null
        return None
    # text from the wire is valid UTF-8 (the strict decoder sees to it): as it is
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bytes):
        return base64.b64encode(key).decode()
    return repr(key)  # an integer, a float or a bool key from another implementation


def message_json(message: InboxMessage) -> dict[str, Any]:
    """An inbox message as every endpoint shows it (``/messages``, streams, webhooks)."""
    item = message.to_json()
    item["timestamp"] = iso(message.ts)
    item["received"] = iso(message.received_ms)
    if message.has_payload:
        item["payload"] = cbor_to_json_value(message.payload)
    return item


BlobFacts = Callable[[bytes], "tuple[str, str, int] | None"]


def parse_attachments(value: Any, held: BlobFacts) -> tuple[Attachment, ...]:
    """``attachments`` of ``POST /send``: ``[{"id", "name"?, "type"?, "size"?}]``, at most
    ``MAX_ATTACHMENTS``. A message may only refer to blobs this peer holds (its author
    is where carriers fetch from): ``held(id)`` gives the blob's ``(name, type, size)``
    or None (400 ``unknown-blob``). What is left out is filled from the blob; a name or
    type given describes it for the recipients; a size must be the blob's."""
    if value is None or value == []:
        return ()
    if not isinstance(value, list) or len(value) > MAX_ATTACHMENTS:
        raise ApiError(400, "invalid", f"attachments: a list of at most {MAX_ATTACHMENTS}")
    return tuple(_attachment(item, held) for item in value)


def _attachment(item: Any, held: BlobFacts) -> Attachment:
    if not isinstance(item, dict) or not set(item) <= {"id", "name", "type", "size"}:
        raise ApiError(400, "invalid", "an attachment is {id, name?, type?, size?}")
    blob = hex_id(item.get("id"), "attachment id")
    facts = held(blob)
    if facts is None:
        raise ApiError(
            400, "unknown-blob",
            f"attachment {blob.hex()}: no such blob here (upload it with POST /blobs first)",
        )
    name, kind, size = item.get("name", facts[0]), item.get("type", facts[1]), item.get("size")
    if size is None:
        size = facts[2]
    if type(size) is not int or not 0 <= size <= MAX_BLOB_SIZE:
        raise ApiError(400, "invalid", "attachment size: bytes, an integer")
    if size != facts[2]:
        raise ApiError(
            400, "invalid", f"attachment {blob.hex()}: size {size} ≠ the blob's {facts[2]}"
        )
    if not isinstance(name, str) or len(name.encode()) > MAX_ATTACHMENT_NAME:
        raise ApiError(400, "invalid", f"attachment name: text of {MAX_ATTACHMENT_NAME} bytes")
    if not isinstance(kind, str) or not 0 < len(kind.encode()) <= MAX_MEDIA_TYPE:
        raise ApiError(400, "invalid", "attachment type: a media type")
    return Attachment(blob, name, kind, size)


def hex_id(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise ApiError(400, "invalid", f"{name} must be a 64-hex-digit id")
    try:
        return parse_peer_id(value)
    except ValueError:
        raise ApiError(400, "invalid", f"{name} must be a 64-hex-digit id") from None


def bool_param(request: HTTPConnection, name: str) -> bool | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise ApiError(400, "invalid", f"{name} must be true or false")


def int_param(request: HTTPConnection, name: str, default: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    return parse_int(raw, name, maximum)


def parse_int(raw: str, name: str, maximum: int) -> int:
    if not digits(raw) or int(raw) > maximum:
        raise ApiError(400, "invalid", f"{name} must be an integer 0..{maximum}")
    return int(raw)


def wait_param(request: HTTPConnection) -> float:
    """``wait=S``: long-poll for up to S seconds (at most MAX_WAIT)."""
    raw = request.query_params.get("wait")
    if raw is None or raw == "":
        return 0.0
    try:
        seconds = float(raw)
    except ValueError:
        raise ApiError(400, "invalid", "wait must be a number of seconds") from None
    if not 0 <= seconds <= MAX_WAIT:
        raise ApiError(400, "invalid", f"wait must be 0..{MAX_WAIT} seconds")
    return seconds


def channel_name(value: Any) -> str:
    if not isinstance(value, str):
        raise ApiError(400, "invalid", "channel must be a string")
    name = value[1:] if value.startswith("#") else value
    if not is_topic(name) or "/" in name:
        raise ApiError(
            400, "invalid", f"not a channel name: {value!r} (letters, digits, . _ -; max 64)"
        )
    return name
