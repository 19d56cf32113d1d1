"""Smoke test of the benchmark harness: ``python -m bench --quick`` end to end.

Runs the seconds-long version against every system this machine has (always
the clawmesh relay and the raw WebSocket forwarder; NATS and Redis only if
their binaries are installed) and checks what a run must leave behind: a
results.json with every scenario, positive delivery counts (counted by the
counting sinks, a sample checked fully), each fan-out cell's ratio to its
ceiling and its hub CPU, a returning peer
that caught up on every message it missed, the relay's stored-message
footprint, a flood of refused frames that the peer cut short, a seed holding
links and fanning out to all of them, and the plots.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench._report import have_matplotlib
from bench._systems import registry

REPO = Path(__file__).resolve().parent.parent


def _available() -> list[str]:
    names = []
    for name, system in registry().items():
        if name == "clawmesh-w2-nostore":  # clawmesh-w2 smoke-tests the workers already
            continue
        if name in ("clawmesh", "ws-raw") or system.unavailable() is None:
            names.append(name)
    return names


def test_quick_bench_writes_table_json_and_plots(tmp_path: Path) -> None:
    systems = _available()
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--systems", ",".join(systems),
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1. relay fan-out" in proc.stdout
    assert "deliveries/s" in proc.stdout

    doc = json.loads((out / "results.json").read_text())
    assert doc["machine"]["cores"] >= 1
    assert doc["machine"]["packages"]["trio"]
    scenarios = doc["scenarios"]
    assert set(scenarios) == {
        "fanout", "latency", "catchup", "dht", "footprint", "preauth", "live", "blob", "links"
    }

    fanout = scenarios["fanout"]
    assert fanout["status"] == "ok"
    rows = {r["system"]: r for r in fanout["results"]}
    for name in systems:
        row = rows[name]
        assert "error" not in row, row
        assert row["delivered"] > 0
        assert row["delivered"] == row["expected"], row
        assert row["deliveries_per_s"] > 0
        # counting sinks: every connection checked its first message fully, none failed
        assert row["counting"] and row["checked"] >= row["n"] and row["check_failed"] == 0, row
        assert "hub_cpu_pct" in row and row["bound"], row
        assert row["ceiling"] in ("ws-raw", "ws-trio", "tcp-raw"), row
        assert row["vs_ceiling"] > 0, row
    ceiling = rows[rows["clawmesh"]["ceiling"]]
    assert ceiling["vs_ceiling"] == 1.0
    assert "vs ceiling" in proc.stdout and "hub CPU" in proc.stdout
    assert f"ceiling N={ceiling['n']} size={ceiling['size']}: {ceiling['system']}" in proc.stdout

    latency = scenarios["latency"]
    assert latency["status"] == "ok"
    for row in latency["results"]:
        assert "error" not in row, row
        assert row["delivered"] > 0
        assert row["latency_ms"]["p50"] > 0

    footprint = scenarios["footprint"]
    assert {r["system"] for r in footprint["results"]} == {
        s for s in systems if registry()[s].scenario_unavailable("footprint") is None}
    assert all(r["rss_with_links_kib"] > 0 for r in footprint["results"])
    stored = {r["system"]: r for r in footprint["results"]}["clawmesh"]
    assert stored["stored_messages"] == 1000, stored  # the relay keeps what it relays
    assert stored["disk_per_1000_messages_kib"] > 0

    # a peer away while 300 messages went by comes back and gets every one of them
    catchup = scenarios["catchup"]
    assert catchup["status"] == "ok", catchup
    rows = {r["system"]: r for r in catchup["results"]}
    assert "clawmesh" in rows
    for row in rows.values():
        assert "error" not in row, row
        assert row["seed_stored"] == row["received"] == 300, row
        assert row["via_catchup"] > 0 and row["pages"] >= 1 and not row["missed"], row
        assert row["catchup_per_s"] > 0 and row["vs_replay"] > 0, row
    assert catchup["params"]["baseline"]["read_per_s"] > 0
    assert "msg/s" in proc.stdout and "vs store replay" in proc.stdout

    # a refused flood: the peer closes every flooding connection and keeps answering
    preauth = scenarios["preauth"]
    assert preauth["status"] == "ok", preauth
    assert [r["connections"] for r in preauth["results"]] == [1, 4]
    for row in preauth["results"]:
        assert "error" not in row, row
        assert row["flood_ms"]["count"] > 0 and row["baseline_ms"]["count"] > 0, row
        assert row["closed_after_s_max"] is not None, row
    assert "pre-authentication flood" in proc.stdout

    # live delivery: the SSE stream and the long-poll both got every message
    live = scenarios["live"]
    assert live["status"] == "ok", live
    assert [r["path"] for r in live["results"]] == ["sse", "long-poll"]
    for row in live["results"]:
        assert row["received"] == row["messages"] > 0, row
        assert row["latency_ms"]["p50"] > 0, row

    # blob: the file crossed the relay byte for byte (checked inside), beside plain HTTP
    blob = scenarios["blob"]
    assert blob["status"] == "ok", blob
    assert [r["mib_per_s"] > 0 for r in blob["results"]] == [True, True]
    assert blob["results"][1]["peak_rss_mib"]["B"] > 0

    # links: the seed held every link (none closed as silent), then fanned out to all of them
    links = scenarios["links"]
    assert links["status"] == "ok", links
    for row in links["results"]:
        assert "error" not in row and "fanout_error" not in row, row
        assert row["links_held"] == row["links"] == 2, row
        assert row["closed_while_opening"] == 0 and row["handshakes_failed"] == 0, row
        assert row["delivered"] == row["expected"] > 0 and row["lost"] == 0, row
    assert "handshakes/s" in proc.stdout

    drawn = ["fanout", "latency", "catchup", "footprint"]
    dht = scenarios["dht"]
    assert dht["status"] in ("ok", "not-available"), dht
    if dht["status"] == "not-available":
        assert dht["reason"]
    else:
        assert all(r["lookups"] > 0 and r["success"] > 0 for r in dht["results"])
        drawn.append("dht")

    if not have_matplotlib():  # plots need the bench extra; everything else ran
        return
    assert sorted(doc["plots"]) == sorted(drawn)
    for name in drawn:
        png = out / f"{name}.png"
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
