"""The blob endpoints in process: three peers with stores on memory links, A - R - B
(R relay-only, so B reaches A's blobs only through R), driven through ASGI."""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from peer import Identity, Peer, PeerOptions, memory_link_pair
from peer.api._api import LocalApi
from peer.wire._blobframes import CHUNK_SIZE, BlobChunk, BlobHave, BlobWant

from .test_api import TOKEN

MIB = 1024 * 1024


@dataclass
class Trio3:
    a: Peer
    r: Peer
    b: Peer
    api_a: httpx.AsyncClient
    api_b: httpx.AsyncClient


def _client(peer: Peer) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=LocalApi(peer, TOKEN).app),
        base_url="http://127.0.0.1",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )


def _link(x: Peer, y: Peer) -> None:
    tx, ty = memory_link_pair()
    x.start_link(tx, initiator=True)
    y.start_link(ty, initiator=False)


@pytest.fixture
async def mesh(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Trio3]:
    def opts(name: str, **kw: object) -> PeerOptions:
        return PeerOptions(
            channels=() if kw.get("relay_only") else ("files",),
            store_path=str(tmp_path / name / "store"),
            dht=False,
            blob_max_bytes=3 * MIB,
            blob_quota_bytes=4 * MIB,
            **kw,  # type: ignore[arg-type]
        )

    a = Peer(Identity.generate(), opts("a"))
    r = Peer(Identity.generate(), opts("r", relay_only=True))
    b = Peer(Identity.generate(), opts("b"))
    for p in (a, r, b):
        await nursery.start(p.run)
    _link(a, r)
    _link(b, r)
    with trio.fail_after(10):
        while not (
            len(r.links) == 2 and a.router.reachable("files") and b.router.reachable("files")
        ):
            await r.wait_changed()
    async with _client(a) as api_a, _client(b) as api_b:
        yield Trio3(a, r, b, api_a, api_b)


async def _upload(api: httpx.AsyncClient, data: bytes, **headers: str) -> dict[str, object]:
    r = await api.post("/blobs", content=data, headers={"Content-Type": "image/png", **headers})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def test_upload_then_download_whole_in_ranges_and_by_head(mesh: Trio3) -> None:
    data = random.Random(1).randbytes(CHUNK_SIZE + 1000)
    name = "café ☕ pic.png"
    r = await mesh.api_a.post(
        "/blobs",
        content=data,
        headers={b"Content-Type": b"image/png", b"X-Blob-Name": name.encode()},
    )
    blob = r.json()
    assert blob["size"] == len(data) and blob["chunks"] == 2 and blob["name"] == name
    whole = await mesh.api_a.get(f"/blobs/{blob['id']}")
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["content-type"] == "image/png"
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["x-content-type-options"] == "nosniff"
    assert whole.headers["content-disposition"].startswith("inline")
    assert "caf%C3%A9%20%E2%98%95%20pic.png" in whole.headers["content-disposition"]
    for header, want in (
        ("bytes=0-9", data[:10]),
        ("bytes=-5", data[-5:]),
        (f"bytes={CHUNK_SIZE - 3}-{CHUNK_SIZE + 2}", data[CHUNK_SIZE - 3 : CHUNK_SIZE + 3]),
        ("bytes=1000-", data[1000:]),
        ("bytes=5-999999999", data[5:]),
    ):
        part = await mesh.api_a.get(f"/blobs/{blob['id']}", headers={"Range": header})
        assert part.status_code == 206 and part.content == want, header
    for bad in (
        "bytes=999999999-",
        "bytes=5-2",
        "items=0-1",
        "bytes=0-1,4-5",
        "bytes=" + "9" * 5000 + "-",
    ):
        r = await mesh.api_a.get(f"/blobs/{blob['id']}", headers={"Range": bad})
        assert r.status_code == 416 and r.json()["error"]["code"] == "range", bad
    head = await mesh.api_a.head(f"/blobs/{blob['id']}")
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
    assert head.content == b""
    status = (await mesh.api_a.get(f"/blobs/{blob['id']}/status")).json()
    assert (status["have"], status["chunks"], status["complete"]) == (2, 2, True)
    # the same bytes again: the same id, nothing stored twice
    assert mesh.a.blobs.store is not None
    used = mesh.a.blobs.store.used
    assert (await _upload(mesh.api_a, data))["id"] == blob["id"]
    assert mesh.a.blobs.store.used == used
    # an HTML file is never shown inline from the API's origin
    html = await _upload(mesh.api_a, b"<script>alert(1)</script>", **{"Content-Type": "text/html"})
    shown = await mesh.api_a.get(f"/blobs/{html['id']}")
    assert shown.headers["content-disposition"].startswith("attachment")
    assert "sandbox" in shown.headers["content-security-policy"]


