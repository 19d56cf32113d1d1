#!/usr/bin/env python3
"""Generate the clawmesh protocol test vectors in this directory.

Run from the repository root:

    .venv/bin/python protocol-spec/vectors/generate.py          # (re)write the JSON files
    .venv/bin/python protocol-spec/vectors/generate.py --check  # exit 1 if a file is stale

Every value comes from fixed seeds and from an injected deterministic random
source (``Handshake(random=...)``, ``seal_dm(nonce=...)``); Ed25519 signatures
are deterministic, so two runs write identical files. The catch-up pages come
from ``build_page`` over a small in-memory carrier log defined here. The reference code in
``peer/`` produces the bytes; the generator asserts a few cross-checks on the
way (both handshake sides agree, every refused vector is refused), and
``tests/test_vectors.py`` checks the files against the code independently.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
from pathlib import Path
from typing import Any, NamedTuple

import cbor2

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nacl.bindings import (  # noqa: E402
    crypto_box_beforenm,
    crypto_scalarmult,
    crypto_scalarmult_base,
)

from peer import (  # noqa: E402
    Content,
    GossipRouter,
    Handshake,
    Identity,
    ProtocolError,
    Pub,
    Push,
    RecordBuffer,
    decode_frame,
    dm_topic,
    encode_frame,
    frame_record,
    inbox_topic,
    open_dm,
    open_envelope,
    seal_dm,
    seal_message,
)
from peer.protocols._catchup import Page, PageRequest, build_page, check_page  # noqa: E402
from peer.protocols._gossip import Close  # noqa: E402
from peer.wire import _cbor  # noqa: E402
from peer.wire._envelope import (  # noqa: E402
    ENVELOPE_TAG,
    MAX_RECEIPT_IDS,
    MSG_ID_TAG,
    PRESENCE_TOPIC,
    seal_presence,
    seal_receipt,
)
from peer.wire._handshake import AGENT, AUTH_TAG, TRANSCRIPT_TAG, LinkCipher  # noqa: E402
from peer.wire._identity import PEER_ID_TAG, x25519_public_of  # noqa: E402
from peer.wire._limits import (  # noqa: E402
    MAX_BODY_BYTES,
    MAX_HANDSHAKE_RECORD,
    MAX_IDS_PER_FRAME,
    MAX_PAGE_BYTES,
    MAX_PAGE_HEADS,
    MAX_PAGE_MESSAGES,
    MAX_RECORD,
    MAX_REQUEST_ID,
    MAX_TEXT_FIELD,
    MAX_TOPICS_PER_FRAME,
)

SPEC_REVISION = "1.2"
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


# -- envelopes ----------------------------------------------------------------------

REPLY_PAYLOAD = {"task": "summarise", "priority": 2, "tags": ["news", "daily"], "done": False}


def envelope_entry(name: str, env: Any, content: Json | None) -> Json:
    signed, sig = cbor2.loads(env.wire)
    assert env.id == hashlib.sha256(MSG_ID_TAG + signed).digest()
    entry: Json = {"name": name, "kind": env.kind, "topic": env.topic, "route": env.route,
                   "seq": env.seq, "ts": env.ts}
    if content is not None:
        entry["content"] = content
    entry.update(
        {
            "signed": hx(signed),
            "signature_input": hx(ENVELOPE_TAG + signed),
            "signature": hx(sig),
            "wire": hx(env.wire),
            "message_id_input": hx(MSG_ID_TAG + signed),
            "message_id": hx(env.id),
            "pub_frame": hx(Pub(env.wire).encode()),
        }
    )
    return entry


def build_envelope(ids: dict[str, Identity]) -> tuple[Json, dict[str, Any]]:
    alice = ids["alice"]
    root = seal_message(
        alice, topic="general", content=Content(body="hello, mesh"), seq=1, ts=TS0
    )
    payload = c(REPLY_PAYLOAD)
    reply_content = Content(
        body="Grüße — a reply with a payload 👋", payload=payload, reply_to=root.id, thread=root.id
    )
    reply = seal_message(alice, topic="general", content=reply_content, seq=2, ts=TS0 + 1500)
    presence_payload = c({"listen": list(INITIATOR_LISTEN), "caps": list(INITIATOR_CAPS)})
    presence = seal_presence(alice, payload=presence_payload, seq=3, ts=TS0 + 2000)
    for env in (root, reply, presence):
        opened = open_envelope(env.wire)
        assert opened.id == env.id and opened.fields == env.fields
    doc = {
        "description": (
            "Signed envelopes from alice. signed is the canonical CBOR map that is signed; "
            "signature_input = envelope_tag || signed; wire = CBOR [signed, signature]; "
            "message_id = SHA-256(msg_id_tag || signed); pub_frame carries wire in a pub frame."
        ),
        "spec": "envelope.md",
        "envelope_tag": hx(ENVELOPE_TAG),
        "msg_id_tag": hx(MSG_ID_TAG),
        "sender": identity_json(alice),
        "messages": [
            envelope_entry("root", root, {"body": "hello, mesh"}),
            envelope_entry(
                "reply",
                reply,
                {
                    "body": reply_content.body,
                    "payload": hx(payload),
                    "payload_value": REPLY_PAYLOAD,
                    "reply_to": hx(root.id),
                    "thread": hx(root.id),
                },
            ),
        ],
        "presence": {
            **envelope_entry("presence", presence, None),
            "payload": hx(presence_payload),
            "payload_value": {"listen": list(INITIATOR_LISTEN), "caps": list(INITIATOR_CAPS)},
        },
    }
    return doc, {"root": root, "reply": reply, "presence": presence}


DM_BODY = "meet in #general at 15:00"
DM_PAYLOAD = {"room": "general", "at": "15:00"}


def build_dm(ids: dict[str, Identity], root_id: bytes) -> tuple[Json, Any]:
    alice, bob = ids["alice"], ids["bob"]
    nonce = det("clawmesh/test-vector/dm/nonce", 24)
    payload = c(DM_PAYLOAD)
    content = Content(body=DM_BODY, payload=payload, reply_to=root_id)
    env = seal_dm(alice, recipient_key=bob.public_key, content=content, seq=4, ts=TS0 + 3000,
                  nonce=nonce)
    opened = open_envelope(env.wire)
    assert open_dm(bob, opened) == content
    box = env.fields["box"]
    inner = c(content.to_map())
    bob_x = x25519_public_of(bob.public_key)
    shared_key = bytes(crypto_box_beforenm(bob_x, alice.x25519_private()))
    raw_shared = bytes(crypto_scalarmult(alice.x25519_private(), bob_x))
    entry = envelope_entry("dm", env, None)
    doc: Json = {
        "description": (
            "An encrypted DM from alice to bob. box = nonce (24 bytes) || crypto_box(inner, "
            "nonce, recipient x25519 public, sender x25519 private), where crypto_box is "
            "X25519 + XSalsa20-Poly1305 and its output is the 16-byte tag then the "
            "ciphertext. box_key is crypto_box_beforenm (HSalsa20 of the X25519 shared "
            "secret). The DM travels on route inbox/<hex recipient id>."
        ),
        "spec": "envelope.md#7-direct-messages-dm",
        "sender": {
            **identity_json(alice),
            "x25519_private": hx(alice.x25519_private()),
            "x25519_public": hx(x25519_public_of(alice.public_key)),
        },
        "recipient": {
            **identity_json(bob),
            "x25519_private": hx(bob.x25519_private()),
            "x25519_public": hx(x25519_public_of(bob.public_key)),
        },
        "dm_topic_input": hx(b"clawmesh/dm-topic/v1" + min(alice.peer_id, bob.peer_id)
                             + max(alice.peer_id, bob.peer_id)),
        "dm_topic": dm_topic(alice.peer_id, bob.peer_id),
        "inbox_topic": inbox_topic(bob.peer_id),
        "seq": env.seq,
        "ts": env.ts,
        "nonce": hx(nonce),
        "content": {
            "body": DM_BODY,
            "payload": hx(payload),
            "payload_value": DM_PAYLOAD,
            "reply_to": hx(root_id),
        },
        "inner": hx(inner),
        "x25519_shared": hx(raw_shared),
        "box_key": hx(shared_key),
        "box": hx(box),
    }
    for key in ("signed", "signature_input", "signature", "wire", "message_id_input",
                "message_id", "pub_frame"):
        doc[key] = entry[key]
    doc["route"] = env.route
    doc["decrypted"] = {
        "body": DM_BODY,
        "payload": hx(payload),
        "reply_to": hx(root_id),
        "thread": None,
    }
    return doc, env


# -- catch-up and DM delivery ----------------------------------------------------------


class LogRecord(NamedTuple):
    """One record of a carrier's log (catchup.md section 2.2)."""

    name: str
    seq: int
    sender: bytes
    sender_seq: int
    received_ms: int
    wire: bytes
    msg_id: bytes


