"""``python -m peer blob put|get|status``: attachments from the command line.

``put FILE`` uploads (resumable) and prints the blob id, or with ``--channel``
/ ``--to`` also sends a message that carries it; ``get ID DEST`` downloads
(resuming after breaks, checked against the id); ``status ID`` shows the
chunks this peer holds.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

import click

from . import _output as out
from ._commands import Ctx, cli, command


@cli.group()
def blob() -> None:
    """Upload, send and fetch files (blobs) of any size."""


@blob.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--type", "media_type", help="media type (default: guessed from the name)")
@click.option("--name", help="file name others see (default: the file's)")
@click.option("--channel", "-c", help="also post a message carrying it to this channel")
@click.option("--to", "peer_id", metavar="PEER", help="also DM it to this peer")
@click.option("--text", default="", help="the message's text (with --channel or --to)")
@command
def put(
    ctx: Ctx,
    path: Path,
    media_type: str | None,
    name: str | None,
    channel: str | None,
    peer_id: str | None,
    text: str,
) -> None:
    """Upload PATH; print its blob id (resumes by itself after a broken connection)."""
    kind = media_type or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    with ctx.client(timeout=60.0) as mesh:
        found = mesh.upload_blob(path, name=name, media_type=kind)
        sent = None
        if channel is not None:
            sent = mesh.send(channel.lstrip("#"), text, attachments=[found])
        elif peer_id is not None:
            sent = mesh.send_dm(peer_id, text, attachments=[found])
    if ctx.json:
        out.emit_json({**found, "sent": None if sent is None else sent.raw})
        return
    click.echo(f"{found['id']}  {found['size']} bytes  {found['type']}  {found['name']}")
    if sent is not None:
        click.echo(out.sent_line(sent))


@blob.command()
@click.argument("blob_id", metavar="ID")
@click.argument("dest", type=click.Path(dir_okay=False, path_type=Path))
@command
def get(ctx: Ctx, blob_id: str, dest: Path) -> None:
    """Download blob ID to DEST (fetched over the mesh if the peer lacks it)."""
    with ctx.client(timeout=60.0) as mesh:
        path = mesh.download_blob(blob_id, dest)
    if ctx.json:
        out.emit_json({"id": blob_id, "path": str(path), "size": path.stat().st_size})
    else:
        click.echo(f"{path}  {path.stat().st_size} bytes")


@blob.command()
@click.argument("blob_id", metavar="ID")
@command
def status(ctx: Ctx, blob_id: str) -> None:
    """Chunks of blob ID this peer holds, of the total."""
    with ctx.client() as mesh:
        info = mesh.blob_status(blob_id)
    if ctx.json:
        out.emit_json(info)
    else:
        click.echo(f"{info['id']}  {info['have']}/{info['chunks']} chunks  {info['size']} bytes")