async def test_b_fetches_through_the_relay_what_a_message_from_a_refers_to(mesh: Trio3) -> None:
    data = random.Random(2).randbytes(3 * CHUNK_SIZE + 7)
    blob = await _upload(mesh.api_a, data, **{"X-Blob-Name": "three.bin"})
    att = {k: blob[k] for k in ("id", "name", "type", "size")}
    sent = await mesh.api_a.post(
        "/send", json={"channel": "files", "body": "see", "attachments": [att]}
    )
    assert sent.status_code == 200, sent.text
    got = (await mesh.api_b.get("/messages", params={"channel": "files", "wait": 10})).json()
    assert got[0]["attachments"] == [att]
    before = (await mesh.api_b.get(f"/blobs/{blob['id']}/status")).json()
    assert before["have"] == 0 and before["chunks"] == 4 and before["complete"] is False
    part = await mesh.api_b.get(f"/blobs/{blob['id']}", headers={"Range": f"bytes={CHUNK_SIZE}-"})
    assert part.status_code == 206 and part.content == data[CHUNK_SIZE:]
    mid = (await mesh.api_b.get(f"/blobs/{blob['id']}/status")).json()
    assert mid["have"] == 3  # only what was read was fetched
    whole = await mesh.api_b.get(f"/blobs/{blob['id']}")
    assert hashlib.sha256(whole.content).digest() == hashlib.sha256(data).digest()
    assert whole.headers["content-type"] == "image/png"
    assert mesh.r.blobs.forwarder.forwarded >= 5 and mesh.r.blobs.forwarder.pending == 0
    assert mesh.b.peer_id not in mesh.a.links


async def test_too_large_and_quota_are_clear_json_errors(mesh: Trio3) -> None:
    big = await mesh.api_a.post("/blobs", content=b"x" * (3 * MIB + 1))
    assert big.status_code == 413 and big.json()["error"]["code"] == "too-large"

    class Streamed:  # no Content-Length: cut while streaming
        def __init__(self) -> None:
            self.left = 4

        def __aiter__(self) -> Streamed:
            return self

        async def __anext__(self) -> bytes:
            if not self.left:
                raise StopAsyncIteration
            self.left -= 1
            return random.randbytes(MIB)

    big = await mesh.api_a.post("/blobs", content=Streamed())
    assert big.status_code == 413 and big.json()["error"]["code"] == "too-large"
    for seed in range(3):  # 3 MiB, 3 MiB... past the 4 MiB quota
        r = await mesh.api_a.post("/blobs", content=random.Random(seed).randbytes(2 * MIB))
        if r.status_code != 201:
            break
    assert r.status_code == 507 and r.json()["error"]["code"] == "insufficient-storage"
    assert mesh.a.blobs.store is not None and mesh.a.blobs.store.used <= 4 * MIB


