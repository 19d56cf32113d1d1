"""Signed message envelopes, DM encryption and topic names.

An envelope on the wire is the CBOR array ``[signed, sig]``: ``signed`` is the
canonical CBOR map of the message (a byte string, so relays forward it without
re-encoding) and ``sig`` is the sender's Ed25519 signature over
``"clawmesh/envelope/v1" || signed``. The message id is
SHA-256(``"clawmesh/msg-id/v1" || signed``): it cannot be forged, and a
re-signed copy of the same message is recognised as a duplicate.

A DM travels on the conversation topic derived from the two peer ids; its
content is a NaCl ``crypto_box`` from the sender's X25519 key (converted from
its Ed25519 key) to the recipient's, so only the recipient can read it and
can tell that the sender wrote it.

A receipt is the recipient's signed statement that DMs (named by id) are
stored on its side; it travels like a DM, to the DM's sender, in clear (ids
are hashes). Stores keep DMs and receipts in the recipient's inbox log
(:attr:`Envelope.log_topic`), channel messages in the channel's log.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nacl.bindings import crypto_box, crypto_box_open
from nacl.exceptions import CryptoError

from . import _cbor
from ._blobframes import Attachment, check_attachments
from ._errors import ErrorCode, ProtocolError
from ._fields import Map, is_topic, need_bytes, need_text, need_uint
from ._identity import (
    Identity,
    peer_id_of,
    verify_signature,
    x25519_public_of,
)
from ._limits import MAX_BODY_BYTES, MAX_ENVELOPE, MAX_FRAME_ITEMS, MAX_PAYLOAD
from ._meta import Meta, check_meta

ENVELOPE_TAG = b"clawmesh/envelope/v1"
MSG_ID_TAG = b"clawmesh/msg-id/v1"
DM_TOPIC_TAG = b"clawmesh/dm-topic/v1"
PRESENCE_TOPIC = "sys/presence"
KINDS = frozenset({"msg", "dm", "presence", "receipt"})
MAX_RECEIPT_IDS = 64

_SIGNED_KEYS = {
    "msg": frozenset(
        {"v", "kind", "topic", "from", "seq", "ts", "prev", "body", "payload", "reply_to",
         "thread", "attachments"}
    ),
    "dm": frozenset({"v", "kind", "topic", "from", "seq", "ts", "prev", "to", "box"}),
    "presence": frozenset({"v", "kind", "topic", "from", "seq", "ts", "payload"}),
    "receipt": frozenset({"v", "kind", "topic", "from", "seq", "ts", "prev", "to", "ids"}),
}
_CONTENT_KEYS = frozenset({"body", "payload", "reply_to", "thread", "attachments", "meta"})


def dm_topic(a: bytes, b: bytes) -> str:
    """The conversation topic between two peer ids (order does not matter)."""
    lo, hi = sorted((a, b))
    return "dm/" + hashlib.sha256(DM_TOPIC_TAG + lo + hi).hexdigest()


def inbox_topic(peer_id: bytes) -> str:
    """The routing topic a peer subscribes to in order to receive its DMs."""
    return "inbox/" + peer_id.hex()


def message_id(signed: bytes) -> bytes:
    return hashlib.sha256(MSG_ID_TAG + signed).digest()


@dataclass(frozen=True, slots=True)
class Content:
    """What a person or agent wrote: text, optional payload, threading."""

    body: str = ""
    payload: bytes | None = None  # canonical CBOR bytes of any value
    reply_to: bytes | None = None  # message id
    thread: bytes | None = None  # message id of the thread root
    attachments: tuple[Attachment, ...] = ()  # blobs it refers to (blobs.md)
    meta: Meta | None = None  # DMs only: what the message is for (envelope.md section 12)

    def to_map(self) -> Map:
        m: Map = {"body": self.body}
        if self.payload is not None:
            m["payload"] = self.payload
        if self.reply_to is not None:
            m["reply_to"] = self.reply_to
        if self.thread is not None:
            m["thread"] = self.thread
        if self.attachments:
            m["attachments"] = [a.to_map() for a in self.attachments]
        if self.meta is not None:
            m["meta"] = self.meta.to_map()
        return m


def _check_content(m: Map) -> Content:
    body = need_text(m, "body", MAX_BODY_BYTES)
    payload = None
    if "payload" in m:
        payload = need_bytes(m, "payload", max_size=MAX_PAYLOAD)
        _cbor.decode(payload, max_items=MAX_FRAME_ITEMS * 16)
    reply_to = need_bytes(m, "reply_to", 32) if "reply_to" in m else None
    thread = need_bytes(m, "thread", 32) if "thread" in m else None
    meta = check_meta(m["meta"]) if "meta" in m else None
    return Content(body, payload, reply_to, thread, check_attachments(m), meta)


@dataclass(frozen=True, slots=True)
class Envelope:
    """A verified envelope: the decoded fields plus the exact wire bytes."""

    id: bytes
    kind: str
    topic: str
    sender_key: bytes
    sender: bytes  # peer id
    seq: int
    ts: int  # sender's clock, milliseconds since the Unix epoch
    fields: Map = field(repr=False)
    wire: bytes = field(repr=False)

    @property
    def route(self) -> str:
        """The topic the gossip layer routes this envelope on, and stores log it under."""
        if self.kind == "dm" or self.kind == "receipt":
            return inbox_topic(self.fields["to"])
        return self.topic

    log_topic = route

    @property
    def prev(self) -> bytes | None:
        """The id of the author's envelope before this one in the same log topic."""
        prev: bytes | None = self.fields.get("prev")
        return prev

    @property
    def recipient(self) -> bytes | None:
        """The peer id a DM or receipt is addressed to."""
        to: bytes | None = self.fields.get("to")
        return to

    def content(self) -> Content:
        """The content of a channel message (not of a DM: see :func:`open_dm`)."""
        return Content(
            body=self.fields.get("body", ""),
            payload=self.fields.get("payload"),
            reply_to=self.fields.get("reply_to"),
            thread=self.fields.get("thread"),
            attachments=check_attachments(self.fields),
        )


