"""blobs.json: content ids, the four blob frames, a message with attachments,
and blob frames a peer must refuse (protocol-spec/blobs.md)."""

from __future__ import annotations

import cbor2

from peer import Content, open_envelope, seal_message
from peer.wire import _cbor
from peer.wire._blobframes import (
    BLOB_TAG,
    CHUNK_SIZE,
    Attachment,
    BlobChunk,
    BlobHave,
    BlobNone,
    BlobWant,
    blob_id,
    chunk_hash,
)
from peer.wire._errors import ProtocolError
from peer.wire._frames import decode_frame

from .common import TS0, Json, det, hx

# (name, size): the blob's bytes are det("clawmesh/test-vector/blob/<name>", size)
BLOBS = (("empty", 0), ("hello", 5), ("one-chunk", CHUNK_SIZE), ("two-chunks", CHUNK_SIZE + 1))


def blob_bytes(name: str, size: int) -> bytes:
    return det(f"clawmesh/test-vector/blob/{name}", size)


def _ids() -> list[Json]:
    out = []
    for name, size in BLOBS:
        data = blob_bytes(name, size)
        hashes = [chunk_hash(data[i : i + CHUNK_SIZE]) for i in range(0, size, CHUNK_SIZE)]
        joined = b"".join(hashes)
        out.append(
            {
                "name": name,
                "bytes": f'det("clawmesh/test-vector/blob/{name}", {size})',
                "size": size,
                "chunk_hashes": [hx(x) for x in hashes],
                "id_input": hx(BLOB_TAG + size.to_bytes(8, "big") + joined),
                "id": hx(blob_id(size, joined)),
            }
        )
    return out


def _frames(first: Json) -> list[Json]:
    blob = bytes.fromhex(first["id"])
    src = det("clawmesh/test-vector/blob/src", 32)
    hashes = bytes.fromhex("".join(first["chunk_hashes"]))
    frames = [
        ("want-manifest", BlobWant(1, blob, None, 2, src)),
        ("want-chunk", BlobWant(2, blob, 0, 0)),
        ("have", BlobHave(1, first["size"], hashes)),
        ("chunk", BlobChunk(2, blob_bytes("hello", 5))),
        ("none", BlobNone(3, "unknown")),
    ]
    out = []
    for name, frame in frames:
        raw = frame.encode()
        assert decode_frame(raw) == frame
        out.append({"name": name, "value": cbor2.loads(raw) | {}, "cbor": hx(raw)})
    for entry in out:  # JSON has no bytes: byte strings as hex
        entry["value"] = {
            k: hx(v) if isinstance(v, bytes) else v for k, v in entry["value"].items()
        }
    return out


def _rejected(first: Json) -> list[Json]:
    blob = bytes.fromhex(first["id"])
    bad = [
        ("empty-chunk", {"t": "blob-chunk", "r": 1, "d": b""}, "malformed"),
        ("hops-over-3", {"t": "blob-want", "r": 1, "id": blob, "hops": 4}, "malformed"),
        ("short-id", {"t": "blob-want", "r": 1, "id": blob[:31], "hops": 0}, "malformed"),
        (
            "index-past-8191",
            {"t": "blob-want", "r": 1, "id": blob, "i": 8192, "hops": 0},
            "malformed",
        ),
        ("hashes-do-not-fit-size", {"t": "blob-have", "r": 1, "size": 6, "h": b""}, "malformed"),
        ("unknown-key", {"t": "blob-none", "r": 1, "err": "busy", "why": 1}, "malformed"),
    ]
    out = []
    for name, fields, code in bad:
        raw = _cbor.encode(fields)
        try:
            decode_frame(raw)
        except ProtocolError as exc:
            assert exc.code.value == code, name
        else:
            raise AssertionError(f"{name} was accepted")
        out.append({"name": name, "cbor": hx(raw), "error": code})
    return out


def _message(ids: dict[str, object], first: Json) -> Json:
    alice = ids["alice"]
    att = Attachment(bytes.fromhex(first["id"]), "hello.txt", "text/plain", first["size"])
    env = seal_message(
        alice,
        topic="general",
        content=Content(body="a file", attachments=(att,)),  # type: ignore[arg-type]
        seq=1,
        ts=TS0,
    )
    assert open_envelope(env.wire).content().attachments == (att,)
    signed, _ = cbor2.loads(env.wire)
    return {
        "author": "alice",
        "attachments": [att.to_json()],
        "signed": hx(signed),
        "wire": hx(env.wire),
        "id": hx(env.id),
    }


def build_blobs(ids: dict[str, object]) -> Json:
    content_ids = _ids()
    hello = content_ids[1]
    return {
        "description": "blobs.md: content ids (BLAKE2b-256), blob frames, a message with "
        "attachments, and blob frames to refuse",
        "chunk_size": CHUNK_SIZE,
        "content_ids": content_ids,
        "frames": _frames(hello),
        "message_with_attachments": _message(ids, hello),
        "rejected_frames": _rejected(hello),
    }