async def test_resumable_upload_offsets_and_refusals(mesh: Trio3) -> None:
    data = random.Random(3).randbytes(2 * CHUNK_SIZE + 99)
    opened = await mesh.api_a.post("/blobs/uploads", headers={"X-Blob-Name": "r.bin"})
    assert opened.status_code == 201
    url = opened.json()["url"]
    first = await mesh.api_a.put(
        url, content=data[:1000], headers={"Content-Range": "bytes 0-999/*"}
    )
    assert first.json()["offset"] == 1000 and first.json()["complete"] is False
    wrong = await mesh.api_a.put(url, content=b"x", headers={"Content-Range": "bytes 5-5/*"})
    assert wrong.status_code == 409 and wrong.json()["error"]["code"] == "offset-mismatch"
    assert (await mesh.api_a.get(url)).json()["offset"] == 1000
    assert (await mesh.api_a.put(url, content=b"x")).status_code == 400  # no Content-Range
    over = await mesh.api_a.put(url, content=b"x", headers={"Content-Range": "bytes 1000-1000/5"})
    assert over.status_code == 400
    rest = await mesh.api_a.put(
        url, content=data[1000:], headers={"Content-Range": f"bytes 1000-{len(data) - 1}/*"}
    )
    assert rest.status_code == 200 and rest.json()["offset"] == len(data)
    done = await mesh.api_a.put(url, headers={"Content-Range": f"bytes */{len(data)}"})
    assert done.status_code == 201 and done.json()["complete"] is True
    assert (await mesh.api_a.get(f"/blobs/{done.json()['id']}")).content == data
    gone = await mesh.api_a.get(url)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown-upload"
    other = (await mesh.api_a.post("/blobs/uploads", headers={"X-Blob-Size": "10"})).json()["url"]
    mismatch = await mesh.api_a.put(other, content=b"x", headers={"Content-Range": "bytes 0-0/11"})
    assert mismatch.status_code == 400
    big = await mesh.api_a.post("/blobs/uploads", headers={"X-Blob-Size": str(4 * MIB)})
    assert big.status_code == 413
    huge = await mesh.api_a.post("/blobs/uploads", headers={"X-Blob-Size": "9" * 5000})
    assert huge.status_code == 400 and huge.json()["error"]["code"] == "invalid"
    huge = await mesh.api_a.put(other, headers={"Content-Range": "bytes 0-1/" + "9" * 5000})
    assert huge.status_code == 400
    assert (await mesh.api_a.delete(other)).json()["deleted"] is True
    assert (await mesh.api_a.get("/blobs/uploads/" + "0" * 32)).status_code == 404