def _sign(identity: Identity, fields: Map, prev: bytes | None = None) -> tuple[bytes, bytes]:
    if prev is not None:
        if len(prev) != 32 or fields["seq"] < 2:
            raise ValueError("prev is the 32-byte id of the envelope with seq - 1")
        fields["prev"] = prev
    signed = _cbor.encode(fields)
    sig = identity.sign(ENVELOPE_TAG + signed)
    wire = _cbor.encode([signed, sig])
    if len(wire) > MAX_ENVELOPE:
        raise ProtocolError(
            ErrorCode.TOO_LARGE, f"envelope of {len(wire)} bytes over {MAX_ENVELOPE}"
        )
    return signed, wire


def seal_message(
    identity: Identity,
    *,
    topic: str,
    content: Content,
    seq: int,
    ts: int,
    prev: bytes | None = None,
) -> Envelope:
    """Sign a channel message."""
    if content.meta is not None:
        raise ValueError("meta travels in DMs only")
    if not is_topic(topic) or "/" in topic:
        raise ValueError(f"not a channel name: {topic!r}")
    fields: Map = {
        "v": 1,
        "kind": "msg",
        "topic": topic,
        "from": identity.public_key,
        "seq": seq,
        "ts": ts,
    }
    fields.update(content.to_map())
    _check_content(fields)
    signed, wire = _sign(identity, fields, prev)
    return _envelope(signed, fields, wire)


def seal_presence(identity: Identity, *, payload: bytes, seq: int, ts: int) -> Envelope:
    fields: Map = {
        "v": 1,
        "kind": "presence",
        "topic": PRESENCE_TOPIC,
        "from": identity.public_key,
        "seq": seq,
        "ts": ts,
        "payload": payload,
    }
    need_bytes(fields, "payload", max_size=4096)  # what open_envelope accepts
    signed, wire = _sign(identity, fields)
    return _envelope(signed, fields, wire)


def seal_dm(
    identity: Identity,
    *,
    recipient_key: bytes,
    content: Content,
    seq: int,
    ts: int,
    nonce: bytes | None = None,
    prev: bytes | None = None,
) -> Envelope:
    """Sign a DM whose content is encrypted to ``recipient_key`` (Ed25519)."""
    _check_content(content.to_map())
    recipient = peer_id_of(recipient_key)
    nonce = os.urandom(24) if nonce is None else nonce
    inner = _cbor.encode(content.to_map())
    box = nonce + bytes(
        crypto_box(inner, nonce, x25519_public_of(recipient_key), identity.x25519_private())
    )
    fields: Map = {
        "v": 1,
        "kind": "dm",
        "topic": dm_topic(identity.peer_id, recipient),
        "from": identity.public_key,
        "seq": seq,
        "ts": ts,
        "to": recipient,
        "box": box,
    }
    signed, wire = _sign(identity, fields, prev)
    return _envelope(signed, fields, wire)


