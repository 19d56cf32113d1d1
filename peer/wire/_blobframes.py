"""Blobs on the wire (protocol-spec/blobs.md): content ids, attachments and the
four frames that move chunks between peers.

A blob is cut into chunks of ``CHUNK_SIZE`` bytes (the last one shorter, an
empty blob has none). Each chunk is named by ``BLAKE2b-256(chunk)``; the blob
by its content id, ``BLAKE2b-256("clawmesh/blob/v1" || size as 8 bytes
big-endian || h_0 || ... || h_{n-1})``. The manifest (size and chunk hashes)
is therefore checked against the id, and every chunk against the manifest.

Frames (only to peers that announced the ``blobs`` capability):

* ``blob-want`` ``{r, id, i?, hops, src?}``: send the manifest (no ``i``) or
  chunk ``i`` of blob ``id``; a peer without it may forward it ``hops`` more
  links, towards ``src`` (a peer id known to hold it) when it can;
* ``blob-have`` ``{r, size, h}``: the manifest (``h``: the chunk hashes, concatenated);
* ``blob-chunk`` ``{r, d}``: the chunk's bytes;
* ``blob-none`` ``{r, err}``: not given (``unknown``, ``busy``, ``timeout``).

Same rules as every frame class (``._frametypes``): ``from_map`` validates
every field and refuses any other key. Pure; no I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar

from ._errors import ErrorCode, ProtocolError
from ._fields import Map, fail, need_bytes, need_list, need_text, need_uint, only_keys
from ._framebase import _Frame, _keys
from ._limits import MAX_REQUEST_ID

CHUNK_SIZE = 256 * 1024
HASH_SIZE = 32
MAX_BLOB_CHUNKS = 8192  # 2 GiB: the largest blob the protocol can name (manifest < 1 frame)
MAX_BLOB_SIZE = MAX_BLOB_CHUNKS * CHUNK_SIZE
MAX_WANT_HOPS = 3  # links a want may travel beyond the first
MAX_ATTACHMENTS = 32
MAX_ATTACHMENT_NAME = 255  # UTF-8 bytes
MAX_MEDIA_TYPE = 127
BLOB_TAG = b"clawmesh/blob/v1"
BLOBS_CAP = "blobs"
NONE_REASONS = frozenset({"unknown", "busy", "timeout", "hops"})


def chunk_hash(data: bytes | bytearray | memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=HASH_SIZE).digest()


def blob_id(size: int, hashes: bytes) -> bytes:
    """The content id of a blob of ``size`` bytes whose chunk hashes are ``hashes``."""
    return hashlib.blake2b(
        BLOB_TAG + size.to_bytes(8, "big") + hashes, digest_size=HASH_SIZE
    ).digest()


def chunk_count(size: int) -> int:
    return (size + CHUNK_SIZE - 1) // CHUNK_SIZE


def chunk_length(size: int, index: int) -> int:
    """The length chunk ``index`` of a ``size``-byte blob must have."""
    return min(CHUNK_SIZE, size - index * CHUNK_SIZE)


def check_manifest(blob: bytes, size: int, hashes: bytes) -> None:
    """ProtocolError unless ``size`` and ``hashes`` are the manifest of ``blob``."""
    if size > MAX_BLOB_SIZE or len(hashes) != HASH_SIZE * chunk_count(size):
        raise fail("manifest: chunk hashes do not match the size")
    if blob_id(size, hashes) != blob:
        raise ProtocolError(ErrorCode.MALFORMED, "manifest does not hash to the blob id")


@dataclass(frozen=True, slots=True)
class Attachment:
    """A blob a message refers to: its content id, file name, media type and size."""

    id: bytes
    name: str
    type: str
    size: int

    def to_map(self) -> Map:
        return {"id": self.id, "name": self.name, "type": self.type, "size": self.size}

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id.hex(), "name": self.name, "type": self.type, "size": self.size}


def check_attachments(m: Map) -> tuple[Attachment, ...]:
    """The ``attachments`` of a message's content map (absent: none)."""
    if "attachments" not in m:
        return ()
    items = need_list(m, "attachments", MAX_ATTACHMENTS)
    if not items:
        raise fail("attachments, when present, lists at least one")
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise fail("an attachment is a map")
        only_keys(item, frozenset({"id", "name", "type", "size"}))
        out.append(
            Attachment(
                need_bytes(item, "id", HASH_SIZE),
                need_text(item, "name", MAX_ATTACHMENT_NAME),
                need_text(item, "type", MAX_MEDIA_TYPE),
                need_uint(item, "size", MAX_BLOB_SIZE),
            )
        )
    return tuple(out)