class LogHead:
    """What ``PageSource.head`` returns: the next log number and the records held."""

    def __init__(self, next_seq: int, count: int) -> None:
        self.next_seq = next_seq
        self.count = count


class CarrierLog:
    """A carrier's logs in memory, with the reads ``build_page`` uses."""

    def __init__(self) -> None:
        self.logs: dict[str, list[LogRecord]] = {}

    def add(self, name: str, env: Any, received_ms: int) -> None:
        log = self.logs.setdefault(env.log_topic, [])
        log.append(LogRecord(name, len(log) + 1, env.sender, env.seq, received_ms, env.wire,
                             env.id))

    def head(self, topic: str) -> LogHead:
        log = self.logs.get(topic, [])
        return LogHead(len(log) + 1, len(log))

    def seq_at(self, topic: str, received_ms: int) -> int:
        s = 0
        for record in self.logs.get(topic, []):
            if record.received_ms >= received_ms:
                break
            s = record.seq
        return s

    def read(self, topic: str, after: int = 0, limit: int = 100) -> list[LogRecord]:
        return [r for r in self.logs.get(topic, []) if r.seq > after][:limit]

    def read_sender(self, topic: str, sender: bytes, first: int, last: int,
                    limit: int = 100) -> list[LogRecord]:
        mine = [r for r in self.logs.get(topic, [])
                if r.sender == sender and first <= r.sender_seq <= last]
        return sorted(mine, key=lambda r: (r.sender_seq, r.msg_id))[:limit]

    def sender_heads(self, topic: str, limit: int = 256) -> list[tuple[bytes, int]]:
        heads: dict[bytes, int] = {}
        for r in self.logs.get(topic, []):
            heads[r.sender] = max(heads.get(r.sender, 0), r.sender_seq)
        return sorted(heads.items())[:limit]

    def name_of(self, wire: bytes) -> str:
        return next(r.name for log in self.logs.values() for r in log if r.wire == wire)


def receipt_for(ids: dict[str, Identity], dm_env: Any) -> Any:
    """bob's receipt for alice's DM of dm.json."""
    return seal_receipt(ids["bob"], recipient=ids["alice"].peer_id, ids=[dm_env.id], seq=1,
                        ts=TS0 + 4000)


def carrier_messages(ids: dict[str, Identity], msgs: dict[str, Any]) -> dict[str, Any]:
    """The channel messages of the carrier's log that envelope.json does not have."""
    alice, carol = ids["alice"], ids["carol"]
    return {
        "carol-1": seal_message(carol, topic="general", content=Content(body="hi alice"), seq=1,
                                ts=TS0 + 1000),
        "alice-4": seal_message(alice, topic="general", content=Content(body="anyone there?"),
                                seq=4, ts=TS0 + 5000),
        "carol-random": seal_message(carol, topic="random", content=Content(body="elsewhere"),
                                     seq=1, ts=TS0 + 1200),
        **msgs,
    }


def build_carrier(ids: dict[str, Identity], msgs: dict[str, Any], receipt: Any) -> CarrierLog:
    every = carrier_messages(ids, msgs)
    log = CarrierLog()
    log.add("root", every["root"], TS0 + 40)
    log.add("carol-1", every["carol-1"], TS0 + 1040)
    log.add("reply", every["reply"], TS0 + 1540)
    log.add("alice-4", every["alice-4"], TS0 + 5040)  # alice's number 3 never arrived here
    log.add("receipt", receipt, TS0 + 4040)
    return log


def request_fields(request: PageRequest) -> Json:
    out: Json = dict(request.fields())
    if request.sender is not None:
        out["sender"] = hx(request.sender)
    return out


