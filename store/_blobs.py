"""The blob store: chunk files named by their hash, and an LMDB environment beside
them for manifests and resumable uploads (protocol-spec/blobs.md).

Layout under its directory (``<data>/blobs``): ``chunks/<2 hex>/<64 hex>`` hold
one chunk each; ``meta/`` is an LMDB environment with two databases,
``blob`` (content id -> CBOR ``{size, h, type, name}``) and ``upload``
(upload id -> CBOR ``{h, tail, size?, type, name, created}``).

Rules kept here:

* Synchronous; every LMDB transaction begins and ends inside one method.
  The Trio shell calls writes from a worker thread (fsync must not stall the
  event loop); reads are cheap and may run anywhere.
* Chunk bytes live in files, not in the LMDB map: reading a 1 GiB blob through
  an mmap would count every page in the peer's resident memory; a file read
  goes through the page cache and leaves the process small.
* A chunk file is written to a temporary name and renamed, so a chunk is
  whole or absent; every read checks its hash (a damaged file is removed
  and reads as absent, to be fetched again).
* ``quota`` bounds the bytes of all chunk files: a new chunk past it raises
  :class:`BlobQuotaFull` and writes nothing. A chunk already held costs nothing.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import lmdb

from peer.wire._blobframes import CHUNK_SIZE, HASH_SIZE, chunk_count, chunk_hash

from ._env import private_dir
from ._errors import StoreError

META_MAP_SIZE = 1 << 30  # manifests and upload states (sparse: only what is used takes disk)


class BlobQuotaFull(StoreError):
    """A chunk would take the blob store past its quota."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """A whole blob's description: size, chunk hashes, and what it was called."""

    id: bytes
    size: int
    hashes: bytes
    type: str = "application/octet-stream"
    name: str = ""

    @property
    def chunks(self) -> int:
        return chunk_count(self.size)

    def hash_of(self, index: int) -> bytes:
        return self.hashes[index * HASH_SIZE : (index + 1) * HASH_SIZE]


@dataclass(slots=True)
class UploadState:
    """A resumable upload: chunk hashes taken so far and the bytes after the last chunk."""

    hashes: bytes
    tail: bytes
    size: int | None  # the total announced, if any
    type: str
    name: str
    created: float

    @property
    def offset(self) -> int:
        return len(self.hashes) // HASH_SIZE * CHUNK_SIZE + len(self.tail)

    def to_record(self) -> bytes:
        return cbor2.dumps(
            {
                "h": self.hashes,
                "tail": self.tail,
                "size": self.size,
                "type": self.type,
                "name": self.name,
                "created": self.created,
            }
        )

    @classmethod
    def from_record(cls, raw: bytes) -> UploadState:
        m: dict[str, Any] = cbor2.loads(raw)
        return cls(m["h"], m["tail"], m["size"], m["type"], m["name"], m["created"])


