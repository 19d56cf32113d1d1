"""The Python heap an idle link costs a relay-only seed (issue 14, item 6), by tracemalloc.

    python -m bench.link_heap --links 1000              # links on our own WebSocket
    python -m bench.link_heap --links 1000 --trio-websocket   # the old path, same sitting

A relay-only seed (no store, no DHT) runs in this process with tracemalloc on;
one sink process of the harness (``python -m bench._gen sink --mode idle``,
as the footprint scenario uses) opens ``--links`` subscribed links to it and
holds them. The traced heap is read (after a full collection) before the
links and once all are up and the seed has settled; the difference over the
link count is the heap per idle link (the least of ``READINGS`` readings a
second apart: a link caught answering a ping holds a little more). The
largest differences by allocation site are printed too
(``Snapshot.compare_to``), to say what is left. RSS is not reported:
tracemalloc's own bookkeeping inflates it (the footprint scenario measures
RSS without it).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import subprocess
import sys
import tracemalloc

import trio

from peer import Identity, Peer, PeerOptions
from peer.node import _websocket

SETTLE_S = 5.0
READINGS = 5  # heap readings 1 s apart once the links are up; the least is reported


async def _links_up(peer: Peer, links: int, deadline: float) -> None:
    with trio.fail_after(deadline):
        while len(peer.links) < links:
            await peer.wait_links_changed()


async def measure(links: int, top: int) -> dict[str, object]:
    peer = Peer(Identity.generate(), PeerOptions(relay_only=True, dht=False, seed=1,
                                                 max_links=links + 8))
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.run)
        port = await peer.serve_websocket("127.0.0.1", 0)
        await trio.sleep(SETTLE_S)
        gc.collect()
        before_bytes = tracemalloc.get_traced_memory()[0]
        before = tracemalloc.take_snapshot()
        cmd = [sys.executable, "-m", "bench._gen", "sink", "--proto", "clawmesh",
               "--port", str(port), "--conns", str(links), "--mode", "idle",
               "--timeout", str(120 + links / 10)]
        async with trio.open_nursery() as sinks:
            run = functools.partial(trio.run_process, cmd, stdin=subprocess.PIPE,  # held open:
                                    stdout=subprocess.DEVNULL, check=False)  # EOF stops it
            proc = await sinks.start(run)
            await _links_up(peer, links, 60 + links / 10)
            await trio.sleep(SETTLE_S)
            readings = []
            for _ in range(READINGS):  # the least: links caught mid-ping hold a bit more
                gc.collect()
                readings.append(tracemalloc.get_traced_memory()[0])
                await trio.sleep(1.0)
            with_bytes = min(readings)
            after = tracemalloc.take_snapshot()
            proc.terminate()
        nursery.cancel_scope.cancel()
    sites = after.compare_to(before, "lineno")
    return {
        "links": links,
        "own_websocket": _websocket.OWN_WEBSOCKET,
        "heap_before_kib": round(before_bytes / 1024, 1),
        "heap_with_links_kib": round(with_bytes / 1024, 1),
        "heap_per_link_bytes": round((with_bytes - before_bytes) / links),
        "top_sites": [
            {"site": str(s.traceback), "bytes_per_link": round(s.size_diff / links),
             "count_per_link": round(s.count_diff / links, 2)}
            for s in sites[:top]
        ],
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.link_heap", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--links", type=int, default=1000)
    p.add_argument("--top", type=int, default=15, help="allocation sites to list")
    p.add_argument("--trio-websocket", action="store_true",
                   help="links on trio-websocket (OWN_WEBSOCKET off), as before")
    args = p.parse_args()
    if args.trio_websocket:
        _websocket.OWN_WEBSOCKET = False
    tracemalloc.start(1)
    result = trio.run(measure, args.links, args.top)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
