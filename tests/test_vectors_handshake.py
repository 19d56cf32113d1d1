"""Identity and handshake vectors (identity.json, handshake.json) against the
reference code and against the spec's constructions recomputed with hashlib
and libsodium."""

from __future__ import annotations

import hashlib
import struct
from typing import Any

from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_decrypt,
    crypto_aead_chacha20poly1305_ietf_encrypt,
    crypto_scalarmult,
    crypto_scalarmult_base,
)

from peer import (
    Handshake,
    Identity,
    LinkCipher,
    decode_frame,
)
from peer.wire import _cbor, _limits
from peer.wire._identity import x25519_public_of
from tests._vectors import (
    AUTH_INITIATOR,
    AUTH_RESPONDER,
    PEER_ID_TAG,
    TRANSCRIPT_TAG,
    FixedRandom,
    Json,
    h,
    load,
    u32,
    verify,
)

# -- identities ----------------------------------------------------------------------


def test_identity_vectors() -> None:
    doc = load("identity.json")
    assert h(doc["peer_id_tag"]) == PEER_ID_TAG
    assert len(doc["identities"]) >= 3
    for entry in doc["identities"]:
        ident = Identity.from_seed(h(entry["seed"]))
        assert ident.public_key == h(entry["public_key"])
        assert h(entry["peer_id_input"]) == PEER_ID_TAG + ident.public_key
        assert hashlib.sha256(PEER_ID_TAG + ident.public_key).digest() == h(entry["peer_id"])
        assert ident.peer_id == h(entry["peer_id"])
        assert ident.peer_id_hex == entry["peer_id"]
        assert ident.x25519_private() == h(entry["x25519_private"])
        assert x25519_public_of(ident.public_key) == h(entry["x25519_public"])
        # the converted keys form an X25519 key pair
        assert bytes(crypto_scalarmult_base(h(entry["x25519_private"]))) == h(
            entry["x25519_public"]
        )
        # the X25519 private key is the clamped first half of SHA-512(seed)
        digest = bytearray(hashlib.sha512(h(entry["seed"])).digest()[:32])
        digest[0] &= 248
        digest[31] &= 127
        digest[31] |= 64
        assert bytes(digest) == h(entry["x25519_private"])


# -- handshake ------------------------------------------------------------------------


def _handshake(doc: Json, role: str, rnd: FixedRandom, **kw: Any) -> Handshake:
    side = doc[role]
    return Handshake(
        Identity.from_seed(h(side["seed"])),
        initiator=role == "initiator",
        caps=tuple(side["caps"]),
        listen=tuple(side["listen"]),
        versions=tuple(side["versions"]),
        random=rnd,
        **kw,
    )


def test_handshake_records_are_reproduced() -> None:
    doc = load("handshake.json")
    ri = FixedRandom(h(doc["initiator"]["random"]))
    rr = FixedRandom(h(doc["responder"]["random"]))
    ini = _handshake(doc, "initiator", ri)
    res = _handshake(doc, "responder", rr, expect_peer_id=None)
    records = [(r["from"], r["frame"], h(r["hex"])) for r in doc["records"]]
    assert [(who, kind) for who, kind, _ in records] == [
        ("initiator", "hello"),
        ("responder", "hello"),
        ("responder", "auth"),
        ("initiator", "auth"),
    ]
    assert ini.start() == [records[0][2]]
    assert res.receive(records[0][2]) == [records[1][2], records[2][2]]
    assert ini.receive(records[1][2]) == []
    assert ini.receive(records[2][2]) == [records[3][2]]
    assert res.receive(records[3][2]) == []
    assert ini.done and res.done
    assert ri.exhausted and rr.exhausted  # exactly 64 bytes of randomness per side
    assert ini.result is not None and res.result is not None
    for result, other in ((ini.result, "responder"), (res.result, "initiator")):
        assert result.transcript_hash == h(doc["transcript_hash"])
        assert result.version == doc["protocol_version"] == 1
        assert result.peer_id == h(doc[other]["peer_id"])
        assert result.public_key == h(doc[other]["public_key"])
        assert list(result.caps) == doc[other]["caps"]
        assert list(result.listen) == doc[other]["listen"]
        assert result.agent == doc[other]["agent"]
    # the session records, through the handshake's own ciphers
    for entry in doc["session"]:
        plaintext, ciphertext = h(entry["plaintext"]), h(entry["ciphertext"])
        if entry["from"] == "initiator":
            sender, receiver = ini.result.cipher, res.result.cipher
        else:
            sender, receiver = res.result.cipher, ini.result.cipher
        assert sender.seal(plaintext) == ciphertext
        assert receiver.open(ciphertext) == plaintext