def build_catchup(ids: dict[str, Identity], msgs: dict[str, Any], dm_env: Any) -> Json:
    alice, bob, carol = ids["alice"], ids["bob"], ids["carol"]
    receipt = receipt_for(ids, dm_env)
    opened = open_envelope(receipt.wire)
    assert opened.fields == receipt.fields and opened.log_topic == inbox_topic(alice.peer_id)
    carrier = build_carrier(ids, msgs, receipt)
    alice_inbox = inbox_topic(alice.peer_id)
    plan: list[tuple[str, Identity, PageRequest, str]] = [
        ("walk-page-1", bob, PageRequest(1, "general", 0, 0, 2),
         "the first page of a walk of general from the start, 2 envelopes a page: more follows"),
        ("walk-page-2", bob, PageRequest(2, "general", 2, 0, 2),
         "the next page, after the cursor 2: the last one, so it carries the heads"),
        ("since", bob, PageRequest(3, "general", 0, TS0 + 1500, MAX_PAGE_MESSAGES),
         "no cursor, since = TS0 + 1500: seq_at gives 2 (records 1 and 2 were received before)"),
        ("sender-range", bob,
         PageRequest(4, "general", 0, 0, MAX_PAGE_MESSAGES, alice.peer_id, 2, 3),
         "alice's numbers 2..3: the carrier has 2 only; a sender range has no heads"),
        ("sender-range-empty", bob,
         PageRequest(5, "general", 0, 0, MAX_PAGE_MESSAGES, alice.peer_id, 3, 3),
         "alice's number 3, which this carrier never received: an empty page, next = last"),
        ("inbox", alice, PageRequest(6, alice_inbox, 0, 0, MAX_PAGE_MESSAGES),
         "alice reads her inbox log: bob's receipt"),
        ("inbox-forbidden", carol, PageRequest(7, alice_inbox, 0, 0, MAX_PAGE_MESSAGES),
         "carol asks for alice's inbox: refused"),
        ("sys-forbidden", bob, PageRequest(8, PRESENCE_TOPIC, 0, 0, MAX_PAGE_MESSAGES),
         "system topics are never served"),
        ("not-carried", bob, PageRequest(9, "random", 5, 0, MAX_PAGE_MESSAGES),
         "a topic this carrier never stored: refused, next is the request's after"),
    ]
    exchanges: list[Json] = []
    for name, requester, request, note in plan:
        cureq = request.encode()
        assert cureq == encode_frame("cureq", **request.fields())
        assert decode_frame(cureq) == request
        page = build_page(carrier, request, requester.peer_id)
        cupage = page.encode()
        assert cupage == encode_frame("cupage", **page.fields())
        decoded = decode_frame(cupage)
        assert isinstance(decoded, Page) and decoded == page
        envs = check_page(request, decoded)
        assert sorted(e.wire for e in envs) == sorted(page.messages)
        exchanges.append({
            "name": name,
            "note": note,
            "requester": requester.peer_id_hex,
            "request": request_fields(request),
            "cureq": hx(cureq),
            "page": {
                "r": page.r,
                "topic": page.topic,
                "m": [carrier.name_of(w) for w in page.messages],
                "message_ids": [hx(open_envelope(w).id) for w in page.messages],
                "next": page.next,
                "more": page.more,
                "heads": [[hx(sender), seq] for sender, seq in page.heads],
                "err": page.err,
            },
            "cupage": hx(cupage),
        })
    chain_doc = build_chain(ids)
    receipt_entry = envelope_entry("receipt", receipt, None)
    receipt_entry.update({
        "to": hx(alice.peer_id),
        "ids": [hx(dm_env.id)],
        "log_topic": receipt.log_topic,
        "push_frame": hx(Push(receipt.wire).encode()),
    })
    return {
        "description": (
            "Catch-up and DM delivery. receipt: bob tells alice that her DM of dm.json is "
            "stored on his side (topic = the DM's conversation topic, route and log topic = "
            "inbox/<alice>). push: the frames that hand the DM to bob and the receipt to "
            "alice. carrier: one carrier's logs, each record with its log number (seq), "
            "sender, sender sequence number, receive time on the carrier's clock and wire "
            "bytes. exchanges: a cureq frame from the requester (a peer id), the fields of "
            "the page build_page answers with (m by record name) and the cupage frame."
        ),
        "spec": "catchup.md",
        "identities": {name: identity_json(ident) for name, ident in ids.items()},
        "receipt": {"signer": identity_json(bob), **receipt_entry},
        "push": [
            {"name": "dm", "from": alice.peer_id_hex, "to": bob.peer_id_hex,
             "message_id": hx(dm_env.id), "hex": hx(Push(dm_env.wire).encode())},
            {"name": "receipt", "from": bob.peer_id_hex, "to": alice.peer_id_hex,
             "message_id": hx(receipt.id), "hex": receipt_entry["push_frame"]},
        ],
        "carrier": [
            {
                "topic": topic,
                "records": [
                    {"name": r.name, "seq": r.seq, "sender": hx(r.sender),
                     "sender_seq": r.sender_seq, "received_ms": r.received_ms,
                     "message_id": hx(r.msg_id), "wire": hx(r.wire)}
                    for r in records
                ],
            }
            for topic, records in carrier.logs.items()
        ],
        "limits": {"MAX_PAGE_MESSAGES": MAX_PAGE_MESSAGES, "MAX_PAGE_BYTES": MAX_PAGE_BYTES,
                   "MAX_PAGE_HEADS": MAX_PAGE_HEADS, "MAX_REQUEST_ID": MAX_REQUEST_ID,
                   "MAX_RECEIPT_IDS": MAX_RECEIPT_IDS},
        "exchanges": exchanges,
        "chain": chain_doc,
    }


def chained_messages(ident: Identity, topic: str, count: int) -> list[Any]:
    """``count`` messages of ``ident`` in ``topic``, seq 1.., each naming the one before."""
    out: list[Any] = []
    prev: bytes | None = None
    for seq in range(1, count + 1):
        env = seal_message(ident, topic=topic, content=Content(body=f"link {seq}"), seq=seq,
                           ts=TS0 + 10_000 + seq, prev=prev)
        out.append(env)
        prev = env.id
    return out


def unsigned(wire: bytes) -> bytes:
    """An envelope with its signature replaced by 64 zero bytes."""
    signed, _ = cbor2.loads(wire)
    return c([signed, bytes(64)])


def build_chain(ids: dict[str, Identity]) -> Json:
    """catchup.md section 6.3: a run of one author's envelopes costs one signature."""
    alice = ids["alice"]
    run = chained_messages(alice, "chained", 3)
    request = PageRequest(20, "chained", 0, 0, MAX_PAGE_MESSAGES)
    wires = [unsigned(run[0].wire), unsigned(run[1].wire), run[2].wire]
    page = Page(request.r, request.topic, wires, 3, False, [(alice.peer_id, 3)])
    envs = check_page(request, page)
    assert [e.id for e in envs] == [e.id for e in run]
    for env in run:
        assert open_envelope(env.wire).prev == (None if env.seq == 1 else run[env.seq - 2].id)
    return {
        "note": (
            "alice's messages 1..3 of the channel chained, each naming the one before in "
            "prev. In the page, messages 1 and 2 carry 64 zero bytes as signature: 3 is "
            "verified, its prev vouches for 2, and 2's for 1, so the page is accepted with "
            "one signature checked. A vouch counts only between envelopes of the same "
            "author (rejected.json: page-chain-other-author)."
        ),
        "author": alice.peer_id_hex,
        "messages": [
            {"seq": env.seq, "message_id": hx(env.id), "prev": hx(env.prev) if env.prev else None,
             "wire": hx(env.wire)}
            for env in run
        ],
        "request": request_fields(request),
        "cureq": hx(request.encode()),
        "cupage": hx(page.encode()),
        "accepted_ids": [hx(e.id) for e in envs],
        "signatures_verified": 1,
    }


# -- the bare CBOR profile -------------------------------------------------------------


