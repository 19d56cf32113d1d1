"""OpenClaw Messaging (OCM) protocol v1: its JSON frames, checked and bounded.

OCM peers speak JSON text frames on a WebSocket (protocol-spec/gateways.md,
part 1). This module only parses and builds them: pure functions, no I/O.

Rules kept here:

* Every frame from the network goes through :func:`parse_frame`, which
  returns a checked frame object or raises :class:`OcmError` with one of
  OCM's three error codes (``unsupported_version``, ``invalid_message``,
  ``unauthorized``) and a short reason; it never raises anything else.
* Every size is bounded (frame bytes, id and channel lengths, body bytes,
  payload bytes and depth, sync limits, messages in a sync response).
* A message's signature is Ed25519 over OCM's canonical string: the JSON
  object of ``body, channel_id, message_id, payload, sender_id, timestamp``
  with its keys sorted and no whitespace, where ``payload`` is the compact
  JSON text of the payload object (or null). Whether one verifies is decided
  here; who must have signed it is the session's business.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from peer.wire._identity import verify_signature
from peer.wire._limits import MAX_BODY_BYTES

OCM_VERSION = 1
MAX_OCM_FRAME = 200 * 1024  # characters of one text frame we accept
MAX_OCM_PAYLOAD = 64 * 1024  # bytes of a message's payload as compact JSON
MAX_OCM_DEPTH = 12
MAX_OCM_ID = 128
MAX_OCM_CHANNEL = 200
MAX_SYNC_LIMIT = 500
DEFAULT_SYNC_LIMIT = 100
MAX_SYNC_MESSAGES = 500  # messages in a sync_response we accept
MAX_OCM_SIGNATURE = 128  # characters of a base64 signature
MAX_OCM_PEM = 1024

UNSUPPORTED_VERSION = "unsupported_version"
INVALID_MESSAGE = "invalid_message"
UNAUTHORIZED = "unauthorized"

_ID_RE = re.compile(r"[A-Za-z0-9_\-+/=.@]{1,128}")
_CHANNEL_RE = re.compile(r"[^\s\x00-\x1f\x7f]{1,200}")
# DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): then the 32-byte key
_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


class OcmError(Exception):
    """A frame refused: ``code`` is one of OCM's error codes, ``kind`` what we count."""

    def __init__(self, code: str, kind: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.kind = kind
        self.message = message


def invalid(message: str, kind: str = "malformed") -> OcmError:
    return OcmError(INVALID_MESSAGE, kind, message)


@dataclass(frozen=True, slots=True)
class Hello:
    """A ``handshake`` frame."""

    version: int
    peer_id: str
    public_key: bytes | None  # raw Ed25519 key, from the PEM or the peer id itself
    relay: bool
    store: bool


@dataclass(frozen=True, slots=True)
class OcmMessage:
    """A ``message`` frame (or one message of a ``sync_response``)."""

    message_id: str
    channel_id: str
    sender_id: str
    body: str
    payload_json: str | None  # the payload as compact JSON (what the signature covers)
    timestamp: str
    signature: str | None

    @property
    def payload(self) -> Any:
        return None if self.payload_json is None else json.loads(self.payload_json)

    def canonical(self) -> bytes:
        return canonical_bytes(
            self.message_id, self.channel_id, self.sender_id, self.body,
            self.payload_json, self.timestamp,
        )

    def verifies(self, public_key: bytes) -> bool:
        if self.signature is None:
            return False
        try:
            sig = base64.b64decode(self.signature, validate=True)
        except (binascii.Error, ValueError):
            return False
        return len(sig) == 64 and verify_signature(public_key, self.canonical(), sig)

    def to_frame(self) -> dict[str, Any]:
        frame: dict[str, Any] = {
            "type": "message",
            "message_id": self.message_id,
            "channel_id": self.channel_id,
            "sender_id": self.sender_id,
            "body": self.body,
            "timestamp": self.timestamp,
        }
        if self.payload_json is not None:
            frame["payload"] = json.loads(self.payload_json)
        if self.signature is not None:
            frame["signature"] = self.signature
        return frame


@dataclass(frozen=True, slots=True)
class Subscribe:
    channel_id: str
    on: bool  # False: unsubscribe


@dataclass(frozen=True, slots=True)
class SyncRequest:
    channel_id: str
    after_message_id: str | None
    limit: int


@dataclass(frozen=True, slots=True)
class SyncResponse:
    channel_id: str
    messages: tuple[OcmMessage, ...]
    skipped: int  # messages in the frame that failed their checks


@dataclass(frozen=True, slots=True)
class Ping:
    pong: bool  # True: this is the answer


@dataclass(frozen=True, slots=True)
class PeerError:
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Unknown:
    type: str


Frame = Hello | OcmMessage | Subscribe | SyncRequest | SyncResponse | Ping | PeerError | Unknown


def canonical_bytes(
    message_id: str, channel_id: str, sender_id: str, body: str,
    payload_json: str | None, timestamp: str,
) -> bytes:
    fields = {
        "body": body,
        "channel_id": channel_id,
        "message_id": message_id,
        "payload": payload_json,
        "sender_id": sender_id,
        "timestamp": timestamp,
    }
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()


def compact_json(value: Any) -> str:
    """JSON text as JavaScript's ``JSON.stringify`` writes it (for these values)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def pem_of(public_key: bytes) -> str:
    """An Ed25519 public key as the PEM (SPKI) text OCM peers exchange."""
    b64 = base64.b64encode(_SPKI_PREFIX + public_key).decode()
    return f"-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n"


def key_of_pem(pem: str) -> bytes:
    lines = [ln.strip() for ln in pem.strip().splitlines()]
    if len(lines) < 3 or lines[0] != "-----BEGIN PUBLIC KEY-----" or (
        lines[-1] != "-----END PUBLIC KEY-----"
    ):
        raise invalid("public_key is not a PEM public key", "bad-key")
    try:
        der = base64.b64decode("".join(lines[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        raise invalid("public_key is not base64 inside", "bad-key") from None
    if len(der) != 44 or not der.startswith(_SPKI_PREFIX):
        raise invalid("public_key is not an Ed25519 key", "bad-key")
    return der[12:]


def key_of_peer_id(peer_id: str) -> bytes | None:
    """The Ed25519 key an OCM peer id names, if it is one (base64url of the raw key)."""
    if len(peer_id) != 43:
        return None
    try:
        raw = base64.urlsafe_b64decode(peer_id + "=")
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


def ocm_id_of_key(public_key: bytes) -> str:
    return base64.urlsafe_b64encode(public_key).decode().rstrip("=")


def is_peer_id(value: object) -> bool:
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def dm_members(channel_id: str) -> tuple[str, str] | None:
    """The two peer ids of a ``dm:<a>:<b>`` channel, or None if it is not one."""
    if not channel_id.startswith("dm:"):
        return None
    parts = channel_id.split(":")
    if len(parts) != 3 or not is_peer_id(parts[1]) or not is_peer_id(parts[2]):
        return None
    return parts[1], parts[2]


def dm_channel(a: str, b: str) -> str:
    low, high = sorted((a, b))
    return f"dm:{low}:{high}"


def parse_frame(text: str) -> Frame:
    """One text frame from an OCM peer, checked; OcmError if it is refused."""
    if len(text) > MAX_OCM_FRAME:
        raise invalid(f"frame over {MAX_OCM_FRAME} characters", "too-large")
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise invalid("not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise invalid("a frame is a JSON object with a type")
    kind = data["type"]
    parser = _PARSERS.get(kind)
    if parser is None:
        return Unknown(kind[:32])
    return parser(data)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _text(data: dict[str, Any], key: str, limit: int, *, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise invalid(f"{key} must be a non-empty string")
    if len(value) > limit:
        raise invalid(f"{key} over {limit} characters", "too-large")
    return value


def _channel(data: dict[str, Any]) -> str:
    value = _text(data, "channel_id", MAX_OCM_CHANNEL)
    assert value is not None
    if _CHANNEL_RE.fullmatch(value) is None:
        raise invalid("channel_id holds whitespace or control characters")
    if value.startswith("dm:") and dm_members(value) is None:
        raise invalid("a DM channel is dm:<peer id>:<peer id>")
    return value


def _hello(data: dict[str, Any]) -> Hello:
    version = data.get("version")
    if version != OCM_VERSION or isinstance(version, bool):
        raise OcmError(UNSUPPORTED_VERSION, "version", f"protocol version {version!r}; speak 1")
    peer_id = data.get("peer_id")
    if not is_peer_id(peer_id):
        raise invalid("peer_id must be 1-128 of A-Z a-z 0-9 _-+/=.@")
    assert isinstance(peer_id, str)
    named = key_of_peer_id(peer_id)
    key = named
    pem = data.get("public_key")
    if pem is not None:
        if not isinstance(pem, str) or len(pem) > MAX_OCM_PEM:
            raise invalid("public_key must be a PEM string", "bad-key")
        key = key_of_pem(pem)
        if named is not None and named != key:
            raise OcmError(UNAUTHORIZED, "bad-key", "peer_id names another key than public_key")
    caps = data.get("capabilities")
    caps = caps if isinstance(caps, dict) else {}
    return Hello(OCM_VERSION, peer_id, key, caps.get("relay") is True, caps.get("store") is True)


def _message(data: dict[str, Any]) -> OcmMessage:
    message_id = _text(data, "message_id", MAX_OCM_ID)
    channel_id = _channel(data)
    sender_id = data.get("sender_id")
    if not is_peer_id(sender_id):
        raise invalid("sender_id must be a peer id")
    body = data.get("body")
    if not isinstance(body, str):
        raise invalid("body must be a string")
    try:
        size = len(body.encode())
    except UnicodeEncodeError:
        raise invalid("body holds a lone surrogate") from None
    if size > MAX_BODY_BYTES:
        raise invalid(f"body over {MAX_BODY_BYTES} bytes", "too-large")
    payload_json = None
    if data.get("payload") is not None:
        payload_json = _payload(data["payload"])
    timestamp = _text(data, "timestamp", 64)
    assert timestamp is not None and message_id is not None and isinstance(sender_id, str)
    try:
        datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        raise invalid("timestamp is not ISO 8601") from None
    signature = _text(data, "signature", MAX_OCM_SIGNATURE, required=False)
    return OcmMessage(
        message_id, channel_id, sender_id, body, payload_json, timestamp, signature
    )


def _payload(value: Any) -> str:
    if _depth(value) > MAX_OCM_DEPTH:
        raise invalid(f"payload nests deeper than {MAX_OCM_DEPTH}")
    try:
        text = compact_json(value)
        size = len(text.encode())
    except (ValueError, UnicodeEncodeError):
        raise invalid("payload cannot be re-encoded as JSON") from None
    if size > MAX_OCM_PAYLOAD:
        raise invalid(f"payload over {MAX_OCM_PAYLOAD} bytes", "too-large")
    return text


def _depth(value: Any, depth: int = 0) -> int:
    if depth > MAX_OCM_DEPTH:
        return depth
    if isinstance(value, dict):
        return max([_depth(v, depth + 1) for v in value.values()], default=depth + 1)
    if isinstance(value, list):
        return max([_depth(v, depth + 1) for v in value], default=depth + 1)
    if isinstance(value, float) and not math.isfinite(value):
        return MAX_OCM_DEPTH + 1
    return depth


def _subscribe(data: dict[str, Any]) -> Subscribe:
    return Subscribe(_channel(data), data["type"] == "subscribe")


def _sync_request(data: dict[str, Any]) -> SyncRequest:
    channel_id = _channel(data)
    after = _text(data, "after_message_id", MAX_OCM_ID, required=False)
    limit = data.get("limit", DEFAULT_SYNC_LIMIT)
    if limit is None:
        limit = DEFAULT_SYNC_LIMIT
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise invalid("limit must be a positive integer")
    return SyncRequest(channel_id, after, min(limit, MAX_SYNC_LIMIT))


def _sync_response(data: dict[str, Any]) -> SyncResponse:
    channel_id = _channel(data)
    items = data.get("messages")
    if not isinstance(items, list):
        raise invalid("messages must be a list")
    if len(items) > MAX_SYNC_MESSAGES:
        raise invalid(f"over {MAX_SYNC_MESSAGES} messages", "too-large")
    good: list[OcmMessage] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        try:
            message = _message({**item, "channel_id": item.get("channel_id", channel_id)})
        except OcmError:
            continue
        if message.channel_id == channel_id:
            good.append(message)
    return SyncResponse(channel_id, tuple(good), len(items) - len(good))


def _ping(data: dict[str, Any]) -> Ping:
    return Ping(data["type"] == "pong")


def _error(data: dict[str, Any]) -> PeerError:
    code, message = data.get("code"), data.get("message")
    return PeerError(
        code[:64] if isinstance(code, str) else "?",
        message[:200] if isinstance(message, str) else "",
    )


_PARSERS: dict[str, Callable[[dict[str, Any]], Frame]] = {
    "handshake": _hello,
    "message": _message,
    "subscribe": _subscribe,
    "unsubscribe": _subscribe,
    "sync_request": _sync_request,
    "sync_response": _sync_response,
    "ping": _ping,
    "pong": _ping,
    "error": _error,
}


def hello_frame(peer_id: str, public_key: bytes | None, relay: bool, store: bool) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "handshake",
        "version": OCM_VERSION,
        "peer_id": peer_id,
        "capabilities": {"relay": relay, "store": store},
    }
    if public_key is not None:
        frame["public_key"] = pem_of(public_key)
    return frame


def error_frame(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message[:200]}
