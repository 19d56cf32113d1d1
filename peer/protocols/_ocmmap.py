"""How OCM channels and messages map onto the mesh, and back (pure functions).

protocol-spec/gateways.md (part 1) is the contract; in short:

* An OCM channel ``name`` or ``#name`` that is a valid clawmesh channel name
  is the mesh channel ``name``; any other channel id (an OCM-only DM
  ``dm:<a>:<b>`` among them) is the mesh channel ``ocm-`` + the first 16
  bytes of SHA-256 of the id, in hex.
* ``dm:<a>:<b>`` where the other member is a 64-hex clawmesh peer id is a
  clawmesh DM between the gateway and that peer (encrypted to it), marked
  with ``ocm.from`` (an OCM peer wrote it) or ``ocm.to`` (for that OCM peer).
* The gateway relays an OCM message as a mesh message it signs, whose
  payload is ``{"ocm": {...}}``: the OCM sender, message id, channel id,
  timestamp, whether its Ed25519 signature verified (and the key and
  signature that did), the original payload (as a value, and as the exact
  JSON text the signature covers).
"""

from __future__ import annotations

import base64
import hashlib
import math
import uuid
from datetime import UTC, datetime
from typing import Any

from peer.wire._fields import is_topic

from ._ocm import OcmMessage, compact_json, dm_channel, dm_members

# A route: ("ch", mesh channel) or ("dm", clawmesh peer id, OCM peer id)
Route = tuple[Any, ...]

_HEX = frozenset("0123456789abcdef")


def is_mesh_peer(value: str) -> bool:
    return len(value) == 64 and set(value) <= _HEX


def mesh_channel(channel_id: str) -> str:
    name = channel_id[1:] if channel_id.startswith("#") else channel_id
    if is_topic(name) and "/" not in name:
        return name
    return "ocm-" + hashlib.sha256(channel_id.encode()).hexdigest()[:32]


def route_of(channel_id: str, ocm_peer: str | None) -> Route:
    """Where ``channel_id``, used by ``ocm_peer``, goes on the mesh."""
    members = dm_members(channel_id)
    if members is not None and ocm_peer in members:
        other = members[1] if members[0] == ocm_peer else members[0]
        if is_mesh_peer(other):
            return ("dm", bytes.fromhex(other), ocm_peer)
    return ("ch", mesh_channel(channel_id))


def message_uuid(message_id: bytes) -> str:
    """The OCM message id of a mesh message: its first 16 bytes as a UUID, written as
    ``str(uuid.UUID(bytes=...))`` writes it (put together here: a few times faster,
    and it runs for every message the inbox gets)."""
    h = message_id[:16].hex()
    if len(h) != 32:
        return str(uuid.UUID(bytes=message_id[:16]))  # raises as it always did
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def iso_ms(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def wrap(
    message: OcmMessage, verified: bool, public_key: bytes | None, *, to_mesh_peer: bool
) -> dict[str, Any]:
    """The payload value of the mesh message that carries ``message``."""
    meta: dict[str, Any] = {
        "v": 1,
        "message_id": message.message_id,
        "channel_id": message.channel_id,
        "sender_id": message.sender_id,
        "timestamp": message.timestamp,
        "verified": verified,
    }
    if verified:
        assert public_key is not None and message.signature is not None
        meta["public_key"] = public_key.hex()
        meta["signature"] = message.signature
    if message.payload_json is not None:
        meta["payload"] = json_to_cbor(message.payload)
        if verified:
            meta["payload_json"] = message.payload_json
    if to_mesh_peer:
        meta["from"] = message.sender_id
    return {"ocm": meta}


def json_to_cbor(value: Any) -> Any:
    """A JSON value as a CBOR value (integers beyond 64 bits become floats)."""
    if isinstance(value, dict):
        return {str(k): json_to_cbor(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_to_cbor(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**64) <= value < 2**64:
        return float(value)
    return value


def cbor_to_json(value: Any) -> Any:
    """A CBOR value as JSON (bytes as ``{"$b64": ...}``, as the local API shows them)."""
    if isinstance(value, bytes):
        return {"$b64": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {str(k): cbor_to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [cbor_to_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def ocm_meta(payload: Any) -> dict[str, Any] | None:
    if isinstance(payload, dict) and isinstance(payload.get("ocm"), dict):
        meta: dict[str, Any] = payload["ocm"]
        return meta
    return None


def _text(meta: dict[str, Any], key: str) -> str | None:
    value = meta.get(key)
    return value if isinstance(value, str) and 0 < len(value) <= 256 else None


def _wrapped(meta: dict[str, Any], body: str, channel_id: str) -> OcmMessage | None:
    """The OCM message a gateway wrapped, as it was written."""
    message_id, sender_id = _text(meta, "message_id"), _text(meta, "sender_id")
    timestamp = _text(meta, "timestamp")
    if message_id is None or sender_id is None or timestamp is None:
        return None
    original = _text(meta, "channel_id")
    payload_json = meta.get("payload_json")
    if not isinstance(payload_json, str):
        payload_json = compact_json(cbor_to_json(meta["payload"])) if "payload" in meta else None
    signature = _text(meta, "signature")
    if original != channel_id or meta.get("verified") is not True:
        signature = None  # it would not verify under another channel id
    return OcmMessage(message_id, channel_id, sender_id, body, payload_json, timestamp, signature)


def export(
    *,
    kind: str,
    channel: str | None,
    peer: bytes | None,
    outgoing: bool,
    sender: bytes,
    body: str,
    payload: Any,
    has_payload: bool,
    message_id: bytes,
    ts_ms: int,
) -> tuple[Route, OcmMessage] | None:
    """An inbox message as (its route, the OCM message to show); None if not for OCM.

    The channel id of the OCM message is the mesh name (or the original id of
    a wrapped message); the gateway puts each link's own name for it.
    """
    meta = ocm_meta(payload) if has_payload else None
    if kind == "msg" and channel is not None:
        route: Route = ("ch", channel)
        if meta is not None:
            original = _text(meta, "channel_id") or channel
            wrapped = _wrapped(meta, body, original)
            if wrapped is not None:
                return route, wrapped
        payload_json = compact_json(cbor_to_json(payload)) if has_payload else None
        return route, OcmMessage(
            message_uuid(message_id), channel, sender.hex(), body, payload_json,
            iso_ms(ts_ms), None,
        )
    if kind != "dm" or peer is None or meta is None:
        return None
    if outgoing:  # what an OCM peer wrote to a mesh peer, through this gateway
        author = _text(meta, "from")
        if author is None:
            return None
        wrapped = _wrapped(meta, body, dm_channel(author, peer.hex()))
        return None if wrapped is None else (("dm", peer, author), wrapped)
    target = _text(meta, "to")
    if target is None:
        return None
    inner = meta.get("payload")
    payload_json = None if inner is None else compact_json(cbor_to_json(inner))
    return ("dm", peer, target), OcmMessage(
        message_uuid(message_id), dm_channel(target, peer.hex()), peer.hex(), body,
        payload_json, iso_ms(ts_ms), None,
    )
