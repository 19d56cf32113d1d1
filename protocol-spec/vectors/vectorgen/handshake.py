"""handshake.json: a full handshake with every intermediate value, and a
version negotiation."""

from __future__ import annotations

import hashlib
import struct

from nacl.bindings import crypto_scalarmult

from peer import (
    Handshake,
    Identity,
    decode_frame,
    encode_frame,
    frame_record,
)
from peer.wire._handshake import AGENT, AUTH_TAG, TRANSCRIPT_TAG, LinkCipher

from .common import PROTOCOL_VERSION, FixedRandom, Json, det, hx, identity_json

# -- handshake ----------------------------------------------------------------------

INITIATOR_CAPS = ("relay",)
INITIATOR_LISTEN = ("ws://192.0.2.10:7447/",)
RESPONDER_CAPS = ("relay", "relay-only")
RESPONDER_LISTEN = ("ws://198.51.100.20:7447/", "ws://[2001:db8::20]:7447/")


def handshake_random(role: str) -> bytes:
    """64 bytes: the X25519 secret (first 32) and the hello nonce (last 32)."""
    return det(f"clawmesh/test-vector/handshake/{role}", 64)


class HandshakeRun:
    """The main handshake (alice dials bob), every record kept."""

    def __init__(self, ids: dict[str, Identity]) -> None:
        self.alice, self.bob = ids["alice"], ids["bob"]
        self.random_i = handshake_random("initiator")
        self.random_r = handshake_random("responder")
        ri, rr = FixedRandom(self.random_i), FixedRandom(self.random_r)
        ini = Handshake(
            self.alice, initiator=True, caps=INITIATOR_CAPS, listen=INITIATOR_LISTEN, random=ri
        )
        res = Handshake(
            self.bob, initiator=False, caps=RESPONDER_CAPS, listen=RESPONDER_LISTEN, random=rr
        )
        (self.hello_i,) = ini.start()
        self.hello_r, self.auth_r = res.receive(self.hello_i)
        assert ini.receive(self.hello_r) == []
        (self.auth_i,) = ini.receive(self.auth_r)
        assert res.receive(self.auth_i) == []
        assert ini.done and res.done and ri.exhausted and rr.exhausted
        assert ini.result is not None and res.result is not None
        self.ini_result, self.res_result = ini.result, res.result
        th = ini.result.transcript_hash
        assert th == res.result.transcript_hash
        self.transcript_hash = th
        eph_i = decode_frame(self.hello_i).to_map()["eph"]
        eph_r = decode_frame(self.hello_r).to_map()["eph"]
        self.shared = bytes(crypto_scalarmult(self.random_i[:32], eph_r))
        assert self.shared == bytes(crypto_scalarmult(self.random_r[:32], eph_i))
        self.key_i2r = hashlib.blake2b(b"i2r" + th, key=self.shared, digest_size=32).digest()
        self.key_r2i = hashlib.blake2b(b"r2i" + th, key=self.shared, digest_size=32).digest()
        self.eph_i, self.eph_r = eph_i, eph_r
        # first session records, each way
        self.session: list[Json] = []
        send_i, recv_r = ini.result.cipher, res.result.cipher
        send_r, recv_i = res.result.cipher, ini.result.cipher
        plan: list[tuple[str, LinkCipher, LinkCipher, bytes]] = [
            ("initiator", send_i, recv_r, encode_frame("ping", n=1)),
            (
                "initiator",
                send_i,
                recv_r,
                encode_frame("sub", topics=[["general", 0], ["sys/presence", 0]]),
            ),
            ("responder", send_r, recv_i, encode_frame("pong", n=1)),
        ]
        counters = {"initiator": 0, "responder": 0}
        self.ciphertexts: dict[tuple[str, int], bytes] = {}
        for sender, send, recv, plaintext in plan:
            ct = send.seal(plaintext)
            assert recv.open(ct) == plaintext
            n = counters[sender]
            counters[sender] += 1
            self.ciphertexts[(sender, n)] = ct
            self.session.append(
                {
                    "from": sender,
                    "key": "i2r" if sender == "initiator" else "r2i",
                    "counter": n,
                    "nonce": hx(b"\x00" * 4 + n.to_bytes(8, "little")),
                    "frame": decode_frame(plaintext).TYPE,
                    "plaintext": hx(plaintext),
                    "ciphertext": hx(ct),
                    "stream_record": hx(frame_record(ct)),
                }
            )

    def side(self, role: str) -> Json:
        ident = self.alice if role == "initiator" else self.bob
        rnd = self.random_i if role == "initiator" else self.random_r
        caps = INITIATOR_CAPS if role == "initiator" else RESPONDER_CAPS
        listen = INITIATOR_LISTEN if role == "initiator" else RESPONDER_LISTEN
        return {
            **identity_json(ident),
            "versions": [PROTOCOL_VERSION],
            "caps": list(caps),
            "listen": list(listen),
            "agent": AGENT,
            "random": hx(rnd),
            "eph_secret": hx(rnd[:32]),
            "eph_public": hx(self.eph_i if role == "initiator" else self.eph_r),
            "nonce": hx(rnd[32:]),
        }


