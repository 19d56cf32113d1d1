"""envelope.json and dm.json: signed messages, presence, an encrypted DM."""

from __future__ import annotations

import hashlib
from typing import Any

import cbor2
from nacl.bindings import (
    crypto_box_beforenm,
    crypto_scalarmult,
)

from peer import (
    Content,
    Identity,
    Pub,
    dm_topic,
    inbox_topic,
    open_dm,
    open_envelope,
    seal_dm,
    seal_message,
)
from peer.wire._envelope import (
    ENVELOPE_TAG,
    MSG_ID_TAG,
    seal_presence,
)
from peer.wire._identity import x25519_public_of

from .common import TS0, Json, c, det, hx, identity_json
from .handshake import INITIATOR_CAPS, INITIATOR_LISTEN

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
