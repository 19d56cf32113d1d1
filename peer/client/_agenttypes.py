"""What the agent directory endpoints answer, as typed values: ``AgentInfo``, ``AgentCard``.

``GET /agents`` lists :class:`AgentInfo`; ``GET``/``PUT /card`` answer an
:class:`AgentCard`. Each keeps the JSON it came from in ``raw``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._types import _str


def _skill_ids(card: dict[str, Any]) -> list[str]:
    skills = card.get("skills")
    if not isinstance(skills, list):
        return []
    return [s["id"] for s in skills if isinstance(s, dict) and isinstance(s.get("id"), str)]


@dataclass(frozen=True)
class AgentInfo:
    """An agent found by skill or tag: its peer id, card, and whether it is online."""

    peer_id: str
    name: str
    online: bool
    last_seen: str | None
    expires: str
    skills: list[str]
    card: dict[str, Any]
    own: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentInfo:
        card = data.get("card")
        card = card if isinstance(card, dict) else {}
        return cls(
            peer_id=_str(data, "peer_id") or "",
            name=_str(data, "name") or "",
            online=bool(data.get("online")),
            last_seen=_str(data, "last_seen"),
            expires=_str(data, "expires") or "",
            skills=_skill_ids(card),
            card=card,
            own=bool(data.get("self")),
            raw=data,
        )


@dataclass(frozen=True)
class AgentCard:
    """Our own agent card, and whether the DHT has it (``published``)."""

    peer_id: str
    card: dict[str, Any] | None
    published: bool
    expires: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentCard:
        card = data.get("card")
        return cls(
            peer_id=_str(data, "peer_id") or "",
            card=card if isinstance(card, dict) else None,
            published=bool(data.get("published")),
            expires=_str(data, "expires"),
            raw=data,
        )
