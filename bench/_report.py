"""What a run leaves behind: terminal tables, results.json and one PNG per scenario.

Every fan-out figure is also shown as a ratio to the ceiling of its cell, the
fastest hub-bound forwarder measured in the same run (``bench._ceiling``);
latency and footprint compare with the raw WebSocket forwarder (``ws-raw``).
Absolute numbers move with the machine and whatever else runs on it, ratios
within one run much less.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._scenarios import ScenarioResult
from ._systems import BASELINE

DASH = "-"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            left = i == 0 or not _numeric(cell)
            out.append(cell.ljust(widths[i]) if left else cell.rjust(widths[i]))
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def _numeric(cell: str) -> bool:
    return bool(cell) and (cell[0].isdigit() or cell[0] in "-.") and cell != DASH


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return DASH
    return f"{value:,.{digits}f}"


def _ratio(value: float | None, base: float | None) -> str:
    if not value or not base:
        return DASH
    r = value / base
    return f"{r:.3f}x" if r < 0.1 else f"{r:.2f}x"


def _ok(row: dict[str, Any]) -> bool:
    return "error" not in row


# -- per-scenario tables -----------------------------------------------------------------------


def _fanout_table(res: ScenarioResult) -> str:
    headers = ["system", "N", "size", "deliveries/s", "vs ceiling", "msgs/s", "hub CPU",
               "hub waited", "sinks CPU", "hub us/deliv", "deliv/hub-CPU-s", "vs ceiling",
               "delivered", "bound"]
    rows = []
    for r in res.rows:
        if not _ok(r):
            rows.append([r["system"], str(r.get("n", "")), str(r.get("size", "")),
                         "FAILED", "", "", "", "", "", "", "", "", "", r["error"][:70]])
            continue
        ceiling = r.get("ceiling") == r["system"]
        rows.append([
            r["system"] + (" (ceiling)" if ceiling else ""), str(r["n"]), str(r["size"]),
            _num(r["deliveries_per_s"]), _times(r.get("vs_ceiling")),
            _num(r["messages_per_s"]), _pct(r.get("hub_cpu_pct")), _pct(r.get("hub_wait_pct")),
            _pct(r.get("sinks_cpu_pct")),
            _num(r["server_cpu_us_per_delivery"], 1), _num(r["deliveries_per_server_cpu_s"]),
            _times(r.get("vs_ceiling_per_cpu")), f"{r['delivered']}/{r['expected']}",
            _bound(r),
        ])
    return _table(headers, rows)


def _pct(value: float | None) -> str:
    return DASH if value is None else f"{value:.0f}%"


def _bound(row: dict[str, Any]) -> str:
    """``hub`` when the hub was saturated; else a plain flag and what was busiest."""
    if row.get("saturated"):
        return "hub"
    return f"NOT SATURATED ({row.get('bound') or '?'})"


def _path(relays: int) -> str:
    return "1 relay" if relays == 1 else f"line of {relays}"


def _latency_table(res: ScenarioResult) -> str:
    base = {(r["relays"], r["rate"]): r["latency_ms"].get("p50") for r in res.rows
            if r["system"] == BASELINE and _ok(r)}
    headers = ["system", "path", "rate/s", "p50 ms", "p90 ms", "p99 ms", "max ms",
               "p50 vs ws-raw", "achieved/s", "relay CPU", "delivered"]
    rows = []
    for r in res.rows:
        if not _ok(r):
            rows.append([r["system"], _path(int(r.get("relays", 1))), _num(r.get("rate")),
                         "FAILED", "", "", "", "", "", "", r["error"][:70]])
            continue
        lat = r["latency_ms"]
        rows.append([
            r["system"], _path(r["relays"]), _num(r["rate"]), _num(lat.get("p50"), 3),
            _num(lat.get("p90"), 3), _num(lat.get("p99"), 3), _num(lat.get("p100"), 3),
            _ratio(lat.get("p50"), base.get((r["relays"], r["rate"]))),
            _num(r["achieved_rate"]), f"{r['server_cpu_pct']:.0f}%",
            f"{r['delivered']}/{r['expected']}",
        ])
    return _table(headers, rows)


def _footprint_table(res: ScenarioResult) -> str:
    base = next((r["per_link_kib"] for r in res.rows if r["system"] == BASELINE and _ok(r)),
                None)
    headers = ["system", "links", "RSS idle MiB", "RSS with links MiB", "KiB per link",
               "vs ws-raw", "RSS after close MiB", "messages", "RSS KiB/1k msgs",
               "disk KiB/1k msgs"]
    rows = []
    for r in res.rows:
        if not _ok(r):
            rows.append([r["system"], str(r.get("links", "")), "FAILED", "", "", "",
                         r["error"][:70], "", "", ""])
            continue
        if "messages_error" in r:
            messages, per_k = "FAILED", [r["messages_error"][:40], ""]
        elif "relayed_messages" in r:
            stored = r["stored_messages"]
            messages = f"{stored:,} stored" if stored else f"{r['relayed_messages']:,} relayed"
            per_k = [_num(r["rss_per_1000_messages_kib"], 1),
                     _num(r["disk_per_1000_messages_kib"], 1) if stored else DASH]
        else:
            messages, per_k = DASH, [DASH, DASH]
        rows.append([
            r["system"], str(r["links"]), _num(r["rss_idle_kib"] / 1024, 1),
            _num(r["rss_with_links_kib"] / 1024, 1), _num(r["per_link_kib"], 1),
            _ratio(r["per_link_kib"], base), _num(r["rss_after_close_kib"] / 1024, 1),
            messages, *per_k,
        ])
    return _table(headers, rows)


def _catchup_table(res: ScenarioResult) -> str:
    headers = ["system", "missed", "caught up", "seconds", "msg/s", "vs store replay",
               "vs verify", "vs 50k target", "from start s", "peer CPU", "CPU us/msg", "pages",
               "seed took/s"]
    rows = []
    for r in res.rows:
        if not _ok(r):
            rows.append([r["system"], _num(r.get("messages")), "FAILED", "", "", "", "", "",
                         "", "", "", "", r["error"][:70]])
            continue
        cpu = r.get("peer_cpu_pct")
        rows.append([
            r["system"], _num(r["seed_stored"]), _num(r["received"]), _num(r["catchup_s"], 2),
            _num(r["catchup_per_s"]), _times(r.get("vs_replay")), _times(r.get("vs_verify")),
            _times(r.get("vs_target")), _num(r["from_start_s"], 2),
            DASH if cpu is None else f"{cpu:.0f}%", _num(r["peer_cpu_us_per_msg"], 1),
            _num(r["pages"]), _num(r["fill"]["relay_per_s"]),
        ])
    return _table(headers, rows)


def _times(value: float | None) -> str:
    if value is None:
        return DASH
    return f"{value:.3f}x" if value < 0.1 else f"{value:.2f}x"


def _dht_table(res: ScenarioResult) -> str:
    headers = ["lookup", "nodes", "lookups", "p50 ms", "p90 ms", "p99 ms", "max ms", "hops mean",
               "hops max", "queries", "success"]
    rows = []
    for r in res.rows:
        if not r.get("lookups"):
            continue
        lat = r["latency_ms"]
        rows.append([
            r["kind"], str(res.params.get("nodes", "")), str(r["lookups"]), _num(lat["p50"]),
            _num(lat["p90"]), _num(lat["p99"]), _num(lat["p100"]), _num(r["hops_mean"], 2),
            _num(r["hops"]["p100"]), _num(r["queries_mean"], 1), f"{100 * r['success']:.1f}%",
        ])
    return _table(headers, rows)


def _preauth_table(res: ScenarioResult) -> str:
    headers = ["connections", "frames each", "/status p50 ms", "p99 ms", "max ms",
               "no flood p50", "p99", "max", "frames taken", "closed after s", "peer CPU s"]
    rows = []
    for r in res.rows:
        if not _ok(r):
            rows.append([str(r["connections"]), _num(r["frames"]), "FAILED", r["error"][:70],
                         "", "", "", "", "", "", ""])
            continue
        flood, base = r["flood_ms"], r["baseline_ms"]
        rows.append([
            str(r["connections"]), _num(r["frames"]), _num(flood["p50"], 1),
            _num(flood["p99"], 1), _num(flood["max"], 1), _num(base["p50"], 1),
            _num(base["p99"], 1), _num(base["max"], 1), _num(r["frames_taken_mean"]),
            _num(r["closed_after_s_max"], 2), _num(r["peer_cpu_s"], 2),
        ])
    return _table(headers, rows)


def _live_table(res: ScenarioResult) -> str:
    headers = ["reader", "relays", "messages", "received", "p50 ms", "p90 ms", "p99 ms",
               "max ms"]
    rows = []
    for r in res.rows:
        lat = r["latency_ms"]
        rows.append([r["path"], str(r["relays"]), str(r["messages"]), str(r["received"]),
                     _num(lat["p50"], 2), _num(lat["p90"], 2), _num(lat["p99"], 2),
                     _num(lat["max"], 2)])
    return _table(headers, rows)


def _blob_table(res: ScenarioResult) -> str:
    headers = ["path", "MiB", "seconds", "MiB/s", "peak RSS A/B MiB"]
    rows = []
    for r in res.rows:
        rss = r.get("peak_rss_mib") or {}
        shown = f"{rss['A']} / {rss['B']}" if rss else "-"
        rows.append([r["path"], str(r["mib"]), _num(r["seconds"], 2), _num(r["mib_per_s"], 1),
                     shown])
    return _table(headers, rows)


def _links_table(res: ScenarioResult) -> str:
    headers = ["links", "sink procs", "handshakes/s", "peak/s", "opening s", "held",
               "closed/failed", "KiB per link", "RSS MiB", "messages", "delivered",
               "deliveries/s", "seed CPU"]
    rows = []
    for r in res.rows:
        if not _ok(r):
            rows.append([str(r.get("links", "")), "FAILED", r["error"][:70], *[""] * 10])
            continue
        fan = [DASH] * 4 if "fanout_error" in r else [
            _num(r["messages"]), f"{r['delivered']:,}/{r['expected']:,}",
            _num(r["deliveries_per_s"]), f"{r['hub_cpu_pct'] or 0:.0f}%"]
        rows.append([
            f"{r['links']:,}", str(r["sink_procs"]), _num(r["handshakes_per_s"], 1),
            _num(r["handshakes_peak_per_s"], 1), _num(r["opening_s"], 1),
            _num(r["links_held"]), f"{r['closed_while_opening']}/{r['handshakes_failed']}",
            _num(r["per_link_kib"], 1), _num(r["rss_with_links_kib"] / 1024, 1), *fan,
        ])
    return _table(headers, rows)


TABLES = {"fanout": _fanout_table, "latency": _latency_table, "catchup": _catchup_table,
          "footprint": _footprint_table, "dht": _dht_table, "preauth": _preauth_table,
          "live": _live_table, "blob": _blob_table, "links": _links_table}


def render(results: list[ScenarioResult]) -> str:
    parts: list[str] = []
    for res in results:
        parts.append(f"== {res.title} ==")
        if res.status == "not-available":
            parts.append(f"not yet available: {res.reason}")
            parts.append("")
            continue
        if res.status == "error":
            parts.append(f"FAILED: {res.reason}")
            parts.append("")
            continue
        params = ", ".join(f"{k}={v}" for k, v in res.params.items() if not isinstance(v, dict))
        parts.append(f"({params}; {res.seconds:g} s)")
        if res.rows and res.name in TABLES:
            parts.append(TABLES[res.name](res))
        grouped: dict[str, list[str]] = {}  # one line per reason
        for skip in res.skipped:
            where = f" (line of {skip['relays']})" if "relays" in skip else ""
            grouped.setdefault(skip["reason"], []).append(skip["system"] + where)
        for reason, names in grouped.items():
            parts.append(f"skipped {', '.join(names)}: {reason}")
        for note in res.notes:
            parts.append(note)
        parts.append("")
    return "\n".join(parts)


# -- JSON ------------------------------------------------------------------------------------


def to_json(results: list[ScenarioResult]) -> dict[str, Any]:
    return {
        r.name: {
            "title": r.title, "status": r.status, "reason": r.reason, "params": r.params,
            "seconds": r.seconds, "results": r.rows, "skipped": r.skipped, "notes": r.notes,
        }
        for r in results
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")


# -- plots -----------------------------------------------------------------------------------


def _systems_in(rows: list[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for r in rows:
        if r["system"] not in seen:
            seen.append(r["system"])
    return seen


def _colors(names: list[str]) -> dict[str, Any]:
    cmap = importlib.import_module("matplotlib").colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def have_matplotlib() -> bool:
    """Plots need matplotlib (the bench extra); the rest of a run does not."""
    return importlib.util.find_spec("matplotlib") is not None


def plot(res: ScenarioResult, out: Path, caption: str) -> Path | None:
    """Draw ``res`` to ``out/<scenario>.png``; None if there is nothing to draw."""
    rows = [r for r in res.rows if _ok(r)]
    if res.status != "ok" or not rows or res.name not in PLOTS or not have_matplotlib():
        return None
    # imported here, by name: a run without matplotlib still writes the table and the JSON
    importlib.import_module("matplotlib").use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")

    fig = PLOTS[res.name](plt, rows)
    fig.suptitle(res.title, fontsize=11)
    fig.text(0.01, 0.005, caption, fontsize=6.5, color="#555555", wrap=True)
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    path = out / f"{res.name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_fanout(plt: Any, rows: list[dict[str, Any]]) -> Any:
    """Per size: deliveries/s, the ratio to the cell's ceiling, and the hub's CPU, against N.

    A hollow marker is a cell whose hub was not saturated (its figure is the
    generator's or the machine's, not the hub's)."""
    sizes = sorted({r["size"] for r in rows})
    names = _systems_in(rows)
    colors = _colors(names)
    fig, axes = plt.subplots(3, len(sizes), figsize=(max(9, 5.5 * len(sizes)), 12),
                             squeeze=False)
    metrics = [("deliveries_per_s", "deliveries per second at the subscribers", True),
               ("vs_ceiling", "ratio to the ceiling of the same run", True),
               ("hub_cpu_pct", "hub CPU while delivering, % of one core", False)]
    for row_axes, (key, label, log_y) in zip(axes, metrics, strict=True):
        for ax, size in zip(row_axes, sizes, strict=True):
            for name in names:
                pts = sorted((r["n"], r[key], bool(r.get("saturated"))) for r in rows
                             if r["system"] == name and r["size"] == size and r.get(key))
                if not pts:
                    continue
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name,
                        color=colors[name], linewidth=2.5 if name == "clawmesh" else 1.2)
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=colors[name],
                           facecolors=[colors[name] if p[2] else "none" for p in pts], zorder=3)
            if key == "vs_ceiling":
                ax.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
            if key == "hub_cpu_pct":
                ax.axhline(85, color="#d62728", linewidth=0.8, linestyle="--")
                ax.text(0.01, 86, "saturated", fontsize=7, color="#d62728",
                        transform=ax.get_yaxis_transform())
                ax.set_ylim(0, max(110.0, *(float(r.get(key) or 0) for r in rows)) * 1.05)
            ax.set_xscale("log")
            if log_y:
                ax.set_yscale("log")
            ax.set_xlabel("subscribers N")
            ax.set_ylabel(label)
            ax.set_title(f"body {size} B (hollow: hub not saturated)", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    return fig


def _plot_latency(plt: Any, rows: list[dict[str, Any]]) -> Any:
    paths = sorted({r["relays"] for r in rows})
    names = _systems_in(rows)
    colors = _colors(names)
    fig, axes = plt.subplots(1, len(paths), figsize=(max(9, 6 * len(paths)), 4.8),
                             squeeze=False)
    for ax, relays in zip(axes[0], paths, strict=True):
        rates = sorted({r["rate"] for r in rows if r["relays"] == relays})
        width = 0.8 / max(1, len(names))
        for j, name in enumerate(names):
            for k, rate in enumerate(rates):
                match = [r for r in rows if r["system"] == name and r["relays"] == relays
                         and r["rate"] == rate]
                if not match:
                    continue
                lat = match[0]["latency_ms"]
                x = k + (j - (len(names) - 1) / 2) * width
                ax.bar(x, lat.get("p50", 0), width, color=colors[name],
                       label=name if k == 0 else None)
                ax.plot([x - width / 2, x + width / 2], [lat.get("p99", 0)] * 2, color="black",
                        linewidth=1.5)
        ax.set_xticks(range(len(rates)), [f"{r:g} msg/s" for r in rates])
        ax.set_yscale("log")
        ax.set_ylabel("publish -> deliver, ms (bar p50, line p99)")
        ax.set_title(_path(relays))
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def _plot_footprint(plt: Any, rows: list[dict[str, Any]]) -> Any:
    names = [r["system"] for r in rows]
    values = [max(0.0, float(r["per_link_kib"] or 0)) for r in rows]
    colors = _colors(names)
    stored = [r for r in rows if "rss_per_1000_messages_kib" in r]
    fig, axes = plt.subplots(1, 2 if stored else 1, figsize=(13 if stored else 9,
                             0.5 * len(rows) + 2.2), squeeze=False)
    ax = axes[0][0]
    ax.barh(names, values, color=[colors[n] for n in names])
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:,.1f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"server RSS per idle subscribed link, KiB ({rows[0]['links']} links)")
    ax.grid(True, axis="x", alpha=0.3)
    if stored:
        ax = axes[0][1]
        labels: list[str] = []
        bars: list[float] = []
        shades: list[Any] = []
        for r in stored:
            what = "stored" if r["stored_messages"] else "relayed"
            labels.append(f"{r['system']}: RSS ({what})")
            bars.append(max(0.0, float(r["rss_per_1000_messages_kib"])))
            shades.append(colors[r["system"]])
            if r["stored_messages"]:
                labels.append(f"{r['system']}: disk")
                bars.append(max(0.0, float(r["disk_per_1000_messages_kib"])))
                shades.append("#7f7f7f")
        ax.barh(labels, bars, color=shades)
        for i, v in enumerate(bars):
            ax.text(v, i, f" {v:,.0f}", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"KiB per 1,000 messages ({stored[0]['relayed_messages']:,} through "
                      "the relay)")
        ax.grid(True, axis="x", alpha=0.3)
    return fig