def test_handshake_follows_the_spec_constructions() -> None:
    doc = load("handshake.json")
    assert h(doc["transcript_tag"]) == TRANSCRIPT_TAG
    ini, res = doc["initiator"], doc["responder"]
    hello_i, hello_r, auth_r, auth_i = (h(r["hex"]) for r in doc["records"])
    for record in doc["records"]:
        assert h(record["stream_record"]) == u32(len(h(record["hex"]))) + h(record["hex"])
        assert len(h(record["hex"])) <= _limits.MAX_HANDSHAKE_RECORD
    # random source: X25519 secret first, then the hello nonce
    for side, hello, versions in ((ini, hello_i, ini["versions"]), (res, hello_r, [1])):
        rnd = h(side["random"])
        assert h(side["eph_secret"]) == rnd[:32] and h(side["nonce"]) == rnd[32:]
        assert bytes(crypto_scalarmult_base(rnd[:32])) == h(side["eph_public"])
        fields = decode_frame(hello).to_map()
        assert fields == {
            "t": "hello",
            "versions": versions,
            "id": h(side["peer_id"]),
            "pk": h(side["public_key"]),
            "eph": h(side["eph_public"]),
            "nonce": h(side["nonce"]),
            "caps": side["caps"],
            "listen": side["listen"],
            "agent": side["agent"],
        }
        assert _cbor.encode(fields) == hello  # canonical
    # transcript hash: tag, then each hello with a u32 big-endian length prefix
    transcript_input = TRANSCRIPT_TAG + u32(len(hello_i)) + hello_i + u32(len(hello_r)) + hello_r
    assert h(doc["transcript_input"]) == transcript_input
    th = hashlib.sha256(transcript_input).digest()
    assert th == h(doc["transcript_hash"])
    # each auth signs its role's tag || transcript hash
    assert h(doc["responder_signed"]) == AUTH_RESPONDER + th
    assert h(doc["initiator_signed"]) == AUTH_INITIATOR + th
    assert decode_frame(auth_r).to_map() == {"t": "auth", "sig": h(doc["responder_signature"])}
    assert decode_frame(auth_i).to_map() == {"t": "auth", "sig": h(doc["initiator_signature"])}
    verify(h(res["public_key"]), AUTH_RESPONDER + th, h(doc["responder_signature"]))
    verify(h(ini["public_key"]), AUTH_INITIATOR + th, h(doc["initiator_signature"]))
    # X25519 and the keyed BLAKE2b key derivation
    shared = bytes(crypto_scalarmult(h(ini["eph_secret"]), h(res["eph_public"])))
    assert shared == bytes(crypto_scalarmult(h(res["eph_secret"]), h(ini["eph_public"])))
    assert shared == h(doc["shared_secret"])
    i2r = hashlib.blake2b(b"i2r" + th, key=shared, digest_size=32).digest()
    r2i = hashlib.blake2b(b"r2i" + th, key=shared, digest_size=32).digest()
    assert (i2r, r2i) == (h(doc["key_i2r"]), h(doc["key_r2i"]))
    # ChaCha20-Poly1305 (IETF), nonce = 4 zero bytes || u64 little-endian counter, no AD
    counters = {"initiator": 0, "responder": 0}
    for entry in doc["session"]:
        key = i2r if entry["from"] == "initiator" else r2i
        assert entry["key"] == ("i2r" if entry["from"] == "initiator" else "r2i")
        n = counters[entry["from"]]
        counters[entry["from"]] += 1
        nonce = bytes(4) + struct.pack("<Q", n)
        assert entry["counter"] == n and h(entry["nonce"]) == nonce
        plaintext = h(entry["plaintext"])
        assert entry["frame"] == decode_frame(plaintext).TYPE
        ciphertext = bytes(crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, None, nonce, key))
        assert ciphertext == h(entry["ciphertext"])
        assert len(ciphertext) == len(plaintext) + 16
        assert bytes(crypto_aead_chacha20poly1305_ietf_decrypt(ciphertext, None, nonce, key)) == (
            plaintext
        )
        assert h(entry["stream_record"]) == u32(len(ciphertext)) + ciphertext
    # and LinkCipher is exactly that construction
    cipher = LinkCipher(i2r, r2i)
    for entry in doc["session"]:
        if entry["from"] == "initiator":
            assert cipher.seal(h(entry["plaintext"])) == h(entry["ciphertext"])


def test_version_negotiation() -> None:
    doc = load("handshake.json")
    neg = doc["negotiation"]
    ini = Handshake(
        Identity.from_seed(h(doc["initiator"]["seed"])),
        initiator=True,
        caps=tuple(neg["caps"]),
        listen=tuple(neg["listen"]),
        versions=tuple(neg["initiator_versions"]),
        random=FixedRandom(h(neg["initiator_random"])),
    )
    res = Handshake(
        Identity.from_seed(h(doc["responder"]["seed"])),
        initiator=False,
        caps=tuple(neg["caps"]),
        listen=tuple(neg["listen"]),
        versions=tuple(neg["responder_versions"]),
        random=FixedRandom(h(neg["responder_random"])),
    )
    (hello_i,) = ini.start()
    assert hello_i == h(neg["initiator_hello"])
    assert decode_frame(hello_i).to_map()["versions"] == neg["initiator_versions"]
    hello_r, auth_r = res.receive(hello_i)
    assert hello_r == h(neg["responder_hello"])
    assert decode_frame(hello_r).to_map()["versions"] == [neg["chosen"]]
    ini.receive(hello_r)
    (auth_i,) = ini.receive(auth_r)
    res.receive(auth_i)
    assert ini.result is not None and res.result is not None
    assert ini.result.version == res.result.version == neg["chosen"]
