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

from peer.wire._limits import MAX_PAGE_MESSAGES  # envelopes per catch-up page: the append batch

from ._blob import run_blob
from ._catchup import FILL_WINDOW, disk_bytes, fill, run_catchup, store_dir
from ._ceiling import apply_ceilings
from ._drive import Load, run_footprint, run_load
from ._live import run_live
from ._preauth import BASELINE_SECONDS, QUICK_BASELINE, run_preauth
from ._procs import REPO, Child, ChildFailed, cpu_pressure, python_cmd, rss_bytes
from ._systems import Clawmesh, Deployment, Env, System, peer_help, registry

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
    links: int  # footprint: the first of --links; the links scenario: each of link_counts
    sink_procs: int
    window: int
    settle: float
    dht_nodes: int
    dht_lookups: int
    dht_latency_ms: str
    dht_dead: float
    store_messages: int
    catchup_messages: int
    catchup_size: int
    fill_rate: float
    flood_connections: list[int]
    flood_frames: int
    profile: bool
    quick: bool
    check_every: int = 1000
    hub_nice: int = 0
    blob_mib: int = 200
    link_counts: list[int] = field(default_factory=list)


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
            reason = system.unavailable() or system.scenario_unavailable(result.name)
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
        store = (status or {}).get("store") or {}
        if store.get("dropped") or store.get("errors"):
            out += (f", relay store dropped {store.get('dropped')} "
                    f"(errors {store.get('errors')})")
    pressure = row.get("cpu_pressure_avg10")
    if pressure is not None and pressure >= 30:
        out += f"  [machine busy: CPU pressure {pressure:.0f}%]"
    return out


def hub_note(row: dict[str, Any]) -> str:
    """The hub's CPU over the cell's active interval, and a flag if it was not saturated."""
    hub = row.get("hub_cpu_pct")
    text = "hub CPU " + ("?" if hub is None else f"{hub:.0f}%")
    if row.get("hub_wait_pct"):
        text += f" (+{row['hub_wait_pct']:.0f}% waiting for a CPU)"
    if not row.get("saturated"):
        text += f" NOT SATURATED (bound: {row.get('bound')})"
    return text


def pressure_note(rows: list[dict[str, Any]]) -> str | None:
    values = [r["cpu_pressure_avg10"] for r in rows if r.get("cpu_pressure_avg10") is not None]
    if not values:
        return None
    return (f"CPU pressure (share of time some task waited for a CPU, last 10 s) at the end "
            f"of the cells: {min(values):.0f}% to {max(values):.0f}%"
            + ("; other processes were competing: wall-clock figures are low, compare ratios"
               if max(values) >= 30 else ""))


def store_cost_note(rows: list[dict[str, Any]], keys: tuple[str, ...], metric: str,
                    label: str) -> str | None:
    """What the store costs: ``metric`` of clawmesh over clawmesh-nostore, per cell."""
    cells: dict[tuple[Any, ...], dict[str, float]] = {}
    for r in rows:
        if r["system"] in ("clawmesh", "clawmesh-nostore") and r.get(metric):
            cells.setdefault(tuple(r.get(k) for k in keys), {})[r["system"]] = float(r[metric])
    parts = []
    for cell, values in cells.items():
        if len(values) == 2:
            where = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in zip(keys, cell, strict=True))
            parts.append(f"{where}: {values['clawmesh'] / values['clawmesh-nostore']:.2f}x")
    if not parts:
        return None
    return f"the store's cost, clawmesh / clawmesh-nostore {label}: " + "; ".join(parts)


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
                                    sink_procs=p.sink_procs, check_every=p.check_every,
                                    hub_nice=p.hub_nice)
                        try:
                            row = await run_load(ctx.nursery, system, dep, load, ctx.logs)
                        except ChildFailed as exc:
                            row = _error_row(system, exc, n=n, size=size)
                            ctx.progress(f"{label}: FAILED {exc}")
                        else:
                            ctx.progress(f"{label}: {row['deliveries_per_s']:,.0f} deliveries/s, "
                                         + hub_note(row) + _warnings(row))
                        result.rows.append(row)
            except ChildFailed as exc:
                ctx.progress(f"fanout {system.name}: could not start: {exc}")
                for size, n in mine:
                    if not any(r["system"] == system.name and r.get("n") == n
                               and r.get("size") == size for r in result.rows):
                        result.rows.append(_error_row(system, exc, n=n, size=size))
        result.notes += apply_ceilings(result.rows)
        note = store_cost_note(result.rows, ("n", "size"), "server_cpu_us_per_delivery",
                               "in relay CPU per delivery (same run)")
        if note:
            result.notes.append(note)
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
        note = store_cost_note(result.rows, ("relays", "rate"), "server_cpu_s",
                               "in relay CPU at the same offered rate (same run)")
        if note:
            result.notes.append(note)
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


