"""``python -m bench``: parse the flags, run the scenarios, write table, JSON and plots."""

from __future__ import annotations

import argparse
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from . import _machine, _report
from ._procs import cpu_pressure
from ._registry import SCENARIOS, run_scenario
from ._scenarios import Context, Params, ScenarioResult
from ._systems import BASELINE, registry

DEFAULT_OUT = Path(__file__).resolve().parent / "results"

# (full run, --quick): the smoke version must finish in seconds
DEFAULTS: dict[str, tuple[Any, Any]] = {
    "n": ("1,10,100", "3"),
    "sizes": ("300,4096", "300"),
    "messages": (20_000, 200),
    "deliveries": (1_000_000, 600),
    "duration": (4.0, 2.0),
    "rates": ("200,1000", "500"),
    "relays": ("1,3", "2"),
    "latency_duration": (3.0, 0.4),
    "latency_size": (300, 300),
    "latency_n": (1, 1),
    "links": ("100", "2"),
    "sink_procs": (4, 2),
    "check_every": (1000, 16),
    "window": (4000, 4000),
    "settle": (1.0, 0.1),
    "dht_nodes": (500, 30),
    "dht_lookups": (200, 6),
    "dht_latency_ms": ("10,100", "10,100"),
    "dht_dead": (0.0, 0.0),
    "store_messages": (20_000, 1000),
    "catchup_messages": (100_000, 300),
    "catchup_size": (300, 300),
    "fill_rate": (15_000.0, 15_000.0),
    "flood_connections": ("1,8,32", "1,4"),
    "flood_frames": (100_000, 2000),
    "blob_mib": (200, 8),
}
ALWAYS = ("clawmesh", BASELINE)


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"want positive integers: {text!r}")
    return values


def _floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of numbers: {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"want positive numbers: {text!r}")
    return values


def _names(known: Sequence[str]) -> Any:
    def parse(text: str) -> list[str]:
        names = [x.strip() for x in text.split(",") if x.strip()]
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {unknown or text!r}; choose from {', '.join(known)}")
        return names

    return parse


