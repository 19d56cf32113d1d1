"""A2A tasks relayed over the mesh: the task book, its state machine, its JSON forms.

Sans-IO (time passed in). The A2A gateway (``peer/api/_a2a.py``) keeps one
``TaskBook``: a task is created for a message an A2A client sends to a mesh
agent, travels to that agent as a DM (``task_request``), and changes only by
the updates that agent sends back (``apply_update``) or by a cancel.
protocol-spec/gateways.md part 3 is the contract.

Rules kept here:

* States are A2A's: ``submitted``, ``working``, ``input-required``,
  ``completed``, ``failed``, ``canceled`` (and ``rejected``,
  ``auth-required``). A task in a final state never changes again.
* Only the agent a task was sent to may update it; an update that is not
  well formed, or for a task it does not hold, is refused (None).
* Every change is an event (a status update or an artifact update) kept in
  the task's bounded event list, so a stream or a resubscription replays
  from any point; the book holds at most ``MAX_TASKS`` tasks (the oldest
  final ones are forgotten first).
* JSON comes in two dialects: A2A v1.0 (``TASK_STATE_*``, ``ROLE_*``, parts
  without ``kind``, stream results keyed ``task`` / ``statusUpdate`` /
  ``artifactUpdate``) and v0.3 (lower-case states, ``kind`` fields, ``final``).
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

STATES = ("submitted", "working", "input-required", "completed", "failed", "canceled",
          "rejected", "auth-required")
FINAL = frozenset({"completed", "failed", "canceled", "rejected"})
PAUSED = frozenset({"input-required", "auth-required"})
MAX_TASKS = 10_000
MAX_EVENTS = 1_000  # events kept per task
MAX_PARTS = 64
MAX_TEXT = 64 * 1024
MAX_ARTIFACTS = 64
MAX_HISTORY = 100


class TaskError(Exception):
    """A request the book refuses: ``code`` is the JSON-RPC error code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


TASK_NOT_FOUND = -32001
TASK_NOT_CANCELABLE = -32002
INVALID_PARAMS = -32602


@dataclass
class Event:
    """One change of a task: its new status, or an artifact (chunk)."""

    kind: str  # "status" or "artifact"
    state: str
    message: dict[str, Any] | None = None
    artifact: dict[str, Any] | None = None
    append: bool = False
    last_chunk: bool = False
    at: float = 0.0


@dataclass
class Task:
    id: str
    context_id: str
    peer: bytes  # the mesh agent working it
    state: str
    created: float
    updated: float
    history: list[dict[str, Any]] = field(default_factory=list)  # A2A messages (v1 form)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    status_message: dict[str, Any] | None = None
    events: list[Event] = field(default_factory=list)
    dropped: int = 0  # events forgotten from the front

    @property
    def final(self) -> bool:
        return self.state in FINAL


def _text_parts(parts: Any) -> list[dict[str, Any]]:
    """A2A parts (either dialect) as v1 parts; TaskError if malformed."""
    if not isinstance(parts, list) or not parts or len(parts) > MAX_PARTS:
        raise TaskError(INVALID_PARAMS, f"parts must be a list of 1..{MAX_PARTS}")
    out: list[dict[str, Any]] = []
    for part in parts:
        if not isinstance(part, dict):
            raise TaskError(INVALID_PARAMS, "a part is an object")
        if isinstance(part.get("text"), str):
            if len(part["text"].encode()) > MAX_TEXT:
                raise TaskError(INVALID_PARAMS, f"a text part is over {MAX_TEXT} bytes")
            out.append({"text": part["text"]})
        elif "data" in part:
            out.append({"data": part["data"]})
        elif isinstance(part.get("url"), str):
            out.append({"url": part["url"][:2048]})
        else:
            raise TaskError(INVALID_PARAMS, "parts carry text, data or url")
    return out


def check_message(message: Any) -> dict[str, Any]:
    """An A2A message from a client (either dialect), as a v1 message."""
    if not isinstance(message, dict):
        raise TaskError(INVALID_PARAMS, "params.message must be an object")
    message_id = message.get("messageId")
    if not isinstance(message_id, str) or not 0 < len(message_id) <= 128:
        raise TaskError(INVALID_PARAMS, "message.messageId must be a string")
    out: dict[str, Any] = {
        "messageId": message_id,
        "role": "ROLE_USER",
        "parts": _text_parts(message.get("parts")),
    }
    for key in ("contextId", "taskId"):
        value = message.get(key)
        if value is not None:
            if not isinstance(value, str) or len(value) > 128:
                raise TaskError(INVALID_PARAMS, f"message.{key} must be a string")
            out[key] = value
    return out