# per 1,000 stored messages: with the store and without (the other variants store the same)
STORED_FOOTPRINT = ("clawmesh", "clawmesh-nostore")


class Footprint(Scenario):
    name = "footprint"
    title = "5. footprint: relay RSS per idle link and per 1,000 stored messages"

    async def run(self, ctx: Context) -> ScenarioResult:
        p = ctx.params
        result = ScenarioResult(self.name, self.title, "ok", params={
            "links": p.links, "settle_s": p.settle, "stored_messages": p.store_messages,
            "size": p.latency_size})
        systems = ctx.systems(result)
        for i, system in enumerate(systems, 1):
            label = f"footprint {i}/{len(systems)} {system.name} links={p.links}"
            ctx.progress(f"{label} ...")
            try:
                async with system.deploy(ctx.env(p.links + 8), 1) as dep:
                    row = await run_footprint(ctx.nursery, system, dep, p.links, p.sink_procs,
                                              ctx.logs, p.settle)
                    ctx.progress(f"{label}: {row['per_link_kib']} KiB per idle link")
                    if system.name in STORED_FOOTPRINT:
                        assert isinstance(system, Clawmesh)
                        try:
                            row.update(await self._messages(ctx, system, dep))
                        except ChildFailed as exc:
                            row["messages_error"] = str(exc)[:500]
                            ctx.progress(f"{label}: stored messages FAILED {exc}")
            except ChildFailed as exc:
                row = _error_row(system, exc, links=p.links)
                ctx.progress(f"{label}: FAILED {exc}")
            result.rows.append(row)
        await self._store_alone(ctx, result)
        return result

    async def _messages(self, ctx: Context, system: Clawmesh,
                        dep: Deployment) -> dict[str, Any]:
        """RSS and disk of the relay before and after it took ``--store-messages`` messages."""
        p = ctx.params
        n = p.store_messages
        what = "stored" if system.stores else "relayed (no store)"
        ctx.progress(f"footprint {system.name}: {n} messages {what} ...")
        pid, home = dep.pids[0], dep.homes[0]
        disk0 = disk_bytes(store_dir(home))
        rss0 = rss_bytes(pid)
        filled = await fill(ctx.nursery, system, dep, ctx.logs, n, p.latency_size, p.fill_rate,
                            FILL_WINDOW)
        await trio.sleep(p.settle)
        rss1 = rss_bytes(pid)
        disk1 = disk_bytes(store_dir(home))
        taken = filled["taken"] or 1
        out = {
            "stored_messages": taken if system.stores else 0,
            "relayed_messages": taken,
            "rss_before_messages_kib": rss0 // 1024,
            "rss_after_messages_kib": rss1 // 1024,
            "rss_per_1000_messages_kib": round((rss1 - rss0) / 1024 * 1000 / taken, 1),
            "disk_per_1000_messages_kib": round((disk1 - disk0) / 1024 * 1000 / taken, 1),
            "store_disk_kib": disk1 // 1024,
            "fill": filled,
        }
        ctx.progress(f"footprint {system.name}: RSS +{out['rss_per_1000_messages_kib']} KiB, "
                     f"disk +{out['disk_per_1000_messages_kib']} KiB per 1,000 {what}")
        return out

    async def _store_alone(self, ctx: Context, result: ScenarioResult) -> None:
        """The same per-1,000 figures for store/ on its own, for reference."""
        p = ctx.params
        missing = _package_missing("store", "the LMDB store")
        if missing is not None:
            result.notes.append(f"store/ alone: not available: {missing}")
            return
        ctx.progress(f"footprint: store/ alone, {p.store_messages} messages ...")
        try:
            done = await store_baseline(ctx, p.store_messages, p.latency_size, 256)
        except ChildFailed as exc:
            result.notes.append(f"store/ alone: failed: {exc}")
            return
        result.params["store_alone"] = done
        result.notes.append(
            "store/ alone, for reference (MessageStore in one process, LMDB, sync on, "
            f"batches of 256, {done['messages']} messages of {done['wire_bytes_per_message']} B "
            f"on the wire): RSS +{done['rss_per_1000_written_kib']} KiB per 1,000 written "
            f"(+{done['rss_per_1000_after_read_kib']} KiB after reading back), LMDB "
            f"{done['lmdb_used_per_1000_kib']} KiB per 1,000; append {done['append_per_s']:,}/s, "
            f"read back {done['read_per_s']:,}/s")


