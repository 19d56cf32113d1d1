"""One measurement against a running deployment: start the generator, warm up, run, collect.

The same steps for every system (see ``bench._gen`` for the generator's side):

1. start the sink processes (``n`` connections spread over up to
   ``sink_procs`` processes) and the publisher; wait until each says ``ready``
   (every sink connection subscribed and confirmed by the server);
2. ``warm``: wait until every sink connection has seen a warm-up message, so
   every path through the deployment is open;
3. ``go``: read the CPU time of every server and generator process, pass
   credit to the publisher as the sinks report progress, and stop when every
   sent message arrived everywhere, or nothing arrived for ``idle`` seconds;
4. read the CPU times again and collect the reports.

The hub's CPU (``hub_cpu_pct``) is measured over the interval in which
deliveries arrived (from the first progress report that counted one to the
last that counted more), so the publisher's start and the idle tail do not
dilute it. A fan-out cell whose hub used less than ``SATURATED`` percent of a
core did not measure the hub: ``saturated`` is false and ``bound`` says which
side of the generator was busiest (``sinks``, ``publisher``), ``machine busy``
(none was, and runnable tasks waited for a CPU: the hub did not get its core)
or ``unclear``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from ._procs import (
    Child,
    ChildFailed,
    cpu_pressure,
    cpu_seconds,
    http_get_json,
    python_cmd,
    rss_bytes,
    runqueue_wait_seconds,
)
from ._systems import Deployment, System

READY_TIMEOUT = 90.0
READY_LINKS_PER_S = 10.0  # footprint: one more second to wait for every this many links
WARM_TIMEOUT = 30.0
IDLE_END = 5.0  # seconds without a delivery after the last send: the rest is lost
CHECK_INTERVAL = 0.01
WINDOW_BYTES = 16 * 1024 * 1024
SATURATED = 85.0  # % of one core: a hub below this was not what limited the cell
MIN_WINDOW_S = 0.2  # a shorter active interval says nothing about CPU shares
BUSY_PRESSURE = 30.0  # % of the last 10 s some runnable task waited for a CPU


@dataclass
class Load:
    mode: str  # "fanout" or "latency"
    n: int
    size: int
    messages: int
    duration: float
    rate: float = 0.0
    window: int = 4000  # messages in flight per sink connection at most (see window_for)
    sink_procs: int = 4
    return_samples: bool = False
    check_every: int = 1000  # the counting sinks check one message in this many fully
    hub_nice: int = 0  # != 0: the hub's threads get this nice value while measured
    warmup_interval: float = 0.05  # seconds between warm-up messages (each goes to all n)
    idle_end: float = IDLE_END  # seconds without a delivery after the last send: the end


def renice(pid: int, nice: int) -> str | None:
    """Set the nice value of every thread of ``pid``; why not, or None."""
    try:
        tasks = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        for tid in tasks:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except (OSError, ValueError) as exc:
        return str(exc)
    return None


class ActiveWindow:
    """CPU time of named processes between the first and the last progress with
    deliveries, and for the hub also the time it was runnable but waited for a CPU."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.first: tuple[float, dict[str, float]] | None = None
        self.last: tuple[float, dict[str, float]] | None = None

    def _sample(self, now: float) -> tuple[float, dict[str, float]]:
        sample = {k: cpu_seconds(p) for k, p in self.pids.items()}
        for k, p in self.pids.items():
            if k.startswith("server"):
                sample[k + "-wait"] = runqueue_wait_seconds(p)
        return now, sample

    def note(self, total: int, changed: bool, now: float) -> None:
        if total and self.first is None:
            self.first = self.last = self._sample(now)
        elif total and changed:
            self.last = self._sample(now)

    def percent(self) -> dict[str, float] | None:
        """% of one core per process over the window (a seed's workers summed under
        their server's name); None if it was too short."""
        if self.first is None or self.last is None:
            return None
        span = self.last[0] - self.first[0]
        if span < MIN_WINDOW_S:
            return None
        out: dict[str, float] = {}
        for k, v in self.last[1].items():
            wait = k.endswith("-wait")
            name = k.removesuffix("-wait").split("/")[0] + ("-wait" if wait else "")
            out[name] = out.get(name, 0.0) + 100 * (v - self.first[1][k]) / span
        return out


