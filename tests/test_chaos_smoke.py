"""CI's short version of the fault harness (``make chaos``, bench/chaos/).

One run of ``python -m bench.chaos`` with a small mesh (4 peers, 2 relay-only
seeds, 2 publishers): 20 ``kill -9``s of seeds and peers during the storm,
then 6 offline spells of subscribers. Correctness is exact (nothing
acknowledged lost, nothing handed twice); time bounds are generous, for a
loaded 2-core machine. Per-sender order is checked in its own test.

A second run: a 5 s partition with ``--net netns`` and the DHT on (network
namespaces and nftables drops; where they are not available, as without
root or ``nft``, the harness falls back to the fault proxy and the DHT off,
and the test checks that it said so), then a 5 s flood at 10x the author
limit, whose spam reaching each agent is bounded by what the relays' limits
let through. Latency ratios are printed by the harness, not asserted here.

Where netns mode can run, the lab itself is checked too: what a cut drops
and what it does not, and that nothing it created outlives it (also after
a harness was killed: the next one removes its namespaces).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from bench.chaos import _netns
from tests._procs import REPO

BOUND_S = 240.0  # a run here takes about 40 s
SMALL = ["--peers", "4", "--seeds", "2", "--publishers", "2", "--rate", "20"]
FLOOD_S, AUTHOR_RATE, AUTHOR_BURST = 5, 50, 200


def _run(out: Path, *args: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.chaos", *SMALL, *args, "--out", str(out)]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=BOUND_S)
    assert (out / "results.json").exists(), run.stderr[-4000:]
    doc: dict[str, Any] = json.loads((out / "results.json").read_text())
    doc["exit"] = run.returncode
    doc["table"] = run.stdout + run.stderr[-3000:]
    return doc


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _run(
        tmp_path_factory.mktemp("chaos"), "--scenarios", "churn,offline",
        "--kills", "20", "--spells", "6", "--parallel", "2", "--spell", "3",
        "--max-s", "60", "--settle", "60", "--seed", "12",
    )  # fmt: skip


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _run(
        tmp_path_factory.mktemp("chaos-net"), "--scenarios", "partition,flood", "--net", "netns",
        "--partition-s", "5", "--flood-s", str(FLOOD_S), "--flood-x", "10",
        "--flood-author-rate", str(AUTHOR_RATE), "--flood-author-burst", str(AUTHOR_BURST),
        "--settle", "60", "--seed", "12",
    )  # fmt: skip


def test_nothing_acknowledged_is_lost_or_duplicated(chaos: dict[str, Any]) -> None:
    results = {r["scenario"]: r for r in chaos["results"]}
    assert set(results) == {"churn", "offline"}, chaos["table"]
    for name, r in results.items():
        s = r["summary"]
        assert r["faults"]["done"] == (20 if name == "churn" else 6), r["faults"]
        assert not r["faults"]["errors"], r["faults"]
        assert r["storm"]["acked"] > 0, r["storm"]
        assert s["expected"] > 0 and s["delivered"] == s["expected"], (name, chaos["table"])
        assert s["lost"] == 0, (name, r["agents"])
        assert s["duplicated"] == 0, (name, r["agents"])
        assert s["missed"] == 0, (name, r["agents"])
    assert chaos["exit"] == 0, chaos["table"]


def test_per_sender_order_is_kept(chaos: dict[str, Any]) -> None:
    reordered = {r["scenario"]: r["summary"]["reordered"] for r in chaos["results"]}
    examples = [e for r in chaos["results"] for a in r["agents"] for e in a["examples"]][:3]
    assert all(v == 0 for v in reordered.values()), (reordered, examples)


def _exact(r: dict[str, Any]) -> None:
    s = r["summary"]
    assert not r["faults"]["errors"], r["faults"]
    assert r["faults"]["done"] == 1, r["faults"]
    assert s["expected"] > 0 and s["delivered"] == s["expected"], r
    assert s["lost"] == 0 and s["duplicated"] == 0, r["agents"]


def test_a_partition_heals_without_loss(broken: dict[str, Any]) -> None:
    r = {x["scenario"]: x for x in broken["results"]}["partition"]
    _exact(r)
    assert r["summary"]["missed"] == 0, r["agents"]
    if _netns.unavailable() is None:
        assert (r["net"], r["dht"]) == ("netns", True), broken["table"]
        assert r["breaker"]["cuts"] == 1 and r["breaker"]["dropped"] > 0, r["breaker"]
    else:  # the fallback is announced, never silent
        assert (r["net"], r["dht"]) == ("proxy", False), broken["table"]
        assert "not available" in broken["table"], broken["table"]
        assert r["breaker"]["cut"] + r["breaker"]["refused"] > 0, r["breaker"]
    assert broken["exit"] == 0, broken["table"]


def test_a_flood_is_held_to_the_author_limit(broken: dict[str, Any]) -> None:
    r = {x["scenario"]: x for x in broken["results"]}["flood"]
    _exact(r)
    f = r["flood"]
    assert f["flood_per_s"] == 10 * AUTHOR_RATE, f
    assert f["flood_sent"] >= 0.5 * f["flood_per_s"] * FLOOD_S, f  # it did flood
    # each seed lets at most its bucket through: the burst, then the rate
    allowed = 2 * (AUTHOR_BURST + AUTHOR_RATE * (FLOOD_S + 1))
    assert f["spam_per_agent"] <= allowed < f["flood_sent"], f
    assert f["base_n"] > 0 and f["flood_n"] > 0, f
    assert "p99_ratio" in broken["table"], broken["table"]


NETNS = _netns.unavailable()
SERVE = "import socket,sys; s=socket.create_server((sys.argv[1], 7000)); print(1, flush=True)\n" \
    "while True: s.accept()[0].close()"  # fmt: skip


def _reaches(lab: _netns.Lab, src: str | None, dst: str) -> bool:
    """Does a TCP connection from ``src``'s namespace (None: the harness's) to
    ``dst`` port 7000 open within 1.5 s (a dropped SYN does not)."""
    code = (f"import socket; socket.create_connection(('{lab.addresses[dst]}', 7000), "
            "timeout=1.5)")  # fmt: skip
    wrap = lab.wrap(src) if src else []
    return subprocess.run([*wrap, sys.executable, "-c", code], capture_output=True).returncode == 0


@pytest.mark.skipif(NETNS is not None, reason=f"no netns mode here: {NETNS}")
def test_netns_lab_cuts_heals_and_leaves_nothing_behind() -> None:
    lab = _netns.Lab()
    servers: list[subprocess.Popen[bytes]] = []
    try:
        lab.open(["a", "b", "c"])
        for n in ("b", "c"):
            cmd = [*lab.wrap(n), sys.executable, "-c", SERVE, lab.addresses[n]]
            servers.append(subprocess.Popen(cmd, stdout=subprocess.PIPE))
        for server in servers:  # each prints once it listens
            assert server.stdout is not None and server.stdout.readline().strip() == b"1"
        assert _reaches(lab, "a", "b") and _reaches(lab, "a", "c")
        trio.run(lab.cut, {"a"}, {"b", "c"})
        assert not _reaches(lab, "a", "b") and not _reaches(lab, "a", "c")
        assert _reaches(lab, "b", "c") and _reaches(lab, None, "b")  # same side; harness
        trio.run(lab.heal)
        assert lab.stats["dropped"] > 0
        assert _reaches(lab, "a", "b")
    finally:
        for server in servers:
            server.kill()
            server.wait()
            if server.stdout is not None:
                server.stdout.close()
        lab.close()
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert lab.tag + "-" not in left
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f" {lab.root_veth}@" not in links and f" {lab.root_veth}:" not in links


@pytest.mark.skipif(NETNS is not None, reason=f"no netns mode here: {NETNS}")
def test_a_killed_harness_namespaces_are_removed_by_the_next() -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = f"{_netns.PREFIX}{gone.stdout.strip()}-hub"  # its harness (pid) has exited
    live = f"{_netns.PREFIX}{os.getpid()}-hub"  # a running harness's (ours)
    for name in (stale, live):
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        removed = _netns.clean_stale()
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert stale in removed and stale not in names
        assert live not in removed and live in names
    finally:
        for name in (stale, live):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
