"""CI's short version of the fault harness (``make chaos``, bench/chaos/).

One run of ``python -m bench.chaos`` with a small mesh (4 peers, 2 relay-only
seeds, 2 publishers): 20 ``kill -9``s of seeds and peers during the storm,
then 6 offline spells of subscribers. Correctness is exact (nothing
acknowledged lost, nothing handed twice); time bounds are generous, for a
loaded 2-core machine. Per-sender order is checked in its own test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests._procs import REPO

BOUND_S = 240.0  # a run here takes about 40 s


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("chaos")
    cmd = [
        sys.executable, "-m", "bench.chaos", "--scenarios", "churn,offline",
        "--peers", "4", "--seeds", "2", "--publishers", "2", "--rate", "20",
        "--kills", "20", "--spells", "6", "--parallel", "2", "--spell", "3",
        "--max-s", "60", "--settle", "60", "--seed", "12", "--out", str(out),
    ]  # fmt: skip
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=BOUND_S)
    assert (out / "results.json").exists(), run.stderr[-4000:]
    doc: dict[str, Any] = json.loads((out / "results.json").read_text())
    doc["exit"] = run.returncode
    doc["table"] = run.stdout
    return doc


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