# -- frames ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlobWant(_Frame):
    """Ask for a blob's manifest (``index`` None) or one chunk."""

    TYPE: ClassVar[str] = "blob-want"
    KEYS: ClassVar[frozenset[str]] = _keys("r", "id", "i", "hops", "src")

    r: int
    blob: bytes
    index: int | None = None
    hops: int = 0
    src: bytes | None = None

    @classmethod
    def from_map(cls, m: Map) -> BlobWant:
        only_keys(m, cls.KEYS)
        index = need_uint(m, "i", MAX_BLOB_CHUNKS - 1) if "i" in m else None
        src = need_bytes(m, "src", HASH_SIZE) if "src" in m else None
        return cls(
            need_uint(m, "r", MAX_REQUEST_ID),
            need_bytes(m, "id", HASH_SIZE),
            index,
            need_uint(m, "hops", MAX_WANT_HOPS),
            src,
        )

    def to_map(self) -> Map:
        out: Map = {"t": self.TYPE, "r": self.r, "id": self.blob, "hops": self.hops}
        if self.index is not None:
            out["i"] = self.index
        if self.src is not None:
            out["src"] = self.src
        return out


@dataclass(frozen=True, slots=True)
class BlobHave(_Frame):
    """The manifest: the blob's size and its chunk hashes, concatenated."""

    TYPE: ClassVar[str] = "blob-have"
    KEYS: ClassVar[frozenset[str]] = _keys("r", "size", "h")

    r: int
    size: int
    hashes: bytes

    @classmethod
    def from_map(cls, m: Map) -> BlobHave:
        only_keys(m, cls.KEYS)
        size = need_uint(m, "size", MAX_BLOB_SIZE)
        hashes = need_bytes(m, "h", max_size=MAX_BLOB_CHUNKS * HASH_SIZE)
        if len(hashes) != HASH_SIZE * chunk_count(size):
            raise fail("blob-have: one 32-byte hash per chunk of the size")
        return cls(need_uint(m, "r", MAX_REQUEST_ID), size, hashes)

    def to_map(self) -> Map:
        return {"t": self.TYPE, "r": self.r, "size": self.size, "h": self.hashes}


@dataclass(frozen=True, slots=True)
class BlobChunk(_Frame):
    """One chunk's bytes, answering the want with the same ``r``."""

    TYPE: ClassVar[str] = "blob-chunk"
    KEYS: ClassVar[frozenset[str]] = _keys("r", "d")

    r: int
    data: bytes

    @classmethod
    def from_map(cls, m: Map) -> BlobChunk:
        only_keys(m, cls.KEYS)
        data = need_bytes(m, "d", max_size=CHUNK_SIZE)
        if not data:
            raise fail("blob-chunk: a chunk is never empty")
        return cls(need_uint(m, "r", MAX_REQUEST_ID), data)

    def to_map(self) -> Map:
        return {"t": self.TYPE, "r": self.r, "d": self.data}


@dataclass(frozen=True, slots=True)
class BlobNone(_Frame):
    """The want with the same ``r`` is not answered, and why."""

    TYPE: ClassVar[str] = "blob-none"
    KEYS: ClassVar[frozenset[str]] = _keys("r", "err")

    r: int
    err: str

    @classmethod
    def from_map(cls, m: Map) -> BlobNone:
        only_keys(m, cls.KEYS)
        return cls(need_uint(m, "r", MAX_REQUEST_ID), need_text(m, "err", 32))

    def to_map(self) -> Map:
        return {"t": self.TYPE, "r": self.r, "err": self.err}


BlobAnswer = BlobHave | BlobChunk | BlobNone
