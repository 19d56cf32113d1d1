"""The scenarios, and the registry that makes adding one a matter of one class.

A :class:`Scenario` has a ``name`` (used by ``--scenarios``), a title, an
``unavailable()`` check and ``run(ctx)`` returning a :class:`ScenarioResult`
whose ``rows`` are plain dicts (they go to results.json as they are;
``bench._report`` turns them into a table and a plot). A scenario that cannot
run yet (its package is not written) says why in ``unavailable()``; the run
reports it as "not yet available" instead of inventing numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ._drive import Load, run_footprint, run_load
from ._procs import REPO, Child, ChildFailed, python_cmd
from ._systems import Env, System, registry

SIM_TIMEOUT = 900.0


@dataclass
class Params:
    systems: list[str]
    n: list[int]
    sizes: list[int]
    messages: int
    deliveries: int
    duration: float
    rates: list[float]
    relays: list[int]
    latency_duration: float
    latency_size: int
    latency_n: int
    links: int
    sink_procs: int
    window: int
    settle: float
    dht_nodes: int
    dht_lookups: int
    dht_latency_ms: str
    dht_dead: float
    store_messages: int
    profile: bool
    quick: bool


@dataclass
class ScenarioResult:
    name: str
    title: str
    status: str  # "ok", "not-available" or "error"
    reason: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Context:
    params: Params
    out: Path
    work: Path
    logs: Path
    nursery: trio.Nursery
    progress: Callable[[str], None]

    def env(self, max_links: int = 128) -> Env:
        profiles = self.out / "profiles" if self.params.profile else None
        return Env(self.nursery, self.work, self.logs, max_links, profiles)

    def systems(self, result: ScenarioResult) -> list[System]:
        """The selected systems that can run here; the others go to ``result.skipped``."""
        out: list[System] = []
        for name in self.params.systems:
            system = registry()[name]
            reason = system.unavailable()
            if reason is None:
                out.append(system)
            else:
                result.skipped.append({"system": name, "reason": reason})
        return out


class Scenario:
    name = ""
    title = ""

    def unavailable(self) -> str | None:
        return None

    async def run(self, ctx: Context) -> ScenarioResult:
        raise NotImplementedError


def _warnings(row: dict[str, Any]) -> str:
    out = ""
    if row.get("lost"):
        out += f", LOST {row['lost']}"
    for status in row.get("relay_status") or []:
        refused = ((status or {}).get("counters") or {}).get("refused")
        if refused:
            out += f", relay refused {refused}"
    pressure = row.get("cpu_pressure_avg10")
    if pressure is not None and pressure >= 30:
        out += f"  [machine busy: CPU pressure {pressure:.0f}%]"
    return out


def pressure_note(rows: list[dict[str, Any]]) -> str | None:
    values = [r["cpu_pressure_avg10"] for r in rows if r.get("cpu_pressure_avg10") is not None]
    if not values:
        return None
    return (f"CPU pressure (share of time some task waited for a CPU, last 10 s) at the end "
            f"of the cells: {min(values):.0f}% to {max(values):.0f}%"
            + ("; other processes were competing: wall-clock figures are low, compare ratios"
               if max(values) >= 30 else ""))


def _error_row(system: System, exc: BaseException, **fields: Any) -> dict[str, Any]:
    return {"system": system.name, **fields, "error": str(exc)[:500]}


class Fanout(Scenario):
    name = "fanout"
    title = "1. relay fan-out: 1 publisher -> 1 relay -> N subscribers"

    async def run(self, ctx: Context) -> ScenarioResult:
        p = ctx.params
        result = ScenarioResult(self.name, self.title, "ok", params={
            "n": p.n, "sizes": p.sizes, "messages_max": p.messages,
            "deliveries_per_cell": p.deliveries, "duration_max_s": p.duration,
            "window": p.window, "sink_procs_max": p.sink_procs,
        })
        systems = ctx.systems(result)
        cells = [(s, size, n) for s in systems for size in p.sizes for n in p.n]
        done = 0
        for system in systems:
            mine = [(size, n) for s, size, n in cells if s is system]
            try:
                async with system.deploy(ctx.env(max(p.n) + 8), 1) as dep:
                    for size, n in mine:
                        done += 1
                        messages = min(p.messages, max(50, p.deliveries // n))
                        label = f"fanout {done}/{len(cells)} {system.name} N={n} size={size}"
                        ctx.progress(f"{label}: {messages} messages ...")
                        load = Load("fanout", n, size, messages, p.duration, window=p.window,
                                    sink_procs=p.sink_procs)
                        try:
                            row = await run_load(ctx.nursery, system, dep, load, ctx.logs)
                        except ChildFailed as exc:
                            row = _error_row(system, exc, n=n, size=size)
                            ctx.progress(f"{label}: FAILED {exc}")
                        else:
                            ctx.progress(
                                f"{label}: {row['deliveries_per_s']:,.0f} deliveries/s, "
                                f"relay CPU {row['server_cpu_pct']:.0f}%" + _warnings(row))
                        result.rows.append(row)
            except ChildFailed as exc:
                ctx.progress(f"fanout {system.name}: could not start: {exc}")
                for size, n in mine:
                    if not any(r["system"] == system.name and r.get("n") == n
                               and r.get("size") == size for r in result.rows):
                        result.rows.append(_error_row(system, exc, n=n, size=size))
        note = pressure_note(result.rows)
        if note:
            result.notes.append(note)
        return result


class Latency(Scenario):
    name = "latency"
    title = "2. latency: publish -> deliver at fixed offered rates"

    async def run(self, ctx: Context) -> ScenarioResult:
        p = ctx.params
        result = ScenarioResult(self.name, self.title, "ok", params={
            "rates": p.rates, "relays": p.relays, "duration_s": p.latency_duration,
            "size": p.latency_size, "subscribers": p.latency_n,
        })
        systems = ctx.systems(result)
        total = len(systems) * len(p.relays) * len(p.rates)
        done = 0
        for system in systems:
            for relays in p.relays:
                why = system.line_unavailable() if relays > 1 else None
                if why is not None:
                    result.skipped.append({"system": system.name, "reason": why,
                                           "relays": str(relays)})
                    done += len(p.rates)
                    continue
                try:
                    async with system.deploy(ctx.env(), relays) as dep:
                        for rate in p.rates:
                            done += 1
                            label = (f"latency {done}/{total} {system.name} "
                                     f"relays={relays} rate={rate:g}/s")
                            ctx.progress(f"{label} ...")
                            messages = max(10, int(rate * p.latency_duration))
                            load = Load("latency", p.latency_n, p.latency_size, messages,
                                        p.latency_duration + 1.0, rate=rate, window=p.window,
                                        sink_procs=1, return_samples=True)
                            try:
                                row = await run_load(ctx.nursery, system, dep, load, ctx.logs)
                            except ChildFailed as exc:
                                row = _error_row(system, exc, relays=relays, rate=rate)
                                ctx.progress(f"{label}: FAILED {exc}")
                            else:
                                lat = row["latency_ms"]
                                ctx.progress(
                                    f"{label}: p50 {lat.get('p50', 0):.3f} ms, "
                                    f"p99 {lat.get('p99', 0):.3f} ms" + _warnings(row))
                            result.rows.append(row)
                except ChildFailed as exc:
                    ctx.progress(f"latency {system.name} relays={relays}: could not start: {exc}")
                    for rate in p.rates:
                        result.rows.append(_error_row(system, exc, relays=relays, rate=rate))
        note = pressure_note(result.rows)
        if note:
            result.notes.append(note)
        return result


def _package_missing(package: str, what: str) -> str | None:
    """Why a scenario that needs ``package`` cannot run, or None if it has code."""
    path = REPO / package
    modules = [m for m in path.glob("*.py")] if path.is_dir() else []
    if not modules:
        return f"{package}/ has no code yet ({what} is being written); nothing measured"
    return None


class Footprint(Scenario):
    name = "footprint"
    title = "5. footprint: relay RSS per idle link (and per 1,000 stored messages)"

    async def run(self, ctx: Context) -> ScenarioResult:
        p = ctx.params
        result = ScenarioResult(self.name, self.title, "ok",
                                params={"links": p.links, "settle_s": p.settle})
        systems = ctx.systems(result)
        for i, system in enumerate(systems, 1):
            label = f"footprint {i}/{len(systems)} {system.name} links={p.links}"
            ctx.progress(f"{label} ...")
            try:
                async with system.deploy(ctx.env(p.links + 8), 1) as dep:
                    row = await run_footprint(ctx.nursery, system, dep, p.links, p.sink_procs,
                                              ctx.logs, p.settle)
            except ChildFailed as exc:
                row = _error_row(system, exc, links=p.links)
                ctx.progress(f"{label}: FAILED {exc}")
            else:
                ctx.progress(f"{label}: {row['per_link_kib']} KiB per idle link")
            result.rows.append(row)
        await self._stored(ctx, result)
        return result

    async def _stored(self, ctx: Context, result: ScenarioResult) -> None:
        """Per 1,000 stored messages: the relay does not store yet, so the store alone."""
        p = ctx.params
        missing = _package_missing("store", "the LMDB store")
        if missing is not None:
            result.notes.append(f"per 1,000 stored messages: not yet available: {missing}")
            return
        ctx.progress(f"footprint: store/ alone, {p.store_messages} messages ...")
        cmd = python_cmd("-m", "bench._store", "--messages", str(p.store_messages),
                         "--size", str(p.latency_size))
        child = await Child.start(ctx.nursery, "store", cmd, ctx.logs)
        try:
            done = await child.wait_for("done", SIM_TIMEOUT)
        except ChildFailed as exc:
            result.notes.append(f"per 1,000 stored messages: store/ failed: {exc}")
            return
        finally:
            await child.stop(grace=5)
        done.pop("ev", None)
        result.params["store"] = done
        result.notes.append(
            "per 1,000 stored messages: the relay does not store messages yet; store/ alone "
            f"(MessageStore, LMDB, sync on, {done['messages']} messages of "
            f"{done['wire_bytes_per_message']} B on the wire): "
            f"RSS +{done['rss_per_1000_written_kib']} KiB written, "
            f"+{done['rss_per_1000_after_read_kib']} KiB after reading back; "
            f"LMDB {done['lmdb_used_per_1000_kib']} KiB; "
            f"append {done['append_per_s']:,}/s, read back {done['read_per_s']:,}/s")


class CatchUp(Scenario):
    name = "catchup"
    title = "3. catch-up: a peer returns after missing 100,000 messages"

    def unavailable(self) -> str | None:
        return _package_missing("store", "the LMDB store and catch-up") or (
            "store/ has the LMDB log, but the peer neither stores messages nor serves "
            "catch-up yet, so there is nothing to time (the driver goes in "
            "bench/_scenarios.py, see bench/README.md)"
        )


class Dht(Scenario):
    name = "dht"
    title = "4. DHT: lookup latency and hops in a simulated network"

    def unavailable(self) -> str | None:
        return _package_missing("dht", "the Kademlia DHT")

    async def run(self, ctx: Context) -> ScenarioResult:
        p = ctx.params
        result = ScenarioResult(self.name, self.title, "ok", params={
            "nodes": p.dht_nodes, "lookups": p.dht_lookups,
            "one_way_latency_ms": p.dht_latency_ms, "dead_fraction": p.dht_dead,
        })
        ctx.progress(f"dht: {p.dht_nodes} simulated nodes join, then {p.dht_lookups} lookups ...")
        cmd = python_cmd("-m", "bench._dht", "--nodes", str(p.dht_nodes),
                         "--lookups", str(p.dht_lookups), "--latency-ms", p.dht_latency_ms,
                         "--dead", f"{p.dht_dead:g}")
        child = await Child.start(ctx.nursery, "dht-sim", cmd, ctx.logs)
        try:
            done = await child.wait_for("done", SIM_TIMEOUT)
        except ChildFailed as exc:
            result.status, result.reason = "error", str(exc)
            ctx.progress(f"dht: FAILED {exc}")
            return result
        finally:
            await child.stop(grace=5)
        rows = done.pop("results")
        done.pop("ev", None)
        result.params["simulation"] = done
        result.rows = rows
        for row in rows:
            if row.get("lookups"):
                ctx.progress(
                    f"dht: {row['kind']} p50 {row['latency_ms']['p50']:.0f} ms, "
                    f"{row['hops_mean']} hops, success {row['success']:.0%}")
        result.notes.append(
            f"simulated network: one-way delays {p.dht_latency_ms} ms (virtual time); CPU of "
            f"the whole network per lookup {done.get('cpu_ms_per_lookup')} ms (real); "
            f"building it took {done.get('build_cpu_s')} s CPU and {done.get('build_rpcs')} RPCs")
        return result


SCENARIOS: dict[str, Scenario] = {
    s.name: s for s in (Fanout(), Latency(), CatchUp(), Dht(), Footprint())
}


async def run_scenario(scenario: Scenario, ctx: Context) -> ScenarioResult:
    reason = scenario.unavailable()
    if reason is not None:
        ctx.progress(f"{scenario.name}: not yet available: {reason}")
        return ScenarioResult(scenario.name, scenario.title, "not-available", reason=reason)
    started = trio.current_time()
    try:
        result = await scenario.run(ctx)
    except (ChildFailed, OSError) as exc:
        result = ScenarioResult(scenario.name, scenario.title, "error", reason=str(exc))
    result.seconds = round(trio.current_time() - started, 1)
    return result

