"""Presence, sans-IO: when to announce ourselves, and what an announcement says.

Rules kept here:

* A peer announces itself every ``interval`` seconds, and soon after it is
  wanted (a new peer appeared, a link started carrying presence), but never
  twice within ``debounce`` seconds.
* An announcement's payload is a CBOR map ``{"listen": [...], "caps": [...]}``,
  with ``"name"`` (the agent's display name, at most ``MAX_NAME`` characters)
  when it has one, and ``"skills"`` (what the agent declares it does, for A2A
  cards: at most ``MAX_SKILLS`` of ``{"id", "description"}``) when it has
  some; :func:`parse_presence` takes what is well formed from one
  (at most ``MAX_LISTEN`` addresses and ``MAX_CAPS`` capabilities),
  :func:`presence_name` the name, and the rest is ignored.

Time is an input: ``next_deadline()`` says when the shell must call
``handle_timer(now)``, which answers whether to announce now.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MAX_LISTEN = 8
MAX_CAPS = 16
MAX_NAME = 64
MAX_PRESENCE_PAYLOAD = 4096  # bytes of payload an envelope may carry (envelope.md 8)
MAX_SKILLS = 8  # skills an announcement carries (A2A cards are built from them)
MAX_SKILL_ID = 32
MAX_SKILL_TEXT = 96  # the payload stays well under its 4096 bytes


@dataclass(frozen=True, slots=True)
class Announce:
    """Sign and publish a presence announcement now."""


class Presence:
    """The announcement schedule of one peer."""

    def __init__(self, interval: float, debounce: float) -> None:
        self.interval = interval
        self.debounce = debounce
        self._last = -math.inf  # when we last announced
        self._cycle: float | None = None  # when the current interval started
        self._wanted_at: float | None = None

    def start(self, now: float) -> None:
        self._cycle = now

    def want(self, now: float) -> None:
        """Announce soon (debounced)."""
        if self._wanted_at is None:
            self._wanted_at = now

    def next_deadline(self) -> float | None:
        if self._cycle is None:
            return None
        due = self._cycle + self.interval
        if self._wanted_at is not None:
            due = min(due, max(self._wanted_at, self._last + self.debounce))
        return due

    def handle_timer(self, now: float) -> list[Announce]:
        due = self.next_deadline()
        if due is None or now < due:
            return []
        self._last = now
        self._cycle = now
        self._wanted_at = None
        return [Announce()]


def presence_payload(
    listen: list[str],
    caps: tuple[str, ...],
    name: str = "",
    skills: tuple[tuple[str, str], ...] = (),
) -> dict[str, Any]:
    payload: dict[str, Any] = {"listen": listen[:MAX_LISTEN], "caps": list(caps)}
    if name:
        payload["name"] = name[:MAX_NAME]
    if skills:
        payload["skills"] = [
            {"id": skill_id[:MAX_SKILL_ID], "description": text[:MAX_SKILL_TEXT]}
            for skill_id, text in skills[:MAX_SKILLS]
        ]
    return payload


def presence_skills(data: Any) -> tuple[tuple[str, str], ...]:
    """The skills (id, description) an announcement declares: the well-formed ones
    of the first ``MAX_SKILLS`` entries; none when absent or bad."""
    items = data.get("skills") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return ()
    out = []
    for item in items[:MAX_SKILLS]:
        if not isinstance(item, dict):
            continue
        skill_id, text = item.get("id"), item.get("description", "")
        if (isinstance(skill_id, str) and valid_skill_id(skill_id) and isinstance(text, str)
                and len(text) <= MAX_SKILL_TEXT and text.isprintable()):
            out.append((skill_id, text))
    return tuple(out)


def valid_skill_id(skill_id: str) -> bool:
    return 0 < len(skill_id) <= MAX_SKILL_ID and skill_id.isprintable() and " " not in skill_id


def valid_name(name: str) -> bool:
    """A display name: 1 to ``MAX_NAME`` printable characters."""
    return 0 < len(name) <= MAX_NAME and name.isprintable()


def presence_name(data: Any) -> str | None:
    """The display name an announcement's payload carries (None: absent or bad)."""
    if not isinstance(data, dict):
        return None
    name = data.get("name")
    return name if isinstance(name, str) and valid_name(name) else None


def parse_presence(data: Any) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """The listen addresses and caps an announcement's payload names (None: absent or bad)."""
    if not isinstance(data, dict):
        return None, None
    listen = data.get("listen")
    caps = data.get("caps")
    good_listen = None
    good_caps = None
    if isinstance(listen, list) and all(isinstance(a, str) for a in listen):
        good_listen = tuple(listen[:MAX_LISTEN])
    if isinstance(caps, list) and all(isinstance(c, str) for c in caps):
        good_caps = tuple(caps[:MAX_CAPS])
    return good_listen, good_caps
