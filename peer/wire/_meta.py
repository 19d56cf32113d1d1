"""Message semantics carried inside a DM's encrypted content: the ``meta`` map.

A DM's content (envelope.md section 7) may hold ``meta`` since spec revision
1.4 (envelope.md section 12): what kind of message it is (request, response,
notification, alert, ack), which request or conversation it belongs to, an
opaque ``reply_context`` the responder echoes untouched, a priority, an
expiry, an idempotency key, and, for an ``ack``, the receipt state it signs
for which message ids. Only the recipient can read it (relays see the box),
so adding it changes nothing for relays and stores.

Pure data and checks: ``Meta.to_map`` gives the CBOR map, ``check_meta``
validates a decoded one (closed-world: an unknown key, a wrong type or size
is ``malformed``, an oversized value ``too-large``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._fields import Map, fail, need_bytes, need_list, need_text, need_uint, only_keys

KINDS = ("request", "response", "notification", "alert", "ack")
ACK_STATES = ("delivered", "read", "replied", "expired")
PRIORITIES = ("low", "normal", "high", "urgent")  # on the wire: their index 0..3
MAX_ID_BYTES = 32  # correlation and conversation ids
MAX_REPLY_CONTEXT = 1024
MAX_IDEM_BYTES = 128
MAX_ACK_IDS = 64
MAX_ROUND = 64
_KEYS = frozenset({"k", "corr", "conv", "rctx", "prio", "exp", "idem", "round", "state", "ids"})


@dataclass(frozen=True, slots=True)
class Meta:
    """What a DM is for; every field but ``kind`` is optional."""

    kind: str = "notification"
    corr: bytes | None = None  # correlation id: the request a response answers
    conv: bytes | None = None  # conversation (or rally) id
    reply_context: bytes | None = None  # opaque, echoed untouched by the responder
    priority: int | None = None  # index into PRIORITIES
    expires_ms: int | None = None  # wall clock ms: never handed to an agent after it
    idem: str | None = None  # idempotency key, scoped to the recipient
    round: int | None = None  # a rally's round, from 1
    state: str | None = None  # an ack's receipt state
    ids: tuple[bytes, ...] = ()  # an ack's message ids

    def to_map(self) -> Map:
        m: Map = {"k": self.kind}
        for key, value in (
            ("corr", self.corr),
            ("conv", self.conv),
            ("rctx", self.reply_context),
            ("prio", self.priority),
            ("exp", self.expires_ms),
            ("idem", self.idem),
            ("round", self.round),
            ("state", self.state),
        ):
            if value is not None:
                m[key] = value
        if self.ids:
            m["ids"] = list(self.ids)
        return m

    def expired(self, now_ms: int) -> bool:
        return self.expires_ms is not None and now_ms >= self.expires_ms

    def priority_name(self) -> str:
        return PRIORITIES[1 if self.priority is None else self.priority]


def meta_json(meta: Meta) -> dict[str, Any]:
    """The fields an API shows for ``meta`` (ids in hex, the reply context as text
    when it is UTF-8, else hex under ``reply_context_hex``)."""
    out: dict[str, Any] = {"message_kind": meta.kind, "priority": meta.priority_name()}
    if meta.corr is not None:
        out["correlation_id"] = meta.corr.hex()
    if meta.conv is not None:
        out["conversation_id"] = meta.conv.hex()
    if meta.reply_context is not None:
        try:
            out["reply_context"] = meta.reply_context.decode("utf-8")
        except UnicodeDecodeError:
            out["reply_context_hex"] = meta.reply_context.hex()
    if meta.expires_ms is not None:
        out["expires_ms"] = meta.expires_ms
    if meta.idem is not None:
        out["idempotency_key"] = meta.idem
    if meta.round is not None:
        out["round"] = meta.round
    if meta.state is not None:
        out["ack_state"] = meta.state
        out["ack_ids"] = [i.hex() for i in meta.ids]
    return out


def _opt_id(m: Map, key: str) -> bytes | None:
    if key not in m:
        return None
    value = need_bytes(m, key, max_size=MAX_ID_BYTES)
    if not value:
        raise fail(f"field {key!r} must not be empty")
    return value


def check_meta(m: object) -> Meta:
    """Validate a decoded ``meta`` map (ProtocolError ``malformed``/``too-large``)."""
    if not isinstance(m, dict):
        raise fail("meta must be a map")
    only_keys(m, _KEYS)
    kind = need_text(m, "k", 16)
    if kind not in KINDS:
        raise fail(f"unknown meta kind {kind!r:.20}")
    rctx = need_bytes(m, "rctx", max_size=MAX_REPLY_CONTEXT) if "rctx" in m else None
    prio = need_uint(m, "prio", len(PRIORITIES) - 1) if "prio" in m else None
    exp = need_uint(m, "exp") if "exp" in m else None
    idem = need_text(m, "idem", MAX_IDEM_BYTES) if "idem" in m else None
    if idem == "":
        raise fail("field 'idem' must not be empty")
    rnd = need_uint(m, "round", MAX_ROUND) if "round" in m else None
    if rnd == 0:
        raise fail("field 'round' counts from 1")
    state, ids = None, ()
    if kind == "ack":
        state = need_text(m, "state", 16)
        if state not in ACK_STATES:
            raise fail(f"unknown ack state {state!r:.20}")
        raw = need_list(m, "ids", MAX_ACK_IDS)
        if not raw or any(not isinstance(i, bytes) or len(i) != 32 for i in raw):
            raise fail(f"an ack names 1..{MAX_ACK_IDS} message ids of 32 bytes")
        ids = tuple(raw)
    elif "state" in m or "ids" in m:
        raise fail("only an ack has state and ids")
    return Meta(kind, _opt_id(m, "corr"), _opt_id(m, "conv"), rctx, prio, exp, idem, rnd,
                state, ids)


__all__ = [
    "ACK_STATES",
    "KINDS",
    "MAX_ACK_IDS",
    "MAX_IDEM_BYTES",
    "MAX_ID_BYTES",
    "MAX_REPLY_CONTEXT",
    "MAX_ROUND",
    "PRIORITIES",
    "Meta",
    "check_meta",
    "meta_json",
]
