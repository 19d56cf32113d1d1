"""How the CLI's commands print: aligned tables for people, JSON for scripts, one line per error."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from peer.client import AgentCard, AgentInfo, Message, PeerInfo, SendResult, Status, StatusChange


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the last column is never padded."""
    if not rows:
        return ""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = []
    for row in [list(headers), *map(list, rows)]:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def _clock(timestamp: str) -> str:
    """``HH:MM:SS`` of an ISO timestamp (as it is, if it is not one)."""
    _, sep, rest = timestamp.partition("T")
    return rest[:8] if sep else timestamp


def where(message: Message) -> str:
    if message.channel is not None:
        return f"#{message.channel}"
    arrow = "->" if message.outgoing else "<-"
    status = f" [{message.status}]" if message.status else ""
    return f"dm {arrow} {(message.peer or '?')[:16]}{status}"


def message_row(message: Message) -> list[str]:
    body = message.body.replace("\n", " / ")
    if message.payload is not None:
        body += " [+payload]"
    return [
        str(message.cursor), _clock(message.timestamp), where(message), message.sender[:16], body
    ]


MESSAGE_HEADERS = ("CURSOR", "TIME", "WHERE", "FROM", "BODY")


def message_line(message: Message) -> str:
    return "  ".join(message_row(message))


def status_line(change: StatusChange) -> str:
    return f"dm {change.id[:16]} to {change.peer[:16]}: {change.status}"


def sent_line(result: SendResult) -> str:
    target = f"#{result.channel}" if result.channel else f"peer {result.to}"
    return f"sent {result.id} to {target} (seq {result.seq})"


def peers_table(peers: Sequence[PeerInfo]) -> str:
    rows = [
        [
            p.peer_id,
            p.name or "",
            "yes" if p.online else "no",
            "yes" if p.linked else "no",
            _clock(p.last_seen),
        ]
        for p in peers
    ]
    return table(("PEER ID", "NAME", "ONLINE", "LINKED", "LAST SEEN"), rows) or "no peers known yet"


def agents_table(agents: Sequence[AgentInfo]) -> str:
    rows = [
        [
            a.peer_id[:16],
            a.name + (" (us)" if a.own else ""),
            "yes" if a.online else "no",
            ", ".join(a.skills),
            str(a.card.get("availability", "")),
        ]
        for a in agents
    ]
    headers = ("PEER ID", "NAME", "ONLINE", "SKILLS", "AVAILABILITY")
    return table(headers, rows) or "no agents found"


def card_text(card: AgentCard) -> str:
    if card.card is None:
        return "no card"
    state = "not published"
    if card.published:
        state = f"published, expires {_clock(card.expires or '')}"
    return json.dumps(card.card, indent=2) + f"\n({state})"


def status_text(status: Status) -> str:
    rows = [
        ("peer id", status.peer_id),
        ("uptime", f"{status.uptime_seconds:.0f} s"),
        ("links", str(status.peer_count)),
        ("peers", f"{status.known_peers} known, {status.online_peers} online"),
        ("channels", ", ".join(f"#{c}" for c in status.channels) or "none"),
        ("unread", str(status.unread)),
        ("mesh address", ", ".join(status.listen) or "none (not listening)"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