def bound_of(pct: dict[str, float] | None) -> str:
    """What limited a cell, from the processes' CPU over its active window.

    ``hub``: the hub used >= SATURATED % of a core. ``hub, starved``: it did not,
    but it was runnable (running or waiting for a CPU) that much of the time, so
    it was still what limited the cell; the machine gave it less than a core.
    """
    if pct is None:
        return "too short"
    servers = [(v, pct.get(k + "-wait", 0.0)) for k, v in pct.items()
               if k.startswith("server") and not k.endswith("-wait")]
    if max((cpu for cpu, _ in servers), default=0.0) >= SATURATED:
        return "hub"
    if max((cpu + wait for cpu, wait in servers), default=0.0) >= SATURATED:
        return "hub, starved"
    if pct.get("pub", 0.0) >= SATURATED:
        return "publisher"
    sinks = [v for k, v in pct.items() if "sink" in k]
    if sinks and max(sinks) >= SATURATED:
        return "sinks"
    return "unclear"


def window_for(load: Load) -> int:
    """The credit window: ``load.window`` messages, at most WINDOW_BYTES per subscriber."""
    return max(16, min(load.window, WINDOW_BYTES // (load.size + 256)))


def split_conns(n: int, procs: int) -> list[int]:
    """``n`` connections over at most ``procs`` processes, as evenly as possible."""
    procs = max(1, min(procs, n, math.ceil(n / 8) if n > 8 else 1))
    return [n // procs + (1 if i < n % procs else 0) for i in range(procs)]


def _gen_cmd(role: str, system: System, host: str, port: int, lifetime: float,
             *extra: str) -> list[str]:
    cmd = python_cmd("-m", "bench._gen", role, "--proto", system.proto, "--host", host,
                     "--port", str(port), "--timeout", f"{lifetime:g}", *extra)
    if system.plaintext:
        cmd.append("--plaintext")
    return cmd


async def _stop_children(children: list[Child]) -> None:
    with trio.CancelScope(shield=True):
        for child in children:
            await child.stop(grace=5)


async def start_sinks(nursery: trio.Nursery, system: System, dep: Deployment, logs: Path,
                      n: int, procs: int, mode: str, lifetime: float,
                      return_samples: bool = False, check_every: int = 1000,
                      extra: tuple[str, ...] = ()) -> list[Child]:
    sinks: list[Child] = []
    for i, conns in enumerate(split_conns(n, procs)):
        cmd = _gen_cmd("sink", system, dep.sink[0], dep.sink[1], lifetime,
                       "--conns", str(conns), "--mode", mode,
                       "--check-every", str(check_every), *extra)
        if return_samples:
            cmd.append("--return-samples")
        sinks.append(await Child.start(nursery, f"{system.name}-sink{i}", cmd, logs))
    return sinks


async def _feed_credit_until_done(pub: Child, sinks: list[Child], load: Load, window: int,
                                  t_go: float, active: ActiveWindow) -> None:
    """Grant the publisher credit as the slowest sink advances, until every
    message sent has arrived or deliveries stop (raises ChildFailed)."""
    credit = window
    last_total = -1
    last_change = t_go
    hard_end = t_go + load.duration + 60
    while True:
        with trio.move_on_after(CHECK_INTERVAL):
            await pub.changed()
        progress = [s.last.get("progress", {}) for s in sinks]
        low = min(int(p.get("min", 0)) for p in progress)
        total = sum(int(p.get("sum", 0)) for p in progress)
        if low + window > credit:
            credit = low + window
            await pub.send(f"credit {credit}")
        now = trio.current_time()
        active.note(total, total != last_total, now)
        if total != last_total:
            last_total, last_change = total, now
        if "error" in pub.last:
            raise ChildFailed(f"publisher: {pub.last['error']}")
        sent = pub.last.get("sent")
        if sent is not None:
            expected = int(sent["n"]) * load.n
            if total >= expected or now - last_change > load.idle_end:
                break
        elif now - last_change > load.duration + load.idle_end + 30:
            raise ChildFailed("no progress and the publisher never finished")
        if now > hard_end:
            raise ChildFailed("the run did not finish in time")


async def run_load(nursery: trio.Nursery, system: System, dep: Deployment, load: Load,
                   logs: Path, sinks: list[Child] | None = None) -> dict[str, Any]:
    """Run one load against ``dep``; returns the measurements (raises ChildFailed).
    ``sinks``: sink processes already started (and holding ``load.n`` connections);
    they are stopped at the end like those started here."""
    timeout = READY_TIMEOUT + WARM_TIMEOUT + load.duration + 120
    window = window_for(load)
    children: list[Child] = list(sinks or [])
    try:
        if sinks is None:
            sinks = await start_sinks(nursery, system, dep, logs, load.n, load.sink_procs,
                                      load.mode, timeout, load.return_samples,
                                      load.check_every)
            children += sinks
        pub = await Child.start(
            nursery, f"{system.name}-pub",
            _gen_cmd("pub", system, dep.pub[0], dep.pub[1], timeout,
                     "--mode", load.mode, "--size", str(load.size),
                     "--messages", str(load.messages), "--rate", f"{load.rate:g}",
                     "--duration", f"{load.duration:g}", "--window", str(window),
                     "--warmup-interval", f"{load.warmup_interval:g}"),
            logs,
        )
        children.append(pub)
        for child in children:
            await child.wait_for("ready", READY_TIMEOUT)
        sizes = ",".join(str(int(x)) for x in pub.last["ready"].get("sizes", []))
        for sink in sinks:  # a counting sink says warm only once it has these
            await sink.send(f"expect {sizes}")
        await pub.send("warm")
        for sink in sinks:
            try:
                await sink.wait_for("warm", WARM_TIMEOUT)
            except ChildFailed as exc:
                raise ChildFailed(f"warm-up never reached every sink ({exc})") from None
        measured = {**dep.measured(), "pub": pub.pid, **{s.name: s.pid for s in sinks}}
        cpu0 = {k: cpu_seconds(p) for k, p in measured.items()}
        rss0 = [rss_bytes(p) for p in dep.pids]
        t_go = trio.current_time()
        busy = ActiveWindow(measured)
        reniced = [renice(pid, load.hub_nice) for pid in dep.pids] if load.hub_nice else []
        await pub.send("go")
        await _feed_credit_until_done(pub, sinks, load, window, t_go, busy)
        cpu1 = {k: cpu_seconds(p) for k, p in measured.items()}
        rss1 = [rss_bytes(p) for p in dep.pids]
        t_end = trio.current_time()
        pressure = cpu_pressure()
        relay_status = [await _relay_counters(host, port) for host, port in dep.status]
        for sink in sinks:
            await sink.send("stop")
        done = [await s.wait_for("done", 30) for s in sinks]
        await pub.send("stop")
        sent_ev = pub.last["sent"]
        pub_ready = pub.last["ready"]
    finally:
        await _stop_children(children)
    cpu = {k: cpu1[k] - cpu0[k] for k in measured}
    server_cpu = sum(v for k, v in cpu.items() if k.startswith("server"))
    gen_cpu = sum(v for k, v in cpu.items() if not k.startswith("server"))
    wall = t_end - t_go
    received = sum(int(d["received"]) for d in done)
    t0 = int(sent_ev["t0_ns"])
    last_ns = max(int(d["last_ns"]) for d in done)
    active = (last_ns - t0) / 1e9 if received and last_ns > t0 else 0.0
    errors = [e for d in done for e in d.get("errors", [])]
    relays = len(dep.servers)
    server_pct = 100 * server_cpu / wall if wall else 0.0
    gen_pct = 100 * gen_cpu / wall if wall else 0.0
    errors += _count_errors(done, int(sent_ev["n"]))
    out: dict[str, Any] = {
        "system": system.name,
        "n": load.n,
        "size": load.size,
        "wire_bytes": int(pub_ready.get("wire_bytes", 0)),
        "prepare_s": pub_ready.get("prepare_s"),
        "sent": int(sent_ev["n"]),
        "expected": int(sent_ev["n"]) * load.n,
        "delivered": received,
        "lost": int(sent_ev["n"]) * load.n - received,
        "send_s": sent_ev["send_s"],
        "active_s": round(active, 4),
        "deliveries_per_s": round(received / active, 1) if active else 0.0,
        "messages_per_s": round(int(sent_ev["n"]) / active, 1) if active else 0.0,
        "server_cpu_s": round(server_cpu, 4),
        "server_cpu_pct": round(server_pct, 1),
        "server_cpu_us_per_delivery": round(1e6 * server_cpu / received, 2) if received else None,
        "deliveries_per_server_cpu_s": round(received / server_cpu, 1) if server_cpu else None,
        "server_rss_kib": [r // 1024 for r in rss1],
        "server_rss_growth_kib": [(b - a) // 1024 for a, b in zip(rss0, rss1, strict=True)],
        "generator_cpu_pct": round(gen_pct, 1),
        "cpu_s": {k: round(v, 4) for k, v in cpu.items()},
        **_hub_fields(busy.percent(), pressure),
        "sinks_cpu_us_per_delivery": round(1e6 * sum(
            v for k, v in cpu.items() if "sink" in k) / received, 3) if received else None,
        "checked": sum(int(d.get("checked", 0)) for d in done),
        "check_failed": sum(int(d.get("check_failed", 0)) for d in done),
        "counting": all(d.get("counting") for d in done),
        "hub_nice": load.hub_nice,
        "hub_nice_failed": next((r for r in reniced if r), None),
        "cpu_pressure_avg10": pressure,
        "relay_status": relay_status,
        "sink_procs": len(sinks),
        "window": window,
        "errors": errors[:10],
    }
    if load.mode == "latency":
        lat = _merge_latency(done)
        out.update(lat)
        out["rate"] = load.rate
        out["relays"] = relays
        out["achieved_rate"] = round(int(sent_ev["n"]) / float(sent_ev["send_s"]), 1) \
            if float(sent_ev["send_s"]) else 0.0
        out["publisher_lag_ms"] = {k: round(v / 1e6, 3) for k, v in sent_ev["lag_ns"].items()}
        out["prepare_us"] = {k: round(v / 1e3, 1) for k, v in sent_ev["prepare_ns"].items()}
    return out


def _hub_fields(pct: dict[str, float] | None, pressure: float | None) -> dict[str, Any]:
    """The hub's CPU over the active window, whether it was saturated, and what bound the cell."""
    servers = [v for k, v in (pct or {}).items()
               if k.startswith("server") and not k.endswith("-wait")]
    waits = [v for k, v in (pct or {}).items() if k.startswith("server") and k.endswith("-wait")]
    sinks = [v for k, v in (pct or {}).items() if "sink" in k]
    bound = bound_of(pct)
    if bound == "unclear" and pressure is not None and pressure >= BUSY_PRESSURE:
        bound = "machine busy"  # runnable tasks waited for a CPU: the hub did not get its core
    return {
        "hub_cpu_pct": round(max(servers), 1) if servers else None,
        "hub_wait_pct": round(max(waits), 1) if waits else None,
        "saturated": bound == "hub",
        "hub_bound": bound in ("hub", "hub, starved"),
        "bound": bound,
        "active_cpu_pct": {k: round(v, 1) for k, v in (pct or {}).items()},
        "sinks_cpu_pct": round(sum(sinks), 1) if sinks else None,
        "pub_cpu_pct": round(pct["pub"], 1) if pct and "pub" in pct else None,
    }


def _count_errors(done: list[dict[str, Any]], sent: int) -> list[str]:
    """What the sinks' counts say is wrong: more than was sent, or failed checks."""
    out = []
    for d in done:
        if int(d.get("counts_max", 0)) > sent:
            out.append(f"a sink connection counted {d['counts_max']} messages of {sent} sent")
        if d.get("check_failed"):
            out.append(f"{d['check_failed']} of {d.get('checked')} checked messages failed")
    return out


async def _relay_counters(host: str, port: int) -> dict[str, Any] | None:
    """What a clawmesh relay's /status says about refusals, gossip and its store."""
    status = await http_get_json(host, port, "/status")
    if not isinstance(status, dict):
        return None
    store = status.get("store")
    if isinstance(store, dict):  # the counters, not the per-topic catch-up details
        store = {k: v for k, v in store.items() if k != "catchup"}
    return {"links": status.get("peer_count"), "counters": status.get("counters"),
            "gossip": status.get("gossip"), "store": store}


def _merge_latency(done: list[dict[str, Any]]) -> dict[str, Any]:
    """Latency percentiles over every sink (exact for one sink process, else the worst)."""
    pcts: dict[str, float] = {}
    for d in done:
        for key, value in d.get("latency_ns", {}).items():
            pcts[key] = max(pcts.get(key, 0.0), float(value))
    means = [float(d["latency_mean_ns"]) for d in done if d.get("latency_mean_ns") is not None]
    values: list[float] = [v for d in done for v in d.get("latency_values_us", [])]
    return {
        "latency_ms": {k: round(v / 1e6, 3) for k, v in pcts.items()},
        "latency_mean_ms": round(sum(means) / len(means) / 1e6, 3) if means else None,
        "latency_samples": sum(int(d.get("latency_samples", 0)) for d in done),
        "latency_values_us": values,
    }


async def run_footprint(nursery: trio.Nursery, system: System, dep: Deployment, links: int,
                        sink_procs: int, logs: Path, settle: float) -> dict[str, Any]:
    """RSS of the (single) server before and after ``links`` idle subscribed links."""
    pid = dep.pids[0]
    await trio.sleep(settle)
    rss_before = rss_bytes(pid)
    ready = READY_TIMEOUT + links / READY_LINKS_PER_S  # a loaded box takes longer for many
    timeout = ready + 60 + settle * 3
    sinks = await start_sinks(nursery, system, dep, logs, links, sink_procs, "idle", timeout)
    try:
        for sink in sinks:
            await sink.wait_for("ready", ready)
        await trio.sleep(settle)
        rss_with = rss_bytes(pid)
        for sink in sinks:
            await sink.send("stop")
        for sink in sinks:
            await sink.wait_for("done", 30)
    finally:
        await _stop_children(sinks)
    await trio.sleep(settle)
    rss_after = rss_bytes(pid)
    return {
        "system": system.name,
        "links": links,
        "rss_idle_kib": rss_before // 1024,
        "rss_with_links_kib": rss_with // 1024,
        "rss_after_close_kib": rss_after // 1024,
        "per_link_kib": round((rss_with - rss_before) / 1024 / links, 2) if links else None,
    }
