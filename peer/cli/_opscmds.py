"""The fleet operator's subcommands: ``schedule`` (add, list, pause, resume,
delete, runs), beside the agent's in ``_commands`` (which this registers on).

Same conventions: a table on a terminal, ``--json`` for scripts, one-line
errors with the exit codes ``_commands`` documents.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import click

from peer.client._ops import message_body

from . import _output as out
from ._commands import Ctx, _payload, _payload_opt, _text, cli, command, run_command_line


@cli.group()
def schedule() -> None:
    """Scheduled and recurring messages: add, list, pause, resume, delete, runs."""


def _schedule_rows(found: Sequence[dict[str, Any]]) -> str:
    rows = []
    for s in found:
        when = (
            f"at {s['at']}" if s["kind"] == "once"
            else f"every {s['every']:g} s" if s["kind"] == "interval"
            else f"cron {s['cron']} ({s['tz']})"
        )
        target = s["message"].get("channel") or s["message"].get("to", "")
        rows.append([s["id"], s["state"], when, s["next"] or "-", str(s["fired"]),
                     s["missed"], f"{target}: {s['name'] or s['message'].get('body', '')}"])
    headers = ("ID", "STATE", "WHEN", "NEXT", "FIRED", "MISSED", "WHAT")
    return out.table(headers, rows) or "no schedules"


@schedule.command("add")
@click.option("--channel", "-c", help="post to this channel")
@click.option("--to", metavar="PEER", help="or DM this peer")
@click.option("--at", metavar="TIME", help="once, at this ISO 8601 time (UTC unless an offset)")
@click.option("--every", type=click.FloatRange(min=1), help="every this many seconds")
@click.option("--cron", metavar="EXPR", help="on this cron expression ('0 9 * * mon-fri')")
@click.option("--tz", default=None, help="the cron expression's time zone (default UTC)")
@click.option("--missed", type=click.Choice(["fire", "skip"]), default=None,
              help="occurrences missed while down: fire once (default) or skip")
@click.option("--grace", type=click.FloatRange(min=0), help="with skip: seconds late still sent")
@click.option("--limit", type=click.IntRange(min=1), help="at most this many firings")
@click.option("--name", help="a label")
@_payload_opt
@click.argument("text", nargs=-1)
@command
def schedule_add(
    ctx: Ctx, channel: str | None, to: str | None, text: tuple[str, ...], payload: str | None,
    **when: Any,
) -> None:
    """Send TEXT later or again and again (TEXT from standard input if absent or -)."""
    message = message_body(channel, to, _text(text), _payload(payload))
    with ctx.client() as mesh:
        made = mesh.schedule(message, **{k: v for k, v in when.items() if v is not None})
    out.emit_json(made) if ctx.json else click.echo(_schedule_rows([made]))


@schedule.command("list")
@command
def schedule_list(ctx: Ctx) -> None:
    """Every schedule, with its state and next occurrence."""
    with ctx.client() as mesh:
        found = mesh.schedules()
    out.emit_json(found) if ctx.json else click.echo(_schedule_rows(found))


def _one(verb: str, doc: str) -> None:
    @schedule.command(verb, help=doc)
    @click.argument("schedule_id", metavar="ID")
    @command
    def act(ctx: Ctx, schedule_id: str) -> None:
        with ctx.client() as mesh:
            if verb == "delete":
                mesh.delete_schedule(schedule_id)
                result: dict[str, Any] = {"deleted": schedule_id}
            else:
                result = getattr(mesh, f"{verb}_schedule")(schedule_id)
        if ctx.json:
            out.emit_json(result)
        else:
            click.echo(f"deleted {schedule_id}" if verb == "delete" else _schedule_rows([result]))


_one("pause", "Pause a schedule (nothing fires until it is resumed).")
_one("resume", "Resume a schedule from now (paused occurrences are not owed).")
_one("delete", "Delete a schedule and its job history.")


@schedule.command("runs")
@click.argument("schedule_id", metavar="ID")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--newest", is_flag=True, help="newest first")
@command
def schedule_runs(ctx: Ctx, schedule_id: str, limit: int, newest: bool) -> None:
    """A schedule's job history: each firing or skip, and its outcome."""
    with ctx.client() as mesh:
        rows = mesh.schedule_runs(schedule_id, limit=limit, newest=newest or None)
    if ctx.json:
        out.emit_json(rows)
        return
    table = [
        [str(r["run"]), r["occurrence"], str(r["count"]), r["outcome"],
         r.get("message_id") or r.get("error") or ""]
        for r in rows
    ]
    click.echo(out.table(("RUN", "OCCURRENCE", "COUNT", "OUTCOME", "MESSAGE / ERROR"), table)
               or "no runs yet")


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _uptime(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days}d{hours:02d}h" if days else f"{hours}h{rest // 60:02d}m"


def fleet_table(fleet: dict[str, Any]) -> str:
    rows = []
    for p, here in [(fleet["self"], True)] + [(p, False) for p in fleet["peers"]]:
        state = "self" if here else "online" if p["online"] else "silent"
        circuits = " ".join(f"{k}={v}" for k, v in sorted(p["circuits"].items())) or "-"
        rows.append([p["peer_id"][:16], p["name"] or "", state, p["version"],
                     _uptime(p["uptime_seconds"]), str(p["links"]), str(p["outbox"]),
                     _size(p["store_bytes"]), circuits])
    headers = ("PEER", "NAME", "STATE", "VERSION", "UPTIME", "LINKS", "OUTBOX", "STORE",
               "CIRCUITS")
    refused = ", ".join(f"{k} {v}" for k, v in sorted(fleet["refused"].items()))
    n = len(fleet["peers"])
    footer = f"\n{n} peer{'' if n == 1 else 's'} heard"
    if refused:
        footer += f"; refused: {refused}"
    return out.table(headers, rows) + footer


@cli.command()
@click.option("--online", is_flag=True, help="only peers heard from recently")
@click.option("--once", is_flag=True, help="print the table once (the default off a terminal)")
@click.option("--interval", type=click.FloatRange(0.5, 3600), default=2.0, show_default=True,
              help="seconds between refreshes of the live table")
@command
def fleet(ctx: Ctx, online: bool, once: bool, interval: float) -> None:
    """The fleet: every peer's status (version, uptime, links, outbox, store,
    circuits) as heard in their presence; a live table on a terminal."""
    live = not (once or ctx.json) and sys.stdout.isatty()
    with ctx.client() as mesh:
        while True:
            found = mesh.fleet(online=online or None)
            if ctx.json:
                out.emit_json(found)
                return
            if not live:
                click.echo(fleet_table(found))
                return
            click.echo("\x1b[H\x1b[2J" + time.strftime("%H:%M:%S  ") + "clawmesh fleet "
                       f"(every {interval:g} s; Ctrl-C to stop)\n" + fleet_table(found))
            time.sleep(interval)


__all__ = ["cli", "fleet_table", "run_command_line"]
