"""``python -m peer COMMAND``: the CLI over a running peer's local API (built on ``peer.client``).

Tables on a terminal, ``--json`` for scripts. Every failure is one line on
standard error and a meaningful exit status: 1 the peer refused the request
(bad input, unknown peer, too large), 2 bad usage, 3 no peer answers at the
API address, 4 the peer refused the token.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from peer.client import (
    ApiError,
    ClawmeshError,
    Client,
    Gap,
    Message,
    PeerUnreachable,
    StatusChange,
    Unauthorised,
)
from peer.client._config import URL_FILE

from . import _output as out

EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_TOKEN = 1, 3, 4

F = TypeVar("F", bound=Callable[..., Any])


class Ctx:
    """What every command gets: how to reach the peer, and how to print."""

    def __init__(self, api: str | None, key_dir: Path | None, as_json: bool) -> None:
        self.api, self.key_dir, self.json = api, key_dir, as_json

    def client(self, timeout: float = 10.0) -> Client:
        return Client(self.api, key_dir=self.key_dir, timeout=timeout)

    def starting(self) -> bool:
        """A key directory was named whose peer has not written its address yet: asking
        the default address would reach another peer."""
        return self.api is None and self.key_dir is not None and not (
            self.key_dir.expanduser() / URL_FILE
        ).exists()


def _fail(code: int, message: str) -> None:
    click.echo(f"clawmesh: {message}", err=True)
    sys.exit(code)


def _explain(exc: ClawmeshError, ctx: Ctx) -> tuple[int, str]:
    if isinstance(exc, Unauthorised):
        endpoint = ctx.client().endpoint
        if endpoint.token is None:
            return EXIT_TOKEN, (
                f"no API token: {endpoint.key_dir / 'api-token'} does not exist "
                "(pass the running peer's --key-dir)"
            )
        return EXIT_TOKEN, (
            f"the peer at {endpoint.url} refused the token from {endpoint.token_source} "
            "(is --key-dir that peer's key directory?)"
        )
    if isinstance(exc, ApiError):
        return EXIT_REFUSED, f"{exc.code}: {exc.message}"
    if isinstance(exc, PeerUnreachable):
        return EXIT_UNREACHABLE, str(exc)
    return EXIT_REFUSED, str(exc)


def command(fn: F) -> F:
    """A subcommand with ``--api``, ``--key-dir`` and ``--json``, and one-line errors."""

    @click.option(
        "--api", envvar="MESH_API_URL", metavar="HOST:PORT|URL",
        help="the peer's API (default: from the key directory's api-url, else 127.0.0.1:7432)",
    )
    @click.option(
        "--key-dir", type=click.Path(path_type=Path), envvar="MESH_KEY_DIR",
        help="the peer's key directory, which holds api-token (default ~/.clawmesh/keys)",
    )
    @click.option("--json", "as_json", is_flag=True, help="print JSON (for scripts)")
    @functools.wraps(fn)
    def wrapper(api: str | None, key_dir: Path | None, as_json: bool, **kwargs: Any) -> None:
        ctx = Ctx(api, key_dir, as_json)
        try:
            fn(ctx, **kwargs)
        except ClawmeshError as exc:
            code, message = _explain(exc, ctx)
            _fail(code, message)
        except KeyboardInterrupt:
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Run a peer with: python -m peer [--bootstrap SPEC] ... (python -m peer --help)",
)
def cli() -> None:
    """Use a running clawmesh peer: send, read, stream, manage channels."""


def _text(words: Sequence[str]) -> str:
    """The message text: the words given, or standard input for none or ``-``."""
    if not words or list(words) == ["-"]:
        return sys.stdin.read().rstrip("\n")
    return " ".join(words)


def _payload(raw: str | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--payload") from None


_reply = click.option("--reply-to", metavar="MSG_ID", help="the message this answers")
_thread = click.option("--thread", metavar="MSG_ID", help="the thread (its first message's id)")
_payload_opt = click.option("--payload", metavar="JSON", help="structured data to carry (JSON)")


@cli.command()
@click.argument("channel")
@click.argument("text", nargs=-1)
@_reply
@_thread
@_payload_opt
@command
def send(
    ctx: Ctx, channel: str, text: tuple[str, ...], reply_to: str | None,
    thread: str | None, payload: str | None,
) -> None:
    """Post TEXT to CHANNEL (TEXT from standard input if absent or -)."""
    with ctx.client() as mesh:
        result = mesh.send(
            channel, _text(text), payload=_payload(payload), reply_to=reply_to, thread=thread
        )
    out.emit_json(result.raw) if ctx.json else click.echo(out.sent_line(result))


@cli.command()
@click.argument("peer_id", metavar="PEER")
@click.argument("text", nargs=-1)
@_reply
@_thread
@_payload_opt
@click.option("--kind", type=click.Choice(["request", "response", "notification", "alert"]))
@click.option("--correlation-id", metavar="HEX")
@click.option("--conversation-id", metavar="HEX")
@click.option("--reply-context", metavar="TEXT", help="opaque; the response echoes it")
@click.option("--priority", type=click.Choice(["low", "normal", "high", "urgent"]))
@click.option("--ttl", type=click.FloatRange(min=0.001), help="seconds until it expires")
@click.option("--idempotency-key", metavar="KEY", help="the agent is handed one per key")
@command
def dm(
    ctx: Ctx, peer_id: str, text: tuple[str, ...], reply_to: str | None,
    thread: str | None, payload: str | None, **semantics: Any,
) -> None:
    """Send an end-to-end encrypted direct message to PEER (a peer id, see `peers`)."""
    with ctx.client(timeout=20.0) as mesh:
        result = mesh.send_dm(
            peer_id, _text(text), payload=_payload(payload), reply_to=reply_to, thread=thread,
            **semantics,
        )
    out.emit_json(result.raw) if ctx.json else click.echo(out.sent_line(result))


@cli.command()
@click.option("--channel", "-c", help="only this channel")
@click.option("--peer", "-p", "peer_id", metavar="PEER", help="only DMs with this peer")
@_thread
@click.option("--all", "everything", is_flag=True, help="read and unread (marks nothing)")
@click.option("--after", type=click.IntRange(min=0), help="only after this cursor")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--wait", type=click.FloatRange(0, 60), help="wait up to S seconds for one")
@click.option("--peek", is_flag=True, help="show unread messages without marking them read")
@command
def read(
    ctx: Ctx, channel: str | None, peer_id: str | None, thread: str | None, everything: bool,
    after: int | None, limit: int, wait: float | None, peek: bool,
) -> None:
    """Unread messages (then marked read); --all for everything the inbox holds."""
    with ctx.client() as mesh:
        found = mesh.messages(
            unread=None if everything else True, channel=channel, peer=peer_id, thread=thread,
            after=after, limit=limit, wait=wait, peek=peek or None,
        )
    if ctx.json:
        out.emit_json([m.raw for m in found])
    elif found:
        click.echo(out.table(out.MESSAGE_HEADERS, [out.message_row(m) for m in found]))
    else:
        click.echo("no messages", err=True)


@cli.command()
@click.option("--channel", "-c", help="only this channel")
@click.option("--peer", "-p", "peer_id", metavar="PEER", help="only DMs with this peer")
@_thread
@click.option("--after", type=click.IntRange(min=0), help="replay from after this cursor first")
@click.option("--count", type=click.IntRange(min=1), help="exit after this many messages")
@click.option("--status", "statuses", is_flag=True, help="also show DM delivery changes")
@command
def tail(
    ctx: Ctx, channel: str | None, peer_id: str | None, thread: str | None,
    after: int | None, count: int | None, statuses: bool,
) -> None:
    """Print messages as they arrive, until interrupted; survives a peer restart."""

    def retrying(reason: str, delay: float) -> None:
        click.echo(f"clawmesh: stream lost ({reason}); reconnecting", err=True)

    seen = 0
    with ctx.client() as mesh:
        mesh.status()  # a peer that is not running is an error now, not a wait
        for event in mesh.stream(
            after=after, channel=channel, peer=peer_id, thread=thread, on_retry=retrying
        ):
            if isinstance(event, Gap):
                click.echo(f"clawmesh: gap: {event.message}", err=True)
                continue
            if isinstance(event, StatusChange):
                if statuses:
                    _print_event(ctx, event)
                continue
            _print_event(ctx, event)
            seen += 1
            if count is not None and seen >= count:
                return


def _print_event(ctx: Ctx, event: Message | StatusChange) -> None:
    if ctx.json:
        raw = event.raw if isinstance(event, Message) else {"event": "status", **event.raw}
        out.emit_json(raw)
    elif isinstance(event, Message):
        click.echo(out.message_line(event))
    else:
        click.echo(out.status_line(event))
    sys.stdout.flush()


@cli.command()
@click.option("--online", is_flag=True, help="only peers linked or seen recently")
@click.option("--wait", type=click.FloatRange(0, 60), help="wait up to S seconds for --min")
@click.option("--min", "min_count", type=click.IntRange(min=0), help="at least this many")
@command
def peers(ctx: Ctx, online: bool, wait: float | None, min_count: int | None) -> None:
    """Peers this one knows: their ids (for `dm`), names, and whether they are online."""
    with ctx.client() as mesh:
        found = mesh.peers(online=online or None, min_count=min_count, wait=wait)
    out.emit_json([p.raw for p in found]) if ctx.json else click.echo(out.peers_table(found))


@cli.command()
@click.option("--wait", type=click.FloatRange(0, 600), default=0.0,
              help="wait up to S seconds for the peer to answer (just started?)")
@click.option("--id", "only_id", is_flag=True, help="print only the peer id (for scripts)")
@command
def status(ctx: Ctx, wait: float, only_id: bool) -> None:
    """The peer's id, links, channels and unread count."""
    deadline = time.monotonic() + wait
    while True:
        try:
            if ctx.starting():
                where = str(ctx.key_dir)
                raise PeerUnreachable(where, f"no {URL_FILE} there yet: the peer is not up")
            with ctx.client() as mesh:  # found afresh: a starting peer writes its address
                found = mesh.status()
            break
        except PeerUnreachable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
    if only_id:
        click.echo(found.peer_id)
    else:
        out.emit_json(found.raw) if ctx.json else click.echo(out.status_text(found))