async def test_bad_ids_unknown_blobs_and_attachments_are_refused(mesh: Trio3) -> None:
    for path in ("/blobs/xyz", "/blobs/" + "A" * 64, "/blobs/" + "ab" * 32 + "/status"):
        r = await mesh.api_b.get(path)
        assert r.status_code in (400, 404) and "error" in r.json(), path
    r = await mesh.api_b.get("/blobs/" + "ab" * 32)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown-blob"
    held = await _upload(mesh.api_b, b"x" * 700_000, **{"X-Blob-Name": "big.png"})
    good = {"id": held["id"], "name": "n", "type": "text/plain", "size": 700_000}
    for bad, says in (
        ([good] * 33, "at most 32"),
        ([{**good, "id": "zz"}], "attachment id"),
        ([{**good, "size": -1}], "attachment size"),
        ([{**good, "size": 5}], "size 5 ≠ the blob's 700000"),
        ([{**good, "name": 7}], "attachment name"),
        ([{**good, "type": ""}], "attachment type"),
        ([{**good, "x": 1}], "an attachment is"),
        ("no", "attachments: a list"),
    ):
        r = await mesh.api_b.post(
            "/send", json={"channel": "files", "body": "", "attachments": bad}
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid", bad
        assert says in r.json()["error"]["message"], (bad, r.text)
    # a blob this peer does not hold: recipients could never fetch it
    absent = {"id": "ab" * 32, "name": "n", "type": "text/plain", "size": 3}
    r = await mesh.api_b.post("/send", json={"channel": "files", "attachments": [absent]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown-blob", r.text
    # only the id: name, type and size come from the blob; a name given renames it
    sent = await mesh.api_b.post(
        "/send", json={"channel": "files", "attachments": [{"id": held["id"]},
                                                           {"id": held["id"], "name": "r.png"}]}
    )
    assert sent.status_code == 200, sent.text
    got = (await mesh.api_a.get("/messages", params={"channel": "files", "wait": 10})).json()
    facts = {"id": held["id"], "type": "image/png", "size": 700_000}
    assert got[-1]["attachments"] == [{**facts, "name": "big.png"}, {**facts, "name": "r.png"}]
    bad_type = await mesh.api_b.post("/blobs", content=b"x", headers={"Content-Type": "not a type"})
    assert bad_type.status_code == 400


async def test_a_flood_of_wants_for_unknown_blobs_leaves_everyone_serving(mesh: Trio3) -> None:
    link = mesh.b.links[mesh.r.peer_id]
    for n in range(3000):
        link.enqueue(BlobWant(100_000 + n, n.to_bytes(32, "big"), None, hops=3).encode())
    assert mesh.r.blobs.forwarder.pending <= 256
    data = b"still works" * 1000
    blob = await _upload(mesh.api_a, data)
    att = {k: blob[k] for k in ("id", "name", "type", "size")}
    await mesh.api_a.post("/send", json={"channel": "files", "body": "", "attachments": [att]})
    await mesh.api_b.get("/messages", params={"channel": "files", "wait": 10})
    with trio.fail_after(30):
        got = await mesh.api_b.get(f"/blobs/{blob['id']}")
    assert got.content == data
    # the flood went first on the same link: all of it was answered, most refused
    assert mesh.r.blobs.forwarder.refused + mesh.r.blobs.busy > 2000
    assert mesh.r.blobs.forwarder.pending <= 256
    assert mesh.r.peer_id in mesh.b.links  # nobody was disconnected


async def test_answers_nobody_asked_for_are_dropped_and_counted(mesh: Trio3) -> None:
    link = mesh.b.links[mesh.r.peer_id]
    for n in range(40):
        link.enqueue(BlobChunk(7_000_000 + n, b"\x00" * CHUNK_SIZE).encode())
        link.enqueue(BlobHave(8_000_000 + n, 1, b"\x01" * 32).encode())
    blob = await _upload(mesh.api_a, b"")  # the empty blob: an id, no chunk
    assert (blob["size"], blob["chunks"]) == (0, 0)
    att = {k: blob[k] for k in ("id", "name", "type", "size")}
    await mesh.api_a.post("/send", json={"channel": "files", "body": "", "attachments": [att]})
    await mesh.api_b.get("/messages", params={"channel": "files", "wait": 10})
    empty = await mesh.api_b.get(f"/blobs/{blob['id']}")
    assert empty.status_code == 200 and empty.content == b""
    assert mesh.r.blobs.stray == 80  # on the same link before B's wants: all seen
    assert mesh.r.peer_id in mesh.b.links


async def test_delete_forgets_a_blob_and_frees_what_only_it_named(mesh: Trio3) -> None:
    shared = random.Random(4).randbytes(CHUNK_SIZE)
    one = await _upload(mesh.api_a, shared + b"only in one")
    two = await _upload(mesh.api_a, shared)
    store = mesh.a.blobs.store
    assert store is not None
    for sub in (store.path / "chunks").iterdir():  # old enough to be collected
        for f in sub.iterdir():
            os.utime(f, (time.time() - 3600, time.time() - 3600))
    gone = await mesh.api_a.delete(f"/blobs/{one['id']}")
    assert gone.status_code == 200, gone.text
    assert (gone.json()["chunks_freed"], gone.json()["bytes_freed"]) == (1, len(b"only in one"))
    assert (await mesh.api_a.get(f"/blobs/{two['id']}")).content == shared
    again = await mesh.api_a.delete(f"/blobs/{one['id']}")
    assert again.status_code == 404 and again.json()["error"]["code"] == "unknown-blob"


async def test_a_media_type_unfit_for_a_header_is_served_as_octet_stream(mesh: Trio3) -> None:
    # review item 10: a type from the network (an attachment's) reached Content-Type as is
    from peer.wire._blobframes import blob_id, chunk_hash
    from store._blobs import Manifest

    data = b"<script>1</script>"
    hashes = chunk_hash(data)
    store = mesh.a.blobs.store
    assert store is not None
    for bad in ("text/html\r\nx-evil: 1", "text/plain; name=caf\u00e9\u2615"):
        blob = blob_id(len(data) + len(bad), hashes)  # any id: the type is what matters
        store.put_manifest(Manifest(blob, len(data), hashes, bad, "x"))
        got = await mesh.api_a.head(f"/blobs/{blob.hex()}")
        assert got.headers["content-type"] == "application/octet-stream", bad
        assert "x-evil" not in got.headers and got.headers["content-disposition"].startswith(
            "attachment")
    r = await mesh.api_a.post("/blobs", content=b"x",
                              headers={"Content-Type": "image/png\r\n; a=b"})
    assert r.status_code == 400
