"""The blob endpoints of the local API: uploads (one request, or resumable in
pieces) and downloads with ranges (README "Attachments"; protocol-spec/blobs.md).

* ``POST /blobs``: the request body is the file, streamed into chunks (never
  held whole); ``Content-Type`` is its media type, ``X-Blob-Name`` its name.
* ``POST /blobs/uploads`` opens a resumable upload (``X-Blob-Size`` may
  announce the total); ``PUT /blobs/uploads/<uid>`` with ``Content-Range:
  bytes START-END/TOTAL`` (or ``/*``; ``bytes */TOTAL`` only finishes) adds
  bytes; ``GET`` of it tells the offset to resume from; the PUT that reaches
  TOTAL answers the blob. A PUT cut short keeps what arrived.
* ``GET``/``HEAD /blobs/<id>`` stream the blob with ``Range`` support,
  fetching missing chunks from the mesh; ``GET /blobs/<id>/status`` counts
  the chunks held.

Everything refused is an ``ApiError`` (JSON): 413 ``too-large`` past
``blob_max_bytes``, 507 ``insufficient-storage`` past the disk quota.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import trio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from peer.node._blobhost import BlobHost, BlobUnavailable
from peer.node._node import Peer
from peer.wire._blobframes import (
    CHUNK_SIZE,
    HASH_SIZE,
    MAX_ATTACHMENT_NAME,
    MAX_MEDIA_TYPE,
    blob_id,
    chunk_count,
)
from store import StoreError
from store._blobs import BlobQuotaFull, BlobStore, Manifest, UploadState

from ._values import ApiError, digits

Handler = Callable[[Request], Awaitable[Response]]

MAX_UPLOADS = 8  # uploads receiving at once
PIECE_TIMEOUT = 30.0  # seconds an upload may send nothing before it is cut
COMMIT_EVERY = 16  # chunks between two saves of a resumable upload's state
COLLECT_GRACE = 600.0  # seconds a chunk nothing names is kept (an upload may be writing it)
# (at most 19 digits: a byte count, never a number int() would choke on)
_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")
_CONTENT_RANGE = re.compile(r"bytes (?:(\d{1,19})-(\d{1,19})|\*)/(\d{1,19}|\*)")
# type/subtype, then parameters in printable ASCII (nothing that breaks a header)
_TOKEN = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(?:[ \t]*;[\x20-\x7e]*)?")
# shown inline by a browser; anything else is offered as a download
_INLINE = ("image/png", "image/jpeg", "image/gif", "image/webp", "audio/", "video/", "text/plain")


def _count(raw: str) -> bool:
    """A byte count in a header: ASCII digits, at most 19 of them."""
    return len(raw) <= 19 and digits(raw)


def _media_type(request: Request) -> str:
    raw = request.headers.get("content-type", "").strip() or "application/octet-stream"
    if len(raw) > MAX_MEDIA_TYPE or not _TOKEN.fullmatch(raw):
        raise ApiError(400, "invalid", "Content-Type must be a media type (type/subtype)")
    return raw


def _safe_type(kind: str) -> str:
    """A media type from the network, fit for a header (else application/octet-stream)."""
    ok = len(kind) <= MAX_MEDIA_TYPE and _TOKEN.fullmatch(kind) is not None
    return kind if ok else "application/octet-stream"


def _blob_name(request: Request) -> str:
    name = request.headers.get("x-blob-name", "")
    try:
        name = name.encode("latin-1").decode("utf-8")  # HTTP headers arrive as latin-1
    except (UnicodeEncodeError, UnicodeDecodeError):
        raise ApiError(400, "invalid", "X-Blob-Name must be UTF-8") from None
    name = os.path.basename(name.replace("\\", "/"))
    if len(name.encode()) > MAX_ATTACHMENT_NAME or any(ord(c) < 32 for c in name):
        raise ApiError(
            400,
            "invalid",
            f"X-Blob-Name: at most {MAX_ATTACHMENT_NAME} bytes, no control characters",
        )
    return name


def _parse_id(raw: str, what: str = "blob id") -> bytes:
    if len(raw) != 2 * HASH_SIZE or not all(c in "0123456789abcdef" for c in raw):
        raise ApiError(400, "invalid", f"a {what} is {2 * HASH_SIZE} lowercase hex digits")
    return bytes.fromhex(raw)


def blob_json(manifest: Manifest) -> dict[str, Any]:
    return {
        "id": manifest.id.hex(),
        "size": manifest.size,
        "type": manifest.type,
        "name": manifest.name,
        "chunks": manifest.chunks,
    }


class BlobApi:
    """The blob handlers around one peer's ``BlobHost``."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.host: BlobHost = peer.blobs
        self._receiving = 0
        self._busy_uploads: set[bytes] = set()

    @property
    def max_bytes(self) -> int:
        return self.peer.options.blob_max_bytes

    def handlers(self) -> dict[str, Handler]:
        return {
            "/blobs": self.upload,
            "/blobs/uploads": self.open_upload,
            "/blobs/uploads/{uid}": self.resumable,
            "/blobs/{id}": self.blob,
            "/blobs/{id}/status": self.status,
        }

    def _store(self) -> BlobStore:
        if self.host.store is None:
            raise ApiError(400, "no-store", "this peer runs without a store: it keeps no blobs")
        return self.host.store

    def _too_large(self, size: int) -> None:
        if size > self.max_bytes:
            raise ApiError(
                413, "too-large", f"blob of {size} bytes over this peer's limit of {self.max_bytes}"
            )

    # -- uploads --------------------------------------------------------------------------

    async def upload(self, request: Request) -> Response:
        """``POST /blobs``: the whole file in one request."""
        store = self._store()
        kind, name = _media_type(request), _blob_name(request)
        length = request.headers.get("content-length")
        if length is not None and _count(length):
            self._too_large(int(length))
        state = UploadState(b"", b"", None, kind, name, self.peer.wall_time())
        async with self._receiving_slot():
            try:
                await self._take(request, store, state, None)
            except ClientDisconnect:
                raise ApiError(
                    400, "incomplete", "the upload was cut short; nothing kept"
                ) from None
            manifest = await self._finish(store, state, None)
        return JSONResponse(blob_json(manifest), status_code=201)

    @contextlib.asynccontextmanager
    async def _receiving_slot(self) -> AsyncIterator[None]:
        if self._receiving >= MAX_UPLOADS:
            raise ApiError(503, "busy", f"{MAX_UPLOADS} uploads are under way; retry shortly")
        self._receiving += 1
        try:
            yield
        finally:
            self._receiving -= 1

    async def _pieces(self, request: Request) -> AsyncGenerator[bytes, None]:
        async with contextlib.aclosing(request.stream()) as stream:
            while True:
                with trio.move_on_after(PIECE_TIMEOUT) as idle:
                    try:
                        piece = await anext(stream)
                    except StopAsyncIteration:
                        return
                if idle.cancelled_caught:
                    raise ClientDisconnect()
                if piece:
                    yield piece

    async def _take(
        self, request: Request, store: BlobStore, state: UploadState, uid: bytes | None
    ) -> None:
        """Read the request body into chunks after ``state`` (which it updates); a
        resumable upload's state is saved every ``COMMIT_EVERY`` chunks and at the end,
        also when the client goes away."""
        tail, hashes = bytearray(state.tail), bytearray(state.hashes)
        limit = self.max_bytes if state.size is None else min(state.size, self.max_bytes)
        received, unsaved = state.offset, 0
        try:
            async with contextlib.aclosing(self._pieces(request)) as pieces:
                async for piece in pieces:
                    received += len(piece)
                    if received > limit:
                        self._too_large(received)
                        raise ApiError(
                            400, "invalid", f"more bytes than the size {limit} announced"
                        )
                    tail += piece
                    while len(tail) >= CHUNK_SIZE:
                        chunk = bytes(tail[:CHUNK_SIZE])
                        del tail[:CHUNK_SIZE]
                        hashes += await self._write(store, chunk)
                        unsaved += 1
                        if uid is not None and unsaved >= COMMIT_EVERY:
                            state.hashes, state.tail, unsaved = bytes(hashes), bytes(tail), 0
                            await trio.to_thread.run_sync(store.put_upload, uid, state)
        finally:
            state.hashes, state.tail = bytes(hashes), bytes(tail)
            if uid is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(store.put_upload, uid, state)

    async def _write(self, store: BlobStore, chunk: bytes) -> bytes:
        try:
            return await trio.to_thread.run_sync(store.write_chunk, chunk)
        except BlobQuotaFull as exc:
            raise ApiError(507, "insufficient-storage", str(exc)) from None
        except StoreError as exc:
            raise ApiError(507, "insufficient-storage", f"not stored: {exc}") from None

    async def _finish(self, store: BlobStore, state: UploadState, uid: bytes | None) -> Manifest:
        hashes = state.hashes
        if state.tail:
            hashes += await self._write(store, state.tail)
        size = state.offset
        manifest = Manifest(blob_id(size, hashes), size, hashes, state.type, state.name)
        try:
            if uid is None:
                await trio.to_thread.run_sync(store.put_manifest, manifest)
            else:
                await trio.to_thread.run_sync(store.finish_upload, uid, manifest)
        except StoreError as exc:
            raise ApiError(507, "insufficient-storage", str(exc)) from None
        return store.manifest(manifest.id) or manifest

    async def open_upload(self, request: Request) -> Response:
        """``POST /blobs/uploads``: a resumable upload's id."""
        store = self._store()
        kind, name = _media_type(request), _blob_name(request)
        size = None
        raw = request.headers.get("x-blob-size")
        if raw is not None:
            if not _count(raw):
                raise ApiError(400, "invalid", "X-Blob-Size must be a byte count")
            size = int(raw)
            self._too_large(size)
        uid = os.urandom(16)
        state = UploadState(b"", b"", size, kind, name, self.peer.wall_time())
        await trio.to_thread.run_sync(store.put_upload, uid, state)
        return JSONResponse(self._upload_json(uid, state), status_code=201)

    def _upload_json(self, uid: bytes, state: UploadState) -> dict[str, Any]:
        return {
            "upload": uid.hex(),
            "url": f"/blobs/uploads/{uid.hex()}",
            "offset": state.offset,
            "size": state.size,
            "type": state.type,
            "name": state.name,
            "complete": False,
        }

    def _upload(self, request: Request) -> tuple[bytes, UploadState]:
        raw = request.path_params["uid"]
        if len(raw) != 32 or not all(c in "0123456789abcdef" for c in raw):
            raise ApiError(404, "unknown-upload", "no upload with that id")
        uid = bytes.fromhex(raw)
        state = self._store().upload(uid)
        if state is None:
            raise ApiError(
                404, "unknown-upload", "no upload with that id (finished, deleted or never opened)"
            )
        return uid, state

    async def resumable(self, request: Request) -> Response:
        """``GET``, ``PUT`` and ``DELETE /blobs/uploads/<uid>``."""
        uid, state = self._upload(request)
        if request.method == "GET":
            return JSONResponse(self._upload_json(uid, state))
        if request.method == "DELETE":
            await trio.to_thread.run_sync(self._store().drop_upload, uid)
            return JSONResponse({"upload": uid.hex(), "deleted": True})
        if uid in self._busy_uploads:
            raise ApiError(409, "busy", "another request is adding to this upload")
        self._busy_uploads.add(uid)
        try:
            return await self._put(request, uid, state)
        finally:
            self._busy_uploads.discard(uid)

    async def _put(self, request: Request, uid: bytes, state: UploadState) -> Response:
        start, total = self._content_range(request, state)
        if start is not None and start != state.offset:
            raise ApiError(
                409,
                "offset-mismatch",
                f"this upload is at offset {state.offset}: send from there (GET it to ask)",
            )
        if total is not None:
            if state.size is not None and total != state.size:
                raise ApiError(400, "invalid", f"the total was announced as {state.size}")
            self._too_large(total)
            if total < state.offset:
                raise ApiError(400, "invalid", f"already {state.offset} bytes, over {total}")
            state.size = total
        store = self._store()
        async with self._receiving_slot():
            if start is not None:
                with contextlib.suppress(ClientDisconnect):  # what arrived is kept
                    await self._take(request, store, state, uid)
        if state.size is not None and state.offset == state.size:
            manifest = await self._finish(store, state, uid)
            return JSONResponse({**blob_json(manifest), "complete": True}, status_code=201)
        return JSONResponse(self._upload_json(uid, state))

    def _content_range(self, request: Request, state: UploadState) -> tuple[int | None, int | None]:
        raw = request.headers.get("content-range")
        if raw is None:
            raise ApiError(400, "invalid", "PUT wants Content-Range: bytes START-END/TOTAL (or /*)")
        match = _CONTENT_RANGE.fullmatch(raw.strip())
        if match is None:
            raise ApiError(
                400, "invalid", f"Content-Range {raw!r:.60} is not bytes START-END/TOTAL"
            )
        first, last, total = match.groups()
        total_n = None if total == "*" else int(total)
        if first is None:
            return None, total_n  # "bytes */TOTAL": no data, finish if complete
        if int(last) < int(first):
            raise ApiError(400, "invalid", "Content-Range ends before it starts")
        return int(first), total_n

    # -- downloads ------------------------------------------------------------------------

    async def _manifest(self, request: Request) -> Manifest:
        blob = _parse_id(request.path_params["id"])
        self._store()
        try:
            return await self.host.manifest(blob)
        except BlobUnavailable as exc:
            raise ApiError(
                404, "unknown-blob", f"blob not here, and no peer asked has it: {exc}"
            ) from None
        except BlobQuotaFull as exc:
            raise ApiError(507, "insufficient-storage", str(exc)) from None

    async def status(self, request: Request) -> Response:
        """``GET /blobs/<id>/status``: chunks held of the total (no fetching)."""
        blob = _parse_id(request.path_params["id"])
        store = self._store()
        manifest = store.manifest(blob)
        if manifest is not None:
            have = await trio.to_thread.run_sync(store.have, manifest)
            return JSONResponse(
                {**blob_json(manifest), "have": have, "complete": have == manifest.chunks}
            )
        known = self.host.find_attachment(blob)
        if known is None:
            raise ApiError(404, "unknown-blob", "no such blob here, nor in any message we hold")
        att = known[0]
        return JSONResponse(
            {**att.to_json(), "chunks": chunk_count(att.size), "have": 0, "complete": False}
        )

    async def blob(self, request: Request) -> Response:
        """``GET``/``HEAD`` (:meth:`download`) and ``DELETE /blobs/<id>``."""
        if request.method != "DELETE":
            return await self.download(request)
        blob = _parse_id(request.path_params["id"])
        store = self._store()
        if not await trio.to_thread.run_sync(store.delete, blob):
            raise ApiError(404, "unknown-blob", "no such blob here")
        files, freed = await trio.to_thread.run_sync(
            partial(store.collect, self.peer.wall_time(), grace=COLLECT_GRACE)
        )
        return JSONResponse({"id": blob.hex(), "deleted": True, "chunks_freed": files,
                             "bytes_freed": freed})

    async def download(self, request: Request) -> Response:
        """``GET``/``HEAD /blobs/<id>``: the bytes, whole or the ``Range`` asked."""
        manifest = await self._manifest(request)
        size = manifest.size
        headers = {
            "accept-ranges": "bytes",
            "etag": f'"{manifest.id.hex()}"',
            "cache-control": "private, max-age=31536000, immutable",
            "x-content-type-options": "nosniff",
            "content-security-policy": "sandbox; default-src 'none'",
        }
        kind = _safe_type(manifest.type)
        inline = kind.startswith(_INLINE)
        disposition = "inline" if inline else "attachment"
        if manifest.name:
            from urllib.parse import quote

            disposition += f"; filename*=UTF-8''{quote(manifest.name)}"
        headers["content-disposition"] = disposition
        start, end, status = 0, size - 1, 200
        raw = request.headers.get("range")
        if raw is not None and size > 0:
            start, end = _byte_range(raw, size)
            status = 206
            headers["content-range"] = f"bytes {start}-{end}/{size}"
        headers["content-length"] = str(end - start + 1 if size else 0)
        if request.method == "HEAD" or size == 0:
            return Response(b"", status_code=status, headers=headers, media_type=kind)
        body = partial(self._body, manifest, start, end)
        return StreamingResponse(
            body(), status_code=status, headers=headers, media_type=kind
        )

    async def _body(self, manifest: Manifest, start: int, end: int) -> AsyncGenerator[bytes, None]:
        first, last = start // CHUNK_SIZE, end // CHUNK_SIZE
        index = first
        try:
            async with contextlib.aclosing(self.host.chunks(manifest, first, last)) as chunks:
                async for data in chunks:
                    lo = start - index * CHUNK_SIZE if index == first else 0
                    hi = end - index * CHUNK_SIZE + 1 if index == last else len(data)
                    yield data[lo:hi]
                    index += 1
        except (BlobUnavailable, StoreError) as exc:
            # the status line is sent: the short body tells the client, which resumes
            self.peer.log.warning("blob download cut", blob=manifest.id.hex()[:16], reason=str(exc))


def _byte_range(raw: str, size: int) -> tuple[int, int]:
    """The first and last byte of a ``Range: bytes=A-B`` (one range) within ``size``."""
    match = _RANGE.fullmatch(raw.strip())
    if match is None or match.groups() == ("", ""):
        raise ApiError(416, "range", f"Range {raw!r:.60}: one bytes=START-END range only")
    first, last = match.groups()
    if first == "":
        start, end = max(0, size - int(last)), size - 1
    else:
        start = int(first)
        end = size - 1 if last == "" else min(int(last), size - 1)
    if start >= size or end < start:
        raise ApiError(416, "range", f"Range {raw!r:.60} is outside the blob of {size} bytes")
    return start, end