def text_of(message: dict[str, Any]) -> str:
    return "\n".join(p["text"] for p in message.get("parts", []) if "text" in p)


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, tz=UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


class TaskBook:
    def __init__(self, limit: int = MAX_TASKS) -> None:
        self.tasks: OrderedDict[str, Task] = OrderedDict()
        self.limit = limit

    def get(self, task_id: Any) -> Task:
        task = self.tasks.get(task_id) if isinstance(task_id, str) else None
        if task is None:
            raise TaskError(TASK_NOT_FOUND, f"no task {task_id!r}")
        return task

    def create(self, peer: bytes, message: dict[str, Any], now: float) -> Task:
        """A new task for ``message`` (a checked v1 message), to be sent to ``peer``."""
        task_id = str(uuid.uuid4())
        context_id = message.get("contextId") or str(uuid.uuid4())
        message = {**message, "taskId": task_id, "contextId": context_id}
        task = Task(task_id, context_id, peer, "submitted", now, now, history=[message])
        task.events.append(Event("status", "submitted", at=now))
        self.tasks[task_id] = task
        self._trim()
        return task

    def _trim(self) -> None:
        while len(self.tasks) > self.limit:
            victim = next((t for t in self.tasks.values() if t.final), None)
            if victim is None:
                victim = next(iter(self.tasks.values()))
            del self.tasks[victim.id]

    def continue_task(self, task: Task, message: dict[str, Any], now: float) -> None:
        """More input for a task the agent asked it of."""
        if task.state not in PAUSED:
            raise TaskError(INVALID_PARAMS, f"task {task.id} is {task.state}, not waiting")
        task.history = [*task.history, {**message, "taskId": task.id,
                                         "contextId": task.context_id}][-MAX_HISTORY:]
        self._event(task, Event("status", "working", at=now))

    def cancel(self, task: Task, now: float) -> None:
        if task.final:
            raise TaskError(TASK_NOT_CANCELABLE, f"task {task.id} is already {task.state}")
        self._event(task, Event("status", "canceled", at=now))

    def fail(self, task: Task, reason: str, now: float) -> None:
        if not task.final:
            self._event(task, Event("status", "failed", message=_agent_message(task, reason),
                                    at=now))

    def apply_update(self, sender: bytes, update: Any, now: float) -> Task | None:
        """An update a mesh agent sent (``payload.a2a`` of its DM); None if refused."""
        if not isinstance(update, dict):
            return None
        task_id = update.get("task_id")
        task = self.tasks.get(task_id) if isinstance(task_id, str) else None
        if task is None or task.peer != sender or task.final:
            return None
        state = update.get("state", task.state)
        if state not in STATES:
            return None
        text = update.get("message")
        message = _agent_message(task, text) if isinstance(text, str) else None
        artifact = update.get("artifact")
        if artifact is not None:
            checked = _artifact(artifact)
            if checked is None or len(task.artifacts) >= MAX_ARTIFACTS:
                return None
            append = artifact.get("append") is True
            self._event(task, Event("artifact", task.state, artifact=checked, append=append,
                                    last_chunk=artifact.get("lastChunk") is True, at=now))
        if state != task.state or message is not None:
            self._event(task, Event("status", state, message=message, at=now))
        return task

    def _event(self, task: Task, event: Event) -> None:
        if event.kind == "artifact" and event.artifact is not None:
            _merge_artifact(task, event.artifact, event.append)
        else:
            task.state = event.state
            task.status_message = event.message
            if event.message is not None:
                task.history = [*task.history, event.message][-MAX_HISTORY:]
        task.updated = event.at
        task.events.append(event)
        if len(task.events) > MAX_EVENTS:
            del task.events[0]
            task.dropped += 1

    def listed(self, context_id: Any, state: Any) -> list[Task]:
        out = list(self.tasks.values())
        if isinstance(context_id, str) and context_id:
            out = [t for t in out if t.context_id == context_id]
        if isinstance(state, str) and state:
            wanted = state_name(state)
            out = [t for t in out if t.state == wanted]
        out.sort(key=lambda t: t.updated, reverse=True)
        return out


