"""Shared inputs of the vector generators: fixed seeds, the deterministic
random source, raw CBOR building for deliberately bad input, identities."""

from __future__ import annotations

import hashlib
import struct
from typing import Any

from peer import Identity
from peer.wire import _cbor

SPEC_REVISION = "1.3"
PROTOCOL_VERSION = 1
TS0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in milliseconds

Json = dict[str, Any]


# -- deterministic inputs --------------------------------------------------------


def det(label: str, size: int) -> bytes:
    """``size`` bytes derived from ``label``: SHA-256(label || u32be(i)) for i = 0, 1, ..."""
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(label.encode() + struct.pack(">I", counter)).digest()
        counter += 1
    return out[:size]


def seed_of(name: str) -> bytes:
    return det(f"clawmesh/test-vector/seed/{name}", 32)


class FixedRandom:
    """A ``random(n)`` callable that hands out a fixed byte string, in order."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def __call__(self, size: int) -> bytes:
        if self._pos + size > len(self._data):
            raise RuntimeError("fixed random source exhausted")
        out = self._data[self._pos : self._pos + size]
        self._pos += size
        return out

    @property
    def exhausted(self) -> bool:
        return self._pos == len(self._data)


def hx(data: bytes) -> str:
    return data.hex()


# -- raw CBOR building (for deliberately bad input) --------------------------------


def c(value: object) -> bytes:
    """Canonical CBOR of ``value``."""
    return _cbor.encode(value)


def raw_map(*pairs: tuple[bytes, bytes]) -> bytes:
    """A CBOR map with the given already-encoded key/value pairs, in the given order."""
    assert len(pairs) < 24
    return bytes([0xA0 + len(pairs)]) + b"".join(k + v for k, v in pairs)


def nested_arrays(levels: int, inner: bytes) -> bytes:
    """``levels`` one-element arrays around ``inner``."""
    return b"\x81" * levels + inner


# -- identities -------------------------------------------------------------------

NAMES = ("alice", "bob", "carol")


def identities() -> dict[str, Identity]:
    return {name: Identity.from_seed(seed_of(name)) for name in NAMES}


def identity_json(ident: Identity) -> Json:
    return {
        "seed": hx(ident.seed),
        "public_key": hx(ident.public_key),
        "peer_id": hx(ident.peer_id),
    }
