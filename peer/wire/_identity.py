"""Ed25519 identities and the ids derived from them.

A peer is its Ed25519 key. Its peer id is SHA-256 over a domain tag and the
32-byte public key, so anyone holding the public key can check the id, and a
connection is only accepted after the other side proves it holds the matching
private key (see ``_handshake``). Node ids in the DHT are the same 256 bits.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

from nacl.bindings import (
    crypto_sign_ed25519_pk_to_curve25519,
    crypto_sign_ed25519_sk_to_curve25519,
)
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import SigningKey, VerifyKey

PEER_ID_TAG = b"clawmesh/peer-id/v1"
PEER_ID_LEN = 32
PUBLIC_KEY_LEN = 32
SIGNATURE_LEN = 64


def peer_id_of(public_key: bytes) -> bytes:
    """The 32-byte peer id of an Ed25519 public key (remembered for recent keys: a
    relay asks for the same few authors' ids several times per message)."""
    if type(public_key) is bytes:
        return _recent_peer_id(public_key)
    return hashlib.sha256(PEER_ID_TAG + public_key).digest()


@functools.lru_cache(maxsize=4096)
def _recent_peer_id(public_key: bytes) -> bytes:
    return hashlib.sha256(PEER_ID_TAG + public_key).digest()


def parse_peer_id(text: str) -> bytes:
    """Parse the 64-hex-digit text form of a peer id; ValueError if it is not one."""
    text = text.strip().lower()
    if len(text) != 2 * PEER_ID_LEN:
        raise ValueError("a peer id is 64 hex digits")
    return bytes.fromhex(text)


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True if ``signature`` is a valid Ed25519 signature of ``message``."""
    try:
        VerifyKey(public_key).verify(message, signature)
    except (BadSignatureError, CryptoError, ValueError, TypeError):
        return False
    return True


def x25519_public_of(ed25519_public_key: bytes) -> bytes:
    """The X25519 public key that corresponds to an Ed25519 public key."""
    return bytes(crypto_sign_ed25519_pk_to_curve25519(ed25519_public_key))


@dataclass(frozen=True)
class Identity:
    """An Ed25519 keypair and the peer id derived from it."""

    signing_key: SigningKey = field(repr=False)
    public_key: bytes
    peer_id: bytes

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        signing_key = SigningKey(seed)
        public_key = bytes(signing_key.verify_key)
        return cls(signing_key, public_key, peer_id_of(public_key))

    @classmethod
    def generate(cls) -> Identity:
        return cls.from_seed(bytes(SigningKey.generate()))

    @property
    def seed(self) -> bytes:
        return bytes(self.signing_key)

    @property
    def peer_id_hex(self) -> str:
        return self.peer_id.hex()

    def sign(self, message: bytes) -> bytes:
        return bytes(self.signing_key.sign(message).signature)

    def x25519_private(self) -> bytes:
        """The X25519 private key for end-to-end encryption (DMs)."""
        full = self.seed + self.public_key
        return bytes(crypto_sign_ed25519_sk_to_curve25519(full))