def seal_receipt(
    identity: Identity,
    *,
    recipient: bytes,
    ids: list[bytes],
    seq: int,
    ts: int,
    prev: bytes | None = None,
) -> Envelope:
    """Sign a receipt telling ``recipient`` that its DMs ``ids`` are stored here."""
    if not 1 <= len(ids) <= MAX_RECEIPT_IDS or any(len(i) != 32 for i in ids):
        raise ValueError(f"a receipt names 1..{MAX_RECEIPT_IDS} message ids")
    fields: Map = {
        "v": 1,
        "kind": "receipt",
        "topic": dm_topic(identity.peer_id, recipient),
        "from": identity.public_key,
        "seq": seq,
        "ts": ts,
        "to": recipient,
        "ids": list(ids),
    }
    signed, wire = _sign(identity, fields, prev)
    return _envelope(signed, fields, wire)


def open_dm(identity: Identity, env: Envelope) -> Content:
    """Decrypt a DM addressed to ``identity``; ProtocolError if it is not readable."""
    if env.kind != "dm" or env.fields["to"] != identity.peer_id:
        raise ProtocolError(ErrorCode.DECRYPT, "not a DM to us")
    box: bytes = env.fields["box"]
    try:
        inner = crypto_box_open(
            box[24:], box[:24], x25519_public_of(env.sender_key), identity.x25519_private()
        )
    except (CryptoError, ValueError, TypeError):
        raise ProtocolError(ErrorCode.DECRYPT, "DM does not decrypt") from None
    m = _cbor.decode(bytes(inner), max_items=MAX_FRAME_ITEMS * 16)
    if not isinstance(m, dict) or m.keys() - _CONTENT_KEYS:
        raise ProtocolError(ErrorCode.MALFORMED, "DM content has unknown fields")
    return _check_content(m)


def _envelope(signed: bytes, fields: Map, wire: bytes, mid: bytes | None = None) -> Envelope:
    key = fields["from"]
    return Envelope(
        id=message_id(signed) if mid is None else mid,
        kind=fields["kind"],
        topic=fields["topic"],
        sender_key=key,
        sender=peer_id_of(key),
        seq=fields["seq"],
        ts=fields["ts"],
        fields=fields,
        wire=wire,
    )


def split_wire(wire: bytes) -> tuple[bytes, bytes]:
    """The ``(signed, sig)`` byte strings of an envelope, shape-checked only.

    Cheap enough to run before the seen-cache lookup: no signature check, no
    decoding of ``signed``. The canonical form (``82 <bstr> 58 40 <64 bytes>``)
    is recognised by slicing; anything else goes through the strict decoder,
    so both accept exactly the same inputs.
    """
    if type(wire) is bytes and wire[:1] == b"\x82" and len(wire) <= MAX_ENVELOPE:
        span = _cbor.bstr_at(wire, 1)
        if span is not None and span[1] + 66 == len(wire) and wire[span[1] : span[1] + 2] == b"X@":
            return wire[span[0] : span[1]], wire[span[1] + 2 :]
    return split_wire_general(wire)


def split_wire_general(wire: bytes) -> tuple[bytes, bytes]:
    """:func:`split_wire` without the fast path (the reference for tests)."""
    if len(wire) > MAX_ENVELOPE:
        raise ProtocolError(ErrorCode.TOO_LARGE, "envelope too large")
    obj = _cbor.decode(wire, max_items=3)
    if (
        not isinstance(obj, list)
        or len(obj) != 2
        or not isinstance(obj[0], bytes)
        or not isinstance(obj[1], bytes)
        or len(obj[1]) != 64
    ):
        raise ProtocolError(ErrorCode.MALFORMED, "an envelope is [signed bytes, 64-byte sig]")
    return obj[0], obj[1]


