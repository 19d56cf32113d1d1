"""Scenario ``live``: delivery latency to an agent, from ``POST /send`` on one
peer to the agent of another peer, through one relay-only seed, by the two
ways an agent can wait: an SSE stream (``GET /events``) and the long-poll
(``GET /messages?wait=``).

Three real ``python -m peer`` processes: the seed (relay-only) and two peers
that do not listen and have no DHT, so their only link is to the seed and
every message crosses it. On the receiving peer one SSE stream and one
long-poll loop wait for the same messages at once; the sender sends one
message at a time (the next after both saw it, or after a timeout), and each
latency runs from just before the ``/send`` request to the moment the reader
has the message parsed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from ._procs import Child, free_port, python_cmd

START_TIMEOUT = 60.0
WAIT_EACH = 10.0  # seconds a message may take before it counts as not received


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": round(ordered[-1], 3)}


class _Peer:
    def __init__(self, child: Child, home: Path, api: str) -> None:
        self.child = child
        self.api = api
        self.token = (home / "keys" / "api-token").read_text().strip()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def _start(nursery: trio.Nursery, work: Path, logs: Path, name: str,
                 *flags: str) -> tuple[_Peer, int]:
    home = work / f"live-{name}"
    mesh, api = free_port(), free_port()
    cmd = python_cmd("-m", "peer", "--listen", f"127.0.0.1:{mesh}", "--api",
                     f"127.0.0.1:{api}", "--key-dir", str(home / "keys"), "--data-dir",
                     str(home / "data"), "--no-dht", "--log-level", "warning", *flags)
    child = await Child.start(nursery, f"live-{name}", cmd, logs)
    await child.wait_line("clawmesh", START_TIMEOUT)
    return _Peer(child, home, f"http://127.0.0.1:{api}"), mesh


async def _sse_reader(client: httpx.AsyncClient, peer: _Peer, arrived: dict[str, float],
                      ready: trio.Event, changed: list[trio.Event]) -> None:
    params = {"channel": "live"}
    async with client.stream("GET", peer.api + "/events", params=params,
                             headers=peer.headers) as r:
        r.raise_for_status()
        event: dict[str, str] = {}
        async for line in r.aiter_lines():
            if line.startswith(": open"):
                ready.set()
            if line == "":
                if event.get("event") == "message":
                    arrived[json.loads(event["data"])["body"]] = time.perf_counter()
                    changed[0].set()
                event = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(": ")
                event[key] = value


async def _poll_reader(client: httpx.AsyncClient, peer: _Peer, arrived: dict[str, float],
                       changed: list[trio.Event]) -> None:
    after = (await client.get(peer.api + "/messages", headers=peer.headers,
                              params={"channel": "live", "limit": 1})).headers
    cursor = int(after.get("X-Clawmesh-Cursor", "0"))
    while True:
        r = await client.get(peer.api + "/messages", headers=peer.headers,
                             params={"channel": "live", "after": cursor, "wait": 30})
        now = time.perf_counter()
        for message in r.json():
            arrived[message["body"]] = now
            cursor = message["cursor"]
        if r.json():
            changed[0].set()


async def run_live(nursery: trio.Nursery, work: Path, logs: Path, messages: int,
                   gap: float, progress: Any) -> list[dict[str, Any]]:
    """Send ``messages`` one at a time; the latency rows of the SSE and long-poll paths."""
    seed, seed_port = await _start(nursery, work, logs, "seed", "--relay-only")
    seed_url = f"ws://127.0.0.1:{seed_port}/"
    sender, _ = await _start(nursery, work, logs, "sender", "--no-listen", "--channel", "live",
                             "--bootstrap", seed_url)
    receiver, _ = await _start(nursery, work, logs, "receiver", "--no-listen", "--channel",
                               "live", "--bootstrap", seed_url)
    sse: dict[str, float] = {}
    poll: dict[str, float] = {}
    changed = [trio.Event()]
    timeout = httpx.Timeout(60.0, read=None)
    try:
        async with httpx.AsyncClient(timeout=timeout) as client, trio.open_nursery() as readers:
            for p in (sender, receiver):  # both linked to the seed, the channel routed
                r = await client.get(p.api + "/peers", headers=p.headers,
                                     params={"min": 1, "wait": 30})
                r.raise_for_status()
            ready = trio.Event()
            readers.start_soon(_sse_reader, client, receiver, sse, ready, changed)
            readers.start_soon(_poll_reader, client, receiver, poll, changed)
            with trio.fail_after(30):
                await ready.wait()
            await _warm_up(client, sender, sse)
            sent = await _send_all(client, sender, messages, gap, sse, poll, changed, progress)
            readers.cancel_scope.cancel()
    finally:
        for child in (sender.child, receiver.child, seed.child):
            await child.stop(grace=5)
    rows = []
    for path, arrived in (("sse", sse), ("long-poll", poll)):
        lat = [1000 * (arrived[body] - at) for body, at in sent.items() if body in arrived]
        rows.append({"path": path, "relays": 1, "messages": len(sent), "received": len(lat),
                     "latency_ms": percentiles(lat)})
    return rows


async def _warm_up(client: httpx.AsyncClient, sender: _Peer, sse: dict[str, float]) -> None:
    """Until a first message goes through (the route through the seed is up)."""
    with trio.fail_after(60):
        n = 0
        while not any(k.startswith("warm") for k in sse):
            await client.post(sender.api + "/send", headers=sender.headers,
                              json={"channel": "live", "body": f"warm{n}"})
            n += 1
            await trio.sleep(0.5)


async def _send_all(client: httpx.AsyncClient, sender: _Peer, messages: int, gap: float,
                    sse: dict[str, float], poll: dict[str, float], changed: list[trio.Event],
                    progress: Any) -> dict[str, float]:
    sent: dict[str, float] = {}
    for i in range(messages):
        body = f"m{i}"
        sent[body] = time.perf_counter()
        r = await client.post(sender.api + "/send", headers=sender.headers,
                              json={"channel": "live", "body": body})
        r.raise_for_status()
        with trio.move_on_after(WAIT_EACH):
            while body not in sse or body not in poll:
                await changed[0].wait()
                changed[0] = trio.Event()
        if i % 100 == 99:
            progress(f"live: {i + 1}/{messages} sent")
        await trio.sleep(gap)
    return sent
