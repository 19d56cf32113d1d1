"""Choosing a rally's peers by skill: ``POST /rally`` with ``skill`` (and ``tag``, ``online``).

The peer looks the skill up in the agent directory (the same lookup as
``GET /agents?skill=``) and asks the agents found. Rules kept here:

* This peer is never asked, even when its own card declares the skill: a
  rally is one agent asking the others, and ``/rally`` refuses our own id.
* ``online`` True keeps only agents seen online, False only offline ones,
  None keeps both (an offline agent gets the question when it comes back,
  from the outbox or its mailbox).
* Online agents come first, then by name and peer id, so the choice is the
  same for the same directory; at most ``limit`` (<= ``MAX_TARGETS``) are
  taken.
* ``choose_agents`` is pure (entries in, peer ids out) and unit-tested;
  ``resolve_skill`` adds the bounded DHT lookup around it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from peer.protocols._rally import MAX_TARGETS

from ._agents import AgentDirectory, AgentEntry, matches

LOOKUP_TIMEOUT = 10.0  # seconds the lookup may spend in the DHT (as GET /agents)


@dataclass(frozen=True, slots=True)
class SkillChoice:
    """What a skill rally asked for and whom it found."""

    skill: str
    tag: str | None
    online: bool | None
    found: int  # agents declaring it, before dropping this peer and applying limit
    chosen: tuple[bytes, ...]

    def selector(self) -> dict[str, Any]:
        """The record the rally keeps (CBOR- and JSON-friendly)."""
        return {"skill": self.skill, "tag": self.tag, "online": self.online,
                "found": self.found}


def choose_agents(
    entries: Iterable[AgentEntry], *, self_id: bytes, online: bool | None,
    limit: int = MAX_TARGETS,
) -> tuple[bytes, ...]:
    """The peer ids a skill rally asks, from the directory's entries (see module rules)."""
    seen: set[bytes] = set()
    kept: list[AgentEntry] = []
    for entry in entries:
        if entry.own or entry.peer_id == self_id or entry.peer_id in seen:
            continue
        if online is not None and entry.online != online:
            continue
        seen.add(entry.peer_id)
        kept.append(entry)
    kept.sort(key=lambda e: (not e.online, str(e.card.get("name", "")), e.peer_id))
    return tuple(e.peer_id for e in kept[: max(0, min(limit, MAX_TARGETS))])


class SkillPeer(Protocol):
    @property
    def peer_id(self) -> bytes: ...
    @property
    def agents(self) -> AgentDirectory: ...
    def wall_ms(self) -> int: ...


async def resolve_skill(
    peer: SkillPeer, skill: str, tag: str | None, online: bool | None, limit: int
) -> SkillChoice:
    """Look ``skill`` up (bounded; on a slow DHT, the cards already known) and choose."""
    directory = peer.agents
    records = []
    with trio.move_on_after(LOOKUP_TIMEOUT) as scope:
        records = await directory.find(skill, tag)
    if scope.cancelled_caught:
        records = [r for r in await directory.find(None, None) if matches(r.card, skill, tag)]
    now_ms = peer.wall_ms()
    entries = [directory.entry(r, now_ms) for r in records]
    chosen = choose_agents(entries, self_id=peer.peer_id, online=online, limit=limit)
    return SkillChoice(skill, tag, online, len(entries), chosen)


__all__ = ["SkillChoice", "choose_agents", "resolve_skill"]