@cli.command()
@command
def channels(ctx: Ctx) -> None:
    """The channels this peer has joined."""
    with ctx.client() as mesh:
        names = mesh.channels()
    if ctx.json:
        out.emit_json(names)
    else:
        click.echo("\n".join(f"#{n}" for n in names) or "no channels joined")


@cli.command()
@click.argument("channel")
@command
def join(ctx: Ctx, channel: str) -> None:
    """Join CHANNEL (subscribe: its messages reach this peer's inbox)."""
    with ctx.client() as mesh:
        names = mesh.join(channel)
    out.emit_json(names) if ctx.json else click.echo(f"joined #{channel.lstrip('#')}")


@cli.command()
@click.argument("channel")
@command
def leave(ctx: Ctx, channel: str) -> None:
    """Leave CHANNEL."""
    with ctx.client() as mesh:
        names = mesh.leave(channel)
    out.emit_json(names) if ctx.json else click.echo(f"left #{channel.lstrip('#')}")


@cli.command()
@click.argument("ids", nargs=-1, metavar="[MSG_ID]...")
@click.option("--through", type=click.IntRange(min=0), help="everything up to this cursor")
@command
def ack(ctx: Ctx, ids: tuple[str, ...], through: int | None) -> None:
    """Mark messages read: by id, or everything --through a cursor."""
    if not ids and through is None:
        raise click.UsageError("give message ids or --through CURSOR")
    with ctx.client() as mesh:
        result = mesh.ack(ids=list(ids) or None, through=through)
    if ctx.json:
        out.emit_json({"marked": result.marked, "unread": result.unread})
    else:
        click.echo(f"marked {result.marked} read, {result.unread} unread")


@cli.command()
@click.option(
    "--api", envvar="MESH_API_URL", metavar="HOST:PORT|URL", help="the peer's API"
)
@click.option("--key-dir", type=click.Path(path_type=Path), envvar="MESH_KEY_DIR",
              help="the peer's key directory (default ~/.clawmesh/keys)")
def mcp(api: str | None, key_dir: Path | None) -> None:
    """Serve the mesh as MCP tools over stdio (for Claude, OpenClaw and other MCP hosts)."""
    from peer.mcp import serve_stdio

    serve_stdio(api=api, key_dir=key_dir)


def run_command_line(argv: Sequence[str]) -> None:
    cli.main(args=list(argv), prog_name="python -m peer", standalone_mode=True)
