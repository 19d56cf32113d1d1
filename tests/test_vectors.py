"""The protocol test vectors (protocol-spec/vectors/*.json) against the reference code.

Two kinds of check: the code, fed the vectors' seeds and injected randomness,
reproduces every byte; and the bytes follow from the spec's constructions
recomputed here with hashlib and libsodium directly (domain tags, length
prefixes, key derivation, nonces), so the prose in protocol-spec/ and the code
cannot drift apart silently. Every refused vector must raise ``ProtocolError``
with exactly the listed code (or close the link with it, for session frames).
Catch-up pages are rebuilt by ``build_page`` from the carrier log the vectors
list, read through a small in-memory source written here from catchup.md.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import cbor2
import pytest
from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_decrypt,
    crypto_aead_chacha20poly1305_ietf_encrypt,
    crypto_box_beforenm,
    crypto_box_open,
    crypto_scalarmult,
    crypto_scalarmult_base,
)
from nacl.signing import VerifyKey

from peer import (
    Content,
    ErrorCode,
    GossipRouter,
    Handshake,
    Identity,
    LinkCipher,
    ProtocolError,
    RecordBuffer,
    decode_frame,
    dm_topic,
    encode_frame,
    frame_record,
    inbox_topic,
    message_id,
    open_dm,
    open_envelope,
    seal_dm,
    seal_message,
)
from peer.protocols._catchup import Page, PageRequest, authenticate, build_page, check_page
from peer.protocols._gossip import Close
from peer.wire import _cbor, _limits
from peer.wire._envelope import MAX_RECEIPT_IDS, seal_presence, seal_receipt
from peer.wire._identity import x25519_public_of

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


# -- envelopes --------------------------------------------------------------------------


def _check_envelope_bytes(entry: Json, sender_key: bytes) -> None:
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


def test_channel_messages() -> None:
    doc = load("envelope.json")
    assert h(doc["envelope_tag"]) == ENVELOPE_TAG and h(doc["msg_id_tag"]) == MSG_ID_TAG
    ident = Identity.from_seed(h(doc["sender"]["seed"]))
    assert ident.peer_id == h(doc["sender"]["peer_id"])
    names = [m["name"] for m in doc["messages"]]
    assert names == ["root", "reply"]
    for entry in doc["messages"]:
        spec = entry["content"]
        payload = h(spec["payload"]) if "payload" in spec else None
        if payload is not None:
            assert _cbor.encode(spec["payload_value"]) == payload
        content = Content(
            body=spec["body"],
            payload=payload,
            reply_to=h(spec["reply_to"]) if "reply_to" in spec else None,
            thread=h(spec["thread"]) if "thread" in spec else None,
        )
        env = seal_message(ident, topic=entry["topic"], content=content, seq=entry["seq"],
                           ts=entry["ts"])
        assert env.wire == h(entry["wire"])
        assert env.id == h(entry["message_id"])
        _check_envelope_bytes(entry, ident.public_key)
        opened = open_envelope(env.wire)
        assert opened.content() == content
        expected = {"v": 1, "kind": "msg", "topic": entry["topic"], "from": ident.public_key,
                    "seq": entry["seq"], "ts": entry["ts"], **content.to_map()}
        assert opened.fields == expected
    root, reply = doc["messages"]
    assert reply["content"]["reply_to"] == root["message_id"]
    assert reply["content"]["thread"] == root["message_id"]


def test_presence() -> None:
    doc = load("envelope.json")
    entry = doc["presence"]
    ident = Identity.from_seed(h(doc["sender"]["seed"]))
    payload = h(entry["payload"])
    assert _cbor.encode(entry["payload_value"]) == payload
    env = seal_presence(ident, payload=payload, seq=entry["seq"], ts=entry["ts"])
    assert env.wire == h(entry["wire"])
    assert entry["topic"] == entry["route"] == "sys/presence"
    _check_envelope_bytes(entry, ident.public_key)
    assert open_envelope(env.wire).fields["payload"] == payload


def test_direct_message() -> None:
    doc = load("dm.json")
    sender = Identity.from_seed(h(doc["sender"]["seed"]))
    recipient = Identity.from_seed(h(doc["recipient"]["seed"]))
    lo, hi = sorted((sender.peer_id, recipient.peer_id))
    assert h(doc["dm_topic_input"]) == DM_TOPIC_TAG + lo + hi
    topic = "dm/" + hashlib.sha256(DM_TOPIC_TAG + lo + hi).hexdigest()
    assert topic == doc["dm_topic"] == dm_topic(recipient.peer_id, sender.peer_id)
    assert doc["inbox_topic"] == "inbox/" + recipient.peer_id.hex() == inbox_topic(
        recipient.peer_id
    )
    spec = doc["content"]
    assert _cbor.encode(spec["payload_value"]) == h(spec["payload"])
    content = Content(body=spec["body"], payload=h(spec["payload"]), reply_to=h(spec["reply_to"]))
    assert _cbor.encode(content.to_map()) == h(doc["inner"])
    env = seal_dm(sender, recipient_key=recipient.public_key, content=content, seq=doc["seq"],
                  ts=doc["ts"], nonce=h(doc["nonce"]))
    assert env.wire == h(doc["wire"])
    assert env.route == doc["route"] == doc["inbox_topic"]
    assert env.fields == {"v": 1, "kind": "dm", "topic": topic, "from": sender.public_key,
                          "seq": doc["seq"], "ts": doc["ts"], "to": recipient.peer_id,
                          "box": h(doc["box"])}
    entry = {**doc, "kind": "dm", "topic": topic}
    _check_envelope_bytes(entry, sender.public_key)
    # the box, opened with libsodium directly
    box = h(doc["box"])
    assert box[:24] == h(doc["nonce"])
    assert h(doc["sender"]["x25519_public"]) == x25519_public_of(sender.public_key)
    assert h(doc["recipient"]["x25519_private"]) == recipient.x25519_private()
    inner = crypto_box_open(box[24:], box[:24], h(doc["sender"]["x25519_public"]),
                            h(doc["recipient"]["x25519_private"]))
    assert bytes(inner) == h(doc["inner"])
    assert len(box) == 24 + 16 + len(inner)
    shared = crypto_scalarmult(h(doc["sender"]["x25519_private"]),
                               h(doc["recipient"]["x25519_public"]))
    assert bytes(shared) == h(doc["x25519_shared"])
    assert bytes(crypto_box_beforenm(h(doc["recipient"]["x25519_public"]),
                                     h(doc["sender"]["x25519_private"]))) == h(doc["box_key"])
    # and through the reference code
    opened = open_dm(recipient, open_envelope(env.wire))
    dec = doc["decrypted"]
    assert opened == Content(
        body=dec["body"],
        payload=h(dec["payload"]) if dec["payload"] is not None else None,
        reply_to=h(dec["reply_to"]) if dec["reply_to"] is not None else None,
        thread=h(dec["thread"]) if dec["thread"] is not None else None,
    )
    with pytest.raises(ProtocolError) as info:
        open_dm(sender, open_envelope(env.wire))  # not addressed to the sender
    assert info.value.code is ErrorCode.DECRYPT


# -- catch-up and DM delivery ---------------------------------------------------------------


def test_receipt() -> None:
    doc = load("catchup.json")
    entry = doc["receipt"]
    dm = load("dm.json")
    signer = Identity.from_seed(h(entry["signer"]["seed"]))
    alice = Identity.from_seed(h(doc["identities"]["alice"]["seed"]))
    assert signer.peer_id == h(dm["recipient"]["peer_id"])  # bob receipts the DM he received
    assert h(entry["to"]) == alice.peer_id == h(dm["sender"]["peer_id"])
    assert entry["ids"] == [dm["message_id"]]
    ids = [h(i) for i in entry["ids"]]
    env = seal_receipt(signer, recipient=alice.peer_id, ids=ids, seq=entry["seq"],
                       ts=entry["ts"])
    assert env.wire == h(entry["wire"])
    # the topic is the DMs' conversation topic; route and log topic are alice's inbox
    lo, hi = sorted((signer.peer_id, alice.peer_id))
    assert entry["topic"] == "dm/" + hashlib.sha256(DM_TOPIC_TAG + lo + hi).hexdigest()
    assert entry["topic"] == dm["dm_topic"]
    assert entry["route"] == entry["log_topic"] == "inbox/" + alice.peer_id.hex()
    assert env.log_topic == env.route == entry["route"]
    assert env.fields == {"v": 1, "kind": "receipt", "topic": entry["topic"],
                          "from": signer.public_key, "seq": entry["seq"], "ts": entry["ts"],
                          "to": alice.peer_id, "ids": ids}
    # the signed map's keys in the canonical order envelope.md gives
    signed = h(entry["signed"])
    assert list(_cbor.decode(signed)) == ["v", "to", "ts", "ids", "seq", "from", "kind", "topic"]
    _check_envelope_bytes({**entry, "kind": "receipt"}, signer.public_key)
    assert h(entry["push_frame"]) == encode_frame("push", e=env.wire)
    assert decode_frame(h(entry["push_frame"])).to_map() == {"t": "push", "e": env.wire}


def test_push_frames() -> None:
    doc = load("catchup.json")
    names = [p["name"] for p in doc["push"]]
    assert names == ["dm", "receipt"]
    for push in doc["push"]:
        frame = decode_frame(h(push["hex"]))
        assert frame.TYPE == "push" and set(frame.to_map()) == {"t", "e"}
        env = open_envelope(frame.to_map()["e"])
        assert env.kind == push["name"]
        assert env.id == h(push["message_id"])
        assert env.sender == h(push["from"]) and env.recipient == h(push["to"])
        assert env.route == "inbox/" + push["to"]
    assert decode_frame(h(doc["push"][0]["hex"])).to_map()["e"] == h(load("dm.json")["wire"])


@dataclass(frozen=True)
class _Record:
    seq: int
    sender: bytes
    sender_seq: int
    received_ms: int
    wire: bytes
    msg_id: bytes


@dataclass(frozen=True)
class _Head:
    next_seq: int
    count: int


class _Carrier:
    """The carrier of catchup.json: its logs, read the way catchup.md section 5 says."""

    def __init__(self, doc: Json) -> None:
        self.logs: dict[str, list[_Record]] = {}
        for log in doc["carrier"]:
            records = [
                _Record(r["seq"], h(r["sender"]), r["sender_seq"], r["received_ms"],
                        h(r["wire"]), h(r["message_id"]))
                for r in log["records"]
            ]
            assert [r.seq for r in records] == list(range(1, len(records) + 1))
            times = [r.received_ms for r in records]
            assert times == sorted(times)  # stored in receive order
            for record in records:  # each record is what it says it is
                env = open_envelope(record.wire)
                assert env.id == record.msg_id == message_id(_cbor.decode(record.wire)[0])
                assert env.log_topic == log["topic"]
                assert (env.sender, env.seq) == (record.sender, record.sender_seq)
            self.logs[log["topic"]] = records

    def head(self, topic: str) -> _Head:
        log = self.logs.get(topic, [])
        return _Head(len(log) + 1, len(log))

    def seq_at(self, topic: str, received_ms: int) -> int:
        before = [r.seq for r in self.logs.get(topic, []) if r.received_ms < received_ms]
        return max(before, default=0)

    def read(self, topic: str, after: int = 0, limit: int = 100) -> list[_Record]:
        return [r for r in self.logs.get(topic, []) if r.seq > after][:limit]

    def read_sender(
        self, topic: str, sender: bytes, first: int, last: int, limit: int = 100
    ) -> list[_Record]:
        mine = [r for r in self.logs.get(topic, [])
                if r.sender == sender and first <= r.sender_seq <= last]
        return sorted(mine, key=lambda r: (r.sender_seq, r.msg_id))[:limit]

    def sender_heads(self, topic: str, limit: int = 256) -> list[tuple[bytes, int]]:
        heads: dict[bytes, int] = {}
        for r in self.logs.get(topic, []):
            heads[r.sender] = max(heads.get(r.sender, 0), r.sender_seq)
        return sorted(heads.items())[:limit]


def test_catchup_limits() -> None:
    limits = load("catchup.json")["limits"]
    assert limits == {
        "MAX_PAGE_MESSAGES": _limits.MAX_PAGE_MESSAGES,
        "MAX_PAGE_BYTES": _limits.MAX_PAGE_BYTES,
        "MAX_PAGE_HEADS": _limits.MAX_PAGE_HEADS,
        "MAX_REQUEST_ID": _limits.MAX_REQUEST_ID,
        "MAX_RECEIPT_IDS": MAX_RECEIPT_IDS,
    }


@pytest.mark.parametrize("exchange", load("catchup.json")["exchanges"], ids=lambda e: e["name"])
def test_catchup_exchange(exchange: Json) -> None:
    carrier = _Carrier(load("catchup.json"))
    by_name = {r["name"]: h(r["wire"]) for log in load("catchup.json")["carrier"]
               for r in log["records"]}
    # the request, field by field, and as the code reads and writes it
    cureq = decode_frame(h(exchange["cureq"]))
    assert cureq.TYPE == "cureq"
    want = dict(exchange["request"])
    if "sender" in want:
        want["sender"] = h(want["sender"])
    assert cureq.to_map() == {"t": "cureq", **want}
    request = PageRequest.from_fields(cureq.to_map())
    assert encode_frame("cureq", **request.fields()) == h(exchange["cureq"])
    # the page, field by field
    spec = exchange["page"]
    cupage = decode_frame(h(exchange["cupage"]))
    assert cupage.TYPE == "cupage"
    fields: Json = {"t": "cupage", "r": spec["r"], "topic": spec["topic"],
                    "m": [by_name[n] for n in spec["m"]], "next": spec["next"],
                    "more": spec["more"], "heads": [[h(s), n] for s, n in spec["heads"]]}
    if spec["err"] is not None:
        fields["err"] = spec["err"]
    assert cupage.to_map() == fields
    # build_page over the listed log answers with exactly these bytes
    page = build_page(carrier, request, h(exchange["requester"]))
    assert encode_frame("cupage", **page.fields()) == h(exchange["cupage"])
    # and the requester accepts it (the reference hands the envelopes on in
    # (sender, seq) order, so compare them as a set)
    assert [message_id(_cbor.decode(w)[0]).hex() for w in fields["m"]] == spec["message_ids"]
    envs = check_page(request, Page.from_fields(cupage.to_map()))
    assert sorted(e.id.hex() for e in envs) == sorted(spec["message_ids"])
    # the rules of catchup.md section 5, recomputed from the log
    log = carrier.logs.get(request.topic, [])
    assert (spec["r"], spec["topic"]) == (request.r, request.topic)
    if spec["err"] is not None:
        assert spec["err"] in {"not-carried", "forbidden", "busy"}
        assert (spec["m"], spec["next"], spec["more"], spec["heads"]) == (
            [], request.after, False, [])
        return
    seq_of = {r.wire: r.seq for r in log}
    if request.sender is None:
        start = request.after
        if request.since:
            start = max(start, max((r.seq for r in log if r.received_ms < request.since),
                                   default=0))
        expected = [r.wire for r in log if r.seq > start][: request.limit]
        assert fields["m"] == expected
        assert spec["next"] == (seq_of[expected[-1]] if expected else max(start, len(log)))
        assert spec["more"] == (spec["next"] < len(log))
        heads = sorted({(r.sender, max(x.sender_seq for x in log if x.sender == r.sender))
                        for r in log})
        assert [(h(s), n) for s, n in spec["heads"]] == ([] if spec["more"] else heads)
    else:
        for env in envs:
            assert env.sender == request.sender
            assert request.first <= env.seq <= request.last
        seqs = [open_envelope(w).seq for w in fields["m"]]
        assert seqs == sorted(seqs)
        assert spec["heads"] == []
        assert spec["next"] == (seqs[-1] if seqs else request.last)


def test_catchup_chain() -> None:
    """catchup.md 6.3: each message names the one before; a page of the run is
    accepted with the newest signature alone (the others are zeroed)."""
    doc = load("catchup.json")["chain"]
    author = h(doc["author"])
    prev = None
    for i, entry in enumerate(doc["messages"], start=1):
        wire = h(entry["wire"])
        signed, sig = cbor2.loads(wire)
        fields = cbor2.loads(signed)
        assert fields["seq"] == entry["seq"] == i
        assert hashlib.sha256(MSG_ID_TAG + signed).digest() == h(entry["message_id"])
        assert fields.get("prev") == prev == (h(entry["prev"]) if entry["prev"] else None)
        verify(fields["from"], ENVELOPE_TAG + signed, sig)
        assert hashlib.sha256(PEER_ID_TAG + fields["from"]).digest() == author
        prev = h(entry["message_id"])
    cupage = decode_frame(h(doc["cupage"]))
    sigs = [cbor2.loads(w)[1] for w in cupage.to_map()["m"]]
    assert sigs[:-1] == [bytes(64)] * (len(sigs) - 1) and sigs[-1] != bytes(64)
    request = PageRequest.from_fields(decode_frame(h(doc["cureq"])).to_map())
    envs = check_page(request, Page.from_fields(cupage.to_map()))
    assert [e.id.hex() for e in envs] == doc["accepted_ids"]
    opened = [(open_envelope(w, verify=False), *cbor2.loads(w)) for w in cupage.to_map()["m"]]
    assert authenticate(opened) == doc["signatures_verified"] == 1


# -- the CBOR profile and refused input --------------------------------------------------


@pytest.mark.parametrize("entry", load("cbor.json")["accepted"], ids=lambda e: e["name"])
def test_cbor_accepted(entry: Json) -> None:
    data = h(entry["hex"])
    value = _cbor.decode(data, max_items=load("cbor.json")["max_items"])
    assert _cbor.encode(value) == data


def _params(vectors: list[Json]) -> list[Any]:
    out: list[Any] = []
    for vec in vectors:
        marks: list[pytest.MarkDecorator] = []
        if "known_deviation" in vec:
            reason = "known deviation of the reference code (remove once fixed): "
            marks.append(pytest.mark.xfail(strict=True, reason=reason + vec["known_deviation"]))
        out.append(pytest.param(vec, id=f"{vec['layer']}/{vec['name']}", marks=marks))
    return out


@pytest.mark.parametrize("vec", _params(load("cbor.json")["rejected"]))
def test_cbor_rejected(vec: Json) -> None:
    with pytest.raises(ProtocolError) as info:
        _cbor.decode(h(vec["hex"]), max_items=load("cbor.json")["max_items"])
    assert info.value.code.value == vec["code"]


def _refuse(vec: Json) -> None:
    """Feed a refused vector to the layer it names; must raise ProtocolError."""
    data = h(vec["hex"])
    layer = vec["layer"]
    if layer == "frame":
        decode_frame(data)
    elif layer == "envelope":
        open_envelope(data)
    elif layer == "stream-record":
        RecordBuffer().feed(data)
    elif layer == "session-record":
        cipher = LinkCipher(bytes(32), h(vec["key"]))
        for before in vec["before"]:
            cipher.open(h(before))
        cipher.open(data)
    elif layer == "session-frame":
        me, them = bytes(32), b"\x01" * 32
        router = GossipRouter(me)
        router.add_link(them, relay=True, now=0.0)
        frame = decode_frame(data)  # the frame itself is well formed
        actions = router.handle_frame(them, frame, data, 0.0, vec["wall_ms"])
        closes = [a for a in actions if isinstance(a, Close)]
        assert len(closes) == 1 and closes[0].peer == them
        assert router.stats.rejected == 1
        raise ProtocolError(closes[0].code, closes[0].reason)
    elif layer == "page":
        request = decode_frame(h(vec["request"]))  # both frames are well formed
        page = decode_frame(data)
        assert (request.TYPE, page.TYPE) == ("cureq", "cupage")
        check_page(PageRequest.from_fields(request.to_map()), Page.from_fields(page.to_map()))
    elif layer == "handshake-record":
        hs = Handshake(
            Identity.from_seed(h(vec["seed"])),
            initiator=vec["role"] == "initiator",
            caps=tuple(vec["caps"]),
            listen=tuple(vec["listen"]),
            versions=tuple(vec["versions"]),
            expect_peer_id=h(vec["expect_peer_id"]) if "expect_peer_id" in vec else None,
            random=FixedRandom(h(vec["random"])),
        )
        if hs.initiator:
            hs.start()
        for before in vec["before"]:
            hs.receive(h(before))  # must be accepted
        hs.receive(data)
    else:
        raise AssertionError(f"unknown layer {layer!r}")


@pytest.mark.parametrize("vec", _params(load("rejected.json")["vectors"]))
def test_rejected(vec: Json) -> None:
    with pytest.raises(ProtocolError) as info:
        _refuse(vec)
    assert info.value.code.value == vec["code"]


def test_rejected_covers_the_required_cases() -> None:
    names = {(v["layer"], v["name"]) for v in load("rejected.json")["vectors"]}
    required = {
        ("frame", "semantic-tag"),
        ("frame", "indefinite-length-array"),
        ("frame", "duplicate-map-key"),
        ("frame", "integer-map-key"),
        ("frame", "non-canonical-integer"),
        ("frame", "non-canonical-map-order"),
        ("frame", "trailing-bytes"),
        ("frame", "depth-17"),
        ("frame", "unknown-frame-type"),
        ("frame", "unknown-field"),
        ("frame", "wrong-field-type"),
        ("frame", "oversize-frame"),
        ("stream-record", "oversize-length-prefix"),
        ("envelope", "bad-signature"),
        ("envelope", "dm-topic-mismatch"),
        ("handshake-record", "hello-id-does-not-match-pk"),
        ("envelope", "receipt-no-ids"),
        ("envelope", "receipt-65-ids"),
        ("envelope", "receipt-id-31-bytes"),
        ("envelope", "receipt-wrong-topic"),
        ("frame", "cureq-limit-513"),
        ("frame", "cureq-first-after-last"),
        ("frame", "cupage-513-messages"),
        ("frame", "cupage-257-heads"),
        ("frame", "push-envelope-text"),
        ("page", "page-for-another-request"),
        ("page", "page-foreign-topic-envelope"),
        ("page", "page-bad-signature"),
        ("page", "page-outside-sender-range"),
    }
    assert required <= names
    codes = {v["code"] for v in load("rejected.json")["vectors"]}
    assert codes <= {c.value for c in ErrorCode}
    big = next(v for v in load("rejected.json")["vectors"] if v["name"] == "oversize-frame")
    assert len(h(big["hex"])) == _limits.MAX_RECORD + 1
    prefix = next(v for v in load("rejected.json")["vectors"]
                  if v["name"] == "oversize-length-prefix")
    assert h(prefix["hex"]) == u32(_limits.MAX_RECORD + 1)


def test_stream_record_boundary() -> None:
    """A record of exactly MAX_RECORD bytes is accepted; the refused vector is one more."""
    buf = RecordBuffer()
    record = bytes(_limits.MAX_RECORD)
    assert buf.feed(frame_record(record)[:100]) == []
    assert buf.feed(frame_record(record)[100:]) == [record]
    assert buf.pending == 0


# -- the spec text and the files -------------------------------------------------------------


def test_readme_limits_match_the_code() -> None:
    text = (SPEC / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| ([0-9_]+) \|", text, flags=re.MULTILINE))
    names = [n for n in dir(_limits) if n.startswith("MAX_")]
    assert names and set(names) <= set(rows)
    for name in names:
        assert int(rows[name].replace("_", "")) == getattr(_limits, name), name
    assert int(rows["MAX_RECEIPT_IDS"]) == MAX_RECEIPT_IDS  # kept in peer/_envelope.py
    params = _limits.GossipParams()
    grows = dict(re.findall(r"^\| `([a-z_]+)` \| ([0-9_.]+) \|", text, flags=re.MULTILINE))
    for name, value in vars(params).items():
        assert float(grows[name].replace("_", "")) == float(value), name


def test_readme_lists_every_error_code() -> None:
    text = (SPEC / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `([a-z-]+)` \|", text, flags=re.MULTILINE))
    assert {c.value for c in ErrorCode} <= listed


def test_vector_files_are_current() -> None:
    """generate.py, run now, writes exactly the committed files (and is deterministic)."""
    spec = importlib.util.spec_from_file_location("clawmesh_vector_generator",
                                                  VECTORS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    first: dict[str, str] = module.build()
    assert first == module.build()
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in VECTORS.glob("*.json")}
    assert first == on_disk