def _agent_message(task: Task, text: str) -> dict[str, Any]:
    return {"messageId": str(uuid.uuid4()), "role": "ROLE_AGENT", "taskId": task.id,
            "contextId": task.context_id, "parts": [{"text": text[:MAX_TEXT]}]}


def _artifact(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        return None
    try:
        parts = _text_parts(value.get("parts"))
    except TaskError:
        return None
    artifact_id = value.get("artifactId")
    out: dict[str, Any] = {
        "artifactId": artifact_id if isinstance(artifact_id, str) and artifact_id else str(
            uuid.uuid4()),
        "parts": parts,
    }
    if isinstance(value.get("name"), str):
        out["name"] = value["name"][:256]
    return out


def _merge_artifact(task: Task, artifact: dict[str, Any], append: bool) -> None:
    for i, held in enumerate(task.artifacts):
        if held["artifactId"] == artifact["artifactId"]:
            if append:
                task.artifacts[i] = {**held, "parts": [*held["parts"], *artifact["parts"]]}
            else:
                task.artifacts[i] = artifact
            return
    task.artifacts.append(artifact)


# -- JSON forms ---------------------------------------------------------------------


def state_name(value: str) -> str:
    """``TASK_STATE_INPUT_REQUIRED`` or ``input-required`` -> ``input-required``."""
    return value.removeprefix("TASK_STATE_").lower().replace("_", "-")


def wire_state(state: str, v1: bool) -> str:
    return "TASK_STATE_" + state.upper().replace("-", "_") if v1 else state


def wire_message(message: dict[str, Any], v1: bool) -> dict[str, Any]:
    if v1:
        return message
    out = {k: v for k, v in message.items() if k not in ("role", "parts")}
    out["kind"] = "message"
    out["role"] = "agent" if message.get("role") == "ROLE_AGENT" else "user"
    out["parts"] = [_v03_part(p) for p in message.get("parts", [])]
    return out


def _v03_part(part: dict[str, Any]) -> dict[str, Any]:
    if "text" in part:
        return {"kind": "text", "text": part["text"]}
    if "data" in part:
        return {"kind": "data", "data": part["data"]}
    return {"kind": "file", "file": {"uri": part.get("url", "")}}


def wire_artifact(artifact: dict[str, Any], v1: bool) -> dict[str, Any]:
    if v1:
        return artifact
    return {**artifact, "parts": [_v03_part(p) for p in artifact["parts"]]}


def _status(state: str, message: dict[str, Any] | None, at: float, v1: bool) -> dict[str, Any]:
    status: dict[str, Any] = {"state": wire_state(state, v1), "timestamp": iso(at)}
    if message is not None:
        status["message"] = wire_message(message, v1)
    return status


def wire_task(task: Task, v1: bool, history_length: int | None = None) -> dict[str, Any]:
    history = task.history if history_length is None else (
        task.history[-history_length:] if history_length > 0 else [])
    out: dict[str, Any] = {
        "id": task.id,
        "contextId": task.context_id,
        "status": _status(task.state, task.status_message, task.updated, v1),
        "artifacts": [wire_artifact(a, v1) for a in task.artifacts],
        "history": [wire_message(m, v1) for m in history],
        "metadata": {"clawmesh": {"peer": task.peer.hex()}},
    }
    if not v1:
        out["kind"] = "task"
    return out


def wire_event(task: Task, event: Event, v1: bool) -> dict[str, Any]:
    """One stream result: a status or an artifact update."""
    if event.kind == "artifact":
        assert event.artifact is not None
        body: dict[str, Any] = {"taskId": task.id, "contextId": task.context_id,
                                "artifact": wire_artifact(event.artifact, v1),
                                "append": event.append, "lastChunk": event.last_chunk}
        if v1:
            return {"artifactUpdate": body}
        return {**body, "kind": "artifact-update"}
    update = {"taskId": task.id, "contextId": task.context_id,
              "status": _status(event.state, event.message, event.at, v1)}
    if v1:
        return {"statusUpdate": update}
    return {**update, "kind": "status-update", "final": event.state in FINAL}


def task_request(task: Task) -> dict[str, Any]:
    """The ``payload.a2a`` of the DM that brings a task to its mesh agent."""
    return {"kind": "task", "task_id": task.id, "context_id": task.context_id,
            "message": task.history[-1]}
