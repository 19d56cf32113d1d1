"""MESH v3 envelopes (openclaw-mesh's webhook protocol): checks, HMAC, replay rules.

Pure functions and one small state machine (``ReplayGuard``); time is
passed in. protocol-spec/gateways.md (part 2) is the contract.

Rules kept here:

* :func:`parse_hook_body` accepts what MESH senders POST: OpenClaw's hook
  body ``{"message": "<envelope as JSON text>"}`` (or the envelope object in
  ``message``), or the envelope itself; :func:`check_envelope` bounds and
  checks every field and raises :class:`MeshError` (an HTTP status, a code,
  a reason) for what it refuses, never anything else.
* MESH's HMAC: ``signature`` is base64 (optionally ``sha256:``-prefixed) of
  HMAC-SHA256, keyed with the pair's shared key, over the envelope without
  its ``signature`` as compact JSON (jq -c: keys in the order received, no
  whitespace, non-ASCII as UTF-8). Compared in constant time.
* Replay: no message may be stamped more than ``skew`` in the future; a
  message with a nonce (every signed one must have one) must be stamped
  within ``window`` seconds in the past; a signed sender's nonce must be
  unseen (per sender) within twice the window. At ``MAX_NONCES`` kept, new
  signed messages are refused (503), never is a nonce evicted early. An
  expired TTL is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

TYPES = ("request", "response", "notification", "alert", "ack")
PRIORITIES = ("high", "normal", "low")
MAX_HOOK_BODY = 512 * 1024
MAX_NAME = 128
MAX_SUBJECT = 1024
MAX_BODY = 64 * 1024
MAX_ATTACHMENTS = 32
MAX_CONTEXT = 16 * 1024  # bytes of replyContext / metadata / attachments as JSON
DEFAULT_TTL = 300
MAX_TTL = 7 * 24 * 3600
REPLAY_WINDOW = 300.0
FUTURE_SKEW = 60.0
MAX_NONCES = 100_000


class MeshError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def bad(message: str, code: str = "invalid") -> MeshError:
    return MeshError(400, code, message)


@dataclass(frozen=True, slots=True)
class MeshEnvelope:
    raw: dict[str, Any]  # as received (for the HMAC and the inbox)
    id: str
    sender: str
    to: str
    type: str
    timestamp: float  # seconds since the epoch
    conversation: str | None
    correlation: str | None
    reply_url: str | None
    reply_token: str | None
    subject: str
    body: str
    priority: str
    ttl: int
    nonce: str | None
    signature: str | None

    def shared(self) -> dict[str, Any]:
        """What travels over the mesh: no signature (it is checked here) and no
        replyTo (its token is the sender's secret; this gateway answers it)."""
        return {k: v for k, v in self.raw.items() if k not in ("signature", "replyTo")}


def parse_hook_body(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_HOOK_BODY:
        raise MeshError(413, "too-large", f"body over {MAX_HOOK_BODY} bytes")
    try:
        outer = json.loads(data, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise bad("body is not JSON") from None
    if not isinstance(outer, dict):
        raise bad("body must be a JSON object")
    if "protocol" in outer:
        return outer
    inner = outer.get("message")
    if isinstance(inner, str):
        try:
            inner = json.loads(inner, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            raise bad("message is not a MESH envelope (not JSON)") from None
    if not isinstance(inner, dict) or "protocol" not in inner:
        raise bad('want a MESH envelope, or {"message": "<envelope JSON>"}')
    return inner


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def _str(env: dict[str, Any], key: str, limit: int, required: bool = True) -> str | None:
    value = env.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise bad(f"{key} must be a string")
    if len(value) > limit:
        raise MeshError(413, "too-large", f"{key} over {limit} characters")
    return value


def parse_time(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise bad("timestamp is not ISO 8601") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode())


def _reply_to(env: dict[str, Any]) -> tuple[str | None, str | None]:
    reply = env.get("replyTo")
    if reply is None:
        return None, None
    if not isinstance(reply, dict):
        raise bad("replyTo must be {url, token}")
    url, token = reply.get("url"), reply.get("token")
    if url is None:
        return None, None
    if not isinstance(url, str) or len(url) > 2048:
        raise bad("replyTo.url must be a URL")
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        raise bad("replyTo.url must be http:// or https://")
    if token is not None and (not isinstance(token, str) or len(token) > 1024):
        raise bad("replyTo.token must be a string")
    return url, token


def _payload(env: dict[str, Any]) -> tuple[str, str]:
    payload = env.get("payload")
    if not isinstance(payload, dict):
        raise bad("payload must be an object {subject, body}")
    subject = _str(payload, "subject", MAX_SUBJECT, required=False) or ""
    body = payload.get("body", "")
    if not isinstance(body, str):
        body = json.dumps(body, ensure_ascii=False)
    if len(body.encode()) > MAX_BODY:
        raise MeshError(413, "too-large", f"payload.body over {MAX_BODY} bytes")
    attachments = payload.get("attachments", [])
    if not isinstance(attachments, list) or len(attachments) > MAX_ATTACHMENTS:
        raise bad(f"payload.attachments must be a list of at most {MAX_ATTACHMENTS}")
    metadata = payload.get("metadata", {})
    if metadata is not None and not isinstance(metadata, dict):
        raise bad("payload.metadata must be an object")
    if _json_size(attachments) + _json_size(metadata) > 4 * MAX_CONTEXT:
        raise MeshError(413, "too-large", "payload.attachments and metadata are too large")
    return subject, body


def check_envelope(env: dict[str, Any]) -> MeshEnvelope:
    protocol = _str(env, "protocol", 32)
    assert protocol is not None
    if not protocol.startswith("mesh/"):
        raise bad(f"protocol {protocol!r} is not mesh/*")
    msg_type = _str(env, "type", 32)
    if msg_type not in TYPES:
        raise bad(f"type must be one of {', '.join(TYPES)}")
    ttl = env.get("ttl", DEFAULT_TTL)
    ttl = DEFAULT_TTL if ttl is None else ttl
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 < ttl <= MAX_TTL:
        raise bad(f"ttl must be 1..{MAX_TTL} seconds")
    priority = env.get("priority") or "normal"
    if priority not in PRIORITIES:
        raise bad("priority must be high, normal or low")
    if _json_size(env.get("replyContext")) > MAX_CONTEXT:
        raise MeshError(413, "too-large", f"replyContext over {MAX_CONTEXT} bytes")
    url, token = _reply_to(env)
    subject, body = _payload(env)
    timestamp = _str(env, "timestamp", 64)
    assert timestamp is not None
    return MeshEnvelope(
        raw=env,
        id=_str(env, "id", MAX_NAME) or "",
        sender=_str(env, "from", MAX_NAME) or "",
        to=_str(env, "to", MAX_NAME, required=False) or "",
        type=str(msg_type),
        timestamp=parse_time(timestamp),
        conversation=_str(env, "conversationId", MAX_NAME, required=False),
        correlation=_str(env, "correlationId", MAX_NAME, required=False),
        reply_url=url,
        reply_token=token,
        subject=subject,
        body=body,
        priority=str(priority),
        ttl=ttl,
        nonce=_str(env, "nonce", MAX_NAME, required=False),
        signature=_str(env, "signature", 256, required=False),
    )


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def hmac_of(raw: dict[str, Any], key: bytes) -> str:
    """The signature MESH puts on ``raw`` (base64 of HMAC-SHA256)."""
    unsigned = {k: v for k, v in raw.items() if k != "signature"}
    return base64.b64encode(hmac.new(key, compact(unsigned), hashlib.sha256).digest()).decode()


def signature_valid(env: MeshEnvelope, key: bytes) -> bool:
    if env.signature is None:
        return False
    given = env.signature.removeprefix("sha256:").strip()
    try:
        given_bytes = base64.b64decode(given, validate=True)
    except (binascii.Error, ValueError):
        return False
    expected = base64.b64decode(hmac_of(env.raw, key))
    return hmac.compare_digest(given_bytes, expected)


class ReplayGuard:
    """Nonces seen within twice the window (bounded), and the timestamp window."""

    def __init__(self, window: float = REPLAY_WINDOW, skew: float = FUTURE_SKEW) -> None:
        self.window = window
        self.skew = skew
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    def check(self, env: MeshEnvelope, now: float, *, need_nonce: bool) -> None:
        """Raise MeshError if ``env`` is expired, stale, from the future or replayed
        (its nonce is remembered by :meth:`remember`, once it was accepted).
        ``need_nonce``: the sender is signed; only signed senders' nonces are kept."""
        age = now - env.timestamp
        if age > env.ttl:
            raise MeshError(410, "expired", f"ttl of {env.ttl} s passed")
        if age < -self.skew:  # always: a far-future stamp would outlive every window
            raise MeshError(401, "replay", "timestamp in the future")
        if env.nonce is None:
            if need_nonce:
                raise MeshError(401, "replay", "a signed message must carry a nonce")
            return
        if age > self.window:
            raise MeshError(401, "replay", f"timestamp older than {self.window:.0f} s")
        if not need_nonce:
            return  # unsigned: anyone may send anything, its nonce proves nothing
        self._forget(now)
        if (env.sender, env.nonce) in self._seen:
            raise MeshError(409, "replay", "nonce already seen")
        if len(self._seen) >= MAX_NONCES:  # refused, never evicted: eviction opens a replay
            raise MeshError(503, "busy", "too many recent nonces; retry later")

    def remember(self, env: MeshEnvelope, now: float, *, signed: bool) -> None:
        """``env`` was accepted: a signed sender's nonce may not come again."""
        if env.nonce is None or not signed:
            return
        self._seen[(env.sender, env.nonce)] = now

    def _forget(self, now: float) -> None:
        horizon = now - 2 * self.window
        while self._seen:
            nonce, seen = next(iter(self._seen.items()))
            if seen >= horizon:
                break
            del self._seen[nonce]


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(specs: tuple[str, ...] | list[str]) -> tuple[IpNetwork, ...]:
    """``--mesh-reply-allow`` values (an address or a CIDR); ValueError names a bad one."""
    out = []
    for spec in specs:
        try:
            out.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{spec!r} is not an IP address or CIDR network") from None
    return tuple(out)


def reply_address_allowed(address: str, allow: tuple[IpNetwork, ...]) -> bool:
    """Whether a replyTo URL may reach ``address``: a public unicast address, or one in
    ``allow`` (loopback, link-local, private, multicast, reserved are refused by default:
    a MESH sender must not make this peer POST to its own network)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in net for net in allow):
        return True
    return ip.is_global and not ip.is_multicast


def iso_now(now: float) -> str:
    return datetime.fromtimestamp(now, tz=UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def response_envelope(
    original: dict[str, Any], *, sender: str, body: str, message_id: str, now: float
) -> dict[str, Any]:
    """The MESH ``response`` a mesh agent's answer becomes, for ``replyTo``."""
    payload = original.get("payload") if isinstance(original.get("payload"), dict) else {}
    subject = payload.get("subject") if isinstance(payload, dict) else None
    env: dict[str, Any] = {
        "protocol": "mesh/3.0",
        "id": message_id,
        "timestamp": iso_now(now),
        "from": sender,
        "to": original.get("from"),
        "type": "response",
        "correlationId": original.get("id"),
        "replyContext": original.get("replyContext"),
        "payload": {"subject": f"Re: {subject or ''}", "body": body},
    }
    if original.get("conversationId") is not None:
        env["conversationId"] = original["conversationId"]
    return env
