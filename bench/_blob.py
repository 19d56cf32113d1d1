"""Scenario ``blob``: attachment throughput through one relay, beside a plain HTTP
download of the same file from a local server, in the same run.

Three real ``python -m peer`` processes: a relay-only seed and two peers that do
not listen and have no DHT, so their only link is to the seed. A uploads the
file (``POST /blobs``) and sends a message that refers to it; B downloads it
(``GET /blobs/<id>``: every chunk is fetched over the mesh, through the seed,
verified and stored as it streams). The baseline is Python's ``http.server``
serving the same file from disk to a plain ``curl`` download on loopback (an
``httpx`` one where curl is not installed; the row says which). The peak RSS
(VmHWM) of A and B is read from /proc after the transfer.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import subprocess
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from ._live import _Peer, _start

MIB = 1024 * 1024


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _write_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(MIB)
    with path.open("wb") as f:
        left = size
        while left:
            piece = block[: min(MIB, left)]
            f.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


async def _file_chunks(path: Path) -> Any:
    with path.open("rb") as f:
        while piece := await trio.to_thread.run_sync(f.read, MIB):
            yield piece


def _download(url: str, headers: dict[str, str]) -> tuple[float, str, int]:
    """Seconds, sha256 and length of a streamed GET (run in a thread)."""
    digest, n = hashlib.sha256(), 0
    started = time.perf_counter()
    with httpx.stream("GET", url, headers=headers, timeout=httpx.Timeout(60.0, read=120.0)) as r:
        r.raise_for_status()
        for piece in r.iter_bytes():
            digest.update(piece)
            n += len(piece)
    return time.perf_counter() - started, digest.hexdigest(), n


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _curl(url: str, out: Path) -> tuple[float, str, int]:
    """Seconds (curl's own time_total), sha256 and length of a curl download to ``out``."""
    done = subprocess.run(
        ["curl", "-sS", "--fail", "-o", str(out), "-w", "%{time_total}", url],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    digest = hashlib.sha256()
    with out.open("rb") as f:
        while piece := f.read(MIB):
            digest.update(piece)
    size = out.stat().st_size
    out.unlink()
    return float(done.stdout.strip()), digest.hexdigest(), size


def _plain_http(path: Path) -> tuple[float, str, int, str]:
    """The baseline: (seconds, sha256, length, which client)."""
    handler = partial(_Quiet, directory=str(path.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
    try:
        if shutil.which("curl"):
            return (*_curl(url, path.with_suffix(".curl")), "curl")
        return (*_download(url, {}), "httpx")
    finally:
        server.shutdown()
        server.server_close()


async def run_blob(
    nursery: trio.Nursery, work: Path, logs: Path, mib: int, progress: Any
) -> list[dict[str, Any]]:
    size = mib * MIB
    path = work / "blob.bin"
    digest = await trio.to_thread.run_sync(_write_file, path, size)
    seconds, got, n, client = await trio.to_thread.run_sync(_plain_http, path)
    assert got == digest and n == size
    rows: list[dict[str, Any]] = [
        {
            "path": f"plain HTTP (http.server -> {client})",
            "mib": mib,
            "seconds": round(seconds, 2),
            "mib_per_s": round(mib / seconds, 1),
        }
    ]
    progress(f"blob: plain HTTP {rows[0]['mib_per_s']} MiB/s")
    seed, seed_port = await _start(nursery, work, logs, "blob-seed", "--relay-only")
    url = f"ws://127.0.0.1:{seed_port}/"
    flags = ("--no-listen", "--channel", "files", "--bootstrap", url, "--blob-max-mb", str(mib + 1))
    a, _ = await _start(nursery, work, logs, "blob-a", *flags)
    b, _ = await _start(nursery, work, logs, "blob-b", *flags)
    try:
        rows.append(await _through_relay(a, b, path, digest, size, progress))
    finally:
        for child in (a.child, b.child, seed.child):
            await child.stop(grace=5)
    return rows


async def _through_relay(
    a: _Peer, b: _Peer, path: Path, digest: str, size: int, progress: Any
) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, read=300.0)) as client:
        for p in (a, b):
            (
                await client.get(p.api + "/peers", headers=p.headers, params={"min": 1, "wait": 30})
            ).raise_for_status()
        started = time.perf_counter()
        up = await client.post(
            a.api + "/blobs",
            content=_file_chunks(path),
            headers={
                **a.headers,
                "Content-Type": "application/octet-stream",
                "X-Blob-Name": path.name,
            },
        )
        up.raise_for_status()
        upload_s = time.perf_counter() - started
        blob = up.json()
        att = {k: blob[k] for k in ("id", "name", "type", "size")}
        (
            await client.post(
                a.api + "/send",
                headers=a.headers,
                json={"channel": "files", "body": "file", "attachments": [att]},
            )
        ).raise_for_status()
        for _ in range(60):  # until B has the message (it names the carrier)
            r = await client.get(
                b.api + "/messages", headers=b.headers, params={"channel": "files", "wait": 1}
            )
            if r.json():
                break
    mib = size / MIB
    seconds, got, n = await trio.to_thread.run_sync(
        _download, f"{b.api}/blobs/{blob['id']}", b.headers
    )
    assert got == digest and n == size, "the blob B received differs"
    row = {
        "path": "clawmesh blob A -> relay -> B (GET /blobs/<id> on B)",
        "mib": round(mib),
        "seconds": round(seconds, 2),
        "mib_per_s": round(mib / seconds, 1),
        "upload_mib_per_s": round(mib / upload_s, 1),
        "peak_rss_mib": {"A": _peak_rss_mib(a.child.pid), "B": _peak_rss_mib(b.child.pid)},
    }
    progress(f"blob: through one relay {row['mib_per_s']} MiB/s, peak RSS {row['peak_rss_mib']}")
    return row
