"""Peak memory of the audit export: ``python -m bench.audit_export [N ...]``.

For each N (default 10,000 and 100,000) a child process writes N audit
records straight into a fresh store; then a peer serving that store starts
in this process, a second child downloads ``/audit/export?format=csv`` (to
a file, streamed), and this process samples its own memory while it serves:
resident set (VmRSS, which includes the LMDB pages it reads, file-backed)
and anonymous memory (RssAnon, the heap). A flat heap across N is the point.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from peer import Identity, Peer, PeerOptions
from peer.api._serve import serve_api

TOKEN = "bench-token-0123456789"

FILL = """
import sys
from tests.test_audit import _bulk, _fill_raw
from pathlib import Path
_fill_raw(Path(sys.argv[1]), _bulk(int(sys.argv[2]), 1_800_000_000_000))
"""

FETCH = """
import sys, httpx
with httpx.stream("GET", sys.argv[1] + "/audit/export", params={"format": "csv"},
                  headers={"Authorization": "Bearer " + sys.argv[2]}, timeout=600) as r:
    r.raise_for_status()
    n = 0
    with open(sys.argv[3], "wb") as out:
        for chunk in r.iter_bytes():
            out.write(chunk)
            n += len(chunk)
print(n)
"""


def _status_kb() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


def fill(n: int, tmp: Path) -> Path:
    store = tmp / f"store-{n}"
    subprocess.run([sys.executable, "-c", FILL, str(store), str(n)], check=True)
    return store


async def measure(n: int, store: Path, tmp: Path) -> dict[str, float]:
    peer = Peer(Identity.generate(), PeerOptions(dht=False, store_path=str(store)))
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.run)
        url = await serve_api(peer, "127.0.0.1", 0, TOKEN, nursery)
        base = _status_kb()
        peak = dict(base)
        started = time.monotonic()
        fetch = await trio.lowlevel.open_process(
            [sys.executable, "-c", FETCH, url, TOKEN, str(tmp / f"export-{n}.csv")],
            stdout=subprocess.PIPE,
        )
        while fetch.poll() is None:
            now = _status_kb()
            peak = {k: max(peak[k], now[k]) for k in peak}
            await trio.sleep(0.02)
        assert fetch.returncode == 0
        elapsed = time.monotonic() - started
        nursery.cancel_scope.cancel()
    size = (tmp / f"export-{n}.csv").stat().st_size
    return {
        "records": n,
        "csv_mb": size / 1e6,
        "seconds": elapsed,
        "rss_base_mib": base["VmRSS"] / 1024,
        "rss_peak_mib": peak["VmRSS"] / 1024,
        "anon_growth_mib": (peak["RssAnon"] - base["RssAnon"]) / 1024,
        "file_growth_mib": (peak["RssFile"] - base["RssFile"]) / 1024,
    }


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [10_000, 100_000]
    print("records  CSV MB  seconds  RSS base  RSS peak  heap growth  file pages growth (MiB)")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            r = trio.run(measure, n, fill(n, Path(tmp)), Path(tmp))
            print(f"{r['records']:>7}  {r['csv_mb']:6.1f}  {r['seconds']:7.1f}  "
                  f"{r['rss_base_mib']:8.1f}  {r['rss_peak_mib']:8.1f}  "
                  f"{r['anon_growth_mib']:11.1f}  {r['file_growth_mib']:8.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