def build_cbor() -> Json:
    accepted: list[tuple[str, bytes, str]] = [
        ("depth-16", nested_arrays(16, b"\x00"),
         "an integer inside 16 nested arrays: depth 16, the deepest allowed"),
        ("depth-16-empty", nested_arrays(16, b"\x80"),
         "17 arrays, but the innermost (empty) one is at depth 16"),
        ("length-first-key-order", raw_map((c("b"), c(0)), (c(b"zz"), c(0))),
         "keys sorted by encoded length first: \"b\" (2 bytes) before h'7a7a' (3 bytes)"),
        ("float16", bytes.fromhex("f93e00"), "1.5 in its shortest (half precision) form"),
        ("float64", c(0.1), "0.1 needs double precision"),
        ("nan", bytes.fromhex("f97e00"), "the one accepted NaN encoding"),
        ("uint64-max", c(2**64 - 1), "largest unsigned integer"),
        ("nint64-min", c(-(2**64)), "smallest negative integer"),
        ("simple-values", c([False, True, None]), "false, true, null: the only simple values"),
        ("max-items", c([0] * 4095),
         "an array of 4095 integers: 4096 data items, the most a frame may hold"),
        ("utf8", c({"text": "Grüße 👋"}), "text is UTF-8"),
    ]
    rejected: list[tuple[str, bytes, str, str]] = [
        ("empty", b"", "malformed", "no data item at all"),
        ("truncated", bytes.fromhex("62ff"), "malformed", "text string shorter than its header"),
        ("trailing-bytes", bytes.fromhex("0000"), "malformed", "two items where one is expected"),
        ("tag-epoch", bytes.fromhex("c11a5f5e1000"), "malformed", "tag 1 (epoch time)"),
        ("tag-bignum", bytes.fromhex("c249010000000000000000"), "malformed", "tag 2 (bignum)"),
        ("tag-selfdescribe", bytes.fromhex("d9d9f700"), "malformed", "tag 55799"),
        ("indefinite-array", bytes.fromhex("9f00ff"), "malformed", "indefinite-length array"),
        ("indefinite-map", bytes.fromhex("bf616100ff"), "malformed", "indefinite-length map"),
        ("indefinite-bytes", bytes.fromhex("5f4100ff"), "malformed",
         "indefinite-length byte string"),
        ("lone-break", bytes.fromhex("ff"), "malformed", "break stop code outside any item"),
        ("reserved-info", bytes.fromhex("1c"), "malformed", "additional information 28"),
        ("depth-17", nested_arrays(17, b"\x00"), "malformed",
         "an integer inside 17 nested arrays: depth 17"),
        ("duplicate-key", raw_map((c("a"), c(0)), (c("a"), c(1))), "malformed",
         "the same key twice"),
        ("integer-key", raw_map((c(1), c(0))), "malformed", "map key is an integer"),
        ("array-key", raw_map((c([]), c(0))), "malformed", "map key is an array"),
        ("bad-utf8", bytes.fromhex("62c328"), "malformed", "invalid UTF-8 in a text string"),
        ("bad-simple", bytes.fromhex("f818"), "malformed",
         "simple value 24 in the two-byte form (reserved)"),
        ("undefined", bytes.fromhex("f7"), "malformed", "undefined (simple value 23)"),
        ("simple-0", bytes.fromhex("e0"), "malformed", "simple value 0"),
        ("simple-19", bytes.fromhex("f3"), "malformed", "simple value 19"),
        ("simple-255", bytes.fromhex("f8ff"), "malformed", "simple value 255 (two-byte form)"),
        ("non-canonical-int", bytes.fromhex("1817"), "non-canonical",
         "23 in two bytes (fits in the initial byte)"),
        ("non-canonical-length", bytes.fromhex("780161"), "non-canonical",
         "one-byte text string with a two-byte length"),
        ("non-canonical-float", bytes.fromhex("fa3fc00000"), "non-canonical",
         "1.5 in single precision (half would do)"),
        ("non-canonical-nan", bytes.fromhex("f97e01"), "non-canonical", "NaN with a payload"),
        ("non-canonical-key-order", raw_map((c("b"), c(0)), (c("a"), c(0))), "non-canonical",
         "keys out of order"),
        ("bytewise-key-order", raw_map((c(b"zz"), c(0)), (c("b"), c(0))), "non-canonical",
         "RFC 8949 bytewise order, not the length-first order this profile uses"),
        ("too-many-items", c([0] * 4096), "too-large", "4097 data items"),
        ("huge-count", bytes.fromhex("9b0000000100000000"), "too-large",
         "an array header announcing 2^32 elements (refused before reading them)"),
    ]
    for name, data, _note in accepted:
        value = _cbor.decode(data)
        assert c(value) == data, name
    for name, data, code, _note in rejected:
        try:
            _cbor.decode(data)
        except ProtocolError as exc:
            assert exc.code.value == code, (name, exc)
        else:
            raise AssertionError(f"{name} was accepted")
    return {
        "description": (
            "The strict CBOR profile on its own: each hex string is one complete input "
            "to the decoder, with the default limit of 4096 data items."
        ),
        "spec": "README.md#2-cbor-profile",
        "max_items": 4096,
        "accepted": [{"name": n, "hex": hx(d), "note": note} for n, d, note in accepted],
        "rejected": [
            {"name": n, "layer": "cbor", "hex": hx(d), "code": code, "note": note}
            for n, d, code, note in rejected
        ],
    }


# -- refused input --------------------------------------------------------------------------

PING = raw_map((c("n"), c(1)), (c("t"), c("ping")))


def sign_signed(ident: Identity, signed: bytes) -> bytes:
    return c([signed, ident.sign(ENVELOPE_TAG + signed)])


def sign_fields(ident: Identity, fields: dict[Any, Any]) -> bytes:
    return sign_signed(ident, c(fields))


def msg_fields(ident: Identity, **extra: Any) -> Json:
    fields: Json = {"v": 1, "kind": "msg", "topic": "general", "from": ident.public_key,
                    "seq": 9, "ts": TS0, "body": "x"}
    fields.update(extra)
    return {k: v for k, v in fields.items() if v is not None}


def dm_fields(sender: Identity, recipient: Identity, **extra: Any) -> Json:
    fields: Json = {"v": 1, "kind": "dm", "topic": dm_topic(sender.peer_id, recipient.peer_id),
                    "from": sender.public_key, "seq": 9, "ts": TS0, "to": recipient.peer_id,
                    "box": det("clawmesh/test-vector/fake-box", 56)}
    fields.update(extra)
    return {k: v for k, v in fields.items() if v is not None}


def hello_bytes(ident: Identity, rnd: bytes, **override: Any) -> bytes:
    eph = bytes(crypto_scalarmult_base(rnd[:32]))
    fields: Json = {"versions": [1], "id": ident.peer_id, "pk": ident.public_key, "eph": eph,
                    "nonce": rnd[32:], "caps": ["relay"], "listen": [], "agent": AGENT}
    fields.update(override)
    return encode_frame("hello", **fields)


