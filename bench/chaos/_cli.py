"""``python -m bench.chaos``: start a mesh of real peers, storm it, break it, check it.

Each scenario runs on a fresh mesh (its own temporary homes and ports):
boot the seeds and peers, wait until every peer knows the seeds, start the
storm, run the scenario's faults until they stop by themselves, stop the
storm, let the mesh settle (bounded), then check every acknowledged message
against every agent's inbox. Prints one table row per scenario and writes
``results.json``; exits 1 if any acknowledged message was lost or handed
to an agent twice, 2 if the harness itself failed.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import trio

from .. import _machine
from . import _faults, _netns
from ._check import check, settle, summary
from ._cluster import Cluster, boot, plan
from ._flood import FloodLog, FloodPlan, flood, flood_table, latency_split
from ._load import Storm
from ._netns import Lab
from ._proxy import FaultProxy, Loss

SCENARIOS = ("churn", "offline", "partition", "loss", "flood")
BROKEN = ("partition", "loss")  # links broken by the proxy or by nftables (--net)
NETS = ("proxy", "netns")
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "results"
COLUMNS = ("scenario", "net", "dht", "faults", "acked", "expected", "delivered", "lost",
           "duplicated", "reordered", "late", "missed", "settle_s", "p50_ms", "p99_ms")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.chaos",
        description="Fault harness: real peers and relay-only seeds on loopback, a publishing "
        "storm through POST /send, kill -9 churn, offline spells, partitions and lossy links "
        "(a Trio TCP fault proxy, or network namespaces with nftables), a flood from a hostile "
        "peer, then a check of every acknowledged message against every "
        "agent's inbox. See bench/README.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated, from: {', '.join(SCENARIOS)}")
    p.add_argument("--peers", type=int, default=10, help="subscribing, relaying peers (agents)")
    p.add_argument("--seeds", type=int, default=3, help="relay-only seeds")
    p.add_argument("--publishers", type=int, default=10, help="concurrent /send clients")
    p.add_argument("--channels", type=int, default=1, help="channels, every peer on all")
    p.add_argument("--rate", type=float, default=40.0, help="messages/s, all publishers together")
    p.add_argument("--max-messages", type=int, default=30_000,
                   help="acknowledged messages per scenario at most (inboxes hold 100,000)")
    p.add_argument("--no-dht", action="store_true",
                   help="peers without the DHT (with --net proxy, partition and loss always are)")
    p.add_argument("--net", choices=NETS, default="proxy",
                   help="partition and loss: the Trio fault proxy (no root; no DHT there), or "
                   "a network namespace per node with nftables drops (root, ip, nft; the DHT can "
                   "stay on); netns falls back to the proxy, with a note, where unavailable")
    p.add_argument("--kills", type=int, default=1000, help="churn: kill -9s of seeds and peers")
    p.add_argument("--parallel", type=int, default=3, help="churn/offline: concurrent killers")
    p.add_argument("--kill-gap", type=float, default=0.5, help="wait 0..this s before a kill")
    p.add_argument("--down", type=float, default=1.5, help="churn: a node stays down 0.1..this s")
    p.add_argument("--spells", type=int, default=200, help="offline: subscriber offline spells")
    p.add_argument("--spell", type=float, default=5.0, help="offline: a spell lasts 0.5..this s")
    p.add_argument("--partitions", type=int, default=1, help="partition: how many")
    p.add_argument("--partition-s", type=float, default=30.0, help="partition: seconds each")
    p.add_argument("--loss-s", type=float, default=60.0, help="loss: seconds of lossy links")
    p.add_argument("--reset-p", type=float, default=0.05,
                   help="loss: chance per connection per 0.5 s of a reset")
    p.add_argument("--stall-p", type=float, default=0.10,
                   help="loss: chance per connection per 0.5 s of a 0.2-2 s stall")
    p.add_argument("--loss-pct", type=int, default=10,
                   help="loss with --net netns: packets dropped per hundred, on every link")
    p.add_argument("--flood-s", type=float, default=30.0,
                   help="flood: seconds of baseline, then as many of flood")
    p.add_argument("--flood-x", type=float, default=10.0,
                   help="flood: the flooder publishes this many times --flood-author-rate")
    p.add_argument("--flood-author-rate", type=float, default=50.0,
                   help="flood: every node's --author-rate (the peer's default 1000/s would need "
                   "a flooder signing 10,000 messages/s)")
    p.add_argument("--flood-author-burst", type=float, default=200.0,
                   help="flood: every node's --author-burst")
    p.add_argument("--max-s", type=float, default=1800.0, help="faults stop after this, at most")
    p.add_argument("--settle", type=float, default=30.0, help="seconds to wait for convergence")
    p.add_argument("--late-s", type=float, default=10.0, help="late: received this long after ack")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: time)")
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (default: bench/results/chaos-<UTC timestamp>)")
    p.add_argument("--keep", action="store_true", help="keep the peers' homes and logs in OUT")
    return p


def fault_plan(a: argparse.Namespace) -> _faults.FaultPlan:
    return _faults.FaultPlan(
        kills=a.kills, parallel=a.parallel, kill_gap_s=a.kill_gap, down_s=a.down,
        spells=a.spells, spell_s=a.spell, partitions=a.partitions, partition_s=a.partition_s,
        loss_s=a.loss_s, reset_p=a.reset_p, stall_p=a.stall_p, loss_pct=a.loss_pct,
        max_s=a.max_s,
    )  # fmt: skip


def flood_plan(a: argparse.Namespace) -> FloodPlan:
    return FloodPlan(seconds=a.flood_s, times=a.flood_x, author_rate=a.flood_author_rate,
                     author_burst=a.flood_author_burst)  # fmt: skip


async def _faults_for(
    name: str, cluster: Cluster, a: argparse.Namespace, breaker: _faults.Breaker | None,
    rng: random.Random,
) -> _faults.FaultLog:  # fmt: skip
    fp = fault_plan(a)
    if name == "churn":
        return await _faults.churn(cluster, fp, rng)
    if name == "offline":
        return await _faults.offline(cluster, fp, rng)
    if name == "flood":
        home = cluster.peers[0].home.parent / "flooder"
        return await flood(cluster, flood_plan(a), cluster.peers[0].channels[0], str(home))
    assert breaker is not None
    if name == "partition":
        return await _faults.partition(cluster, fp, breaker, rng)
    return await _faults.loss(cluster, fp, breaker, rng)


def _place(cluster: Cluster, name: str, a: argparse.Namespace, lab: Lab | None) -> None:
    """Put each node in its namespace (netns mode); the flood's limits on every node."""
    if lab is not None:
        lab.open([n.name for n in cluster.nodes])
        for node in cluster.nodes:
            node.host, node.wrap = lab.addresses[node.name], lab.wrap(node.name)
    if name == "flood":
        for node in cluster.nodes:
            node.extra = flood_plan(a).node_flags()


