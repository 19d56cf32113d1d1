"""blobs.json: content ids recomputed from the spec's construction (not the code's),
blob frames decoded and re-encoded byte for byte, a message with attachments
opened, and the refused frames refused with their codes."""

from __future__ import annotations

import hashlib
import struct

import cbor2
import pytest

from peer import open_envelope
from peer.wire._blobframes import BlobChunk, BlobHave, BlobNone, BlobWant
from peer.wire._errors import ProtocolError
from peer.wire._frames import decode_frame
from tests._vectors import h, load

DOC = load("blobs.json")


def _det(label: str, size: int) -> bytes:
    out, counter = b"", 0
    while len(out) < size:
        out += hashlib.sha256(label.encode() + struct.pack(">I", counter)).digest()
        counter += 1
    return out[:size]


def _b2(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


@pytest.mark.parametrize("entry", DOC["content_ids"], ids=lambda e: e["name"])
def test_content_ids_follow_the_spec(entry: dict[str, object]) -> None:
    size = int(entry["size"])  # type: ignore[call-overload]
    data = _det(f"clawmesh/test-vector/blob/{entry['name']}", size)
    chunk = DOC["chunk_size"]
    hashes = [_b2(data[i : i + chunk]) for i in range(0, size, chunk)]
    assert [x.hex() for x in hashes] == entry["chunk_hashes"]
    id_input = b"clawmesh/blob/v1" + size.to_bytes(8, "big") + b"".join(hashes)
    assert id_input.hex() == entry["id_input"]
    assert _b2(id_input).hex() == entry["id"]


@pytest.mark.parametrize("entry", DOC["frames"], ids=lambda e: e["name"])
def test_blob_frames_decode_and_encode_to_the_same_bytes(entry: dict[str, object]) -> None:
    raw = h(str(entry["cbor"]))
    frame = decode_frame(raw)
    assert isinstance(frame, BlobWant | BlobHave | BlobChunk | BlobNone)
    assert frame.encode() == raw
    value = {k: v.hex() if isinstance(v, bytes) else v for k, v in cbor2.loads(raw).items()}
    assert value == entry["value"]


def test_a_message_with_attachments_opens_with_them() -> None:
    entry = DOC["message_with_attachments"]
    env = open_envelope(h(entry["wire"]))
    assert env.id.hex() == entry["id"]
    assert [a.to_json() for a in env.content().attachments] == entry["attachments"]
    assert cbor2.loads(h(entry["signed"]))["attachments"][0]["id"] == h(
        entry["attachments"][0]["id"]
    )


@pytest.mark.parametrize("entry", DOC["rejected_frames"], ids=lambda e: e["name"])
def test_bad_blob_frames_are_refused(entry: dict[str, str]) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_frame(h(entry["cbor"]))
    assert info.value.code.value == entry["error"]
