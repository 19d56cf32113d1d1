"""The local API's message-semantics parts: ``/send``'s meta fields and ``/receipts``.

``meta_from_body`` turns the optional ``/send`` fields (``kind``,
``correlation_id``, ``conversation_id``, ``reply_context``, ``priority``,
``ttl``, ``expires_at``, ``idempotency_key``) into the DM's ``meta``
(envelope.md section 12), refusing bad values with a clear 400.
``receipts`` answers ``GET /receipts?id=``: the signed states of one DM we sent.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from peer.node._node import Peer
from peer.wire._meta import (
    KINDS,
    MAX_ID_BYTES,
    MAX_IDEM_BYTES,
    MAX_REPLY_CONTEXT,
    PRIORITIES,
    Meta,
)

from ._values import ApiError, hex_id, iso

META_FIELDS = (
    "kind",
    "correlation_id",
    "conversation_id",
    "reply_context",
    "priority",
    "ttl",
    "expires_at",
    "idempotency_key",
)
MAX_TTL = 30 * 86400  # seconds


def _hex_bytes(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise ApiError(400, "invalid", f"{name} must be hex (1..{MAX_ID_BYTES} bytes)")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise ApiError(400, "invalid", f"{name} must be hex (1..{MAX_ID_BYTES} bytes)") from None
    if not 1 <= len(raw) <= MAX_ID_BYTES:
        raise ApiError(400, "invalid", f"{name} must be hex (1..{MAX_ID_BYTES} bytes)")
    return raw


def _text(value: Any, name: str, limit: int) -> bytes:
    if not isinstance(value, str) or not value:
        raise ApiError(400, "invalid", f"{name} must be a non-empty string")
    raw = value.encode()
    if len(raw) > limit:
        raise ApiError(413, "too-large", f"{name} over {limit} bytes")
    return raw


def _expiry(data: dict[str, Any], now_ms: int) -> int | None:
    if "ttl" in data and "expires_at" in data:
        raise ApiError(400, "invalid", "give ttl (seconds) or expires_at (ms), not both")
    if "ttl" in data:
        ttl = data["ttl"]
        if type(ttl) not in (int, float) or not 0 < ttl <= MAX_TTL:
            raise ApiError(400, "invalid", f"ttl must be seconds in (0, {MAX_TTL}]")
        return now_ms + int(ttl * 1000)
    if "expires_at" in data:
        at = data["expires_at"]
        if type(at) is not int or at <= 0 or at > 2**63:
            raise ApiError(400, "invalid", "expires_at must be ms since the Unix epoch")
        return int(at)
    return None


def meta_from_body(data: dict[str, Any], now_ms: int) -> Meta | None:
    """The meta of a ``/send`` body, None if it gives none of the fields."""
    if not any(name in data for name in META_FIELDS):
        return None
    kind = data.get("kind", "notification")
    if kind not in KINDS or kind == "ack":
        allowed = ", ".join(k for k in KINDS if k != "ack")
        raise ApiError(400, "invalid", f"kind must be one of {allowed}")
    priority = data.get("priority", "normal")
    if priority not in PRIORITIES:
        raise ApiError(400, "invalid", f"priority must be one of {', '.join(PRIORITIES)}")
    idem = data.get("idempotency_key")
    return Meta(
        kind=kind,
        corr=_hex_bytes(data["correlation_id"], "correlation_id")
        if "correlation_id" in data else None,
        conv=_hex_bytes(data["conversation_id"], "conversation_id")
        if "conversation_id" in data else None,
        reply_context=_text(data["reply_context"], "reply_context", MAX_REPLY_CONTEXT)
        if "reply_context" in data else None,
        priority=None if "priority" not in data else PRIORITIES.index(priority),
        expires_ms=_expiry(data, now_ms),
        idem=None if idem is None else _text(idem, "idempotency_key", MAX_IDEM_BYTES).decode(),
    )


async def receipts(peer: Peer, request: Request) -> Response:
    """``GET /receipts?id=``: the states the recipient signed for one DM we sent."""
    raw = request.query_params.get("id")
    if raw is None:
        raise ApiError(400, "invalid", "id is required: the id /send answered")
    msg_id = hex_id(raw, "id")
    view = peer.coord.receipts(msg_id)
    if view is None:
        raise ApiError(404, "not-found", "no DM of ours with this id is followed")
    view["sent"] = iso(view.pop("sent_ms"))
    for state in view["states"].values():
        state["at"] = iso(state.pop("at_ms"))
    return JSONResponse(view)


__all__ = ["META_FIELDS", "meta_from_body", "receipts"]