async def store_baseline(ctx: Context, messages: int, size: int, batch: int) -> dict[str, Any]:
    """Run ``bench._store`` (the store and envelope checks alone); its JSON result."""
    cmd = python_cmd("-m", "bench._store", "--messages", str(messages), "--size", str(size),
                     "--batch", str(batch))
    child = await Child.start(ctx.nursery, f"store-{messages}-{batch}", cmd, ctx.logs)
    try:
        done = dict(await child.wait_for("done", SIM_TIMEOUT))
    finally:
        await child.stop(grace=5)
    done.pop("ev", None)
    return done


CATCHUP_TARGET = 50_000  # msg/s, the target


class CatchUp(Scenario):
    name = "catchup"
    title = "3. catch-up: a peer returns after missing N messages"

    def unavailable(self) -> str | None:
        if "--no-store" not in peer_help():
            return "the peer has no message store (no --no-store flag in python -m peer)"
        return None

    async def run(self, ctx: Context) -> ScenarioResult:
        p = ctx.params
        n, size = p.catchup_messages, p.catchup_size
        result = ScenarioResult(self.name, self.title, "ok", params={
            "messages": n, "size": size, "fill_rate": p.fill_rate, "fill_window": FILL_WINDOW,
            "target_per_s": CATCHUP_TARGET})
        systems: list[Clawmesh] = []
        for system in ctx.systems(result):
            if not isinstance(system, Clawmesh):
                result.skipped.append({"system": system.name,
                                       "reason": "pub/sub without a store: nothing to catch up"})
            elif not system.stores:
                result.skipped.append({"system": system.name,
                                       "reason": "stores nothing: nothing to catch up from"})
            else:
                systems.append(system)
        if p.quick and len(systems) > 1:  # the smoke run checks that it works, once
            result.notes.append("--quick: only " + systems[0].name + "; not run: "
                                + ", ".join(s.name for s in systems[1:]))
            systems = systems[:1]
        if not systems:
            return result
        ctx.progress(f"catchup: baselines, store/ and envelope checks alone, {n} messages ...")
        try:
            base = await store_baseline(ctx, n, size, MAX_PAGE_MESSAGES)
        except ChildFailed as exc:
            base = {}
            result.notes.append(f"baselines failed: {exc}")
        result.params["baseline"] = base
        for i, system in enumerate(systems, 1):
            label = f"catchup {i}/{len(systems)} {system.name}"
            ctx.progress(f"{label}: seed, {n} messages while the peer is away ...")
            try:
                row = await run_catchup(ctx.env(), system, n, size, p.fill_rate, FILL_WINDOW,
                                        f"cu{i}")
            except ChildFailed as exc:
                row = _error_row(system, exc, messages=n, size=size)
                ctx.progress(f"{label}: FAILED {exc}")
            else:
                rate = row["catchup_per_s"]
                for key, base_key in (("vs_replay", "read_per_s"),
                                      ("vs_append", "append_per_s"),
                                      ("vs_verify", "verify_per_s")):
                    row[key] = round(rate / base[base_key], 3) \
                        if rate and base.get(base_key) else None
                row["vs_target"] = round(rate / CATCHUP_TARGET, 3) if rate else None
                ctx.progress(
                    f"{label}: {row['received']:,} messages in {row['catchup_s']} s = "
                    f"{rate or 0:,} msg/s ({row['vs_replay']}x store replay); the seed took "
                    f"them at {row['fill']['relay_per_s']:,}/s")
            row["cpu_pressure_avg10"] = cpu_pressure()
            row["baseline"] = base
            result.rows.append(row)
        if base:
            result.notes.append(
                f"baselines in this run, one process, the same {base['messages']:,} envelopes "
                f"({base['wire_bytes_per_message']} B): store replay (MessageStore.read, pages "
                f"of {MAX_PAGE_MESSAGES}) {base['read_per_s']:,}/s; LMDB append (group commit, "
                f"{MAX_PAGE_MESSAGES} per commit, fsync) {base['append_per_s']:,}/s; envelope "
                f"check with signature {base['verify_per_s']:,}/s, without "
                f"{base['parse_per_s']:,}/s (one core)")
        note = pressure_note(result.rows)
        if note:
            result.notes.append(note)
        return result


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