def _plot_catchup(plt: Any, rows: list[dict[str, Any]]) -> Any:
    """Catch-up next to its baselines (the same run) and the target: one bar each, msg/s."""
    fig, ax = plt.subplots(figsize=(9, 0.45 * (len(rows) + 5) + 2))
    labels: list[str] = []
    values: list[float] = []
    colors: list[str] = []
    for r in rows:
        if r.get("catchup_per_s"):
            labels.append(f"catch-up, {r['system']}")
            values.append(float(r["catchup_per_s"]))
            colors.append("#d62728" if r["system"] == "clawmesh" else "#ff9896")
    base = rows[0].get("baseline") or {}
    for key, label in (("read_per_s", "store replay (read pages)"),
                       ("append_per_s", "LMDB append (group commit)"),
                       ("verify_per_s", "envelope check with signature"),
                       ("parse_per_s", "envelope check without signature")):
        if base.get(key):
            labels.append(label)
            values.append(float(base[key]))
            colors.append("#7f7f7f")
    labels.append("target")
    values.append(50_000.0)
    colors.append("#2ca02c")
    ax.barh(labels, values, color=colors)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:,.0f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"messages per second ({rows[0]['received']:,} missed messages of "
                  f"{rows[0]['size']} B)")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    return fig


def _plot_dht(plt: Any, rows: list[dict[str, Any]]) -> Any:
    rows = [r for r in rows if r.get("lookups")]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for r in rows:
        values = sorted(r.get("latency_values_ms", []))
        if values:
            ax1.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=r["kind"])
    ax1.set_xlabel("lookup latency, ms (simulated network, virtual time)")
    ax1.set_ylabel("fraction of lookups")
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize=8)
    width = 0.8 / max(1, len(rows))
    for j, r in enumerate(rows):
        hist = {int(k): v for k, v in r["hops_histogram"].items()}
        xs = sorted(hist)
        ax2.bar([x + (j - (len(rows) - 1) / 2) * width for x in xs], [hist[x] for x in xs],
                width, label=r["kind"])
    ax2.set_xticks(sorted({int(k) for r in rows for k in r["hops_histogram"]}))
    ax2.set_xlabel("hops")
    ax2.set_ylabel("lookups")
    ax2.grid(True, axis="y", alpha=0.3)
    ax2.legend(fontsize=8)
    return fig


PLOTS = {"fanout": _plot_fanout, "latency": _plot_latency, "catchup": _plot_catchup,
         "footprint": _plot_footprint, "dht": _plot_dht}