def negotiation_example(ids: dict[str, Identity]) -> Json:
    """An initiator offering versions [1, 2] to a responder that speaks only 1."""
    ri = FixedRandom(det("clawmesh/test-vector/negotiation/initiator", 64))
    rr = FixedRandom(det("clawmesh/test-vector/negotiation/responder", 64))
    ini = Handshake(ids["alice"], initiator=True, caps=(), versions=(1, 2), random=ri)
    res = Handshake(ids["bob"], initiator=False, caps=(), versions=(1,), random=rr)
    (hello_i,) = ini.start()
    hello_r, auth_r = res.receive(hello_i)
    ini.receive(hello_r)
    (auth_i,) = ini.receive(auth_r)
    res.receive(auth_i)
    assert ini.result is not None and res.result is not None
    assert ini.result.version == res.result.version == 1
    return {
        "description": "initiator offers [1, 2], responder speaks [1] and answers with [1]",
        "initiator_versions": [1, 2],
        "responder_versions": [1],
        "initiator_random": hx(det("clawmesh/test-vector/negotiation/initiator", 64)),
        "responder_random": hx(det("clawmesh/test-vector/negotiation/responder", 64)),
        "caps": [],
        "listen": [],
        "chosen": 1,
        "initiator_hello": hx(hello_i),
        "responder_hello": hx(hello_r),
    }


def build_handshake(ids: dict[str, Identity], run: HandshakeRun) -> Json:
    th = run.transcript_hash
    transcript_input = (
        TRANSCRIPT_TAG
        + struct.pack(">I", len(run.hello_i))
        + run.hello_i
        + struct.pack(">I", len(run.hello_r))
        + run.hello_r
    )
    assert hashlib.sha256(transcript_input).digest() == th
    return {
        "description": (
            "A complete handshake: alice (initiator) dials bob (responder). Each side's "
            "random source yields its X25519 secret (32 bytes) then its hello nonce (32 "
            "bytes). records are the link records in the order they are sent; the session "
            "records follow the handshake on the same link."
        ),
        "spec": "handshake.md",
        "protocol_version": PROTOCOL_VERSION,
        "initiator": run.side("initiator"),
        "responder": run.side("responder"),
        "records": [
            {"from": "initiator", "frame": "hello", "hex": hx(run.hello_i),
             "stream_record": hx(frame_record(run.hello_i))},
            {"from": "responder", "frame": "hello", "hex": hx(run.hello_r),
             "stream_record": hx(frame_record(run.hello_r))},
            {"from": "responder", "frame": "auth", "hex": hx(run.auth_r),
             "stream_record": hx(frame_record(run.auth_r))},
            {"from": "initiator", "frame": "auth", "hex": hx(run.auth_i),
             "stream_record": hx(frame_record(run.auth_i))},
        ],
        "transcript_tag": hx(TRANSCRIPT_TAG),
        "transcript_input": hx(transcript_input),
        "transcript_hash": hx(th),
        "responder_signed": hx(AUTH_TAG["responder"] + th),
        "responder_signature": hx(decode_frame(run.auth_r).to_map()["sig"]),
        "initiator_signed": hx(AUTH_TAG["initiator"] + th),
        "initiator_signature": hx(decode_frame(run.auth_i).to_map()["sig"]),
        "shared_secret": hx(run.shared),
        "key_i2r": hx(run.key_i2r),
        "key_r2i": hx(run.key_r2i),
        "session": run.session,
        "negotiation": negotiation_example(ids),
    }
