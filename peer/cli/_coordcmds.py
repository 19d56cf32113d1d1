"""CLI subcommands for agents working together: receipts (and what builds on them).

They register on the ``cli`` group of ``peer.cli._commands`` when imported
(``peer.cli.main`` imports this module before dispatching).
"""

from __future__ import annotations

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
