"""What both sides of the load generator share: JSON-line events, commands on stdin, CPU time."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import trio


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"ev": event, **fields}), flush=True)


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


async def stdin_lines(send: trio.MemorySendChannel[str]) -> None:
    """Forward stdin lines to ``send``; end of input counts as ``stop``."""
    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buf = b""
    async with stream, send:
        while True:
            data = await stream.receive_some(4096)
            if not data:
                await send.send("stop")
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                await send.send(line.decode().strip())


def percentiles(values: list[int], points: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    out: dict[str, float] = {}
    for p in points:
        idx = min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))
        out[f"p{p:g}"] = ordered[idx]
    return out
