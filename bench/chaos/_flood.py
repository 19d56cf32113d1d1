"""The ``flood`` scenario: one hostile peer at ``x`` times the per-author limit.

Every node runs with ``--author-rate R --author-burst B`` (the flood's own
knobs; by default a strict deployment, 50/s burst 200, so that ten times it
can be generated on a small machine: the peer's default of 1000/s would
need a flooder signing 10,000 messages a second). The honest storm runs the
whole time. For ``flood_s`` seconds there is no flood: the **baseline**;
then a flooder process (``_flooder.py``, a real peer linked to every seed)
publishes ``x * R`` messages a second for ``flood_s`` seconds. The honest
subscribers' latency (receive time minus the sender's timestamp) of the
messages sent in each window gives p50 and p99 beside each other, and the
ratio; the acceptance is p99 within 2x the baseline.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from ._check import AgentVerdict, percentile
from ._cluster import Cluster
from ._faults import FaultLog

RATIO_OK = 2.0


@dataclass
class FloodPlan:
    seconds: float = 30.0  # the baseline window, then the flood window
    times: float = 10.0  # flood rate = times * author_rate
    author_rate: float = 50.0
    author_burst: float = 200.0

    def node_flags(self) -> list[str]:
        return ["--author-rate", f"{self.author_rate:g}", "--author-burst",
                f"{self.author_burst:g}"]  # fmt: skip


@dataclass
class FloodLog(FaultLog):
    baseline_ms: tuple[int, int] = (0, 0)
    flood_ms: tuple[int, int] = (0, 0)
    rate: float = 0.0
    sent: int = 0
    flooder_links_end: int = -1
    flooder_cpu_s: float = 0.0
    events: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {**super().to_json(), "rate": self.rate, "sent": self.sent,
                "baseline_ms": self.baseline_ms, "flood_ms": self.flood_ms,
                "flooder_links_end": self.flooder_links_end,
                "flooder_cpu_s": self.flooder_cpu_s}  # fmt: skip


def _now_ms() -> int:
    return int(time.time() * 1000)


async def flood(cluster: Cluster, plan: FloodPlan, channel: str, key_dir: str) -> FloodLog:
    log = FloodLog(rate=plan.times * plan.author_rate)
    start = _now_ms()
    await trio.sleep(plan.seconds)  # the baseline window's own duration
    cmd = [sys.executable, "-m", "bench.chaos._flooder", "--key-dir", key_dir,
           "--channel", channel, "--rate", f"{log.rate:g}", "--seconds", f"{plan.seconds:g}"]
    for seed in cluster.seeds:
        cmd += ["--bootstrap", f"ws://{seed.host}:{seed.mesh_port}/#{seed.peer_id}"]
    with trio.fail_after(plan.seconds + 120):
        done = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)
    log.events = [json.loads(x) for x in done.stdout.decode().splitlines() if x.startswith("{")]
    marks = {e["event"]: e for e in log.events}
    if "flooding" not in marks or "done" not in marks:
        log.errors.append(f"flooder exited {done.returncode}: {done.stderr.decode()[-400:]}")
        return log
    log.baseline_ms = (start, marks["flooding"]["ms"])
    log.flood_ms = (marks["flooding"]["ms"], marks["done"]["ms"])
    log.sent = marks["done"]["sent"]
    log.flooder_links_end = marks["done"]["links"]
    log.flooder_cpu_s = marks["done"].get("cpu_s", 0.0)
    log.done = 1
    log.down_s = plan.seconds
    return log


def _window(verdicts: list[AgentVerdict], span: tuple[int, int]) -> list[int]:
    lo, hi = span
    return [lat for v in verdicts for lat, sent in zip(v.latencies_ms, v.sent_ms, strict=True)
            if lo <= sent < hi]  # fmt: skip


def _p99_by_second(verdicts: list[AgentVerdict], span: tuple[int, int]) -> list[int | None]:
    """p99 of the honest latency per second of ``span`` (where in the flood it hurt)."""
    buckets: list[list[int]] = [[] for _ in range(max(0, (span[1] - span[0]) // 1000 + 1))]
    for v in verdicts:
        for lat, sent in zip(v.latencies_ms, v.sent_ms, strict=True):
            if span[0] <= sent < span[1]:
                buckets[(sent - span[0]) // 1000].append(lat)
    return [percentile(b, 0.99) for b in buckets]


def latency_split(verdicts: list[AgentVerdict], log: FloodLog) -> dict[str, Any]:
    """Honest p50/p99 in the baseline window and in the flood window, and the ratio."""
    base, during = _window(verdicts, log.baseline_ms), _window(verdicts, log.flood_ms)
    out: dict[str, Any] = {
        "flood_per_s": log.rate, "flood_sent": log.sent,
        "spam_per_agent": round(sum(v.unacked for v in verdicts) / max(1, len(verdicts))),
        "base_n": len(base), "flood_n": len(during),
        "base_p50": percentile(base, 0.5), "base_p99": percentile(base, 0.99),
        "flood_p50": percentile(during, 0.5), "flood_p99": percentile(during, 0.99),
    }  # fmt: skip
    b, f = out["base_p99"], out["flood_p99"]
    out["p99_ratio"] = round(f / max(b, 1), 2) if b is not None and f is not None else None
    out["within_2x"] = out["p99_ratio"] is not None and out["p99_ratio"] <= RATIO_OK
    out["flood_p99_by_s"] = _p99_by_second(verdicts, log.flood_ms)
    out["flooder_links_end"] = log.flooder_links_end
    out["flooder_cpu_s"] = log.flooder_cpu_s
    return out


FLOOD_COLUMNS = ("scenario", "flood_per_s", "flood_sent", "spam_per_agent", "base_p50",
                 "base_p99", "flood_p50", "flood_p99", "p99_ratio", "within_2x")  # fmt: skip


def flood_table(results: list[dict[str, Any]]) -> str:
    rows = [list(FLOOD_COLUMNS)]
    rows += [[r["scenario"], *(str(r["flood"][k]) for k in FLOOD_COLUMNS[1:])]
             for r in results if r.get("flood")]  # fmt: skip
    if len(rows) == 1:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(FLOOD_COLUMNS))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True))
                     for row in rows)  # fmt: skip
