"""Long-running tasks with A2A's states, as a sans-IO state machine.

A task is a request one peer (the *requester*) gives another (the
*worker*). Its state names are A2A's (``TaskState``, lower-case with
hyphens as in A2A's JSON): ``submitted``, ``working``, ``input-required``,
``completed``, ``failed``, ``canceled`` (and ``rejected``, which A2A also
has: the worker refuses it). The worker moves it on, with an optional
status message, a progress fraction and artifacts (partial results that
stream: an artifact update may append to an earlier one and says whether it
is the last chunk); the requester may cancel it or answer an
``input-required``. Both sides keep the same record from the updates the
worker sends. This module is shared by the mesh's own task API
(``peer.node._taskhost``) and by anything mapping A2A onto it: no I/O,
``now_ms`` passed in, plain data (``to_record``/``from_record``).

Transitions (anything else raises ``TaskError``):

    submitted      -> working, input-required, completed, failed, canceled, rejected
    working        -> working (progress), input-required, completed, failed, canceled
    input-required -> working, completed, failed, canceled

Terminal states (``completed``, ``failed``, ``canceled``, ``rejected``)
accept nothing more. Bounded: ``MAX_HISTORY`` status updates and
``MAX_ARTIFACTS`` artifacts of at most ``MAX_ARTIFACT_PARTS`` parts each are
kept (further ones are refused with ``TaskError``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SUBMITTED, WORKING, INPUT_REQUIRED = "submitted", "working", "input-required"
COMPLETED, FAILED, CANCELED, REJECTED = "completed", "failed", "canceled", "rejected"
STATES = (SUBMITTED, WORKING, INPUT_REQUIRED, COMPLETED, FAILED, CANCELED, REJECTED)
TERMINAL = frozenset({COMPLETED, FAILED, CANCELED, REJECTED})
NEXT = {
    SUBMITTED: frozenset({WORKING, INPUT_REQUIRED, COMPLETED, FAILED, CANCELED, REJECTED}),
    WORKING: frozenset({WORKING, INPUT_REQUIRED, COMPLETED, FAILED, CANCELED}),
    INPUT_REQUIRED: frozenset({WORKING, COMPLETED, FAILED, CANCELED}),
}
MAX_HISTORY = 1000
MAX_ARTIFACTS = 64
MAX_ARTIFACT_PARTS = 1000
MAX_NAME = 128
MAX_ARTIFACT_BYTES = 4 * 1024 * 1024  # per task, as the host measures the parts


class TaskError(ValueError):
    """A transition or update the task cannot take."""


@dataclass(slots=True)
class Status:
    state: str
    message: str
    progress: float | None
    at_ms: int

    def to_record(self) -> list[Any]:
        return [self.state, self.message, self.progress, self.at_ms]


@dataclass(slots=True)
class Artifact:
    """A result, possibly streamed in parts (``append`` adds a part, ``last`` ends it)."""

    name: str
    parts: list[Any] = field(default_factory=list)
    complete: bool = False

    def to_record(self) -> list[Any]:
        return [self.name, self.parts, self.complete]


@dataclass(slots=True)
class Task:
    """One task as both sides keep it; see the module docstring."""

    id: bytes
    requester: bytes
    worker: bytes
    request: str
    payload: Any
    created_ms: int
    history: list[Status] = field(default_factory=list)
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    artifact_bytes: int = 0

    @property
    def state(self) -> str:
        return self.history[-1].state if self.history else SUBMITTED

    @property
    def progress(self) -> float | None:
        """The last progress given; a completed task is done: 1.0."""
        if self.state == COMPLETED:
            return 1.0
        for status in reversed(self.history):
            if status.progress is not None:
                return status.progress
        return None

    @property
    def final(self) -> bool:
        return self.state in TERMINAL

    def update(
        self,
        state: str,
        now_ms: int,
        *,
        message: str = "",
        progress: float | None = None,
        artifact: dict[str, Any] | None = None,
        size: int = 0,
    ) -> None:
        """The worker's update (or a cancel): check it, then apply it all or nothing.
        ``size`` is the artifact's size in bytes (bounded per task)."""
        if state not in STATES:
            raise TaskError(f"state must be one of {', '.join(STATES)}")
        if self.final:
            raise TaskError(f"the task is {self.state}: it takes no more updates")
        if state not in NEXT[self.state]:
            raise TaskError(f"a {self.state} task cannot become {state}")
        if progress is not None and not 0.0 <= progress <= 1.0:
            raise TaskError("progress is a fraction in [0, 1]")
        if len(self.history) >= MAX_HISTORY:
            raise TaskError(f"at most {MAX_HISTORY} updates per task")
        if self.artifact_bytes + size > MAX_ARTIFACT_BYTES:
            raise TaskError(f"at most {MAX_ARTIFACT_BYTES} bytes of artifacts per task")
        if artifact is not None:
            self._artifact(artifact)
            self.artifact_bytes += size
        self.history.append(Status(state, message, progress, now_ms))

    def _artifact(self, raw: dict[str, Any]) -> None:
        name = raw.get("name", "result")
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
            raise TaskError(f"an artifact's name is 1..{MAX_NAME} characters")
        existing = self.artifacts.get(name)
        append = bool(raw.get("append", False))
        if existing is None:
            if len(self.artifacts) >= MAX_ARTIFACTS:
                raise TaskError(f"at most {MAX_ARTIFACTS} artifacts per task")
            existing = Artifact(name)
        elif existing.complete and append:
            raise TaskError(f"artifact {name!r} is complete")
        if len(existing.parts) >= MAX_ARTIFACT_PARTS:
            raise TaskError(f"at most {MAX_ARTIFACT_PARTS} parts per artifact")
        parts = [*existing.parts, raw.get("data")] if append else [raw.get("data")]
        self.artifacts[name] = Artifact(name, parts, bool(raw.get("last", not append)))

    def to_record(self) -> dict[str, Any]:
        return {
            "id": self.id, "requester": self.requester, "worker": self.worker,
            "request": self.request, "payload": self.payload, "created": self.created_ms,
            "history": [s.to_record() for s in self.history],
            "artifacts": [a.to_record() for a in self.artifacts.values()],
            "bytes": self.artifact_bytes,
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Task:
        task = cls(bytes(r["id"]), bytes(r["requester"]), bytes(r["worker"]), str(r["request"]),
                   r["payload"], int(r["created"]))
        task.history = [Status(str(s[0]), str(s[1]), None if s[2] is None else float(s[2]),
                               int(s[3])) for s in r["history"]]
        task.artifacts = {str(a[0]): Artifact(str(a[0]), list(a[1]), bool(a[2]))
                          for a in r["artifacts"]}
        task.artifact_bytes = int(r.get("bytes", 0))
        return task


def new_task(task_id: bytes, *, requester: bytes, worker: bytes, request: str, payload: Any,
             now_ms: int) -> Task:
    if requester == worker:
        raise TaskError("a task goes to another peer")
    task = Task(task_id, requester, worker, request, payload, now_ms)
    task.history.append(Status(SUBMITTED, "", None, now_ms))
    return task


__all__ = [
    "CANCELED",
    "COMPLETED",
    "FAILED",
    "INPUT_REQUIRED",
    "REJECTED",
    "STATES",
    "SUBMITTED",
    "TERMINAL",
    "WORKING",
    "Artifact",
    "Status",
    "Task",
    "TaskError",
    "new_task",
]
