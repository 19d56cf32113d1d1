"""Envelope and DM vectors (envelope.json, dm.json): signed bytes, ids, pub
frames and DM boxes, from the code and from the spec's constructions."""

from __future__ import annotations

import hashlib

import pytest
from nacl.bindings import (
    crypto_box_beforenm,
    crypto_box_open,
    crypto_scalarmult,
)

from peer import (
    Content,
    ErrorCode,
    Identity,
    ProtocolError,
    dm_topic,
    inbox_topic,
    open_dm,
    open_envelope,
    seal_dm,
    seal_message,
)
from peer.wire import _cbor
from peer.wire._envelope import seal_presence
from peer.wire._identity import x25519_public_of
from tests._vectors import (
    DM_TOPIC_TAG,
    ENVELOPE_TAG,
    MSG_ID_TAG,
    check_envelope_bytes,
    h,
    load,
)

# -- envelopes --------------------------------------------------------------------------


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
        check_envelope_bytes(entry, ident.public_key)
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
    check_envelope_bytes(entry, ident.public_key)
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
    check_envelope_bytes(entry, sender.public_key)
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
