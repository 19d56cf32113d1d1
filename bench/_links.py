"""Scenario 9, ``links``: one relay-only seed holding N subscribed links.

For each link count N the harness starts a fresh relay-only seed and:

1. reads its RSS and its own counters (``/status``: ``links_opened``,
   ``links_closed``, ``handshakes_failed``);
2. starts ``ceil(N / LINKS_PER_PROC)`` sink processes (at most
   ``LINKS_PER_PROC`` links each) that open their links in waves: at most
   ``IN_FLIGHT`` handshakes in flight over all of them
   (``--connect-concurrency`` per process), each link read from the moment it
   has subscribed, so its pings are answered while the process opens the
   others and no link is closed as silent;
3. samples the seed's counters every ``SAMPLE_S`` while the links come up:
   the handshake rate is the seed's own ``links_opened`` over the time they
   took (first to last sample that counted one more), and the best rate over
   any ``PEAK_WINDOW_S``; links the seed closed or handshakes that failed in
   the meantime are reported (a clean run has none);
4. once every link is up and the seed has settled, its RSS again: the RSS per
   link;
5. fan-out to all N subscribers: a publisher sends messages through the seed
   to every link it holds (``bench._drive.run_load``, the counting sinks of
   scenario 1: every delivery counted, one in ``check_every`` checked fully);
   deliveries/s, lost, and the seed's CPU.

The sinks, the publisher and the seed share the machine's cores: on a small
box the handshake rate is the seed's share of them, not its ceiling.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import trio

from ._drive import Load, run_load, split_conns, start_sinks
from ._procs import Child, ChildFailed, cpu_pressure, http_get_json, rss_bytes
from ._scenarios import Context, Scenario, ScenarioResult
from ._systems import Deployment, System, registry

LINKS_PER_PROC = 500  # links one sink process holds, at most
IN_FLIGHT = 32  # handshakes in flight over every sink process together
SAMPLE_S = 1.0  # seconds between two reads of the seed's counters
PEAK_WINDOW_S = 5.0
STATUS_TRIES = 3
WARMUP_DELIVERIES = 2_500.0  # warm-up deliveries per second over all links, at most (the
# sinks handle each on their general path: at 10,000/s, 20 sinks starved and went silent)
# a fan-out ends after links / IDLE_DELIVERIES s with no delivery (at least 5; 20 s at
# 10,000 links: a loaded box may go 5 s without a sink reporting progress there)
IDLE_DELIVERIES = 500.0
READY_BASE_S = 60.0  # the links' deadline: this plus one second per READY_PER_S links
READY_PER_S = 10.0
FANOUT_DELIVERIES = 200_000  # deliveries per fan-out cell: messages = this / N ...
FANOUT_MESSAGES = (10, 2000)  # ... within these bounds


def link_procs(links: int) -> int:
    """Sink processes for ``links`` links: at most LINKS_PER_PROC each."""
    return max(1, math.ceil(links / LINKS_PER_PROC))


def fanout_messages(links: int, deliveries: int = FANOUT_DELIVERIES) -> int:
    low, high = FANOUT_MESSAGES
    return max(low, min(high, deliveries // max(1, links)))


async def seed_counters(dep: Deployment) -> dict[str, int]:
    """The seed's link counters and how many links it holds now (empty if unanswered)."""
    host, port = dep.status[0]
    status = await http_get_json(host, port, "/status")
    if not isinstance(status, dict):
        return {}
    counters = status.get("counters") or {}
    out = {k: int(counters.get(k, 0)) for k in
           ("links_opened", "links_closed", "handshakes_failed")}
    out["links"] = int(status.get("peer_count") or 0)
    return out


def handshake_rates(samples: list[tuple[float, int]]) -> dict[str, float | None]:
    """From (time, links_opened) samples: the mean rate while links came up, and the
    best over any PEAK_WINDOW_S."""
    changes = [(t, n) for i, (t, n) in enumerate(samples) if i and n != samples[i - 1][1]]
    if not changes:
        return {"handshakes_per_s": None, "handshakes_peak_per_s": None, "opening_s": None}
    start_t, start_n = next(
        (samples[i - 1] for i, s in enumerate(samples) if i and s[1] != samples[i - 1][1]))
    end_t, end_n = changes[-1]
    span = end_t - start_t
    peak = 0.0
    for i, (t0, n0) in enumerate(samples):
        for t1, n1 in samples[i + 1:]:
            if t1 - t0 >= PEAK_WINDOW_S:
                peak = max(peak, (n1 - n0) / (t1 - t0))
                break
    mean = (end_n - start_n) / span if span > 0 else None
    return {"handshakes_per_s": round(mean, 1) if mean else None,
            "handshakes_peak_per_s": round(peak, 1) if peak else mean and round(mean, 1),
            "opening_s": round(span, 1)}


async def _open_links(sinks: list[Child], dep: Deployment, before: dict[str, int],
                      links: int, progress: Any) -> list[tuple[float, int]]:
    """Wait until every sink has its links up, sampling the seed's counters."""
    samples = [(trio.current_time(), before.get("links_opened", 0))]
    deadline = trio.current_time() + READY_BASE_S + links / READY_PER_S
    last_report = 0.0
    while True:
        for sink in sinks:
            if "error" in sink.last:
                raise ChildFailed(f"{sink.name}: {sink.last['error']}")
            if sink.eof and "ready" not in sink.last:
                raise ChildFailed(f"{sink.name} exited: {sink.tail()}")
        now = trio.current_time()
        counters = await seed_counters(dep)
        if counters:
            samples.append((trio.current_time(), counters["links_opened"]))
            if now - last_report >= 10:
                last_report = now
                progress(f"links {links}: {counters['links']} up, "
                         f"{counters['links_closed'] - before.get('links_closed', 0)} closed")
        if all("ready" in s.last for s in sinks):
            return samples
        if now > deadline:
            up = counters.get("links", "?") if counters else "?"
            raise ChildFailed(f"only {up} of {links} links up after "
                              f"{READY_BASE_S + links / READY_PER_S:g} s")
        await trio.sleep(SAMPLE_S)


