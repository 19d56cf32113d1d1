"""The client's blob transfers against a fake peer (httpx.MockTransport) that breaks
the connection on purpose: the upload goes on from the offset the peer holds, the
download from the bytes it has; a download that does not hash to its id is refused."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from peer.client._blobs import ContentMismatch, _IdHasher, download, upload

DATA = random.Random(9).randbytes(3 * 256 * 1024 + 500)


def _blob_id(data: bytes) -> str:
    hasher = _IdHasher()
    hasher.update(data)
    return hasher.hexdigest()


class FakePeer:
    """Keeps what PUTs bring; the first PUT breaks after storing half its bytes."""

    def __init__(self) -> None:
        self.held = bytearray()
        self.puts = 0
        self.gets = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(201, json={"upload": "u", "url": "/blobs/uploads/u", "offset": 0})
        if request.method == "GET" and request.url.path == "/blobs/uploads/u":
            return httpx.Response(200, json={"offset": len(self.held)})
        if request.method == "PUT":
            self.puts += 1
            match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", request.headers["content-range"])
            assert match is not None and int(match[1]) == len(self.held)
            body = request.read()
            if self.puts == 1:
                self.held += body[: len(body) // 2]
                raise httpx.ReadError("connection reset", request=request)
            self.held += body
            if len(self.held) == int(match[3]):
                return httpx.Response(
                    201, json={"id": _blob_id(bytes(self.held)), "complete": True}
                )
            return httpx.Response(200, json={"offset": len(self.held), "complete": False})
        return self.download(request)

    def download(self, request: httpx.Request) -> httpx.Response:
        self.gets += 1
        start = int(request.headers.get("range", "bytes=0-")[6:-1] or 0)
        if self.gets == 1:  # half, then the connection dies

            def broken() -> Iterator[bytes]:
                yield DATA[: len(DATA) // 2]
                raise httpx.ReadError("connection reset", request=request)

            return httpx.Response(200, headers={"content-length": str(len(DATA))}, content=broken())
        body = DATA[start:]
        return httpx.Response(
            206,
            content=body,
            headers={"content-range": f"bytes {start}-{len(DATA) - 1}/{len(DATA)}"},
        )


def test_an_upload_broken_once_resumes_from_the_peers_offset(tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(DATA)
    peer = FakePeer()
    with httpx.Client(transport=httpx.MockTransport(peer.handle), base_url="http://p") as http:
        blob = upload(http, "tok", src, piece=1024 * 1024)
    assert bytes(peer.held) == DATA and blob["id"] == _blob_id(DATA)
    assert peer.puts == 2


def test_a_download_broken_once_resumes_and_is_checked(tmp_path: Path) -> None:
    peer = FakePeer()
    dest = tmp_path / "out.bin"
    with httpx.Client(transport=httpx.MockTransport(peer.handle), base_url="http://p") as http:
        download(http, "tok", _blob_id(DATA), dest)
        assert dest.read_bytes() == DATA and peer.gets == 2
        assert not (tmp_path / "out.bin.part").exists()
        with pytest.raises(ContentMismatch):
            download(http, "tok", "00" * 32, tmp_path / "wrong.bin")
    assert not (tmp_path / "wrong.bin").exists()
