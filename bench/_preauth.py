"""Scenario 6, a pre-authentication flood: does it stall the peer for everyone?

``C`` connections upgrade to WebSocket on a real ``python -m peer --no-dht``
relay and each sends ``F`` empty binary frames as fast as it can. The first
frame is not a handshake frame, so the peer refuses it; the question is what
the rest costs. Meanwhile the harness asks the peer's local API ``GET /status``
one request after another and keeps the latencies, and the same for a few
seconds with no flood first (the baseline, same run, same process).

The flooder is a child process (``python -m bench._preauth``) on raw sockets,
so its own work competes with the peer for the CPU as an outside attacker's
would, not with the harness's probes. Per connection it counts the bytes the
kernel took before the peer closed (a bound on what the peer could read: the
socket buffers hold a few hundred KiB) and the seconds until the peer closed
the connection. The peer's CPU time over the flood comes from /proc.

Rules kept here: every wait is bounded (``FLOOD_TIMEOUT``); the flooder
prints one JSON line per phase (``flooding``, ``done``); nothing is kept per
frame.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from typing import Any

import trio

from ._procs import Child, ChildFailed, cpu_seconds, python_cmd
from ._systems import Clawmesh, Env

FLOOD_TIMEOUT = 30.0  # seconds a connection may take to be closed by the peer
BASELINE_SECONDS = 1.0  # probing with no flood, before each cell (--quick: QUICK_BASELINE)
QUICK_BASELINE = 0.3
TAIL_SECONDS = 0.3  # probing after the flood ended
CHUNK = 64 * 1024  # bytes per write: what the flooder counts as taken
# an empty, final, masked binary frame (a client's frames are masked; the key is zeros)
EMPTY_FRAME = b"\x82\x80\x00\x00\x00\x00"


# -- the flooder (a child process) -----------------------------------------------------------


async def _upgrade(host: str, port: int) -> trio.SocketStream:
    stream = await trio.open_tcp_stream(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send_all(
        (f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
         "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = await stream.receive_some(4096)
        if not data or len(head) > 16384:
            raise OSError("the upgrade failed")
        head += data
    if not head.startswith(b"HTTP/1.1 101"):
        raise OSError(f"the upgrade was refused: {head[:40]!r}")
    return stream


async def _flood(stream: trio.SocketStream, frames: int, go: trio.Event,
                 out: dict[str, Any]) -> None:
    """Send ``frames`` empty frames; note the bytes taken and when the peer closed."""
    data = EMPTY_FRAME * frames
    await go.wait()
    started = time.monotonic()

    async def send() -> None:
        sent = 0
        try:
            for i in range(0, len(data), CHUNK):
                await stream.send_all(data[i : i + CHUNK])
                sent += len(data[i : i + CHUNK])
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        out["bytes_taken"] = sent

    async def read() -> None:
        got = 0
        try:
            while chunk := await stream.receive_some(65536):
                got += len(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        out["closed_after_s"] = round(time.monotonic() - started, 3)
        out["bytes_back"] = got

    with trio.move_on_after(FLOOD_TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            await read()
            nursery.cancel_scope.cancel()
    await stream.aclose()


async def flooder(host: str, port: int, connections: int, frames: int) -> None:
    streams = [await _upgrade(host, port) for _ in range(connections)]
    results: list[dict[str, Any]] = [{} for _ in streams]
    go = trio.Event()
    async with trio.open_nursery() as nursery:
        for stream, out in zip(streams, results, strict=True):
            nursery.start_soon(_flood, stream, frames, go, out)
        await trio.sleep(0.05)  # every task waits at ``go``: the flood starts at once
        print(json.dumps({"ev": "flooding"}), flush=True)
        go.set()
    print(json.dumps({"ev": "done", "connections": results}), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench._preauth")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--frames", type=int, default=100_000)
    args = p.parse_args(argv)
    try:
        trio.run(flooder, args.host, args.port, args.connections, args.frames)
    except OSError as exc:
        print(json.dumps({"ev": "error", "error": str(exc)}), flush=True)
        return 1
    return 0


# -- the harness side --------------------------------------------------------------------------


async def _status_once(host: str, port: int) -> float | None:
    """Seconds for one ``GET /status`` answered in full, or None if it failed."""
    started = trio.current_time()
    with trio.move_on_after(FLOOD_TIMEOUT):
        try:
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                await stream.send_all(
                    f"GET /status HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
                while await stream.receive_some(65536):
                    pass
        except OSError:
            return None
        return trio.current_time() - started
    return None


async def _probe(api: tuple[str, int], stop: trio.Event, out: list[float]) -> None:
    """``GET /status`` one after another until ``stop``; latencies (s) into ``out``."""
    while not stop.is_set():
        took = await _status_once(*api)
        if took is not None:
            out.append(took)
        await trio.sleep(0.005)


def latency_ms(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None, "count": 0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"p50": at(0.5), "p99": at(0.99), "max": round(1000 * ordered[-1], 1),
            "count": len(ordered)}


async def _baseline(api: tuple[str, int], seconds: float) -> list[float]:
    done, values = trio.Event(), list[float]()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_probe, api, done, values)
        await trio.sleep(seconds)
        done.set()
    return values


async def run_cell(env: Env, system: Clawmesh, connections: int, frames: int,
                   logs_name: str, baseline_s: float = BASELINE_SECONDS) -> dict[str, Any]:
    """One cell: a fresh relay, a baseline, then the flood; the row for the table."""
    async with system.deploy(env, relays=1, no_dht=True) as dep:
        api, (host, port), pid = dep.status[0], dep.pub, dep.pids[0]
        base = await _baseline(api, baseline_s)
        cmd = python_cmd("-m", "bench._preauth", "--host", host, "--port", str(port),
                         "--connections", str(connections), "--frames", str(frames))
        child = await Child.start(env.nursery, logs_name, cmd, env.logs)
        flood: list[float] = []
        try:
            await child.wait_for("flooding", FLOOD_TIMEOUT)
            cpu0, started = cpu_seconds(pid), trio.current_time()
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_probe, api, stop, flood)
                done = await child.wait_for("done", FLOOD_TIMEOUT + 10)
                await trio.sleep(TAIL_SECONDS)
                stop.set()
            cpu = cpu_seconds(pid) - cpu0
            wall = trio.current_time() - started
        finally:
            await child.stop(grace=2)
    conns = done["connections"]
    closed = [c["closed_after_s"] for c in conns if c.get("closed_after_s") is not None]
    taken = [c.get("bytes_taken", 0) for c in conns]
    return {
        "system": system.name, "connections": connections, "frames": frames,
        "baseline_ms": latency_ms(base), "flood_ms": latency_ms(flood),
        "frames_taken_mean": round(sum(taken) / len(taken) / len(EMPTY_FRAME)) if taken else 0,
        "closed_after_s_max": max(closed) if closed else None,
        "closed_after_s_mean": round(sum(closed) / len(closed), 3) if closed else None,
        "answered_bytes_mean": round(sum(c.get("bytes_back", 0) for c in conns) / len(conns)),
        "peer_cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
    }


async def run_preauth(env: Env, system: Clawmesh, connections: list[int], frames: int,
                      progress: Any, baseline_s: float = BASELINE_SECONDS) -> list[dict[str, Any]]:
    rows = []
    for i, c in enumerate(connections, 1):
        progress(f"preauth {i}/{len(connections)}: {c} connection(s) x {frames:,} frames ...")
        try:
            row = await run_cell(env, system, c, frames, f"preauth-flooder-{c}", baseline_s)
        except ChildFailed as exc:
            row = {"system": system.name, "connections": c, "frames": frames,
                   "error": str(exc)[:500]}
            progress(f"preauth: FAILED {exc}")
        else:
            progress(f"preauth: /status max {row['flood_ms']['max']} ms during the flood, "
                     f"{row['baseline_ms']['max']} ms before; peer CPU {row['peer_cpu_s']} s")
        rows.append(row)
    return rows


if __name__ == "__main__":
    sys.exit(main())
