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
    count = len(view.get("to", []))
    where = f"#{channel}" if channel else f"{count} peer{'' if count == 1 else 's'}"
    if view.get("selected_by"):
        where += f" with skill {view['selected_by'].get('skill')}"
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
@click.option("--skill", help="ask the agents declaring this skill instead")
@click.option("--tag", help="with --skill: only agents with a skill tagged so")
@click.option("--online/--any", "online", default=None,
              help="with --skill: only agents online now (default: any)")
@click.option("--quorum", type=click.IntRange(min=1), help="answers that complete it")
@_within
@_wait
@command
def rally(
    ctx: Ctx, text: tuple[str, ...], to: tuple[str, ...], channel: str | None,
    skill: str | None, tag: str | None, online: bool | None,
    quorum: int | None, within: float, wait: float,
) -> None:
    """Ask several peers (--to, repeated), a --channel or a --skill; complete on --quorum."""
    if sum((bool(to), bool(channel), bool(skill))) != 1:
        raise click.UsageError("give --to PEER (one or more), --channel NAME or --skill ID")
    with ctx.client(timeout=20.0 + wait) as mesh:
        view = mesh.rally(" ".join(text), to=list(to) or None, channel=channel, quorum=quorum,
                          within=within, wait=wait, skill=skill, tag=tag,
                          online=online if skill else None)
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


def _conversation_lines(view: dict[str, Any]) -> str:
    head = (f"{view['id']} {view['type']} {view['state']}: {view['subject'][:60]}"
            f" ({len(view['participants'])} participants)")
    rows = [[h["from"][:16], h["at"], h["vote"] or "", h["body"][:60]] for h in view["history"]]
    lines = [head]
    if rows:
        lines.append(out.table(["from", "at", "vote", "text"], rows))
    verdict = view.get("verdict")
    if verdict:
        signed = {True: "signed", False: "BAD SIGNATURE", None: "ours"}[verdict.get("verified")]
        lines.append(f"verdict: {verdict['decision']} ({verdict.get('summary', '')}; {signed})")
    return "\n".join(lines)


_TYPES = click.Choice(["rally", "collab", "escalation", "broadcast", "opinion", "brainstorm"])


@cli.command()
@click.argument("kind", type=_TYPES, metavar="TYPE")
@click.argument("text", nargs=-1, required=True)
@click.option("--to", "to", multiple=True, required=True, metavar="PEER",
              help="a participant (repeat)")
@click.option("--rule", type=click.Choice(["majority", "unanimity", "threshold"]),
              help="compute the verdict from votes")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True))
@click.option("--timeout", "within", type=click.FloatRange(min=1), help="seconds")
@click.option("--idle", type=click.FloatRange(min=1), help="idle timeout, seconds")
@command
def converse(
    ctx: Ctx, kind: str, text: tuple[str, ...], to: tuple[str, ...], rule: str | None,
    threshold: float | None, within: float | None, idle: float | None,
) -> None:
    """Start a conversation of TYPE with the --to participants about TEXT."""
    with ctx.client() as mesh:
        view = mesh.start_conversation(kind, list(to), " ".join(text), rule=rule,
                                       threshold=threshold, within=within, idle=idle)
    out.emit_json(view) if ctx.json else click.echo(_conversation_lines(view))


@cli.command()
@click.argument("conv_id", metavar="ID")
@click.argument("text", nargs=-1, required=True)
@click.option("--vote", help="a structured vote, for a computed verdict")
@command
def say(ctx: Ctx, conv_id: str, text: tuple[str, ...], vote: str | None) -> None:
    """Post TEXT into conversation ID (to every member)."""
    with ctx.client() as mesh:
        view = mesh.post_to_conversation(conv_id, " ".join(text), vote=vote)
    out.emit_json(view) if ctx.json else click.echo(_conversation_lines(view))


@cli.command()
@click.argument("conv_id", metavar="ID")
@click.argument("decision")
@click.option("--summary", default="", help="why")
@command
def verdict(ctx: Ctx, conv_id: str, decision: str, summary: str) -> None:
    """As its initiator, decide conversation ID: a signed verdict to everyone."""
    with ctx.client() as mesh:
        view = mesh.set_verdict(conv_id, decision, summary)
    out.emit_json(view) if ctx.json else click.echo(_conversation_lines(view))