async def run_links(nursery: trio.Nursery, system: System, dep: Deployment, links: int,
                    logs: Path, settle: float, size: int, check_every: int,
                    progress: Any, max_messages: int | None = None) -> dict[str, Any]:
    """One cell: N links up in waves, RSS per link, then fan-out to all N."""
    pid = dep.pids[0]
    await trio.sleep(settle)
    rss0 = rss_bytes(pid)
    before = await seed_counters(dep)
    procs = link_procs(links)
    per_proc = max(1, IN_FLIGHT // procs)
    messages = min(fanout_messages(links), max_messages or FANOUT_MESSAGES[1])
    lifetime = READY_BASE_S + links / READY_PER_S + 600
    sinks = await start_sinks(nursery, system, dep, logs, links, procs, "fanout", lifetime,
                              check_every=check_every,
                              extra=("--connect-concurrency", str(per_proc)))
    try:
        samples = await _open_links(sinks, dep, before, links, progress)
    except BaseException:
        with trio.CancelScope(shield=True):
            for sink in sinks:
                await sink.stop(grace=5)
        raise
    pressure = cpu_pressure()
    await trio.sleep(settle)
    held: dict[str, int] = {}
    for _ in range(STATUS_TRIES):  # a seed busy with thousands of links may answer late
        held = held or await seed_counters(dep)
    rss1 = rss_bytes(pid)
    row: dict[str, Any] = {
        "system": system.name,
        "links": links,
        "sink_procs": len(split_conns(links, procs)),
        "in_flight": per_proc * procs,
        **handshake_rates(samples),
        "links_held": held.get("links"),
        "closed_while_opening": held.get("links_closed", 0) - before.get("links_closed", 0),
        "handshakes_failed": held.get("handshakes_failed", 0) - before.get("handshakes_failed",
                                                                           0),
        "rss_idle_kib": rss0 // 1024,
        "rss_with_links_kib": rss1 // 1024,
        "per_link_kib": round((rss1 - rss0) / 1024 / links, 2),
        "cpu_pressure_opening": pressure,
    }
    progress(f"links {links}: {row['links_held']} held, {row['handshakes_per_s']} handshakes/s, "
             f"{row['per_link_kib']} KiB per link; fan-out of {messages} messages ...")
    # warm-ups go to every link: at most WARMUP_DELIVERIES/s of them, so that the
    # sinks (which handle them on their general path) keep answering pings
    load = Load(mode="fanout", n=links, size=size, messages=messages, duration=60.0,
                sink_procs=procs, check_every=check_every,
                warmup_interval=max(0.05, links / WARMUP_DELIVERIES),
                idle_end=max(5.0, links / IDLE_DELIVERIES))
    try:
        fan = await run_load(nursery, system, dep, load, logs, sinks=sinks)
    except ChildFailed as exc:
        row["fanout_error"] = str(exc)[:500]
        return row
    status = (fan.get("relay_status") or [None])[0] or {}
    row.update({
        "messages": fan["sent"],
        "expected": fan["expected"],
        "delivered": fan["delivered"],
        "lost": fan["lost"],
        "deliveries_per_s": fan["deliveries_per_s"],
        "messages_per_s": fan["messages_per_s"],
        "hub_cpu_pct": fan.get("hub_cpu_pct"),
        "server_cpu_us_per_delivery": fan.get("server_cpu_us_per_delivery"),
        "checked": fan.get("checked"),
        "check_failed": fan.get("check_failed"),
        "bound": fan.get("bound"),
        "cpu_pressure_fanout": fan.get("cpu_pressure_avg10"),
        "links_after_fanout": status.get("links"),
        "errors": fan.get("errors", []),
    })
    return row


class Links(Scenario):
    name = "links"
    title = "9. links: one relay-only seed holding N links (handshakes, RSS, fan-out to all)"

    async def run(self, ctx: Context) -> ScenarioResult:
        p = ctx.params
        counts = p.link_counts or [p.links]
        result = ScenarioResult(self.name, self.title, "ok", params={
            "links": counts, "links_per_proc": LINKS_PER_PROC, "in_flight": IN_FLIGHT,
            "size": p.latency_size, "settle_s": p.settle, "check_every": p.check_every})
        system = registry()["clawmesh"]
        reason = system.unavailable()
        if reason is not None:
            result.skipped.append({"system": system.name, "reason": reason})
            return result
        for links in counts:
            ctx.progress(f"links {links}: {link_procs(links)} sink processes, "
                         f"{IN_FLIGHT} handshakes in flight at most ...")
            try:
                async with system.deploy(ctx.env(links + 8), 1) as dep:
                    row = await run_links(ctx.nursery, system, dep, links, ctx.logs, p.settle,
                                          p.latency_size, p.check_every, ctx.progress,
                                          p.messages if p.quick else None)
            except ChildFailed as exc:
                row = {"system": system.name, "links": links, "error": str(exc)[:500]}
                ctx.progress(f"links {links}: FAILED {exc}")
            else:
                ctx.progress(f"links {links}: {row.get('deliveries_per_s')} deliveries/s, "
                             f"{row.get('lost')} lost")
            result.rows.append(row)
        result.notes.append(
            "handshakes/s from the seed's own links_opened counter, sampled every "
            f"{SAMPLE_S:g} s (peak: best {PEAK_WINDOW_S:g} s window); the sinks, the "
            "publisher and the seed share this machine's cores")
        return result