def frame_vectors(ids: dict[str, Identity], msgs: dict[str, Any]) -> list[Json]:
    alice = ids["alice"]
    ping_tail = (c("t"), c("ping"))
    v: list[Json] = []

    def add(name: str, data: bytes, code: str, note: str, **extra: Any) -> None:
        v.append({"name": name, "layer": "frame", "hex": hx(data), "code": code, "note": note,
                  **extra})

    add("semantic-tag", raw_map((c("n"), bytes.fromhex("c100")), ping_tail), "malformed",
        "ping whose n is wrapped in tag 1")
    add("indefinite-length-array",
        raw_map((c("t"), c("sub")), (c("topics"), bytes.fromhex("9fff"))), "malformed",
        "sub whose topics array has indefinite length")
    add("duplicate-map-key", raw_map((c("n"), c(1)), (c("n"), c(2)), ping_tail), "malformed",
        "ping with the key n twice")
    add("integer-map-key", raw_map((c(0), c(0)), (c("n"), c(1)), ping_tail), "malformed",
        "ping with an extra integer key 0")
    add("non-canonical-integer", raw_map((c("n"), bytes.fromhex("1801")), ping_tail),
        "non-canonical", "ping whose n = 1 is encoded in two bytes")
    add("non-canonical-map-order", raw_map(ping_tail, (c("n"), c(1))), "non-canonical",
        "ping with t before n")
    add("non-canonical-bytewise-key-order",
        raw_map((c(b"xx"), c(0)), (c("n"), c(1)), ping_tail), "non-canonical",
        "keys in RFC 8949 bytewise order (h'7878' first); length-first order puts the "
        "shorter encodings of \"n\" and \"t\" first")
    add("trailing-bytes", PING + b"\x00", "malformed", "a valid ping followed by one byte")
    add("truncated", PING[:-1], "malformed", "a ping missing its last byte")
    add("depth-17", raw_map((c("n"), c(1)), ping_tail, (c("x"), nested_arrays(16, b"\x00"))),
        "malformed", "an integer at depth 17 (map, then 16 arrays); refused while decoding, "
        "before the unknown field x is noticed")
    add("too-many-items", encode_frame("iwant", ids=[0] * 4092), "too-large",
        "4097 CBOR data items (checked before the ids field)")
    add("not-a-map", c(["ping", 1]), "malformed", "a frame is a map")
    add("unknown-frame-type", c({"t": "hola", "n": 1}), "malformed", "t is not a frame type")
    add("missing-frame-type", c({"n": 1}), "malformed", "no t key")
    add("frame-type-not-text", c({"t": b"ping", "n": 1}), "malformed", "t is a byte string")
    add("unknown-field", c({"t": "ping", "n": 1, "x": 0}), "malformed", "ping with a field x")
    add("unknown-fields-of-both-key-types", c({"t": "ping", "n": 1, "x": 0, b"y": 0}),
        "malformed", "ping with a text and a byte-string unknown key")
    add("missing-field", c({"t": "ping"}), "malformed", "ping without n")
    add("wrong-field-type", c({"t": "ping", "n": "1"}), "malformed", "ping whose n is text")
    add("wrong-field-type-bool", c({"t": "ping", "n": True}), "malformed",
        "ping whose n is true (not an integer)")
    add("wrong-field-type-float", c({"t": "ping", "n": 1.0}), "malformed",
        "ping whose n is the float 1.0")
    add("negative-integer", c({"t": "ping", "n": -1}), "malformed", "ping whose n is -1")
    add("auth-sig-63-bytes", encode_frame("auth", sig=bytes(63)), "malformed",
        "an Ed25519 signature is 64 bytes")
    add("pub-envelope-text", c({"t": "pub", "e": "00"}), "malformed", "e must be a byte string")
    add("bad-topic-leading-dash", encode_frame("graft", topic="-general"), "malformed",
        "a channel starts with a letter or digit")
    add("bad-topic-too-long-channel", encode_frame("graft", topic="a" * 65), "malformed",
        "a channel is at most 64 characters")
    add("bad-topic-upper-hex", encode_frame("prune", topic="dm/" + "AB" * 32), "malformed",
        "dm/ topics use lower-case hex")
    add("bad-topic-unknown-prefix", encode_frame("prune", topic="chan/general"), "malformed",
        "only dm/, inbox/ and sys/ topics contain a slash")
    add("sub-hops-13", encode_frame("sub", topics=[["general", 13]]), "malformed",
        "hops is at most MAX_INTEREST_HOPS = 12")
    add("sub-entry-not-pair", encode_frame("sub", topics=[["general"]]), "malformed",
        "a sub entry is [topic, hops]")
    add("unsub-257-topics", encode_frame("unsub", topics=[f"t{i}" for i in range(257)]),
        "too-large", "at most MAX_TOPICS_PER_FRAME = 256 topics")
    add("ihave-513-ids",
        encode_frame("ihave", topic="general", ids=[i.to_bytes(32, "big") for i in range(513)]),
        "too-large", "at most MAX_IDS_PER_FRAME = 512 ids")
    add("dht-message-not-bytes", c({"t": "dht", "m": "find_node"}), "malformed",
        "the m of a dht frame is a byte string")
    add("iwant-id-31-bytes", encode_frame("iwant", ids=[bytes(31)]), "malformed",
        "a message id is 32 bytes")
    rnd = handshake_random("initiator")
    add("hello-9-versions", hello_bytes(alice, rnd, versions=list(range(1, 10))), "too-large",
        "at most 8 versions")
    add("hello-no-versions", hello_bytes(alice, rnd, versions=[]), "malformed",
        "at least one version")
    add("hello-version-0", hello_bytes(alice, rnd, versions=[0]), "malformed",
        "versions are 1..65535")
    add("hello-cap-33-chars", hello_bytes(alice, rnd, caps=["c" * 33]), "malformed",
        "a capability is 1..32 characters")
    add("hello-9-listen", hello_bytes(alice, rnd, listen=["ws://h/"] * 9), "too-large",
        "at most 8 listen addresses")
    add("hello-listen-257-bytes", hello_bytes(alice, rnd, listen=["w" * 257]), "malformed",
        "a listen address is at most 256 UTF-8 bytes")
    add("hello-agent-65-bytes", hello_bytes(alice, rnd, agent="a" * 65), "too-large",
        "agent is at most 64 UTF-8 bytes")
    add("error-msg-257-bytes", encode_frame("error", code="rate", msg="é" * 128 + "x"),
        "too-large", f"msg is at most MAX_TEXT_FIELD = {MAX_TEXT_FIELD} UTF-8 bytes")
    add("error-code-33-bytes", encode_frame("error", code="c" * 33, msg=""), "too-large",
        "code is at most 32 UTF-8 bytes")
    # the oversize frame comes last: it is big
    pad = MAX_RECORD + 1 - len(encode_frame("pub", e=b""))
    # the byte string header grows from 1 to 5 bytes once the length passes 65535
    big = encode_frame("pub", e=bytes(pad - 4))
    assert len(big) == MAX_RECORD + 1, len(big)
    add("oversize-frame", big, "too-large",
        f"a pub frame of MAX_RECORD + 1 = {MAX_RECORD + 1} bytes")
    del msgs
    return v


