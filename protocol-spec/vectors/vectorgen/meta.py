"""meta.json: DMs carrying message semantics (envelope.md section 12).

alice's request to bob (kind, correlation and conversation ids, reply
context, priority, expiry, idempotency key), bob's ``read`` ack for it, and
``meta`` maps a recipient must refuse, each with its error code.
"""

from __future__ import annotations

from typing import Any

from peer import Identity
from peer.wire import _cbor
from peer.wire._envelope import Content, open_dm, open_envelope, seal_dm
from peer.wire._errors import ProtocolError
from peer.wire._meta import Meta, check_meta

from .common import TS0, Json, det, hx

REQUEST = Meta(
    kind="request",
    corr=det("clawmesh/test-vector/meta/corr", 16),
    conv=det("clawmesh/test-vector/meta/conv", 16),
    reply_context=b'{"session":"s-7"}',
    priority=2,
    expires_ms=TS0 + 60_000,
    idem="invoice-42",
)


def _dm(sender: Identity, recipient: Identity, content: Content, seq: int, ts: int,
        label: str) -> Json:
    nonce = det(f"clawmesh/test-vector/meta/{label}/nonce", 24)
    env = seal_dm(sender, recipient_key=recipient.public_key, content=content, seq=seq, ts=ts,
                  nonce=nonce)
    assert open_dm(recipient, open_envelope(env.wire)) == content
    return {
        "sender_seed_name": "alice" if label == "request" else "bob",
        "seq": seq,
        "ts": ts,
        "nonce": hx(nonce),
        "meta": _json(content.meta),
        "inner": hx(_cbor.encode(content.to_map())),
        "wire": hx(env.wire),
        "message_id": hx(env.id),
    }


def _json(meta: Meta | None) -> Json:
    assert meta is not None
    out: dict[str, Any] = {}
    for key, value in meta.to_map().items():
        if isinstance(value, bytes):
            out[key] = {"hex": hx(value)}
        elif isinstance(value, list):
            out[key] = [{"hex": hx(v)} for v in value]
        else:
            out[key] = value
    return out


REFUSED: list[tuple[str, Any, str]] = [
    ("not a map", ["request"], "malformed"),
    ("unknown key", {"k": "request", "x": 1}, "malformed"),
    ("unknown kind", {"k": "query"}, "malformed"),
    ("kind missing", {"corr": b"\x01"}, "malformed"),
    ("empty correlation id", {"k": "request", "corr": b""}, "malformed"),
    ("correlation id over 32 bytes", {"k": "request", "corr": b"\x01" * 33}, "too-large"),
    ("reply context over 1024 bytes", {"k": "request", "rctx": b"x" * 1025}, "too-large"),
    ("priority over 3", {"k": "alert", "prio": 4}, "malformed"),
    ("negative expiry", {"k": "request", "exp": -1}, "malformed"),
    ("empty idempotency key", {"k": "request", "idem": ""}, "malformed"),
    ("idempotency key over 128 bytes", {"k": "request", "idem": "k" * 129}, "too-large"),
    ("round 0", {"k": "request", "round": 0}, "malformed"),
    ("state outside an ack", {"k": "response", "state": "read"}, "malformed"),
    ("ack without ids", {"k": "ack", "state": "read", "ids": []}, "malformed"),
    ("ack with an unknown state", {"k": "ack", "state": "seen", "ids": [b"\x00" * 32]},
     "malformed"),
    ("ack with a short id", {"k": "ack", "state": "read", "ids": [b"\x00" * 31]}, "malformed"),
]


def build_meta(ids: dict[str, Identity]) -> Json:
    alice, bob = ids["alice"], ids["bob"]
    request = Content(body="is the build green?", meta=REQUEST)
    req = _dm(alice, bob, request, 5, TS0 + 4000, "request")
    ack = Content(body="", meta=Meta(kind="ack", state="read",
                                     ids=(bytes.fromhex(req["message_id"]),)))
    refused = []
    for name, value, code in REFUSED:
        try:
            check_meta(value)
        except ProtocolError as exc:
            assert exc.code.value == code, (name, exc)
        else:
            raise AssertionError(f"meta vector {name!r} is accepted")
        refused.append({"name": name, "meta": hx(_cbor.encode(value)), "code": code})
    return {
        "description": (
            "DMs with the optional dm-content key meta (envelope.md section 12): alice's "
            "request to bob and bob's signed read ack for it. Keys are alice's and bob's of "
            "identity.json; inner is the canonical CBOR of dm-content, sealed as in dm.json. "
            "refused: meta maps (canonical CBOR) that make a recipient drop the DM."
        ),
        "spec": "envelope.md#12-message-semantics-meta",
        "spec_revision": "1.4",
        "request": req,
        "ack": _dm(bob, alice, ack, 3, TS0 + 5000, "ack"),
        "refused": refused,
    }