def _breaker(
    a: argparse.Namespace, proxy: FaultProxy | None, lab: Lab | None
) -> _faults.Breaker | None:
    if lab is not None:
        return _faults.NetnsBreaker(lab, a.loss_pct)
    return _faults.ProxyBreaker(proxy, Loss(a.reset_p, a.stall_p)) if proxy else None


async def _meshed(cluster: Cluster) -> None:
    """Every peer knows every seed online (a long-poll on /peers)."""
    want = len(cluster.seeds)
    with trio.fail_after(60):
        for node in cluster.peers:
            r = await cluster.client.get(
                node.api + "/peers", params={"online": "true", "min": str(want), "wait": "50"},
                headers=node.headers(), timeout=70,
            )  # fmt: skip
            r.raise_for_status()


async def run_scenario(name: str, a: argparse.Namespace, root: Path, seed: int) -> dict[str, Any]:
    rng = random.Random(f"{seed}-{name}")
    channels = tuple(f"chaos{i}" for i in range(a.channels))
    started = time.monotonic()
    lab = Lab() if name in BROKEN and a.net == "netns" else None
    # trust_env off: no HTTP proxy from the environment between the harness and the nodes
    async with httpx.AsyncClient(trust_env=False) as client, trio.open_nursery() as nursery:
        proxy = FaultProxy(nursery, rng) if name in BROKEN and lab is None else None
        breaker = _breaker(a, proxy, lab)
        cluster = plan(root / name, seeds=a.seeds, peers=a.peers, channels=channels,
                       no_dht=a.no_dht or proxy is not None, client=client)  # fmt: skip
        try:
            _place(cluster, name, a, lab)
            await boot(cluster, proxy)
            await _meshed(cluster)
            storm = Storm(cluster, channels, a.publishers, a.rate, a.max_messages)
            async with trio.open_nursery() as inner:
                inner.start_soon(storm.run)
                log = await _faults_for(name, cluster, a, breaker, rng)
                faults_end_ms = int(time.time() * 1000)
                storm.stop.set()
            settle_s = await settle(cluster, storm.acks, a.settle)
            verdicts = await check(cluster, storm.acks, faults_end_ms, a.late_s)
        finally:
            cluster.stop()
            if lab is not None:
                lab.close()
            nursery.cancel_scope.cancel()
    routed = sum(1 for x in storm.acks if x.routed)
    return {
        "scenario": name,
        "net": "netns" if lab else "proxy" if proxy else "loopback",
        "dht": not cluster.nodes[0].no_dht,
        "flood": latency_split(verdicts, log) if isinstance(log, FloodLog) else None,
        "summary": summary(verdicts),
        "faults": log.to_json(),
        "breaker": breaker.stats() if breaker else None,
        "storm": {"acked": len(storm.acks), "acked_unrouted": len(storm.acks) - routed,
                  "failed": storm.failed, "refused": storm.refused},
        "settle_s": round(settle_s, 1),
        "seconds": round(time.monotonic() - started, 1),
        "restarts": {n.name: n.kills for n in cluster.nodes},
        "agents": [v.to_json() for v in verdicts],
    }