class Preauth(Scenario):
    name = "preauth"
    title = "6. pre-authentication flood: /status latency while refused connections flood"

    async def run(self, ctx: Context) -> ScenarioResult:
        p = ctx.params
        baseline = QUICK_BASELINE if p.quick else BASELINE_SECONDS
        result = ScenarioResult(self.name, self.title, "ok", params={
            "connections": ",".join(map(str, p.flood_connections)), "frames": p.flood_frames,
            "baseline_s": baseline})
        systems = [s for s in ctx.systems(result) if isinstance(s, Clawmesh) and not s.flags]
        if not systems:
            return result
        result.rows = await run_preauth(ctx.env(), systems[0], p.flood_connections,
                                        p.flood_frames, ctx.progress, baseline)
        result.notes.append(
            "each connection upgrades, then sends empty binary frames as fast as it can; the "
            "first one is already refused. 'taken' is what the kernel accepted before the peer "
            "closed (socket buffers included), so it bounds what the peer read from above")
        note = pressure_note(result.rows)
        if note:
            result.notes.append(note)
        return result


class Live(Scenario):
    name = "live"
    title = "7. live delivery to an agent: /send -> SSE stream vs long-poll, via one relay"

    async def run(self, ctx: Context) -> ScenarioResult:
        messages, gap = (40, 0.02) if ctx.params.quick else (500, 0.02)
        result = ScenarioResult(self.name, self.title, "ok",
                                params={"messages": messages, "gap_s": gap, "relays": 1})
        ctx.progress(f"live: {messages} messages, SSE and long-poll on the same peer ...")
        result.rows = await run_live(ctx.nursery, ctx.work, ctx.logs, messages, gap,
                                     ctx.progress)
        for row in result.rows:
            lat = row["latency_ms"]
            ctx.progress(f"live: {row['path']} p50 {lat['p50']} ms, p99 {lat['p99']} ms")
        result.notes.append(
            "both readers wait on the same receiving peer for the same messages; latency "
            "runs from before POST /send on the sender to the parsed message at the reader")
        return result


class Blob(Scenario):
    name = "blob"
    title = "8. attachment (blob) throughput through one relay vs a plain HTTP download"

    async def run(self, ctx: Context) -> ScenarioResult:
        mib = ctx.params.blob_mib
        result = ScenarioResult(self.name, self.title, "ok", params={"mib": mib, "relays": 1})
        ctx.progress(f"blob: {mib} MiB, plain HTTP first, then A -> relay -> B ...")
        result.rows = await run_blob(ctx.nursery, ctx.work, ctx.logs, mib, ctx.progress)
        result.notes.append(
            "both downloads are checked by SHA-256; the blob is fetched chunk by chunk over "
            "the mesh (verified, stored on B) as B's API streams it")
        return result
