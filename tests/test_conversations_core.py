"""Conversations as a sans-IO state machine (peer.protocols._conversations):
lifecycle, idle and deadline timeouts in virtual time, consensus rules."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest

from peer.protocols._conversations import (
    ACTIVE,
    COMPLETE,
    OPEN,
    TIMED_OUT,
    Conversation,
    new_conversation,
    tally,
)

OWNER = b"\x00" * 32
P = tuple(bytes([i]) * 32 for i in range(1, 5))


def _conv(rule: str | None = "majority", threshold: float = 0.5) -> Conversation:
    return new_conversation(b"\x07" * 16, type_="opinion", owner=OWNER, participants=P,
                            subject="tabs or spaces?", rule=rule, threshold=threshold,
                            deadline_ms=100_000, idle_ms=10_000, now_ms=0)


def test_rules() -> None:
    votes = {P[0]: "yes", P[1]: "yes", P[2]: "no"}
    assert tally(votes, P, "majority", 0) is None  # 2 of 4 is not more than half
    votes[P[3]] = "yes"
    assert tally(votes, P, "majority", 0) == "yes"
    assert tally(votes, P, "unanimity", 0) is None
    assert tally({p: "no" for p in P}, P, "unanimity", 0) == "no"
    assert tally(votes, P, "threshold", 0.75) == "yes"
    assert tally(votes, P, "threshold", 0.8) is None
    assert tally({b"\x99" * 32: "yes"}, P, "majority", 0) is None  # strangers do not vote


def test_lifecycle_votes_decide_and_a_late_post_changes_nothing() -> None:
    conv = _conv()
    assert conv.state == OPEN
    assert conv.on_post(OWNER, b"m0" * 16, "context", None, 10) == ["post"]
    assert conv.state == OPEN  # the owner's own post does not make it active
    assert conv.on_post(P[0], b"m1" * 16, "spaces", "spaces", 20) == ["post", ACTIVE, "vote"]
    assert conv.on_post(P[0], b"m1" * 16, "spaces", "spaces", 21) == []  # the same post
    conv.on_post(P[1], b"m2" * 16, "tabs", "tabs", 30)
    conv.on_post(P[1], b"m3" * 16, "ok, spaces", "spaces", 40)  # the latest vote counts
    assert conv.on_post(P[2], b"m4" * 16, "spaces", "spaces", 50)[-1] == "decided"
    verdict = conv.verdict_from_votes(60)
    assert verdict is not None and verdict["decision"] == "spaces"
    assert conv.apply_verdict(verdict, b"wire", 60) and conv.state == COMPLETE
    assert not conv.apply_verdict({"decision": "tabs"}, None, 70)  # decided once
    assert conv.on_post(P[3], b"m5" * 16, "tabs!", "tabs", 80) == ["post"]  # history only
    assert conv.verdict is not None and conv.verdict["decision"] == "spaces"
    assert conv.matches(q="TABS", agent=P[3], type_="opinion", state=COMPLETE)
    assert not conv.matches(q="emacs", agent=None, type_=None, state=None)


def test_idle_and_deadline_timeouts() -> None:
    conv = _conv(rule=None)
    assert conv.next_deadline() == 10_000  # idle since creation
    conv.on_post(P[0], b"m1" * 16, "hi", None, 5_000)
    assert conv.next_deadline() == 15_000 and not conv.due(14_999)
    assert conv.due(15_000) and conv.close(15_000) and conv.state == TIMED_OUT
    assert conv.next_deadline() is None and not conv.close(16_000)
    busy = _conv(rule=None)
    for t in range(0, 100_000, 5_000):
        busy.on_post(P[0], t.to_bytes(32, "big"), "still here", None, t)
    assert busy.next_deadline() == 100_000  # the deadline caps the idle timer


def test_record_round_trip_and_shape_checks() -> None:
    conv = _conv()
    conv.on_post(P[0], b"m1" * 16, "x", "yes", 1)
    again = Conversation.from_record(cbor2.loads(cbor2.dumps(conv.to_record())))
    assert again.to_record() == conv.to_record()
    bad: list[dict[str, Any]] = [
        {"type_": "chat"}, {"participants": ()}, {"participants": (OWNER,)},
        {"rule": "plurality"}, {"rule": "threshold", "threshold": 0.0},
    ]
    for kwargs in bad:
        args: dict[str, Any] = {
            "type_": "collab", "owner": OWNER, "participants": P, "subject": "s", "rule": None,
            "threshold": 0.5, "deadline_ms": 10, "idle_ms": 5, "now_ms": 0,
        }
        args.update(kwargs)
        with pytest.raises(ValueError):
            new_conversation(b"\x01" * 16, **args)