def open_envelope(
    wire: bytes,
    *,
    signed: bytes | None = None,
    sig: bytes | None = None,
    verify: bool = True,
    mid: bytes | None = None,
) -> Envelope:
    """Decode, validate and verify an envelope; ProtocolError if anything is off.

    ``verify=False`` skips only the signature check (``--bench-no-verify``:
    benchmarks, never production). ``mid``: ``message_id(signed)``, if the
    caller has it already (with ``signed`` and ``sig``, which it was computed
    from; a relay computes it before its seen-cache lookup).
    """
    if signed is None or sig is None:
        signed, sig, mid = *split_wire(wire), None
    fields = _cbor.decode(signed, max_items=MAX_FRAME_ITEMS)
    kind = _check_shape(fields)
    key, topic = _check_log_fields(fields)
    _KIND_CHECKS[kind](fields, key, topic)
    if verify:
        check_signature(key, signed, sig)
    return _envelope(signed, fields, wire, mid)


def _check_shape(fields: object) -> str:
    """The envelope's kind, once its map has only that kind's keys and version 1."""
    if not isinstance(fields, dict):
        raise ProtocolError(ErrorCode.MALFORMED, "signed part is a CBOR map")
    kind = fields.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:  # a list or map is not hashable
        raise ProtocolError(ErrorCode.MALFORMED, f"unknown message kind {kind!r:.40}")
    extra = fields.keys() - _SIGNED_KEYS[kind]
    if extra:
        raise ProtocolError(
            ErrorCode.MALFORMED, f"unknown envelope fields {sorted(extra, key=repr)!r:.80}"
        )
    version = fields.get("v")
    if type(version) is not int or version != 1:
        raise ProtocolError(ErrorCode.VERSION, "unknown envelope version")
    return kind


def _check_log_fields(fields: Map) -> tuple[bytes, str]:
    """The fields every kind has (author, place in its log, topic): ``(key, topic)``."""
    key = need_bytes(fields, "from", 32)
    seq = need_uint(fields, "seq")
    need_uint(fields, "ts")
    if "prev" in fields:
        need_bytes(fields, "prev", 32)
        if seq < 2:
            raise ProtocolError(ErrorCode.MALFORMED, "the first envelope of a log has no prev")
    topic = fields.get("topic")
    if not is_topic(topic):
        raise ProtocolError(ErrorCode.MALFORMED, "bad topic")
    assert isinstance(topic, str)
    return key, topic


def _check_msg(fields: Map, key: bytes, topic: str) -> None:
    if "/" in topic:
        raise ProtocolError(ErrorCode.MALFORMED, "a message goes to a channel topic")
    _check_content(fields)


def _check_dm(fields: Map, key: bytes, topic: str) -> None:
    to = need_bytes(fields, "to", 32)
    box = need_bytes(fields, "box", max_size=MAX_ENVELOPE)
    if len(box) < 24 + 16:
        raise ProtocolError(ErrorCode.MALFORMED, "DM box too short")
    if topic != dm_topic(peer_id_of(key), to):
        raise ProtocolError(ErrorCode.MALFORMED, "DM topic does not match its peers")


def _check_receipt(fields: Map, key: bytes, topic: str) -> None:
    to = need_bytes(fields, "to", 32)
    if topic != dm_topic(peer_id_of(key), to):
        raise ProtocolError(ErrorCode.MALFORMED, "receipt topic does not match its peers")
    ids = fields.get("ids")
    if (
        not isinstance(ids, list)
        or not 1 <= len(ids) <= MAX_RECEIPT_IDS
        or not all(isinstance(i, bytes) and len(i) == 32 for i in ids)
    ):
        raise ProtocolError(ErrorCode.MALFORMED, f"receipt ids: 1..{MAX_RECEIPT_IDS} 32-byte ids")


def _check_presence(fields: Map, key: bytes, topic: str) -> None:
    if topic != PRESENCE_TOPIC:
        raise ProtocolError(ErrorCode.MALFORMED, "presence goes to sys/presence")
    need_bytes(fields, "payload", max_size=4096)


_KIND_CHECKS: dict[str, Callable[[Map, bytes, str], None]] = {
    "msg": _check_msg,
    "dm": _check_dm,
    "receipt": _check_receipt,
    "presence": _check_presence,
}


def check_signature(key: bytes, signed: bytes, sig: bytes) -> None:
    """ProtocolError ``bad-signature`` unless ``sig`` is ``key``'s over ``signed``."""
    if not verify_signature(key, ENVELOPE_TAG + signed, sig):
        raise ProtocolError(ErrorCode.BAD_SIGNATURE, "envelope signature does not verify")


def payload_value(payload: bytes) -> Any:
    """Decode a payload that arrived in a verified envelope."""
    return _cbor.decode(payload, max_items=MAX_FRAME_ITEMS * 16)