def _row(r: dict[str, Any]) -> list[str]:
    s = r["summary"]
    return [r["scenario"], r["net"], "on" if r["dht"] else "off", str(r["faults"]["done"]),
            str(r["storm"]["acked"]),
            *(str(s[k]) for k in ("expected", "delivered", "lost", "duplicated", "reordered",
                                  "late", "missed")),
            str(r["settle_s"]), str(s["latency_p50_ms"]), str(s["latency_p99_ms"])]  # fmt: skip


def table(results: list[dict[str, Any]]) -> str:
    rows = [list(COLUMNS), *(_row(r) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    a = parser.parse_args(argv)
    names = [x.strip() for x in a.scenarios.split(",") if x.strip()]
    if not names or any(n not in SCENARIOS for n in names):
        parser.error(f"--scenarios: choose from {', '.join(SCENARIOS)}")
    if a.peers < 2 or a.seeds < 1 or a.publishers < 1 or a.rate <= 0 or a.channels < 1:
        parser.error("want --peers >= 2, --seeds >= 1, --publishers >= 1, --rate > 0")
    a.scenarios = names
    a.net_note = _choose_net(a)
    return a


def _choose_net(a: argparse.Namespace) -> str | None:
    """``--net netns``: check it can run here (else fall back to the proxy, and say
    so) and remove the namespaces of earlier harnesses that were killed."""
    if a.net != "netns" or not set(a.scenarios) & set(BROKEN):
        return None
    why = _netns.unavailable()
    if why is not None:
        a.net = "proxy"
        note = f"--net netns is not available here ({why}): partition and loss use the proxy"
        print(f"chaos: {note}", file=sys.stderr, flush=True)
        return note
    stale = _netns.clean_stale()
    if stale:
        print(f"chaos: removed {len(stale)} stale namespaces of a killed harness", file=sys.stderr)
    return None


def _as_sigint(signum: int, frame: object) -> None:
    signal.raise_signal(signal.SIGINT)


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM stop the run through the same path: Trio's own SIGINT
    handling cancels the scenario, so its ``finally`` stops the peers and removes
    the namespaces (a KeyboardInterrupt raised anywhere else could land inside
    Trio's run loop and skip them). SIGINT is restored too: a shell starts a
    background job with it ignored."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _as_sigint)


def main(argv: list[str] | None = None) -> int:
    a = _parse(argv)
    _stop_on_signals()
    seed = a.seed if a.seed is not None else int(time.time())
    out = a.out or DEFAULT_OUT / datetime.now(UTC).strftime("chaos-%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="chaos-", dir=out if a.keep else None))
    results: list[dict[str, Any]] = []
    failed = False
    try:
        for name in a.scenarios:
            print(f"chaos: {name} ...", file=sys.stderr, flush=True)
            results.append(trio.run(run_scenario, name, a, root, seed))
            print(table(results[-1:]), file=sys.stderr, flush=True)
    except Exception:  # the harness failed, not the mesh: exit 2, keep what ran
        traceback.print_exc()
        failed = True
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
        params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
        doc = {"params": params, "seed": seed, "machine": _machine.describe(), "results": results}
        (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(table(results))
    if any(r.get("flood") for r in results):
        print(flood_table(results))
    if a.net_note:
        print(f"note: {a.net_note}")
    print(f"results: {out / 'results.json'}")
    bad = any(r["summary"]["lost"] or r["summary"]["duplicated"] for r in results)
    return 2 if failed else 1 if bad else 0
