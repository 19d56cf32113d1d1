"""CLI subcommands for agents working together: receipts (and what builds on them).

They register on the ``cli`` group of ``peer.cli._commands`` when imported
(``peer.cli.main`` imports this module before dispatching).
"""

from __future__ import annotations

from typing import Any

import click

from . import _output as out
from ._commands import Ctx, cli, command


@cli.command()
@click.argument("msg_id", metavar="MSG_ID")
@command
def receipts(ctx: Ctx, msg_id: str) -> None:
    """The states PEER signed for a DM we sent: stored, delivered, read, replied, expired."""
    with ctx.client() as mesh:
        view = mesh.receipts(msg_id)
    if ctx.json:
        out.emit_json(view)
        return
    rows = [
        [state, s["at"], "yes" if s["verified"] else "NO", s["signed_by"][:16]]
        for state, s in view["states"].items()
    ]
    click.echo(f"{view['id'][:16]} to {view['to'][:16]}: {view['state']}")
    if rows:
        click.echo(out.table(["state", "at", "signed", "by"], rows))


def _rally_lines(view: dict[str, Any]) -> str:
    channel = view.get("channel")
    where = f"#{channel}" if channel else f"{len(view.get('to', []))} peers"
    head = (f"{view['id']} {view['kind']} to {where}: {view['state']}, round {view['round']}, "
            f"quorum {view['quorum']}, deadline {view['deadline']}")
    rows = [[a["from"][:16], "late" if a["late"] else "", a["at"], a["body"][:60]]
            for a in view["answers"]]
    return head + ("\n" + out.table(["from", "", "at", "answer"], rows) if rows else "")


_within = click.option("--timeout", "within", type=click.FloatRange(min=0.001), default=30.0,
                       show_default=True, help="seconds until the deadline")
_wait = click.option("--wait", type=click.FloatRange(0, 60), default=0.0,
                     help="seconds to wait for the outcome")


@cli.command()
@click.argument("peer_id", metavar="PEER")
@click.argument("text", nargs=-1, required=True)
@_within
@_wait
@command
def request(ctx: Ctx, peer_id: str, text: tuple[str, ...], within: float, wait: float) -> None:
    """Ask PEER; its reply is the answer (see `rallies ID` later)."""
    with ctx.client(timeout=20.0 + wait) as mesh:
        view = mesh.request(peer_id, " ".join(text), within=within, wait=wait)
    out.emit_json(view) if ctx.json else click.echo(_rally_lines(view))


@cli.command()
@click.argument("text", nargs=-1, required=True)
@click.option("--to", "to", multiple=True, metavar="PEER", help="a peer asked (repeat)")
@click.option("--channel", "-c", help="ask everyone on this channel instead")
@click.option("--quorum", type=click.IntRange(min=1), help="answers that complete it")
@_within
@_wait
@command
def rally(
    ctx: Ctx, text: tuple[str, ...], to: tuple[str, ...], channel: str | None,
    quorum: int | None, within: float, wait: float,
) -> None:
    """Ask several peers (--to, repeated) or a --channel; complete on --quorum answers."""
    if bool(to) == bool(channel):
        raise click.UsageError("give --to PEER (one or more) or --channel NAME")
    with ctx.client(timeout=20.0 + wait) as mesh:
        view = mesh.rally(" ".join(text), to=list(to) or None, channel=channel, quorum=quorum,
                          within=within, wait=wait)
    out.emit_json(view) if ctx.json else click.echo(_rally_lines(view))


@cli.command()
@click.argument("rally_id", metavar="[ID]", required=False)
@click.option("--state", type=click.Choice(["open", "complete", "timed_out", "canceled"]))
@_wait
@command
def rallies(ctx: Ctx, rally_id: str | None, state: str | None, wait: float) -> None:
    """Our requests and rallies, or one of them (ID) with its answers."""
    with ctx.client(timeout=20.0 + wait) as mesh:
        views = [mesh.get_rally(rally_id, wait=wait)] if rally_id else mesh.rallies(state=state)
    if ctx.json:
        out.emit_json(views[0] if rally_id else views)
        return
    for view in views:
        click.echo(_rally_lines(view))


@cli.command("rally-round")
@click.argument("rally_id", metavar="ID")
@click.argument("text", nargs=-1, required=True)
@click.option("--quorum", type=click.IntRange(min=1), help="answers that complete it")
@_within
@_wait
@command
def rally_round(
    ctx: Ctx, rally_id: str, text: tuple[str, ...], quorum: int | None, within: float,
    wait: float,
) -> None:
    """Ask a follow-up round of rally ID: it carries the last round's answers."""
    with ctx.client(timeout=20.0 + wait) as mesh:
        view = mesh.rally_round(rally_id, " ".join(text), quorum=quorum, within=within,
                                wait=wait)
    out.emit_json(view) if ctx.json else click.echo(_rally_lines(view))
