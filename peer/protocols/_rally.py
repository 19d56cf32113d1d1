"""Requests and rallies as sans-IO state machines.

A *rally* asks one question of several agents (named by peer id, or
everyone on a channel) and collects their answers; a *request* is a rally
to one peer with quorum 1. Each takes the wall clock as ``now_ms`` and
returns what changed; the Trio shell (``peer.node._rallyhost``) sends the
questions, feeds in the responses, persists the state after every change
and runs the timer. Rules it keeps:

* States: ``open`` until ``quorum`` distinct agents answered the current
  round (``complete``) or its deadline passed first (``timed_out``); or
  ``canceled`` by its initiator. A finished rally still records answers:
  those after the end are marked ``late``; nothing is ever dropped (up to
  ``MAX_RESPONSES`` per round).
* One answer per agent and round counts (the first); a later one from the
  same agent is ignored and counted in ``duplicates``. For a rally to peer
  ids, only those peers' answers count; a channel rally takes anyone's.
* Rounds: ``next_round`` asks a follow-up of the same agents with a new
  quorum and deadline; its question carries the previous round's answers
  as context (``context``), and the rally is ``open`` again.
* The state is plain data (``to_record``/``from_record``) so an initiator
  that crashes resumes from its store: deadlines are absolute wall-clock
  times, and a rally whose deadline passed while it was down times out at
  its first ``handle_timer``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OPEN, COMPLETE, TIMED_OUT, CANCELED = "open", "complete", "timed_out", "canceled"
STATES = (OPEN, COMPLETE, TIMED_OUT, CANCELED)
MAX_TARGETS = 256
MAX_ROUNDS = 64
MAX_RESPONSES = 1024  # per round
MAX_RALLIES = 10_000


@dataclass(slots=True)
class Answer:
    """One agent's answer in one round."""

    peer: bytes
    msg_id: bytes
    body: str
    payload: Any
    at_ms: int
    late: bool

    def to_record(self) -> list[Any]:
        return [self.peer, self.msg_id, self.body, self.payload, self.at_ms, self.late]

    @classmethod
    def from_record(cls, r: list[Any]) -> Answer:
        return cls(bytes(r[0]), bytes(r[1]), str(r[2]), r[3], int(r[4]), bool(r[5]))


@dataclass(slots=True)
class Round:
    number: int
    question: str
    payload: Any
    quorum: int
    deadline_ms: int
    started_ms: int
    sent: dict[bytes, bytes] = field(default_factory=dict)  # peer -> question msg id
    answers: dict[bytes, Answer] = field(default_factory=dict)  # peer -> first answer
    ended_ms: int | None = None
    state: str = OPEN

    def on_time(self) -> list[Answer]:
        return [a for a in self.answers.values() if not a.late]

    def to_record(self) -> dict[str, Any]:
        return {
            "n": self.number, "q": self.question, "p": self.payload, "quorum": self.quorum,
            "deadline": self.deadline_ms, "started": self.started_ms,
            "sent": [[p, m] for p, m in self.sent.items()],
            "answers": [a.to_record() for a in self.answers.values()],
            "ended": self.ended_ms, "state": self.state,
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Round:
        rnd = cls(int(r["n"]), str(r["q"]), r["p"], int(r["quorum"]), int(r["deadline"]),
                  int(r["started"]))
        rnd.sent = {bytes(p): bytes(m) for p, m in r["sent"]}
        for raw in r["answers"]:
            answer = Answer.from_record(raw)
            rnd.answers[answer.peer] = answer
        rnd.ended_ms = None if r["ended"] is None else int(r["ended"])
        rnd.state = str(r["state"])
        return rnd


@dataclass(frozen=True, slots=True)
class Change:
    """What a step did to a rally (for events): ``what`` is ``answer``, ``late``,
    ``complete``, ``timed_out``, ``round`` or ``canceled``."""

    rally_id: bytes
    what: str
    round: int
    peer: bytes | None = None


@dataclass(slots=True)
class Rally:
    """One rally (or request); see the module docstring."""

    id: bytes
    kind: str  # "request" or "rally"
    targets: tuple[bytes, ...]  # peer ids; empty for a channel rally
    channel: str | None
    created_ms: int
    rounds: list[Round]
    duplicates: int = 0
    selector: dict[str, Any] | None = None  # how the targets were chosen (a skill), if so

    @property
    def current(self) -> Round:
        return self.rounds[-1]

    @property
    def state(self) -> str:
        return self.current.state

    def counts(self, peer: bytes) -> bool:
        return self.channel is not None or peer in self.targets

    def on_answer(
        self, peer: bytes, round_no: int, msg_id: bytes, body: str, payload: Any, now_ms: int
    ) -> list[Change]:
        """An answer from ``peer`` to round ``round_no``: record it; the rally may complete."""
        if not 1 <= round_no <= len(self.rounds) or not self.counts(peer):
            return []
        rnd = self.rounds[round_no - 1]
        if peer in rnd.answers or len(rnd.answers) >= MAX_RESPONSES:
            self.duplicates += 1
            return []
        late = rnd.state != OPEN
        rnd.answers[peer] = Answer(peer, msg_id, body, payload, now_ms, late)
        out = [Change(self.id, "late" if late else "answer", round_no, peer)]
        if not late and len(rnd.on_time()) >= rnd.quorum:
            rnd.state, rnd.ended_ms = COMPLETE, now_ms
            out.append(Change(self.id, COMPLETE, round_no))
        return out

    def next_deadline(self) -> int | None:
        return self.current.deadline_ms if self.state == OPEN else None

    def handle_timer(self, now_ms: int) -> list[Change]:
        rnd = self.current
        if rnd.state == OPEN and now_ms >= rnd.deadline_ms:
            rnd.state, rnd.ended_ms = TIMED_OUT, now_ms
            return [Change(self.id, TIMED_OUT, rnd.number)]
        return []

    def cancel(self, now_ms: int) -> list[Change]:
        rnd = self.current
        if rnd.state != OPEN:
            return []
        rnd.state, rnd.ended_ms = CANCELED, now_ms
        return [Change(self.id, CANCELED, rnd.number)]

    def context(self) -> list[dict[str, Any]]:
        """The current round's answers, as the next round's question carries them."""
        return [
            {"from": a.peer.hex(), "body": a.body, "payload": a.payload, "late": a.late}
            for a in sorted(self.current.answers.values(), key=lambda a: a.at_ms)
        ]

    def next_round(
        self, question: str, payload: Any, quorum: int, deadline_ms: int, now_ms: int
    ) -> list[Change]:
        """Ask a follow-up: the current round ends (canceled if still open)."""
        if len(self.rounds) >= MAX_ROUNDS:
            raise ValueError(f"a rally has at most {MAX_ROUNDS} rounds")
        self.cancel(now_ms)
        number = len(self.rounds) + 1
        self.rounds.append(Round(number, question, payload, quorum, deadline_ms, now_ms))
        return [Change(self.id, "round", number)]

    def to_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "kind": self.kind, "targets": list(self.targets),
            "channel": self.channel, "created": self.created_ms, "dups": self.duplicates,
            "rounds": [r.to_record() for r in self.rounds],
        }
        if self.selector is not None:
            out["sel"] = self.selector
        return out

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Rally:
        return cls(
            bytes(r["id"]), str(r["kind"]), tuple(bytes(t) for t in r["targets"]),
            None if r["channel"] is None else str(r["channel"]), int(r["created"]),
            [Round.from_record(x) for x in r["rounds"]], int(r.get("dups", 0)),
            dict(r["sel"]) if isinstance(r.get("sel"), dict) else None,
        )


