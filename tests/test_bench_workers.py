"""The bench's view of a seed run as workers: measured per worker, summed per server."""

from __future__ import annotations

from bench._drive import ActiveWindow
from bench._systems import Deployment, registry


def test_workers_are_measured_and_summed_per_server() -> None:
    dep = Deployment(pub=("h", 1), sink=("h", 1), servers=[], workers=[[11, 12]])
    assert dep.measured() == {"server0/w0": 11, "server0/w1": 12}
    assert dep.pids == [11, 12]
    window = ActiveWindow({})
    first = {"server0/w0": 1.0, "server0/w1": 2.0, "server0/w0-wait": 0.0,
             "server0/w1-wait": 0.0, "pub": 0.0}  # fmt: skip
    last = {"server0/w0": 1.9, "server0/w1": 2.6, "server0/w0-wait": 0.2,
            "server0/w1-wait": 0.3, "pub": 0.5}  # fmt: skip
    window.first, window.last = (0.0, first), (1.0, last)
    pct = window.percent()
    assert pct is not None
    assert round(pct["server0"]) == 150 and round(pct["server0-wait"]) == 50
    assert round(pct["pub"]) == 50
    # one process: its names as they were
    window.first = (0.0, {"server0": 1.0, "server0-wait": 0.0})
    window.last = (1.0, {"server0": 1.5, "server0-wait": 0.25})
    assert window.percent() == {"server0": 50.0, "server0-wait": 25.0}


def test_the_workers_system_runs_fanout_only() -> None:
    w2 = registry()["clawmesh-w2"]
    assert w2.scenario_unavailable("fanout") is None
    assert w2.scenario_unavailable("latency")
    assert registry()["clawmesh"].scenario_unavailable("latency") is None


async def test_the_sibling_hop_bench_runs() -> None:
    from bench.sibling_hop import measure

    alone = await measure(200, 4, False)
    hop = await measure(200, 4, True)  # it waits until worker 1 routed all 200
    stored = await measure(100, 4, True, True)  # ... and both workers stored all 100
    assert alone > 0 and hop > 0 and stored > 0
