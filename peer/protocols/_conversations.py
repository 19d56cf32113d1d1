"""Conversations (MESH's six types) with a lifecycle and consensus, sans-IO.

A conversation has an initiator (its owner), participants (peer ids), a
type (``rally``, ``collab``, ``escalation``, ``broadcast``, ``opinion``,
``brainstorm``) and a state: ``open`` when started, ``active`` once a
participant posted, then ``complete`` (a verdict) or ``timed_out`` (its
deadline passed, or nobody posted for ``idle_ms``). Every peer in it keeps
the same record from the messages it sees; only the owner decides state
changes and publishes them (a signed verdict, or a close), which the others
apply. ``now_ms`` is passed in; nothing here sends or stores.

Consensus: the owner sets a verdict with a summary, or declares a rule and
the verdict is computed from the participants' structured votes (each
participant's latest vote counts):

* ``majority``: a value voted by more than half of the participants;
* ``unanimity``: every participant voted, all the same value;
* ``threshold``: a value voted by at least ``threshold`` (0 < t <= 1) of the
  participants.

Bounded: ``MAX_PARTICIPANTS``, ``MAX_HISTORY`` posts kept per conversation
(the rest are counted in ``dropped``), votes of at most ``MAX_VOTE`` bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

TYPES = ("rally", "collab", "escalation", "broadcast", "opinion", "brainstorm")
RULES = ("majority", "unanimity", "threshold")
OPEN, ACTIVE, COMPLETE, TIMED_OUT = "open", "active", "complete", "timed_out"
STATES = (OPEN, ACTIVE, COMPLETE, TIMED_OUT)
MAX_PARTICIPANTS = 64
MAX_HISTORY = 2000
MAX_VOTE = 64
DEFAULT_IDLE_MS = 30 * 60_000


@dataclass(slots=True)
class Post:
    author: bytes
    msg_id: bytes
    body: str
    vote: str | None
    at_ms: int

    def to_record(self) -> list[Any]:
        return [self.author, self.msg_id, self.body, self.vote, self.at_ms]

    @classmethod
    def from_record(cls, r: list[Any]) -> Post:
        return cls(bytes(r[0]), bytes(r[1]), str(r[2]), None if r[3] is None else str(r[3]),
                   int(r[4]))


def tally(
    votes: dict[bytes, str], participants: tuple[bytes, ...], rule: str, threshold: float
) -> str | None:
    """The value ``rule`` decides from ``votes`` (participant -> value), or None."""
    counted = {p: v for p, v in votes.items() if p in participants}
    if not counted or not participants:
        return None
    totals: dict[str, int] = {}
    for value in counted.values():
        totals[value] = totals.get(value, 0) + 1
    best, count = max(sorted(totals.items()), key=lambda kv: kv[1])
    n = len(participants)
    if rule == "majority":
        return best if count * 2 > n else None
    if rule == "unanimity":
        return best if count == n else None
    if rule == "threshold":
        return best if count >= math.ceil(threshold * n - 1e-9) else None
    return None


@dataclass(slots=True)
class Conversation:
    """One conversation as every peer in it keeps it; see the module docstring."""

    id: bytes
    type: str
    owner: bytes
    participants: tuple[bytes, ...]
    subject: str
    rule: str | None
    threshold: float
    created_ms: int
    deadline_ms: int
    idle_ms: int
    state: str = OPEN
    last_ms: int = 0
    posts: list[Post] = field(default_factory=list)
    votes: dict[bytes, str] = field(default_factory=dict)
    verdict: dict[str, Any] | None = None  # decision, summary, rule, votes, by, at
    verdict_wire: bytes | None = None  # the signed envelope that published it
    ended_ms: int | None = None
    dropped: int = 0

    def members(self) -> tuple[bytes, ...]:
        return (self.owner, *self.participants)

    @property
    def finished(self) -> bool:
        return self.state in (COMPLETE, TIMED_OUT)

    def on_post(self, author: bytes, msg_id: bytes, body: str, vote: str | None,
                now_ms: int) -> list[str]:
        """A post seen (ours or another member's): what changed (``post``, ``active``,
        ``vote``); for the owner, ``decided`` when the rule now decides."""
        if author not in self.members() or any(p.msg_id == msg_id for p in self.posts[-64:]):
            return []
        out = ["post"]
        if len(self.posts) < MAX_HISTORY:
            self.posts.append(Post(author, msg_id, body, vote, now_ms))
        else:
            self.dropped += 1
        self.last_ms = max(self.last_ms, now_ms)
        if self.state == OPEN and author != self.owner:
            self.state = ACTIVE
            out.append(ACTIVE)
        if vote is not None and author in self.participants and not self.finished:
            self.votes[author] = vote
            out.append("vote")
            if self.rule is not None and self.decision() is not None:
                out.append("decided")
        return out

    def decision(self) -> str | None:
        if self.rule is None:
            return None
        return tally(self.votes, self.participants, self.rule, self.threshold)

    def verdict_from_votes(self, now_ms: int) -> dict[str, Any] | None:
        """The verdict the rule computes now (the owner publishes it), or None."""
        decision = self.decision()
        if decision is None:
            return None
        return {
            "decision": decision,
            "summary": f"{self.rule}: {decision}",
            "rule": self.rule,
            "votes": {p.hex(): v for p, v in self.votes.items()},
            "by": self.owner.hex(),
            "at": now_ms,
        }

    def apply_verdict(self, verdict: dict[str, Any], wire: bytes | None, now_ms: int) -> bool:
        """A verdict (the owner's): the conversation is complete. False if it ended."""
        if self.finished:
            return False
        self.verdict, self.verdict_wire = verdict, wire
        self.state, self.ended_ms = COMPLETE, now_ms
        return True

    def close(self, now_ms: int) -> bool:
        """Timed out (the owner's decision, or the owner's close message)."""
        if self.finished:
            return False
        self.state, self.ended_ms = TIMED_OUT, now_ms
        return True

    def next_deadline(self) -> int | None:
        if self.finished:
            return None
        return min(self.deadline_ms, max(self.last_ms, self.created_ms) + self.idle_ms)

    def due(self, now_ms: int) -> bool:
        """Whether the owner should time it out now (deadline, or idle)."""
        deadline = self.next_deadline()
        return deadline is not None and now_ms >= deadline

    def matches(self, *, q: str | None, agent: bytes | None, type_: str | None,
                state: str | None) -> bool:
        if type_ is not None and self.type != type_:
            return False
        if state is not None and self.state != state:
            return False
        if agent is not None and agent not in self.members():
            return False
        if q:
            needle = q.lower()
            texts = [self.subject, *(p.body for p in self.posts)]
            if self.verdict is not None:
                texts.append(str(self.verdict.get("summary", "")))
            return any(needle in t.lower() for t in texts)
        return True

    def to_record(self) -> dict[str, Any]:
        return {
            "id": self.id, "type": self.type, "owner": self.owner,
            "participants": list(self.participants), "subject": self.subject,
            "rule": self.rule, "threshold": self.threshold, "created": self.created_ms,
            "deadline": self.deadline_ms, "idle": self.idle_ms, "state": self.state,
            "last": self.last_ms, "posts": [p.to_record() for p in self.posts],
            "votes": [[p, v] for p, v in self.votes.items()], "verdict": self.verdict,
            "verdict_wire": self.verdict_wire, "ended": self.ended_ms, "dropped": self.dropped,
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Conversation:
        conv = cls(
            bytes(r["id"]), str(r["type"]), bytes(r["owner"]),
            tuple(bytes(p) for p in r["participants"]), str(r["subject"]),
            None if r["rule"] is None else str(r["rule"]), float(r["threshold"]),
            int(r["created"]), int(r["deadline"]), int(r["idle"]),
        )
        conv.state, conv.last_ms = str(r["state"]), int(r["last"])
        conv.posts = [Post.from_record(p) for p in r["posts"]]
        conv.votes = {bytes(p): str(v) for p, v in r["votes"]}
        conv.verdict = r["verdict"]
        conv.verdict_wire = None if r["verdict_wire"] is None else bytes(r["verdict_wire"])
        conv.ended_ms = None if r["ended"] is None else int(r["ended"])
        conv.dropped = int(r.get("dropped", 0))
        return conv


def new_conversation(
    conv_id: bytes,
    *,
    type_: str,
    owner: bytes,
    participants: tuple[bytes, ...],
    subject: str,
    rule: str | None,
    threshold: float,
    deadline_ms: int,
    idle_ms: int,
    now_ms: int,
) -> Conversation:
    """A new conversation; ValueError for a shape it cannot have."""
    if type_ not in TYPES:
        raise ValueError(f"type must be one of {', '.join(TYPES)}")
    if not participants or len(participants) > MAX_PARTICIPANTS:
        raise ValueError(f"a conversation has 1..{MAX_PARTICIPANTS} participants")
    if len(set(participants)) != len(participants) or owner in participants:
        raise ValueError("participants are distinct peers, not the initiator")
    if rule is not None and rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}")
    if rule == "threshold" and not 0 < threshold <= 1:
        raise ValueError("threshold is a fraction in (0, 1]")
    if deadline_ms <= now_ms or idle_ms <= 0:
        raise ValueError("deadline and idle timeout must lie ahead")
    return Conversation(conv_id, type_, owner, participants, subject, rule, threshold,
                        now_ms, deadline_ms, idle_ms, last_ms=now_ms)


__all__ = [
    "ACTIVE",
    "COMPLETE",
    "OPEN",
    "RULES",
    "STATES",
    "TIMED_OUT",
    "TYPES",
    "Conversation",
    "Post",
    "new_conversation",
    "tally",
]
