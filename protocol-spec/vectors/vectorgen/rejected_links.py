"""rejected.json, part 2: refused handshake records, stream records,
session records and session frames."""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import cbor2

from peer import (
    Handshake,
    Identity,
    decode_frame,
    dm_topic,
    encode_frame,
)
from peer.wire._handshake import AUTH_TAG, TRANSCRIPT_TAG
from peer.wire._limits import (
    MAX_HANDSHAKE_RECORD,
    MAX_RECORD,
)

from .common import TS0, FixedRandom, Json, c, det, hx
from .handshake import (
    INITIATOR_CAPS,
    INITIATOR_LISTEN,
    RESPONDER_CAPS,
    RESPONDER_LISTEN,
    HandshakeRun,
    handshake_random,
)
from .rejected_wire import dm_fields, hello_bytes, msg_fields, sign_fields


def handshake_vectors(ids: dict[str, Identity], run: HandshakeRun) -> list[Json]:
    alice, bob, carol = ids["alice"], ids["bob"], ids["carol"]
    rnd_i = handshake_random("initiator")
    rnd_r = handshake_random("responder")
    v: list[Json] = []

    def add(name: str, role: str, ident: Identity, rnd: bytes, before: list[bytes],
            data: bytes, code: str, note: str, expect: bytes | None = None) -> None:
        caps = INITIATOR_CAPS if role == "initiator" else RESPONDER_CAPS
        listen = INITIATOR_LISTEN if role == "initiator" else RESPONDER_LISTEN
        entry: Json = {"name": name, "layer": "handshake-record", "hex": hx(data), "code": code,
                       "note": note, "role": role, "seed": hx(ident.seed), "random": hx(rnd),
                       "versions": [1], "caps": list(caps), "listen": list(listen)}
        if expect is not None:
            entry["expect_peer_id"] = hx(expect)
        entry["before"] = [hx(b) for b in before]
        v.append(entry)

    add("hello-id-does-not-match-pk", "responder", bob, rnd_r, [],
        hello_bytes(alice, rnd_i, id=carol.peer_id), "auth",
        "alice's key claiming carol's peer id")
    add("hello-id-without-tag", "responder", bob, rnd_r, [],
        hello_bytes(alice, rnd_i, id=hashlib.sha256(alice.public_key).digest()), "auth",
        "id computed as SHA-256(pk), without the peer-id tag")
    add("self-connection", "responder", bob, rnd_r, [], hello_bytes(bob, rnd_i), "auth",
        "bob receives a hello carrying bob's own id and key")
    add("unexpected-peer-id", "initiator", alice, rnd_i, [], run.hello_r, "auth",
        "alice dialled expecting carol; bob answers", expect=carol.peer_id)
    add("initiator-hello-to-initiator", "initiator", alice, rnd_i, [], run.hello_i, "auth",
        "alice's own hello reflected back to her (self-connection seen by the initiator)")
    add("replayed-auth", "responder", bob, det("clawmesh/test-vector/handshake/replay", 64),
        [run.hello_i], run.auth_i, "auth",
        "handshake.json's initiator hello and auth replayed to bob, whose fresh ephemeral "
        "key and nonce give a different transcript hash")
    add("reflected-auth", "responder", bob, rnd_r, [run.hello_i], run.auth_r, "auth",
        "bob's own responder auth sent back to him as the initiator's")
    flipped = bytearray(decode_frame(run.auth_i).to_map()["sig"])
    flipped[10] ^= 0x80
    add("bad-auth-signature", "responder", bob, rnd_r, [run.hello_i],
        encode_frame("auth", sig=bytes(flipped)), "auth", "the initiator's auth, one bit flipped")
    # an all-zero ephemeral key, in an otherwise valid and validly signed handshake
    zero_hello = hello_bytes(alice, rnd_i, eph=bytes(32))
    res = Handshake(bob, initiator=False, caps=RESPONDER_CAPS, listen=RESPONDER_LISTEN,
                    random=FixedRandom(rnd_r))
    hello_r, _auth_r = res.receive(zero_hello)
    th = hashlib.sha256(TRANSCRIPT_TAG + struct.pack(">I", len(zero_hello)) + zero_hello
                        + struct.pack(">I", len(hello_r)) + hello_r).digest()
    zero_auth = encode_frame("auth", sig=alice.sign(AUTH_TAG["initiator"] + th))
    add("zero-ephemeral-key", "responder", bob, rnd_r, [zero_hello], zero_auth, "auth",
        "the initiator's eph is all zeros (a low-order point): the X25519 result is zero")
    add("no-common-version", "responder", bob, rnd_r, [], hello_bytes(alice, rnd_i, versions=[2]),
        "version", "alice offers only version 2")
    add("responder-chose-two-versions", "initiator", alice, rnd_i, [],
        hello_bytes(bob, rnd_r, versions=[1, 2], caps=list(RESPONDER_CAPS),
                    listen=list(RESPONDER_LISTEN)),
        "version", "the responder's hello must list exactly the one version it chose")
    add("responder-chose-unoffered-version", "initiator", alice, rnd_i, [],
        hello_bytes(bob, rnd_r, versions=[2]), "version", "alice never offered version 2")
    add("auth-before-hello", "responder", bob, rnd_r, [], run.auth_i, "unexpected",
        "the first record must be a hello")
    add("second-hello", "initiator", alice, rnd_i, [run.hello_r], run.hello_r, "unexpected",
        "after the responder's hello the initiator expects auth")
    add("ping-during-handshake", "responder", bob, rnd_r, [run.hello_i], encode_frame("ping", n=1),
        "unexpected", "no session frame before the handshake is done")
    add("error-frame", "initiator", alice, rnd_i, [],
        encode_frame("error", code="version", msg="no common version"), "unexpected",
        "the other side refused; the receiver reports 'unexpected' and sends no error back")
    add("hello-malformed", "responder", bob, rnd_r, [], hello_bytes(alice, rnd_i, id=bytes(31)),
        "malformed", "id of 31 bytes")
    add("hello-non-canonical", "responder", bob, rnd_r, [],
        cbor2.dumps(dict(reversed(list(cbor2.loads(run.hello_i).items())))),
        "non-canonical", "handshake.json's initiator hello with its keys in another order")
    pad_hello = cbor2.loads(run.hello_i)
    pad_hello["pad"] = b""
    size = len(c(pad_hello))
    pad_hello["pad"] = bytes(MAX_HANDSHAKE_RECORD + 1 - size - 2)
    oversize = c(pad_hello)
    assert len(oversize) == MAX_HANDSHAKE_RECORD + 1, len(oversize)
    add("oversize-handshake-record", "responder", bob, rnd_r, [], oversize, "too-large",
        f"a record of MAX_HANDSHAKE_RECORD + 1 = {MAX_HANDSHAKE_RECORD + 1} bytes")
    return v


