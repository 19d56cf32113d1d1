"""protocol-spec/vectors/gateways.json: OCM's canonical string and signature, the
channel and id mappings, MESH's HMAC; checked against the spec's prose (recomputed
here with hashlib, hmac and nacl) and against the implementation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid

from nacl.signing import SigningKey, VerifyKey

from peer.protocols._meshenv import check_envelope, hmac_of, signature_valid
from peer.protocols._ocm import OcmMessage, key_of_peer_id, key_of_pem, parse_frame, pem_of
from peer.protocols._ocmmap import mesh_channel, message_uuid
from tests._vectors import VECTORS

V = json.loads((VECTORS / "gateways" / "gateways.json").read_text())


def test_ocm_signature_vector() -> None:
    v = V["ocm_signature"]
    key = SigningKey(bytes.fromhex(v["ed25519_seed_hex"]))
    public = bytes(key.verify_key)
    assert public.hex() == v["public_key_hex"]
    assert base64.urlsafe_b64encode(public).decode().rstrip("=") == v["peer_id"]
    assert pem_of(public) == v["public_key_pem"] and key_of_pem(v["public_key_pem"]) == public
    assert key_of_peer_id(v["peer_id"]) == public
    m = v["message"]
    # the spec's canonical string, built from its words: sorted keys, compact,
    # payload as its compact JSON text
    fields = {**{k: m[k] for k in ("message_id", "channel_id", "sender_id", "body",
                                   "timestamp")},
              "payload": json.dumps(m["payload"], separators=(",", ":"))}
    canonical = json.dumps(dict(sorted(fields.items())), separators=(",", ":"),
                           ensure_ascii=False).encode()
    assert canonical.hex() == v["canonical_hex"]
    signature = base64.b64decode(v["signature_b64"])
    VerifyKey(public).verify(canonical, signature)
    parsed = parse_frame(json.dumps({"type": "message", **m, "signature": v["signature_b64"]}))
    assert isinstance(parsed, OcmMessage) and parsed.canonical().hex() == v["canonical_hex"]
    assert parsed.verifies(public)


def test_ocm_mapping_vectors() -> None:
    for channel_id, mesh in V["ocm_channels"].items():
        assert mesh_channel(channel_id) == mesh
        if mesh.startswith("ocm-"):
            assert mesh == "ocm-" + hashlib.sha256(channel_id.encode()).hexdigest()[:32]
    u = V["ocm_message_uuid"]
    mesh_id = bytes.fromhex(u["mesh_id_hex"])
    assert message_uuid(mesh_id) == u["uuid"] == str(uuid.UUID(bytes=mesh_id[:16]))


def test_mesh_hmac_vector() -> None:
    v = V["mesh_hmac"]
    compact = bytes.fromhex(v["compact_hex"])
    assert json.loads(compact) == v["envelope"]
    assert list(json.loads(compact)) == list(v["envelope"])  # key order as sent
    expected = base64.b64encode(hmac.new(v["key"].encode(), compact, hashlib.sha256).digest())
    assert expected.decode() == v["signature"] == hmac_of(v["envelope"], v["key"].encode())
    signed = check_envelope({**v["envelope"], "signature": v["signature"]})
    assert signature_valid(signed, v["key"].encode())
