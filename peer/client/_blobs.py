"""Blob transfers for the clients: resumable uploads and downloads that pick up
where a broken connection left them (README "Attachments").

``upload`` opens a resumable upload (``POST /blobs/uploads``) and sends the
file in pieces of ``PIECE`` bytes (``PUT`` with ``Content-Range``); after a
broken connection it asks the peer for the offset it holds and goes on from
there. ``download`` writes ``<dest>.part`` and, after a break, asks for the
rest with ``Range``; the finished file is checked against its content id
(BLAKE2b-256 over the chunk hashes, protocol-spec/blobs.md) before it is
renamed into place. Both give up after ``retries`` breaks in a row.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import IO, Any

import anyio
import httpx

from . import _calls
from ._errors import ClawmeshError, PeerUnreachable

PIECE = 8 * 1024 * 1024
CHUNK_SIZE = 256 * 1024
BLOB_TAG = b"clawmesh/blob/v1"
ATTACHMENT_KEYS = ("id", "name", "type", "size")
# refusals after a break that mean "ask the offset and go on": the broken request is
# still being wound up, or it kept more (or less) than we thought
_RESUMABLE = frozenset({"busy", "offset-mismatch"})


def attachment(blob: dict[str, Any]) -> dict[str, Any]:
    """What ``send(attachments=...)`` wants from a blob ``upload_blob`` returned."""
    return {k: blob[k] for k in ATTACHMENT_KEYS if k in blob}


class ContentMismatch(ClawmeshError):
    """What was downloaded does not hash to the blob id asked for."""


class _IdHasher:
    """The content id of bytes fed in order (the peer's construction, re-done here)."""

    def __init__(self) -> None:
        self.size = 0
        self._chunk = hashlib.blake2b(digest_size=32)
        self._in_chunk = 0
        self._hashes = bytearray()

    def update(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), CHUNK_SIZE - self._in_chunk)
            self._chunk.update(view[:take])
            self._in_chunk += take
            self.size += take
            view = view[take:]
            if self._in_chunk == CHUNK_SIZE:
                self._end_chunk()

    def _end_chunk(self) -> None:
        self._hashes += self._chunk.digest()
        self._chunk = hashlib.blake2b(digest_size=32)
        self._in_chunk = 0

    def hexdigest(self) -> str:
        if self._in_chunk:
            self._end_chunk()
        joined = BLOB_TAG + self.size.to_bytes(8, "big") + bytes(self._hashes)
        return hashlib.blake2b(joined, digest_size=32).hexdigest()


def _upload_headers(token: str | None, size: int, name: str, kind: str) -> dict[str, str]:
    return _calls.headers(
        token,
        {
            "X-Blob-Size": str(size),
            "X-Blob-Name": name.encode().decode("latin-1"),
            "Content-Type": kind,
        },
    )


def _range(offset: int, size: int, piece: int) -> tuple[int, dict[str, str]]:
    end = min(size, offset + piece)
    if end == offset:
        return end, {"Content-Range": f"bytes */{size}"}
    return end, {"Content-Range": f"bytes {offset}-{end - 1}/{size}"}


def upload(
    http: httpx.Client,
    token: str | None,
    path: str | Path,
    *,
    name: str | None = None,
    kind: str = "application/octet-stream",
    retries: int = 5,
    piece: int = PIECE,
) -> dict[str, Any]:
    """Upload the file at ``path``; the blob's JSON (``id``, ``size``, ...)."""
    path = Path(path)
    size = path.stat().st_size
    opened = _calls.decode(
        http.post("/blobs/uploads", headers=_upload_headers(token, size, name or path.name, kind))
    )
    url, offset, breaks = opened["url"], 0, 0
    with path.open("rb") as f:
        while True:
            end, rng = _range(offset, size, piece)
            f.seek(offset)
            try:
                answer = _calls.decode(
                    http.put(url, content=f.read(end - offset), headers=_calls.headers(token, rng))
                )
            except httpx.TransportError as exc:
                breaks += 1
                if breaks > retries:
                    raise PeerUnreachable(str(http.base_url), type(exc).__name__) from exc
                time.sleep(min(5.0, 0.2 * 2**breaks))
                offset = _offset_sync(http, token, url)
                continue
            breaks = 0
            if answer.get("complete"):
                return dict(answer)
            offset = int(answer["offset"])


def _offset_sync(http: httpx.Client, token: str | None, url: str) -> int:
    for _ in range(50):  # the peer may still be winding the broken request up (409 busy)
        try:
            answer = _calls.decode(http.get(url, headers=_calls.headers(token)))
            return int(answer["offset"])
        except httpx.TransportError:
            time.sleep(0.2)
    raise PeerUnreachable(str(http.base_url), "no answer about the upload's offset")


