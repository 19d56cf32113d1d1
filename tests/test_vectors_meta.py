"""Message-semantics vectors (meta.json, envelope.md section 12): the DMs are
opened independently (libsodium and cbor2, keys from identity.json) and
re-derived with the reference code; every refused meta map fails with its code."""

from __future__ import annotations

import cbor2
import pytest
from nacl.bindings import crypto_box_open

from peer import Identity
from peer.wire import _cbor
from peer.wire._envelope import Content, open_dm, open_envelope, seal_dm
from peer.wire._errors import ProtocolError
from peer.wire._meta import check_meta

from ._vectors import ENVELOPE_TAG, h, load, verify


def _people() -> dict[str, dict[str, str]]:
    return {p["name"]: p for p in load("identity.json")["identities"]}


def _plain(value: object) -> object:
    """A vector's JSON meta value as CBOR decodes it (bytes are {"hex": ...})."""
    if isinstance(value, dict) and set(value) == {"hex"}:
        return h(value["hex"])
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@pytest.mark.parametrize("name", ["request", "ack"])
def test_meta_dms_open_independently_and_match_the_code(name: str) -> None:
    doc = load("meta.json")
    entry = doc[name]
    people = _people()
    sender_name = entry["sender_seed_name"]
    recipient_name = "bob" if sender_name == "alice" else "alice"
    sender, recipient = people[sender_name], people[recipient_name]
    # independently: the signed map names the DM; the box opens with libsodium
    signed, sig = cbor2.loads(h(entry["wire"]))
    fields = cbor2.loads(signed)
    verify(h(sender["public_key"]), ENVELOPE_TAG + signed, sig)
    box = fields["box"]
    assert box[:24] == h(entry["nonce"])
    inner = crypto_box_open(box[24:], box[:24], h(sender["x25519_public"]),
                            h(recipient["x25519_private"]))
    assert bytes(inner) == h(entry["inner"])
    content = cbor2.loads(inner)
    assert {k: _plain(v) for k, v in entry["meta"].items()} == content["meta"]
    # and the reference code seals the same bytes and reads the same meta
    ident = Identity.from_seed(h(sender["seed"]))
    other = Identity.from_seed(h(recipient["seed"]))
    meta = check_meta(content["meta"])
    env = seal_dm(ident, recipient_key=other.public_key,
                  content=Content(body=content["body"], meta=meta), seq=entry["seq"],
                  ts=entry["ts"], nonce=h(entry["nonce"]))
    assert env.wire == h(entry["wire"]) and env.id == h(entry["message_id"])
    assert open_dm(other, open_envelope(env.wire)).meta == meta
    if name == "ack":
        assert content["meta"]["ids"] == [h(doc["request"]["message_id"])]


def test_refused_meta_maps_fail_with_their_code() -> None:
    refused = load("meta.json")["refused"]
    assert len(refused) >= 10
    for entry in refused:
        with pytest.raises(ProtocolError) as info:
            check_meta(_cbor.decode(h(entry["meta"])))
        assert info.value.code.value == entry["code"], entry["name"]