def envelope_vectors(ids: dict[str, Identity], msgs: dict[str, Any]) -> list[Json]:
    alice, bob, carol = ids["alice"], ids["bob"], ids["carol"]
    root_wire: bytes = msgs["root"].wire
    signed, sig = cbor2.loads(root_wire)
    v: list[Json] = []

    def add(name: str, data: bytes, code: str, note: str, **extra: Any) -> None:
        v.append({"name": name, "layer": "envelope", "hex": hx(data), "code": code,
                  "note": note, **extra})

    flipped = bytearray(sig)
    flipped[0] ^= 0x01
    add("bad-signature", c([signed, bytes(flipped)]), "bad-signature",
        "the root message of envelope.json with one signature bit flipped")
    add("signed-by-someone-else", c([signed, carol.sign(ENVELOPE_TAG + signed)]),
        "bad-signature", "alice's message signed by carol")
    add("signature-without-tag", c([signed, alice.sign(signed)]), "bad-signature",
        "signature over signed alone, without the domain tag")
    add("dm-topic-mismatch",
        sign_fields(alice, dm_fields(alice, bob, topic=dm_topic(alice.peer_id, carol.peer_id))),
        "malformed", "a DM to bob on the alice/carol conversation topic, validly signed")
    add("wire-not-array", c({"signed": signed, "sig": sig}), "too-large",
        "a map instead of the array: 5 CBOR data items, over the 3 the wire form may hold "
        "(the item limit is checked before the shape)")
    add("wire-three-elements", c([signed, sig, b""]), "too-large",
        "one element too many: 4 data items, over the limit of 3")
    add("wire-signed-inline", c([cbor2.loads(signed), sig]), "too-large",
        "signed must be a byte string holding the map, not the map itself (too many items)")
    add("wire-one-element", c([signed]), "malformed", "the array needs two elements")
    add("wire-sig-not-bytes", c([signed, 0]), "malformed", "the signature is a byte string")
    add("wire-not-cbor", b"\xff", "malformed", "not a CBOR data item")
    add("wire-sig-63-bytes", c([signed, sig[:63]]), "malformed", "signature of 63 bytes")
    add("wire-trailing-bytes", root_wire + b"\x00", "malformed", "one byte after the array")
    misordered = dict(sorted(msg_fields(alice).items(), key=lambda kv: kv[0], reverse=True))
    add("signed-non-canonical", sign_signed(alice, cbor2.dumps(misordered)), "non-canonical",
        "the signed map with its keys in reverse order, validly signed")
    add("signed-not-a-map", sign_signed(alice, c(["msg"])), "malformed",
        "the signed part is a map")
    add("unknown-kind", sign_fields(alice, msg_fields(alice, kind="note")), "malformed",
        "kind is msg, dm, receipt or presence")
    add("unknown-field", sign_fields(alice, msg_fields(alice, x=0)), "malformed",
        "a msg with a field x")
    add("field-of-another-kind", sign_fields(alice, msg_fields(alice, to=bob.peer_id)),
        "malformed", "a msg with the dm field to")
    add("unknown-fields-of-both-key-types",
        sign_fields(alice, msg_fields(alice, x=0) | {b"y": 0}), "malformed",
        "a msg with a text and a byte-string unknown key")
    add("prev-on-first", sign_fields(alice, msg_fields(alice, seq=1, prev=bytes(32))),
        "malformed", "seq 1 opens a log: there is no envelope before it to name")
    add("prev-31-bytes", sign_fields(alice, msg_fields(alice, prev=bytes(31))), "malformed",
        "prev is a 32-byte message id")
    add("prev-on-presence",
        sign_fields(alice, {"v": 1, "kind": "presence", "topic": PRESENCE_TOPIC,
                            "from": alice.public_key, "seq": 9, "ts": TS0, "payload": b"",
                            "prev": bytes(32)}),
        "malformed", "presence is not chained")
    add("version-2", sign_fields(alice, msg_fields(alice, v=2)), "version", "v must be 1")
    add("version-missing", sign_fields(alice, msg_fields(alice, v=None)), "version",
        "v is required")
    add("version-true", sign_fields(alice, msg_fields(alice, v=True)), "version",
        "v must be the integer 1, not true")
    add("from-31-bytes", sign_fields(alice, msg_fields(alice, **{"from": alice.public_key[:31]})),
        "malformed", "from is a 32-byte Ed25519 key (the signature is made by alice's key)")
    add("seq-negative", sign_fields(alice, msg_fields(alice, seq=-1)), "malformed",
        "seq is an unsigned integer")
    add("ts-text", sign_fields(alice, msg_fields(alice, ts="2026-01-01")), "malformed",
        "ts is an unsigned integer (milliseconds)")
    add("msg-to-dm-topic",
        sign_fields(alice, msg_fields(alice, topic=dm_topic(alice.peer_id, bob.peer_id))),
        "malformed", "a msg goes to a channel")
    add("msg-to-sys-topic", sign_fields(alice, msg_fields(alice, topic="sys/presence")),
        "malformed", "a msg goes to a channel")
    add("msg-bad-topic", sign_fields(alice, msg_fields(alice, topic="bad topic")), "malformed",
        "space is not allowed in a channel name")
    add("msg-without-body", sign_fields(alice, msg_fields(alice, body=None)), "malformed",
        "body is required (it may be empty)")
    add("msg-body-too-long", sign_fields(alice, msg_fields(alice, body="é" * (MAX_BODY_BYTES // 2)
                                                             + "x")),
        "too-large", f"body over MAX_BODY_BYTES = {MAX_BODY_BYTES} UTF-8 bytes")
    add("payload-non-canonical",
        sign_fields(alice, msg_fields(alice, payload=bytes.fromhex("fa3fc00000"))),
        "non-canonical", "payload 1.5 in single precision")
    add("payload-depth-17",
        sign_fields(alice, msg_fields(alice, payload=nested_arrays(17, b"\x00"))),
        "malformed", "payload nested 17 deep (a payload is decoded on its own, from depth 0)")
    add("payload-trailing-bytes", sign_fields(alice, msg_fields(alice, payload=b"\x00\x00")),
        "malformed", "payload holds two CBOR items")
    add("payload-tag", sign_fields(alice, msg_fields(alice, payload=bytes.fromhex("c100"))),
        "malformed", "payload with a semantic tag")
    add("reply-to-31-bytes", sign_fields(alice, msg_fields(alice, reply_to=bytes(31))),
        "malformed", "reply_to is a 32-byte message id")
    add("thread-text", sign_fields(alice, msg_fields(alice, thread="root")), "malformed",
        "thread is a 32-byte message id")
    presence = {"v": 1, "kind": "presence", "topic": PRESENCE_TOPIC, "from": alice.public_key,
                "seq": 9, "ts": TS0, "payload": c({})}
    add("presence-wrong-topic", sign_fields(alice, presence | {"topic": "sys/status"}),
        "malformed", "presence goes to sys/presence")
    add("presence-payload-4097", sign_fields(alice, presence | {"payload": bytes(4097)}),
        "too-large", "presence payload is at most 4096 bytes")
    add("presence-with-body", sign_fields(alice, presence | {"body": "hi"}), "malformed",
        "presence has no body field")
    add("dm-box-39-bytes", sign_fields(alice, dm_fields(alice, bob, box=bytes(39))), "malformed",
        "a box is at least nonce (24) + tag (16) bytes")
    add("dm-without-to", sign_fields(alice, dm_fields(alice, bob, to=None)), "malformed",
        "to is required")
    add("dm-with-body", sign_fields(alice, dm_fields(alice, bob, body="hi")), "malformed",
        "DM content travels only inside box")
    add("signed-too-many-items", sign_fields(alice, msg_fields(alice, x=[0] * 4090)),
        "too-large", "the signed map holds more than 4096 CBOR data items")
    return v


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


def receipt_fields(sender: Identity, recipient: Identity, **extra: Any) -> Json:
    fields: Json = {"v": 1, "kind": "receipt",
                    "topic": dm_topic(sender.peer_id, recipient.peer_id),
                    "from": sender.public_key, "seq": 9, "ts": TS0, "to": recipient.peer_id,
                    "ids": [det("clawmesh/test-vector/receipt-id", 32)]}
    fields.update(extra)
    return {k: v for k, v in fields.items() if v is not None}


def receipt_vectors(ids: dict[str, Identity]) -> list[Json]:
    alice, bob, carol = ids["alice"], ids["bob"], ids["carol"]
    v: list[Json] = []

    def add(name: str, data: bytes, code: str, note: str) -> None:
        v.append({"name": name, "layer": "envelope", "hex": hx(data), "code": code,
                  "note": note})

    some_ids = [det(f"clawmesh/test-vector/receipt-id/{i}", 32) for i in range(65)]
    add("receipt-no-ids", sign_fields(bob, receipt_fields(bob, alice, ids=[])), "malformed",
        "a receipt names at least one message id")
    add("receipt-65-ids", sign_fields(bob, receipt_fields(bob, alice, ids=some_ids)),
        "malformed", f"at most MAX_RECEIPT_IDS = {MAX_RECEIPT_IDS} ids (malformed, not too-large)")
    add("receipt-id-31-bytes",
        sign_fields(bob, receipt_fields(bob, alice, ids=[some_ids[0], bytes(31)])), "malformed",
        "every id is a 32-byte message id")
    add("receipt-ids-not-array", sign_fields(bob, receipt_fields(bob, alice, ids=some_ids[0])),
        "malformed", "ids is an array, even for one id")
    add("receipt-ids-missing", sign_fields(bob, receipt_fields(bob, alice, ids=None)),
        "malformed", "ids is required")
    add("receipt-wrong-topic",
        sign_fields(bob, receipt_fields(bob, alice, topic=dm_topic(bob.peer_id, carol.peer_id))),
        "malformed", "a receipt to alice on the bob/carol conversation topic, validly signed")
    add("receipt-inbox-topic",
        sign_fields(bob, receipt_fields(bob, alice, topic=inbox_topic(alice.peer_id))),
        "malformed", "the inbox is the route, not the topic: topic = dm_topic(from, to)")
    add("receipt-channel-topic", sign_fields(bob, receipt_fields(bob, alice, topic="general")),
        "malformed", "a receipt belongs to a DM conversation topic")
    add("receipt-without-to", sign_fields(bob, receipt_fields(bob, alice, to=None)),
        "malformed", "to is required")
    add("receipt-to-31-bytes", sign_fields(bob, receipt_fields(bob, alice, to=bytes(31))),
        "malformed", "to is a 32-byte peer id")
    add("receipt-with-box", sign_fields(bob, receipt_fields(bob, alice, box=bytes(40))),
        "malformed", "box is a dm field, not a receipt field")
    add("receipt-with-body", sign_fields(bob, receipt_fields(bob, alice, body="ok")),
        "malformed", "a receipt has no content fields")
    add("receipt-signed-by-someone-else",
        sign_signed(carol, c(receipt_fields(bob, alice))), "bad-signature",
        "bob's receipt signed by carol")
    return v


def catchup_frame_vectors(ids: dict[str, Identity]) -> list[Json]:
    alice = ids["alice"]
    v: list[Json] = []

    def add(name: str, data: bytes, code: str, note: str) -> None:
        v.append({"name": name, "layer": "frame", "hex": hx(data), "code": code, "note": note})

    req: Json = {"r": 1, "topic": "general", "after": 0, "since": 0, "limit": 10}
    ranged: Json = {**req, "sender": alice.peer_id, "first": 2, "last": 5}
    page: Json = {"r": 1, "topic": "general", "m": [], "next": 0, "more": False, "heads": []}
    head = [alice.peer_id, 3]

    def drop(fields: Json, key: str) -> Json:
        return {k: val for k, val in fields.items() if k != key}

    add("cureq-limit-0", encode_frame("cureq", **{**req, "limit": 0}), "malformed",
        "a page holds at least one envelope")
    add("cureq-limit-513", encode_frame("cureq", **{**req, "limit": MAX_PAGE_MESSAGES + 1}),
        "malformed", f"limit is at most MAX_PAGE_MESSAGES = {MAX_PAGE_MESSAGES} "
        "(malformed, not too-large)")
    add("cureq-r-2-32", encode_frame("cureq", **{**req, "r": MAX_REQUEST_ID + 1}), "malformed",
        f"r is at most MAX_REQUEST_ID = {MAX_REQUEST_ID}")
    add("cureq-after-negative", encode_frame("cureq", **{**req, "after": -1}), "malformed",
        "after is an unsigned integer")
    add("cureq-since-missing", encode_frame("cureq", **drop(req, "since")), "malformed",
        "since is required (0 for no time bound)")
    add("cureq-sys-like-topic", encode_frame("cureq", **{**req, "topic": "~inbox"}),
        "malformed", "not a topic")
    add("cureq-sender-without-range", encode_frame("cureq", **{**req, "sender": alice.peer_id}),
        "malformed", "sender, first and last come together")
    add("cureq-range-without-sender", encode_frame("cureq", **drop(ranged, "sender")),
        "malformed", "sender, first and last come together")
    add("cureq-first-after-last", encode_frame("cureq", **{**ranged, "first": 6}), "malformed",
        "first <= last")
    add("cureq-sender-31-bytes", encode_frame("cureq", **{**ranged, "sender": bytes(31)}),
        "malformed", "sender is a 32-byte peer id")
    add("cureq-unknown-field", encode_frame("cureq", **{**req, "until": 9}), "malformed",
        "no field until")
    add("cupage-513-messages",
        encode_frame("cupage", **{**page, "m": [b""] * (MAX_PAGE_MESSAGES + 1)}), "too-large",
        f"m has at most MAX_PAGE_MESSAGES = {MAX_PAGE_MESSAGES} entries")
    add("cupage-message-text", encode_frame("cupage", **{**page, "m": ["82"]}), "malformed",
        "m holds envelopes as byte strings")
    add("cupage-more-integer", encode_frame("cupage", **{**page, "more": 1}), "malformed",
        "more is true or false")
    add("cupage-heads-missing", encode_frame("cupage", **drop(page, "heads")), "malformed",
        "heads is required (empty but on the last page of a walk)")
    add("cupage-head-not-pair", encode_frame("cupage", **{**page, "heads": [[alice.peer_id]]}),
        "malformed", "a head is [peer id, seq]")
    add("cupage-head-short-id",
        encode_frame("cupage", **{**page, "heads": [[alice.peer_id[:31], 3]]}), "malformed",
        "a head's sender is a 32-byte peer id")
    add("cupage-head-negative", encode_frame("cupage", **{**page, "heads": [[alice.peer_id, -1]]}),
        "malformed", "a head's seq is an unsigned integer")
    add("cupage-257-heads",
        encode_frame("cupage", **{**page, "heads": [head] * (MAX_PAGE_HEADS + 1)}), "too-large",
        f"at most MAX_PAGE_HEADS = {MAX_PAGE_HEADS} heads")
    add("cupage-err-33-bytes", encode_frame("cupage", **{**page, "err": "e" * 33}), "too-large",
        "err is at most 32 UTF-8 bytes")
    add("cupage-err-not-text", encode_frame("cupage", **{**page, "err": 1}), "malformed",
        "err is text")
    add("cupage-r-2-32", encode_frame("cupage", **{**page, "r": MAX_REQUEST_ID + 1}),
        "malformed", f"r is at most MAX_REQUEST_ID = {MAX_REQUEST_ID}")
    add("push-envelope-text", c({"t": "push", "e": "00"}), "malformed",
        "e must be a byte string")
    add("push-unknown-field", c({"t": "push", "e": b"", "to": alice.peer_id}), "malformed",
        "push has the fields t and e only")
    return v


def page_vectors(ids: dict[str, Identity], msgs: dict[str, Any], dm_env: Any) -> list[Json]:
    alice, carol = ids["alice"], ids["carol"]
    every = carrier_messages(ids, msgs)
    root, carol1, reply = every["root"], every["carol-1"], every["reply"]
    signed, sig = cbor2.loads(root.wire)
    flipped = bytearray(sig)
    flipped[5] ^= 0x10
    forged = c([signed, bytes(flipped)])
    walk = PageRequest(1, "general", 0, 0, 2)
    resume = PageRequest(2, "general", 2, 0, 2)
    ranged = PageRequest(4, "general", 0, 0, MAX_PAGE_MESSAGES, alice.peer_id, 2, 3)
    inbox = PageRequest(6, inbox_topic(alice.peer_id), 0, 0, MAX_PAGE_MESSAGES)
    presence = PageRequest(8, PRESENCE_TOPIC, 0, 0, MAX_PAGE_MESSAGES)
    v: list[Json] = []

    def add(name: str, request: PageRequest, page: Page, code: str, note: str) -> None:
        v.append({"name": name, "layer": "page",
                  "request": hx(request.encode()),
                  "hex": hx(page.encode()), "code": code,
                  "note": note})

    def good(request: PageRequest, wires: list[bytes], nxt: int, **kw: Any) -> Page:
        fields: Json = {"r": request.r, "topic": request.topic, "messages": wires,
                        "next": nxt, "more": False, "heads": []}
        fields.update(kw)
        return Page(**fields)

    add("page-for-another-request", walk, good(walk, [root.wire, carol1.wire], 2, r=2),
        "unexpected", "the page of catchup.json's walk-page-1 with r = 2")
    add("page-for-another-topic", walk, good(walk, [], 0, topic="random"), "unexpected",
        "a page whose topic is not the request's")
    add("page-foreign-topic-envelope", walk,
        good(walk, [root.wire, every["carol-random"].wire], 2), "malformed",
        "a message of the channel random in a page of general")
    add("page-dm-in-channel", walk, good(walk, [dm_env.wire], 1), "malformed",
        "a DM's log topic is its recipient's inbox, not a channel")
    add("page-dm-of-another-inbox", inbox, good(inbox, [dm_env.wire], 1), "malformed",
        "alice asked for her inbox; the DM of dm.json is in bob's")
    add("page-presence", presence, good(presence, [msgs["presence"].wire], 1), "malformed",
        "presence is never stored, so never served")
    add("page-bad-signature", walk, good(walk, [forged], 1), "bad-signature",
        "alice's root message with one signature bit flipped")
    add("page-envelope-not-cbor", walk, good(walk, [b"\xff"], 1), "malformed",
        "an element of m that is not an envelope")
    add("page-outside-sender-range", ranged, good(ranged, [root.wire], 1), "malformed",
        "alice's number 1 in answer to a request for her numbers 2..3")
    add("page-other-sender", ranged, good(ranged, [reply.wire, carol1.wire], 2), "malformed",
        "carol's message in answer to a request for alice's numbers")
    add("page-over-limit", walk, good(walk, [root.wire, carol1.wire, reply.wire], 3, more=True),
        "too-large", "three envelopes for a request with limit 2")
    add("page-cursor-does-not-advance", resume, good(resume, [reply.wire], 2), "malformed",
        "envelopes, but next is not after the request's after (2)")
    run = chained_messages(alice, "chained", 2)
    chained = PageRequest(21, "chained", 0, 0, MAX_PAGE_MESSAGES)
    add("page-chain-head-forged", chained,
        good(chained, [run[0].wire, unsigned(run[1].wire)], 2), "bad-signature",
        "alice's chained 1 and 2 (catchup.json chain) with 2's signature zeroed: "
        "nothing vouches for the newest")
    carols = seal_message(carol, topic="chained", content=Content(body="vouching"), seq=2,
                          ts=TS0 + 10_100, prev=run[0].id)
    add("page-chain-other-author", chained,
        good(chained, [unsigned(run[0].wire), carols.wire], 2), "bad-signature",
        "carol's valid message 2 names alice's message 1 as prev; a vouch counts only "
        "within one author, so alice's 1 (signature zeroed) must verify, and does not")
    add("page-refusal-with-messages", walk,
        good(walk, [root.wire], 0, err="not-carried"), "malformed",
        "a refusal carries no envelopes")
    add("page-refusal-with-more", walk, good(walk, [], 0, more=True, err="busy"), "malformed",
        "a refusal has more = false")
    return v


def check_rejected(ids: dict[str, Identity], vectors: list[Json]) -> None:
    """Make sure the reference code refuses every vector with its code (or has a known bug)."""
    problems: list[str] = []
    for vec in vectors:
        data = bytes.fromhex(vec["hex"])
        got: str | None = None
        try:
            refuse(vec, data)
        except ProtocolError as exc:
            got = exc.code.value
        except Exception as exc:  # a known bug, if the vector says so
            got = f"crash: {exc!r}"
        if "known_deviation" in vec:
            if got == vec["code"]:
                problems.append(f"{vec['name']}: fixed? drop known_deviation")
        elif got != vec["code"]:
            problems.append(f"{vec['layer']}/{vec['name']}: expected {vec['code']}, got {got}")
    del ids
    if problems:
        raise AssertionError("\n".join(problems))


def refuse(vec: Json, data: bytes) -> None:
    layer = vec["layer"]
    if layer == "frame":
        decode_frame(data)
    elif layer == "envelope":
        open_envelope(data)
    elif layer == "stream-record":
        RecordBuffer().feed(data)
    elif layer == "session-record":
        cipher = LinkCipher(bytes(32), bytes.fromhex(vec["key"]))
        for before in vec["before"]:
            cipher.open(bytes.fromhex(before))
        cipher.open(data)
    elif layer == "session-frame":
        me, them = bytes(32), b"\x01" * 32
        router = GossipRouter(me)
        router.add_link(them, relay=True, now=0.0)
        actions = router.handle_frame(them, decode_frame(data), data, 0.0, vec["wall_ms"])
        closes = [a for a in actions if isinstance(a, Close)]
        if closes:
            raise ProtocolError(closes[0].code, closes[0].reason)
    elif layer == "page":
        request, page = decode_frame(bytes.fromhex(vec["request"])), decode_frame(data)
        assert isinstance(request, PageRequest) and isinstance(page, Page)
        check_page(request, page)
    elif layer == "handshake-record":
        hs = Handshake(
            Identity.from_seed(bytes.fromhex(vec["seed"])),
            initiator=vec["role"] == "initiator",
            caps=tuple(vec["caps"]),
            listen=tuple(vec["listen"]),
            versions=tuple(vec["versions"]),
            expect_peer_id=bytes.fromhex(vec["expect_peer_id"]) if "expect_peer_id" in vec
            else None,
            random=FixedRandom(bytes.fromhex(vec["random"])),
        )
        if hs.initiator:
            hs.start()
        for before in vec["before"]:
            hs.receive(bytes.fromhex(before))
        hs.receive(data)
    else:
        raise AssertionError(layer)


def build_rejected(ids: dict[str, Identity], run: HandshakeRun, msgs: dict[str, Any],
                   dm_env: Any) -> Json:
    vectors = (
        frame_vectors(ids, msgs)[:-1]
        + catchup_frame_vectors(ids)
        + envelope_vectors(ids, msgs)
        + receipt_vectors(ids)
        + handshake_vectors(ids, run)
        + stream_vectors()
        + session_vectors(run)
        + session_frame_vectors(ids, run, msgs)
        + page_vectors(ids, msgs, dm_env)
        + frame_vectors(ids, msgs)[-1:]  # the big one last
    )
    names = [(v["layer"], v["name"]) for v in vectors]
    assert len(names) == len(set(names)), "duplicate vector names"
    check_rejected(ids, vectors)
    return {
        "description": (
            "Input a peer must refuse, with the error code it must report. layer says "
            "where the bytes enter: 'frame' = a plaintext frame given to the frame "
            "decoder; 'envelope' = envelope wire bytes (the e of a pub); 'handshake-record' "
            "= a handshake record received by the given role after the records in 'before' "
            "(from the other side; an initiator has sent its hello first), with the given "
            "seed, random source, caps and listen; 'stream-record' = bytes arriving on a "
            "length-prefixed byte stream; 'session-record' = an encrypted record opened with "
            "'key' after the records in 'before'; 'session-frame' = a decodable frame received "
            "on an established link, which closes the link with 'code'; 'page' = a cupage "
            "frame answering the cureq frame in 'request', which the requester refuses with "
            "'code' (catchup.md section 6.3). A vector with 'known_deviation' states what "
            "the spec requires; the reference implementation does something else there (see "
            "the note)."
        ),
        "spec": "README.md#6-error-codes",
        "limits": {"MAX_RECORD": MAX_RECORD, "MAX_HANDSHAKE_RECORD": MAX_HANDSHAKE_RECORD,
                   "MAX_TOPICS_PER_FRAME": MAX_TOPICS_PER_FRAME,
                   "MAX_IDS_PER_FRAME": MAX_IDS_PER_FRAME,
                   "MAX_PAGE_MESSAGES": MAX_PAGE_MESSAGES, "MAX_PAGE_HEADS": MAX_PAGE_HEADS,
                   "MAX_REQUEST_ID": MAX_REQUEST_ID, "MAX_RECEIPT_IDS": MAX_RECEIPT_IDS},
        "vectors": vectors,
    }


# -- driver -------------------------------------------------------------------------------


def dump(doc: Json) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=True) + "\n"


def build() -> dict[str, str]:
    """Every vector file's name and its exact text."""
    ids = identities()
    run = HandshakeRun(ids)
    envelope, msgs = build_envelope(ids)
    dm, dm_env = build_dm(ids, msgs["root"].id)
    docs: dict[str, Json] = {
        "identity.json": build_identity(),
        "handshake.json": build_handshake(ids, run),
        "envelope.json": envelope,
        "dm.json": dm,
        "catchup.json": build_catchup(ids, msgs, dm_env),
        "cbor.json": build_cbor(),
        "rejected.json": build_rejected(ids, run, msgs, dm_env),
    }
    for doc in docs.values():
        doc["spec_revision"] = SPEC_REVISION
    return {name: dump(doc) for name, doc in docs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--out", type=Path, default=HERE, help="directory to write to")
    args = parser.parse_args(argv)
    stale: list[str] = []
    for name, text in build().items():
        path: Path = args.out / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path} ({len(text)} bytes)")
    if stale:
        print("stale vector files: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