def stream_vectors() -> list[Json]:
    return [
        {"name": "oversize-length-prefix", "layer": "stream-record",
         "hex": hx(struct.pack(">I", MAX_RECORD + 1)), "code": "too-large",
         "note": "a length prefix of MAX_RECORD + 1 is refused as soon as the 4 bytes arrive"},
        {"name": "huge-length-prefix", "layer": "stream-record", "hex": "ffffffff",
         "code": "too-large", "note": "4 GiB - 1"},
    ]


def session_vectors(run: HandshakeRun) -> list[Json]:
    c0 = run.ciphertexts[("initiator", 0)]
    c1 = run.ciphertexts[("initiator", 1)]
    tampered = bytearray(c0)
    tampered[-1] ^= 0x01
    flipped_body = bytearray(c0)
    flipped_body[0] ^= 0x01

    def entry(name: str, before: list[bytes], data: bytes, note: str) -> Json:
        return {"name": name, "layer": "session-record", "hex": hx(data), "code": "decrypt",
                "note": note, "key": hx(run.key_i2r), "before": [hx(b) for b in before]}

    return [
        entry("tampered-tag", [], bytes(tampered), "first initiator record, last tag bit flipped"),
        entry("tampered-ciphertext", [], bytes(flipped_body),
              "first initiator record, first ciphertext bit flipped"),
        entry("out-of-order", [], c1, "the second initiator record where the first is due"),
        entry("replayed-record", [c0], c0, "the first initiator record, twice"),
        entry("too-short", [], c0[:15], "shorter than a Poly1305 tag"),
        entry("plaintext-frame", [], encode_frame("ping", n=1), "an unencrypted ping"),
    ]


def session_frame_vectors(ids: dict[str, Identity], run: HandshakeRun,
                          msgs: dict[str, Any]) -> list[Json]:
    alice, bob, carol = ids["alice"], ids["bob"], ids["carol"]
    signed, sig = cbor2.loads(msgs["root"].wire)
    flipped = bytearray(sig)
    flipped[0] ^= 0x01

    def entry(name: str, data: bytes, code: str, note: str) -> Json:
        return {"name": name, "layer": "session-frame", "hex": hx(data), "code": code,
                "note": note, "wall_ms": TS0}

    return [
        entry("hello-after-handshake", run.hello_i, "unexpected",
              "a hello on an established link"),
        entry("auth-after-handshake", run.auth_i, "unexpected", "an auth on an established link"),
        entry("pub-bad-signature", encode_frame("pub", e=c([signed, bytes(flipped)])),
              "bad-signature", "a pub whose envelope signature does not verify"),
        entry("pub-dm-topic-mismatch",
              encode_frame("pub", e=sign_fields(alice, dm_fields(
                  alice, bob, topic=dm_topic(alice.peer_id, carol.peer_id)))),
              "malformed", "a pub carrying a DM on the wrong conversation topic"),
        entry("pub-envelope-version-2",
              encode_frame("pub", e=sign_fields(alice, msg_fields(alice, v=2))),
              "version", "a pub carrying an envelope of version 2"),
        entry("pub-envelope-not-cbor", encode_frame("pub", e=b"\xff"), "malformed",
              "e is not CBOR"),
    ]