@cli.command()
@click.argument("conv_id", metavar="[ID]", required=False)
@click.option("--query", "-q", help="a keyword")
@click.option("--agent", metavar="PEER", help="a participant")
@click.option("--type", "kind", type=_TYPES)
@click.option("--status", type=click.Choice(["open", "active", "complete", "timed_out"]))
@command
def conversations(
    ctx: Ctx, conv_id: str | None, query: str | None, agent: str | None, kind: str | None,
    status: str | None,
) -> None:
    """Search conversations, or show one (ID) with its history and verdict."""
    with ctx.client() as mesh:
        views = ([mesh.get_conversation(conv_id)] if conv_id else
                 mesh.conversations(q=query, agent=agent, type_=kind, status=status))
    if ctx.json:
        out.emit_json(views[0] if conv_id else views)
        return
    for view in views:
        click.echo(_conversation_lines(view))


def _task_line(view: dict[str, Any]) -> str:
    progress = "" if view["progress"] is None else f" {view['progress'] * 100:.0f}%"
    if view["state"] in ("failed", "canceled", "rejected") and progress:
        progress = f" (at{progress})"  # how far it got
    other = view["worker"] if view["role"] == "requester" else view["requester"]
    return (f"{view['id']} {view['role']} with {other[:16]}: {view['state']}{progress}"
            f" - {view['request'][:60]}")


_TASK_STATES = click.Choice(["submitted", "working", "input-required", "completed", "failed",
                             "canceled", "rejected"])


@cli.command()
@click.argument("task_id", metavar="[ID]", required=False)
@click.option("--to", "to", metavar="PEER", help="give PEER a new task (TEXT from --text)")
@click.option("--text", help="what the new task is")
@click.option("--role", type=click.Choice(["requester", "worker"]))
@click.option("--state", "state_filter", type=_TASK_STATES)
@click.option("--set", "new_state", type=_TASK_STATES, help="as the worker: move ID on")
@click.option("--message", help="with --set: a status message")
@click.option("--progress", type=click.FloatRange(0, 1), help="with --set: a fraction")
@click.option("--cancel", is_flag=True, help="as the requester: cancel ID")
@command
def task(
    ctx: Ctx, task_id: str | None, to: str | None, text: str | None, role: str | None,
    state_filter: str | None, new_state: str | None, message: str | None,
    progress: float | None, cancel: bool,
) -> None:
    """Tasks with A2A's states: list, show ID, give one (--to PEER --text ...),
    move one on as its worker (ID --set working --progress 0.5), or --cancel ID."""
    with ctx.client() as mesh:
        if to is not None:
            if not text:
                raise click.UsageError("a new task needs --text")
            views = [mesh.submit_task(to, text)]
        elif task_id is not None and new_state is not None:
            views = [mesh.update_task(task_id, new_state, message=message, progress=progress)]
        elif task_id is not None and cancel:
            views = [mesh.cancel_task(task_id)]
        elif task_id is not None:
            views = [mesh.get_task(task_id)]
        else:
            views = mesh.tasks(role=role, state=state_filter)
    if ctx.json:
        out.emit_json(views if task_id is None and to is None else views[0])
        return
    for view in views:
        click.echo(_task_line(view))


@cli.command("retry-dead")
@click.argument("ids", nargs=-1, metavar="[MSG_ID]...")
@command
def retry_dead(ctx: Ctx, ids: tuple[str, ...]) -> None:
    """Put dead letters (these, or all of them) back into the outbox."""
    with ctx.client() as mesh:
        result = mesh.retry_dead_letters(list(ids) or None)
    if ctx.json:
        out.emit_json(result)
        return
    click.echo(f"{result['count']} back in the outbox")
    for skipped in result.get("skipped", []):
        click.echo(f"skipped {skipped['id']}: {skipped['reason']} (its ttl has passed)")


@cli.command()
@click.argument("host")
@click.argument("check")
@click.option("--ok", is_flag=True, help="the check recovered")
@click.option("--to", "to", multiple=True, metavar="PEER", help="alert this peer (repeat)")
@click.option("--channel", "-c", help="alert this channel instead")
@click.option("--text", help="the alert's text")
@command
def alert(ctx: Ctx, host: str, check: str, ok: bool, to: tuple[str, ...], channel: str | None,
          text: str | None) -> None:
    """Raise (or clear with --ok) the alert CHECK on HOST, deduplicated: new, suppressed,
    escalate after 3, recovery."""
    if bool(to) == bool(channel):
        raise click.UsageError("give --to PEER (one or more) or --channel NAME")
    with ctx.client() as mesh:
        result = mesh.alert(host, check, ok=ok, to=list(to) or None, channel=channel,
                            body=text)
    out.emit_json(result) if ctx.json else click.echo(
        f"{result['decision']} (count {result['count']}, sent {len(result['sent'])})")