def build_parser() -> argparse.ArgumentParser:
    systems = list(registry())
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark clawmesh relays against raw forwarders, NATS and Redis. "
        "Every peer under test is a real `python -m peer` process with signatures, link "
        "encryption and the message store on. Writes a table, results.json and one "
        "PNG per scenario; see bench/README.md for how to read them.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--scenarios", type=_names(list(SCENARIOS)), default=list(SCENARIOS),
                   metavar="LIST", help=f"comma-separated, from: {', '.join(SCENARIOS)}")
    p.add_argument("--systems", type=_names(systems), default=None, metavar="LIST",
                   help=f"comma-separated, from: {', '.join(systems)} (default: all; those not "
                   "installed, or whose peer flag does not exist yet, are reported as skipped)")
    p.add_argument("--quick", action="store_true",
                   help="the seconds-long smoke version (small N, few messages), as CI runs it")
    p.add_argument("--profile-relay", action="store_true",
                   help="run the clawmesh relays (and catch-up's returning peer) under cProfile "
                   "(slower!) and keep the profiles in OUT/profiles/ (python -m pstats)")
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (default: bench/results/<UTC timestamp>)")
    g = p.add_argument_group("fan-out (scenario 1)")
    g.add_argument("--n", type=_ints, default=None, metavar="LIST",
                   help=f"subscriber counts (default {DEFAULTS['n'][0]}; quick {DEFAULTS['n'][1]})")
    g.add_argument("--sizes", type=_ints, default=None, metavar="LIST",
                   help=f"message body sizes in bytes (default {DEFAULTS['sizes'][0]})")
    g.add_argument("--messages", type=int, default=None,
                   help=f"messages per cell at most (default {DEFAULTS['messages'][0]})")
    g.add_argument("--deliveries", type=int, default=None,
                   help="deliveries per cell: a cell sends min(--messages, this / N) messages "
                   f"(default {DEFAULTS['deliveries'][0]})")
    g.add_argument("--duration", type=float, default=None,
                   help=f"seconds of sending per cell at most (default {DEFAULTS['duration'][0]})")
    g.add_argument("--window", type=int, default=None,
                   help="messages in flight per subscriber at most (default "
                   f"{DEFAULTS['window'][0]}, and at most 16 MiB)")
    g.add_argument("--sink-procs", type=int, default=None,
                   help=f"sink processes at most (default {DEFAULTS['sink_procs'][0]})")
    g.add_argument("--check-every", type=int, default=None, metavar="K",
                   help="the sinks decrypt, decode and verify one measured message in K and "
                   "count the others by their exact size (default "
                   f"{DEFAULTS['check_every'][0]}; quick {DEFAULTS['check_every'][1]})")
    g.add_argument("--hub-nice", type=int, default=0, metavar="NICE",
                   help="on a shared machine: give the hub under test this nice value (e.g. "
                   "-10; below 0 needs root) for the measured part of each fan-out cell, so "
                   "that it gets its core; 0 leaves it alone")
    g = p.add_argument_group("latency (scenario 2)")
    g.add_argument("--rates", type=_floats, default=None, metavar="LIST",
                   help=f"offered rates, messages/s (default {DEFAULTS['rates'][0]})")
    g.add_argument("--relays", type=_ints, default=None, metavar="LIST",
                   help=f"relays in the line (default {DEFAULTS['relays'][0]}: one relay, and a "
                   "line of three relays between publisher and subscriber)")
    g.add_argument("--latency-duration", type=float, default=None,
                   help=f"seconds per rate (default {DEFAULTS['latency_duration'][0]})")
    g.add_argument("--latency-size", type=int, default=None,
                   help=f"body size in bytes (default {DEFAULTS['latency_size'][0]})")
    g.add_argument("--latency-n", type=int, default=None,
                   help=f"subscribers (default {DEFAULTS['latency_n'][0]})")
    g = p.add_argument_group("catch-up (scenario 3)")
    g.add_argument("--catchup-messages", type=int, default=None,
                   help="messages the returning peer missed (default "
                   f"{DEFAULTS['catchup_messages'][0]:,}; quick {DEFAULTS['catchup_messages'][1]})")
    g.add_argument("--catchup-size", type=int, default=None,
                   help=f"their body size in bytes (default {DEFAULTS['catchup_size'][0]})")
    g.add_argument("--fill-rate", type=float, default=None,
                   help="messages/s at most when filling a relay's store (catch-up and "
                   "footprint): below the relay's per-link budget of 20,000 frames/s "
                   f"(default {DEFAULTS['fill_rate'][0]:g})")
    g = p.add_argument_group("footprint (scenario 5)")
    g.add_argument("--links", type=_ints, default=None, metavar="LIST",
                   help="idle subscribed links: footprint takes the first, the links "
                   f"scenario each (default {DEFAULTS['links'][0]}; quick {DEFAULTS['links'][1]})")
    g.add_argument("--settle", type=float, default=None,
                   help=f"seconds to wait before reading RSS (default {DEFAULTS['settle'][0]})")
    g.add_argument("--store-messages", type=int, default=None,
                   help="messages the relay stores (or relays, --no-store) for the per-1,000 "
                   f"figures, and store/ alone the same (default {DEFAULTS['store_messages'][0]})")
    g = p.add_argument_group("DHT (scenario 4)")
    g.add_argument("--dht-nodes", type=int, default=None,
                   help=f"simulated nodes (default {DEFAULTS['dht_nodes'][0]})")
    g.add_argument("--dht-lookups", type=int, default=None,
                   help=f"lookups measured (default {DEFAULTS['dht_lookups'][0]})")
    g.add_argument("--dht-latency-ms", default=None, metavar="LOW,HIGH",
                   help="one-way delay range of the simulated links, ms (default "
                   f"{DEFAULTS['dht_latency_ms'][0]})")
    g.add_argument("--dht-dead", type=float, default=None,
                   help="fraction of nodes that die before the lookups (default 0)")
    g = p.add_argument_group("pre-authentication flood (scenario 6)")
    g.add_argument("--flood-connections", type=_ints, default=None, metavar="LIST",
                   help="flooding connections per cell (default "
                   f"{DEFAULTS['flood_connections'][0]}; "
                   f"quick {DEFAULTS['flood_connections'][1]})")
    g.add_argument("--flood-frames", type=int, default=None,
                   help="empty binary frames each connection sends (default "
                   f"{DEFAULTS['flood_frames'][0]:,}; quick {DEFAULTS['flood_frames'][1]})")
    g = p.add_argument_group("blob (scenario 8)")
    g.add_argument("--blob-mib", type=int, default=None,
                   help=f"size of the file sent (default {DEFAULTS['blob_mib'][0]}; "
                   f"quick {DEFAULTS['blob_mib'][1]})")
    return p