def new_rally(
    rally_id: bytes,
    *,
    kind: str,
    targets: tuple[bytes, ...],
    channel: str | None,
    question: str,
    payload: Any,
    quorum: int,
    deadline_ms: int,
    now_ms: int,
    selector: dict[str, Any] | None = None,
) -> Rally:
    """A rally in its first round; ValueError for a shape it cannot have."""
    if channel is None and not targets:
        raise ValueError("a rally asks peer ids or a channel")
    if len(targets) > MAX_TARGETS:
        raise ValueError(f"at most {MAX_TARGETS} peers")
    if len(set(targets)) != len(targets):
        raise ValueError("a peer is named twice")
    if quorum < 1 or (channel is None and quorum > len(targets)):
        raise ValueError("quorum must be 1..number of peers")
    if deadline_ms <= now_ms:
        raise ValueError("the deadline has passed")
    first = Round(1, question, payload, quorum, deadline_ms, now_ms)
    return Rally(rally_id, kind, targets, channel, now_ms, [first], selector=selector)


class Rallies:
    """Every rally of this peer, by id, with the earliest deadline among them."""

    def __init__(self) -> None:
        self.by_id: dict[bytes, Rally] = {}

    def __len__(self) -> int:
        return len(self.by_id)

    def add(self, rally: Rally) -> None:
        self.by_id[rally.id] = rally
        if len(self.by_id) > MAX_RALLIES:  # forget the oldest finished one
            done = [r for r in self.by_id.values() if r.state != OPEN]
            if done:
                del self.by_id[min(done, key=lambda r: r.created_ms).id]

    def get(self, rally_id: bytes) -> Rally | None:
        return self.by_id.get(rally_id)

    def next_deadline(self) -> int | None:
        times = [t for r in self.by_id.values() if (t := r.next_deadline()) is not None]
        return min(times, default=None)

    def handle_timer(self, now_ms: int) -> list[Change]:
        out: list[Change] = []
        for rally in self.by_id.values():
            out += rally.handle_timer(now_ms)
        return out


__all__ = [
    "CANCELED",
    "COMPLETE",
    "OPEN",
    "STATES",
    "TIMED_OUT",
    "Answer",
    "Change",
    "Rallies",
    "Rally",
    "Round",
    "new_rally",
]
