"""store._blobs: chunk files checked on every read, the quota, manifests, upload
states, expiry of abandoned uploads and collection of chunks nothing names."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from peer.wire._blobframes import CHUNK_SIZE, blob_id, chunk_hash
from store._blobs import BlobQuotaFull, BlobStore, Manifest, UploadState


def _age(store: BlobStore, seconds: float) -> None:
    for sub in (store.path / "chunks").iterdir():
        for f in sub.iterdir():
            os.utime(f, (time.time() - seconds, time.time() - seconds))


def test_chunks_are_checked_on_read_and_counted_once(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "b", quota=3 * CHUNK_SIZE)
    data = b"x" * CHUNK_SIZE
    digest = store.write_chunk(data)
    assert store.write_chunk(data) == digest and store.used == CHUNK_SIZE  # held once
    assert store.read_chunk(digest) == data
    path = store.path / "chunks" / digest.hex()[:2] / digest.hex()
    path.write_bytes(b"y" * CHUNK_SIZE)  # damaged on disk
    assert store.read_chunk(digest) is None and not path.exists() and store.used == 0
    for i in range(3):
        store.write_chunk(bytes([i]) * CHUNK_SIZE)
    with pytest.raises(BlobQuotaFull):
        store.write_chunk(b"z" * 10)
    assert store.used == 3 * CHUNK_SIZE
    store.close()
    again = BlobStore(tmp_path / "b", quota=3 * CHUNK_SIZE)  # the count survives a reopen
    assert again.used == 3 * CHUNK_SIZE


def test_expired_uploads_and_unnamed_chunks_are_collected(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "b", quota=10 * CHUNK_SIZE)
    kept = store.write_chunk(b"k" * 100)
    shared = store.write_chunk(b"s" * CHUNK_SIZE)
    orphan = store.write_chunk(b"o" * 100)
    in_upload = store.write_chunk(b"u" * CHUNK_SIZE)
    hashes = shared + kept
    one = Manifest(blob_id(CHUNK_SIZE + 100, hashes), CHUNK_SIZE + 100, hashes)
    store.put_manifest(one)
    other = Manifest(blob_id(CHUNK_SIZE, shared), CHUNK_SIZE, shared)
    store.put_manifest(other)
    store.put_upload(b"u" * 16, UploadState(in_upload, b"", None, "t", "n", time.time()))
    store.put_upload(b"o" * 16, UploadState(b"", b"", None, "t", "n", time.time() - 8 * 86400))
    assert store.collect(time.time()) == (0, 0)  # all too young to tell
    _age(store, 7200)
    assert store.collect(time.time()) == (1, 100)  # the orphan alone
    assert not store.has_chunk(orphan) and store.has_chunk(in_upload)
    assert store.expire_uploads(time.time() - 7 * 86400) == 1
    assert store.upload(b"o" * 16) is None and store.upload(b"u" * 16) is not None
    assert store.delete(one.id) and not store.delete(one.id)
    assert store.collect(time.time()) == (1, 100)  # "kept" was only in the deleted blob
    assert store.has_chunk(shared) and store.read_chunk(shared) == b"s" * CHUNK_SIZE
    assert chunk_hash(b"s" * CHUNK_SIZE) == shared
    assert store.statistics()["blobs"] == 1
