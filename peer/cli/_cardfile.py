"""``--card FILE`` and ``--skill ID``: the agent card a peer starts with.

The file is JSON in the card's shape (``dht/_card.py``; README "Agent
directory"); ``--skill ID=DESCRIPTION`` are added to its skills, description kept (or make a
card of their own, named after ``--name``). Anything invalid stops the peer before it
starts, with one line naming the problem.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dht import RecordError, check_card
from peer.node._agents import card_from_skills

MAX_CARD_FILE = 64 * 1024


def agent_card(
    path: str | None, skills: Sequence[tuple[str, str]], name: str
) -> dict[str, Any] | None:
    """The card from ``--card`` and ``--skill`` (None if neither), checked."""
    if path is None and not skills:
        return None
    base = None
    if path is not None:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise SystemExit(f"clawmesh: --card {path}: {exc.strerror}") from None
        if len(raw) > MAX_CARD_FILE:
            raise SystemExit(f"clawmesh: --card {path}: over {MAX_CARD_FILE} bytes")
        try:
            base = json.loads(raw)
        except ValueError as exc:
            raise SystemExit(f"clawmesh: --card {path}: not JSON ({exc})") from None
        if not isinstance(base, dict):
            raise SystemExit(f"clawmesh: --card {path}: must hold a JSON object")
    card = card_from_skills(name, [(sid.strip().lower(), text) for sid, text in skills], base)
    try:
        check_card(card)
    except RecordError as exc:
        raise SystemExit(f"clawmesh: agent card: {exc.message}") from None
    return card
