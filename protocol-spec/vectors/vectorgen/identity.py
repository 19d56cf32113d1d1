"""identity.json: seeds, Ed25519 keys, peer ids and X25519 keys."""

from __future__ import annotations

import hashlib

from peer import Identity
from peer.wire._identity import PEER_ID_TAG, x25519_public_of

from .common import NAMES, Json, hx, seed_of


def build_identity() -> Json:
    entries: list[Json] = []
    seeds = [("zero", bytes(32)), ("counting", bytes(range(32)))]
    seeds += [(name, seed_of(name)) for name in NAMES]
    for name, seed in seeds:
        ident = Identity.from_seed(seed)
        assert ident.peer_id == hashlib.sha256(PEER_ID_TAG + ident.public_key).digest()
        entries.append(
            {
                "name": name,
                "seed": hx(seed),
                "public_key": hx(ident.public_key),
                "peer_id_input": hx(PEER_ID_TAG + ident.public_key),
                "peer_id": hx(ident.peer_id),
                "x25519_private": hx(ident.x25519_private()),
                "x25519_public": hx(x25519_public_of(ident.public_key)),
            }
        )
    return {
        "description": (
            "Ed25519 seeds (RFC 8032 private keys) -> public keys -> peer ids. "
            "peer_id = SHA-256(peer_id_tag || public_key); peer_id_input is that "
            "concatenation. x25519_private/x25519_public are the keys a DM uses "
            "(libsodium crypto_sign_ed25519_sk_to_curve25519 / _pk_to_curve25519)."
        ),
        "spec": "README.md#3-peer-ids",
        "peer_id_tag": hx(PEER_ID_TAG),
        "identities": entries,
    }
