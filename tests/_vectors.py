"""Shared helpers of the protocol vector tests (tests/test_vectors*.py): the
vector files, the spec's constants restated independently of the code, and
small byte helpers. No test here."""

from __future__ import annotations

import hashlib
import json
import struct
from functools import cache
from pathlib import Path
from typing import Any

from nacl.signing import VerifyKey

from peer import decode_frame, encode_frame, message_id, open_envelope
from peer.wire import _cbor

SPEC = Path(__file__).resolve().parent.parent / "protocol-spec"
VECTORS = SPEC / "vectors"

# The constants as the spec states them (README.md, handshake.md, envelope.md).
PEER_ID_TAG = b"clawmesh/peer-id/v1"
TRANSCRIPT_TAG = b"clawmesh/handshake/v1"
AUTH_INITIATOR = b"clawmesh/auth/initiator/v1"
AUTH_RESPONDER = b"clawmesh/auth/responder/v1"
ENVELOPE_TAG = b"clawmesh/envelope/v1"
MSG_ID_TAG = b"clawmesh/msg-id/v1"
DM_TOPIC_TAG = b"clawmesh/dm-topic/v1"

Json = dict[str, Any]


@cache
def load(name: str) -> Json:
    data: Json = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


def h(text: str) -> bytes:
    return bytes.fromhex(text)


class FixedRandom:
    """Hands out a fixed byte string, in order, like the vectors' random sources."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def __call__(self, size: int) -> bytes:
        assert self._pos + size <= len(self._data), "random source exhausted"
        out = self._data[self._pos : self._pos + size]
        self._pos += size
        return out

    @property
    def exhausted(self) -> bool:
        return self._pos == len(self._data)


def verify(public_key: bytes, message: bytes, signature: bytes) -> None:
    VerifyKey(public_key).verify(message, signature)  # raises if it does not verify


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def check_envelope_bytes(entry: Json, sender_key: bytes) -> None:
    """An envelope entry's signed bytes, signature, wire form, id and pub frame."""
    signed, sig, wire = h(entry["signed"]), h(entry["signature"]), h(entry["wire"])
    assert h(entry["signature_input"]) == ENVELOPE_TAG + signed
    verify(sender_key, ENVELOPE_TAG + signed, sig)
    assert wire == _cbor.encode([signed, sig])
    assert h(entry["message_id_input"]) == MSG_ID_TAG + signed
    assert hashlib.sha256(MSG_ID_TAG + signed).digest() == h(entry["message_id"])
    assert message_id(signed) == h(entry["message_id"])
    assert h(entry["pub_frame"]) == encode_frame("pub", e=wire)
    assert decode_frame(h(entry["pub_frame"])).to_map() == {"t": "pub", "e": wire}
    env = open_envelope(wire)
    assert env.id == h(entry["message_id"])
    assert env.wire == wire
    assert env.kind == entry["kind"] and env.topic == entry["topic"]
    assert env.route == entry["route"]
    assert env.seq == entry["seq"] and env.ts == entry["ts"]
    assert env.sender_key == sender_key
    assert _cbor.encode(env.fields) == signed