def resolve(args: argparse.Namespace) -> Params:
    pick = 1 if args.quick else 0

    def get(name: str) -> Any:
        value = getattr(args, name)
        if value is not None:
            return value
        default = DEFAULTS[name][pick]
        if name in ("n", "sizes", "relays", "flood_connections", "links"):
            return _ints(default)
        if name == "rates":
            return _floats(default)
        return default

    systems: list[str] = args.systems or list(registry())
    for name in ALWAYS:
        if name not in systems and args.systems is None:
            systems.insert(0, name)
    return Params(
        systems=systems, n=get("n"), sizes=get("sizes"), messages=get("messages"),
        deliveries=get("deliveries"), duration=get("duration"), rates=get("rates"),
        relays=get("relays"), latency_duration=get("latency_duration"),
        latency_size=get("latency_size"), latency_n=get("latency_n"), links=get("links")[0],
        sink_procs=get("sink_procs"), window=get("window"), settle=get("settle"),
        dht_nodes=get("dht_nodes"), dht_lookups=get("dht_lookups"),
        dht_latency_ms=get("dht_latency_ms"), dht_dead=get("dht_dead"),
        store_messages=get("store_messages"), catchup_messages=get("catchup_messages"),
        catchup_size=get("catchup_size"), fill_rate=get("fill_rate"),
        flood_connections=get("flood_connections"), flood_frames=get("flood_frames"),
        profile=args.profile_relay, quick=args.quick, check_every=max(1, get("check_every")),
        hub_nice=args.hub_nice, blob_mib=get("blob_mib"), link_counts=get("links"),
    )


class Progress:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, message: str) -> None:
        elapsed = int(time.monotonic() - self.start)
        print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {message}", file=sys.stderr, flush=True)


async def run_all(params: Params, names: list[str], out: Path, progress: Progress,
                  interrupted: list[str]) -> list[ScenarioResult]:
    """Run the scenarios in order; SIGINT or SIGTERM stops the run (children are stopped)."""
    results: list[ScenarioResult] = []
    work = Path(tempfile.mkdtemp(prefix="clawmesh-bench-"))

    async def watch(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
        async for signum in signals:
            interrupted.append(signal.Signals(signum).name)
            progress(f"{interrupted[-1]}: stopping (processes are being shut down)")
            scope.cancel()
            return

    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                ctx = Context(params, out, work, out / "logs", nursery, progress)
                nursery.start_soon(watch, signals, nursery.cancel_scope)
                for name in names:
                    results.append(await run_scenario(SCENARIOS[name], ctx))
                nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit (children inherit it:
    a relay holding thousands of links needs a descriptor per link, and the sink
    processes one per connection); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    raise_fd_limit()
    params = resolve(args)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out: Path = args.out or DEFAULT_OUT / stamp
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress()
    machine = _machine.describe()
    progress(f"clawmesh bench -> {out}  ({machine['cores']} cores, {machine['cpu_model']}, "
             f"load {machine['load_average_start']}, "
             f"CPU pressure {machine['cpu_pressure_start']}%)")
    systems: dict[str, Any] = {}
    for name in params.systems:
        system = registry()[name]
        reason = system.unavailable()
        systems[name] = {"label": system.label, "role": system.role, "protocol": system.proto,
                         "available": reason is None, "reason": reason,
                         "version": system.version() if reason is None else None}
        progress(f"system {name}: " + ("ok " + systems[name]["version"] if reason is None
                                         else f"skipped: {reason}"))
    started = datetime.now(UTC).isoformat(timespec="seconds")
    interrupted: list[str] = []
    results = trio.run(run_all, params, list(args.scenarios), out, progress, interrupted)
    machine["load_average_end"] = _machine.load_average()
    machine["cpu_pressure_end"] = cpu_pressure()
    dirty = "+dirty" if machine["git_dirty"] else ""
    caption = (f"{machine['cpu_model']}, {machine['cores']} cores, "
               f"load {machine['load_average_start']}; "
               f"commit {str(machine['git_commit'])[:10]}{dirty}; {started}. "
               "Compare within one run.")
    plots: dict[str, str] = {}
    if not _report.have_matplotlib():
        progress("matplotlib is not installed: no plots (pip install matplotlib, or the "
                 "project's bench extra)")
    for res in results:
        path = _report.plot(res, out, caption)
        if path is not None:
            plots[res.name] = path.name
    document = {
        "format": "clawmesh-bench/1",
        "started": started,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": ["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)],
        "quick": params.quick,
        "interrupted": interrupted[0] if interrupted else None,
        "baseline": BASELINE,
        "machine": machine,
        "systems": systems,
        "params": params.__dict__,
        "scenarios": _report.to_json(results),
        "plots": plots,
    }
    _report.write_json(out / "results.json", document)
    print()
    print(f"clawmesh bench  {started}  {machine['cores']} cores  {machine['cpu_model']}  "
          f"load {machine['load_average_start']} -> {machine['load_average_end']}")
    print()
    print(_report.render(results))
    print(f"results: {out / 'results.json'}")
    for name in plots.values():
        print(f"plot:    {out / name}")
    if interrupted:
        print(f"bench: interrupted by {interrupted[0]}: the results above are partial",
              file=sys.stderr)
        return 130
    failed = any(r.status == "error" for r in results)
    return 1 if failed else 0