def download(
    http: httpx.Client,
    token: str | None,
    blob_id: str,
    dest: str | Path,
    *,
    retries: int = 5,
    timeout: float = 60.0,
) -> Path:
    """Download blob ``blob_id`` to ``dest`` (resuming after breaks); checked, then renamed."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    breaks = 0
    with part.open("ab+") as f:
        while True:
            have = f.seek(0, os.SEEK_END)
            extra = {"Range": f"bytes={have}-"} if have else {}
            try:
                if _fetch_sync(http, token, blob_id, f, extra, timeout):
                    break
            except httpx.TransportError as exc:
                breaks += 1
                if breaks > retries:
                    raise PeerUnreachable(str(http.base_url), type(exc).__name__) from exc
                time.sleep(min(5.0, 0.2 * 2**breaks))
        f.seek(0)
        _check(f, blob_id)
    os.replace(part, dest)
    return dest


def _fetch_sync(
    http: httpx.Client,
    token: str | None,
    blob_id: str,
    f: IO[bytes],
    extra: dict[str, str],
    timeout: float,
) -> bool:
    """One GET appended to ``f``; True once the file is whole."""
    with http.stream(
        "GET",
        f"/blobs/{blob_id}",
        headers=_calls.headers(token, extra),
        timeout=httpx.Timeout(timeout),
    ) as r:
        if r.status_code == 416:
            return True  # nothing left: we have it all
        if r.status_code >= 400:
            r.read()
            _calls.decode(r)
        if r.status_code == 200:
            f.truncate(0)  # a whole answer (no range): start over
        for data in r.iter_bytes():
            f.write(data)
        f.flush()
        return _total(r) <= f.tell()


def _total(r: httpx.Response) -> int:
    """The blob's whole size, from a 206's Content-Range or a 200's Content-Length."""
    if r.status_code == 206:
        return int(r.headers.get("content-range", "/0").rsplit("/", 1)[-1])
    return int(r.headers.get("content-length", "0"))


def _check(f: IO[bytes], blob_id: str) -> None:
    hasher = _IdHasher()
    while data := f.read(1 << 20):
        hasher.update(data)
    if hasher.hexdigest() != blob_id:
        raise ContentMismatch(f"the bytes received do not hash to {blob_id}")


async def upload_async(
    http: httpx.AsyncClient,
    token: str | None,
    path: str | Path,
    *,
    name: str | None = None,
    kind: str = "application/octet-stream",
    retries: int = 5,
    piece: int = PIECE,
) -> dict[str, Any]:
    """:func:`upload` for ``AsyncClient``."""
    apath = anyio.Path(path)
    size = (await apath.stat()).st_size
    headers = _upload_headers(token, size, name or apath.name, kind)
    opened = _calls.decode(await http.post("/blobs/uploads", headers=headers))
    url, offset, breaks = opened["url"], 0, 0
    async with await anyio.open_file(path, "rb") as f:
        while True:
            end, rng = _range(offset, size, piece)
            await f.seek(offset)
            content = await f.read(end - offset)
            try:
                answer = _calls.decode(
                    await http.put(url, content=content, headers=_calls.headers(token, rng))
                )
            except httpx.TransportError as exc:
                breaks += 1
                if breaks > retries:
                    raise PeerUnreachable(str(http.base_url), type(exc).__name__) from exc
                await anyio.sleep(min(5.0, 0.2 * 2**breaks))
                answer = _calls.decode(await http.get(url, headers=_calls.headers(token)))
                offset = int(answer["offset"])
                continue
            breaks = 0
            if answer.get("complete"):
                return dict(answer)
            offset = int(answer["offset"])


async def download_async(
    http: httpx.AsyncClient,
    token: str | None,
    blob_id: str,
    dest: str | Path,
    *,
    retries: int = 5,
    read_timeout: float = 60.0,
) -> Path:
    """:func:`download` for ``AsyncClient``."""
    dest = Path(dest)
    part = anyio.Path(dest.with_name(dest.name + ".part"))
    breaks = 0
    while True:
        have = (await part.stat()).st_size if await part.exists() else 0
        extra = {"Range": f"bytes={have}-"} if have else {}
        try:
            async with http.stream(
                "GET",
                f"/blobs/{blob_id}",
                headers=_calls.headers(token, extra),
                timeout=httpx.Timeout(read_timeout),
            ) as r:
                if r.status_code == 416:
                    break
                if r.status_code >= 400:
                    await r.aread()
                    _calls.decode(r)
                whole = r.status_code == 200
                async with await anyio.open_file(part, "wb" if whole else "ab") as f:
                    async for data in r.aiter_bytes():
                        await f.write(data)
                if _total(r) <= (await part.stat()).st_size:
                    break
        except httpx.TransportError as exc:
            breaks += 1
            if breaks > retries:
                raise PeerUnreachable(str(http.base_url), type(exc).__name__) from exc
            await anyio.sleep(min(5.0, 0.2 * 2**breaks))
    with open(part, "rb") as f:  # noqa: ASYNC230 (hashing a local file once)
        _check(f, blob_id)
    await part.rename(dest)
    return dest
