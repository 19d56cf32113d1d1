"""rejected.json, part 1: refused frames and envelopes (and their helpers)."""

from __future__ import annotations

from typing import Any

import cbor2
from nacl.bindings import crypto_scalarmult_base

from peer import (
    Identity,
    dm_topic,
    encode_frame,
)
from peer.wire._envelope import (
    ENVELOPE_TAG,
    PRESENCE_TOPIC,
)
from peer.wire._handshake import AGENT
from peer.wire._limits import (
    MAX_BODY_BYTES,
    MAX_RECORD,
    MAX_TEXT_FIELD,
)

from .common import TS0, Json, c, det, hx, nested_arrays, raw_map
from .handshake import handshake_random

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