class BlobStore:
    """Chunks, manifests and uploads of one peer; see the module header."""

    def __init__(self, path: str | Path, quota: int) -> None:
        self.path = Path(path)
        self.quota = quota
        private_dir(self.path)
        self._chunks = self.path / "chunks"
        private_dir(self._chunks)
        try:
            self._env = lmdb.open(
                str(self.path / "meta"), map_size=META_MAP_SIZE, max_dbs=4, subdir=True
            )
            self._blob = self._env.open_db(b"blob")
            self._upload = self._env.open_db(b"upload")
        except lmdb.Error as exc:
            raise StoreError(f"blob store at {self.path}: {exc}") from exc
        self._lock = threading.Lock()  # guards ``used`` and chunk creation
        self.used = self._scan()

    def close(self) -> None:
        self._env.close()

    def _scan(self) -> int:
        used = 0
        for sub in self._chunks.iterdir():
            if sub.is_dir():
                for entry in os.scandir(sub):
                    if entry.name.endswith(".tmp"):
                        os.unlink(entry.path)  # a write cut short by a crash
                    else:
                        used += entry.stat().st_size
        return used

    def _file(self, digest: bytes) -> Path:
        name = digest.hex()
        return self._chunks / name[:2] / name

    # -- chunks -----------------------------------------------------------------------

    def has_chunk(self, digest: bytes) -> bool:
        return self._file(digest).exists()

    def read_chunk(self, digest: bytes) -> bytes | None:
        """The chunk named ``digest``, checked; None if absent or damaged (then removed)."""
        path = self._file(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if chunk_hash(data) != digest:
            self._remove(path)
            return None
        return data

    def _remove(self, path: Path) -> None:
        with self._lock, contextlib.suppress(FileNotFoundError):
            size = path.stat().st_size
            path.unlink()
            self.used -= size

    def write_chunk(self, data: bytes, *, sync: bool = True, digest: bytes | None = None) -> bytes:
        """Store a chunk (once: a held one is not written again); its hash.
        ``sync``: on disk before this returns. BlobQuotaFull past the quota."""
        digest = chunk_hash(data) if digest is None else digest
        path = self._file(digest)
        if path.exists():
            return digest
        with self._lock:
            if self.used + len(data) > self.quota:
                raise BlobQuotaFull(
                    f"blob store quota of {self.quota >> 20} MiB is used up ({self.used} bytes)"
                )
            self.used += len(data)
        try:
            path.parent.mkdir(exist_ok=True, mode=0o700)
            tmp = path.with_name(f"{path.name}.{threading.get_ident()}.tmp")
            with open(tmp, "wb") as f:
                f.write(data)
                if sync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            with self._lock:
                self.used -= len(data)
            raise StoreError(f"chunk not written: {exc}") from exc
        return digest

    def have(self, manifest: Manifest) -> int:
        """How many of ``manifest``'s chunks are here."""
        return sum(1 for i in range(manifest.chunks) if self._file(manifest.hash_of(i)).exists())

    # -- manifests ----------------------------------------------------------------------

    def manifest(self, blob: bytes) -> Manifest | None:
        with self._env.begin(db=self._blob) as txn:
            raw = txn.get(blob)
        if raw is None:
            return None
        m = cbor2.loads(raw)
        return Manifest(blob, m["size"], m["h"], m["type"], m["name"])

    def put_manifest(self, manifest: Manifest) -> None:
        """Record a manifest (the first type and name given win)."""
        record = cbor2.dumps(
            {
                "size": manifest.size,
                "h": manifest.hashes,
                "type": manifest.type,
                "name": manifest.name,
            }
        )
        self._write(lambda txn: txn.put(manifest.id, record, db=self._blob, overwrite=False))

    def _write(self, op: Any) -> Any:
        try:
            with self._env.begin(write=True) as txn:
                return op(txn)
        except lmdb.MapFullError as exc:
            raise BlobQuotaFull(f"blob metadata full: {exc}") from exc
        except lmdb.Error as exc:
            raise StoreError(f"blob metadata: {exc}") from exc

    # -- uploads ------------------------------------------------------------------------

    def upload(self, uid: bytes) -> UploadState | None:
        with self._env.begin(db=self._upload) as txn:
            raw = txn.get(uid)
        return None if raw is None else UploadState.from_record(raw)

    def put_upload(self, uid: bytes, state: UploadState) -> None:
        record = state.to_record()
        self._write(lambda txn: txn.put(uid, record, db=self._upload))

    def drop_upload(self, uid: bytes) -> bool:
        return bool(self._write(lambda txn: txn.delete(uid, db=self._upload)))

    def uploads(self) -> int:
        with self._env.begin(db=self._upload) as txn:
            return int(txn.stat(self._upload)["entries"])

    def finish_upload(self, uid: bytes, manifest: Manifest) -> None:
        """The upload becomes its blob: manifest stored and upload dropped in one commit."""
        record = cbor2.dumps(
            {
                "size": manifest.size,
                "h": manifest.hashes,
                "type": manifest.type,
                "name": manifest.name,
            }
        )

        def op(txn: Any) -> None:
            txn.put(manifest.id, record, db=self._blob, overwrite=False)
            txn.delete(uid, db=self._upload)

        self._write(op)

    def delete(self, blob: bytes) -> bool:
        """Forget a blob's manifest (its chunks go at the next :meth:`collect`)."""
        return bool(self._write(lambda txn: txn.delete(blob, db=self._blob)))

    def expire_uploads(self, before: float) -> int:
        """Drop the resumable uploads opened before ``before`` (wall time); how many."""

        def op(txn: Any) -> int:
            old = [
                uid for uid, raw in txn.cursor(db=self._upload)
                if UploadState.from_record(raw).created < before
            ]
            for uid in old:
                txn.delete(uid, db=self._upload)
            return len(old)

        return int(self._write(op))

    def collect(self, now: float, grace: float = 3600.0) -> tuple[int, int]:
        """Remove chunk files no manifest or upload names, written over ``grace``
        seconds before ``now`` (wall time: younger ones may belong to an upload that
        has not saved its state yet); ``(files, bytes)`` removed."""
        with self._env.begin() as txn:
            named = {
                bytes(raw[i : i + HASH_SIZE])
                for db, field in ((self._blob, "h"), (self._upload, "h"))
                for _, rec in txn.cursor(db=db)
                for raw in (cbor2.loads(rec)[field],)
                for i in range(0, len(raw), HASH_SIZE)
            }
        files = freed = 0
        for sub in self._chunks.iterdir():
            for entry in os.scandir(sub) if sub.is_dir() else ():
                info = entry.stat()
                if entry.name.endswith(".tmp") or info.st_mtime > now - grace:
                    continue
                if bytes.fromhex(entry.name) not in named:
                    self._remove(Path(entry.path))
                    files, freed = files + 1, freed + info.st_size
        return files, freed

    def statistics(self) -> dict[str, Any]:
        with self._env.begin() as txn:
            blobs = txn.stat(self._blob)["entries"]
            uploads = txn.stat(self._upload)["entries"]
        return {"blobs": blobs, "uploads": uploads, "bytes": self.used, "quota": self.quota}
