"""The registry of ``python -m bench`` scenarios (``--scenarios``) and how one is run."""

from __future__ import annotations

import trio

from ._links import Links
from ._procs import ChildFailed
from ._scenarios import (
    Blob,
    CatchUp,
    Context,
    Dht,
    Fanout,
    Footprint,
    Latency,
    Live,
    Preauth,
    Scenario,
    ScenarioResult,
)

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (Fanout(), Latency(), CatchUp(), Dht(), Footprint(), Preauth(), Live(), Blob(),
              Links())
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

