"""Which system is the ceiling of a fan-out cell, and every system's ratio to it.

The ceiling of a cell (one N, one size) is the fastest forwarder of the same
run (a system whose role is ``ceiling``: ``ws-raw``, ``ws-trio``, ``tcp-raw``)
whose hub was saturated, i.e. used at least 85% of a core over the interval
deliveries arrived: only then is its figure the forwarder's and not the load
generator's or the machine's. A forwarder whose hub was runnable that much of
the time but waited for a CPU (``hub, starved``: the machine was busy; the
hub, not its sinks, limited the cell) counts too, since its figure only
understates what it can do: the fastest of these is the ceiling. If none, the
fastest one is still named, flagged: its figure is a lower bound, so every
ratio to it is an upper bound.

Each fan-out row gets ``ceiling`` (the system's name), ``vs_ceiling``
(deliveries/s over the ceiling's) and ``vs_ceiling_per_cpu`` (deliveries per
hub CPU second over the ceiling's: what a delivery costs, which a busy machine
disturbs less); the scenario gets one note per cell that says it plainly.
"""

from __future__ import annotations

from typing import Any

from ._systems import registry

Cell = tuple[int, int]


def _is_forwarder(name: str) -> bool:
    system = registry().get(name)
    return system is not None and system.role == "ceiling"


def ceilings(rows: list[dict[str, Any]]) -> dict[Cell, dict[str, Any]]:
    """The ceiling row of each (N, size) cell that has a forwarder."""
    best: dict[Cell, dict[str, Any]] = {}
    for r in rows:
        if "error" in r or not _is_forwarder(r["system"]) or not r.get("deliveries_per_s"):
            continue
        cell = (r["n"], r["size"])
        held = best.get(cell)
        if held is None or _rank(r) > _rank(held):
            best[cell] = r
    return best


def _rank(row: dict[str, Any]) -> tuple[bool, float]:
    """Hub-bound first (saturated, or starved by the machine: either way the hub
    limited the cell, and a starved figure only understates it), then the fastest."""
    return (bool(row.get("saturated") or row.get("hub_bound")), float(row["deliveries_per_s"]))


def _ratio(value: Any, base: Any) -> float | None:
    if not value or not base:
        return None
    return round(float(value) / float(base), 4)


def apply_ceilings(rows: list[dict[str, Any]]) -> list[str]:
    """Give every row its ratios to its cell's ceiling; one note line per cell."""
    best = ceilings(rows)
    for r in rows:
        top = best.get((r.get("n", 0), r.get("size", 0)))
        if "error" in r or top is None:
            continue
        r["ceiling"] = top["system"]
        r["vs_ceiling"] = _ratio(r.get("deliveries_per_s"), top.get("deliveries_per_s"))
        r["vs_ceiling_per_cpu"] = _ratio(r.get("deliveries_per_server_cpu_s"),
                                         top.get("deliveries_per_server_cpu_s"))
    notes = []
    for (n, size), top in sorted(best.items()):
        hub = top.get("hub_cpu_pct")
        cpu = "?" if hub is None else f"{hub:.0f}%"
        sinks = top.get("sinks_cpu_pct")
        text = (f"ceiling N={n} size={size}: {top['system']} {top['deliveries_per_s']:,.0f} "
                f"deliveries/s, hub CPU {cpu}"
                + ("" if sinks is None else f", its sinks together {sinks:.0f}%"))
        if not top.get("saturated") and top.get("hub_bound"):
            text += (f" NOT SATURATED but hub-bound: runnable all along, it waited "
                     f"{top.get('hub_wait_pct') or 0:.0f}% of the time for a CPU; a busy "
                     "machine depressed it, not its sinks")
        elif not top.get("saturated"):
            text += (" NOT SATURATED: no forwarder was hub-bound in this cell, so this is a "
                     "lower bound and every ratio to it an upper bound")
        notes.append(text)
    # over the interval deliveries arrived (cells too short to measure it have no share)
    costs = [1e4 * float(r["sinks_cpu_pct"]) / float(r["deliveries_per_s"]) for r in rows
             if r.get("sinks_cpu_pct") and r.get("deliveries_per_s", 0) >= 100_000]
    if costs:
        notes.append(f"the sinks' CPU per delivery in cells above 100,000 deliveries/s: "
                     f"{min(costs):.2f} to {max(costs):.2f} us (all sink processes): "
                     f"one core of sinks takes {1e6 / max(costs):,.0f} deliveries/s or more")
    if notes:
        notes.insert(0, "the ceiling of each cell is the fastest forwarder of this run whose hub "
                        "used >= 85% of a core; 'vs ceiling' divides by its figure")
    return notes
