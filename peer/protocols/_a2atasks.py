"""A2A's JSON forms of the mesh's tasks (``peer.protocols._tasks``), pure functions.

The A2A gateway (``peer/api/_a2a.py``) maps A2A onto the mesh's own tasks:
a message an A2A client sends becomes a task (``TaskService.submit``) whose
states are already A2A's (``submitted``, ``working``, ``input-required``,
``completed``, ``failed``, ``canceled``, ``rejected``). This module checks
what clients send, writes tasks in A2A's JSON, and turns a task's growth
into stream events (``StreamCursor``). protocol-spec/gateways.md part 3.

Rules kept here:

* Two dialects: A2A v1.0 (``TASK_STATE_*``, ``ROLE_*``, parts without
  ``kind``, stream results keyed ``task`` / ``statusUpdate`` /
  ``artifactUpdate``) and v0.3 (lower-case states, ``kind`` fields, ``final``).
* The A2A message that created a task travels in the task's payload as
  ``{"a2a": {"message": <v1 message>, "context_id": <id>}}``, so both sides
  (and a restart) know it; the task id on the A2A side is the mesh task
  id in hex.
* A stream never repeats: a ``StreamCursor`` remembers how many status
  entries and artifact parts it has shown; a status entry that repeats the
  previous state with no message is not shown.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from ._tasks import TERMINAL, Task

MAX_PARTS = 64
MAX_TEXT = 64 * 1024
INVALID_PARAMS = -32602
TASK_NOT_FOUND = -32001
TASK_NOT_CANCELABLE = -32002
PAUSED = frozenset({"input-required", "auth-required"})


class A2aError(Exception):
    """A request refused: ``code`` is the JSON-RPC error code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _parts(parts: Any) -> list[dict[str, Any]]:
    """A2A parts (either dialect) as v1 parts; A2aError if malformed."""
    if not isinstance(parts, list) or not parts or len(parts) > MAX_PARTS:
        raise A2aError(INVALID_PARAMS, f"parts must be a list of 1..{MAX_PARTS}")
    out: list[dict[str, Any]] = []
    for part in parts:
        if not isinstance(part, dict):
            raise A2aError(INVALID_PARAMS, "a part is an object")
        if isinstance(part.get("text"), str):
            if len(part["text"].encode()) > MAX_TEXT:
                raise A2aError(INVALID_PARAMS, f"a text part is over {MAX_TEXT} bytes")
            out.append({"text": part["text"]})
        elif "data" in part:
            out.append({"data": part["data"]})
        elif isinstance(part.get("url"), str):
            out.append({"url": part["url"][:2048]})
        else:
            raise A2aError(INVALID_PARAMS, "parts carry text, data or url")
    return out


def check_message(message: Any) -> dict[str, Any]:
    """An A2A message from a client (either dialect), as a v1 message."""
    if not isinstance(message, dict):
        raise A2aError(INVALID_PARAMS, "params.message must be an object")
    message_id = message.get("messageId")
    if not isinstance(message_id, str) or not 0 < len(message_id) <= 128:
        raise A2aError(INVALID_PARAMS, "message.messageId must be a string")
    out: dict[str, Any] = {"messageId": message_id, "role": "ROLE_USER",
                           "parts": _parts(message.get("parts"))}
    for key in ("contextId", "taskId"):
        value = message.get(key)
        if value is not None:
            if not isinstance(value, str) or len(value) > 128:
                raise A2aError(INVALID_PARAMS, f"message.{key} must be a string")
            out[key] = value
    return out


def text_of(message: dict[str, Any]) -> str:
    return "\n".join(p["text"] for p in message.get("parts", []) if "text" in p)


def request_payload(message: dict[str, Any]) -> dict[str, Any]:
    """The payload of the mesh task an A2A message starts."""
    context_id = message.get("contextId") or str(uuid.uuid4())
    return {"a2a": {"message": {**message, "contextId": context_id},
                    "context_id": context_id}}


def _a2a_of(task: Task) -> dict[str, Any]:
    payload = task.payload
    if isinstance(payload, dict) and isinstance(payload.get("a2a"), dict):
        meta: dict[str, Any] = payload["a2a"]
        return meta
    return {}


def context_of(task: Task) -> str:
    value = _a2a_of(task).get("context_id")
    return value if isinstance(value, str) else task.id.hex()


def iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def state_name(value: str) -> str:
    """``TASK_STATE_INPUT_REQUIRED`` or ``input-required`` -> ``input-required``."""
    return value.removeprefix("TASK_STATE_").lower().replace("_", "-")


def wire_state(state: str, v1: bool) -> str:
    return "TASK_STATE_" + state.upper().replace("-", "_") if v1 else state


def _v03_part(part: dict[str, Any]) -> dict[str, Any]:
    if "text" in part:
        return {"kind": "text", "text": part["text"]}
    if "data" in part:
        return {"kind": "data", "data": part["data"]}
    return {"kind": "file", "file": {"uri": part.get("url", "")}}


def wire_message(message: dict[str, Any], v1: bool) -> dict[str, Any]:
    if v1:
        return message
    out = {k: v for k, v in message.items() if k not in ("role", "parts")}
    out["kind"] = "message"
    out["role"] = "agent" if message.get("role") == "ROLE_AGENT" else "user"
    out["parts"] = [_v03_part(p) for p in message.get("parts", [])]
    return out


def _part_of(value: Any) -> dict[str, Any]:
    """An artifact part the worker sent (its ``data``) as an A2A part."""
    if isinstance(value, str):
        return {"text": value}
    if isinstance(value, dict) and set(value) == {"text"} and isinstance(value["text"], str):
        return {"text": value["text"]}
    return {"data": value}


def _agent_message(task: Task, index: int) -> dict[str, Any] | None:
    status = task.history[index]
    if not status.message:
        return None
    return {"messageId": f"{task.id.hex()}-{index}", "role": "ROLE_AGENT",
            "taskId": task.id.hex(), "contextId": context_of(task),
            "parts": [{"text": status.message}]}


def _status(task: Task, index: int, v1: bool) -> dict[str, Any]:
    status = task.history[index]
    out: dict[str, Any] = {"state": wire_state(status.state, v1), "timestamp": iso(status.at_ms)}
    message = _agent_message(task, index)
    if message is not None:
        out["message"] = wire_message(message, v1)
    return out


def _artifact(name: str, parts: list[Any], v1: bool) -> dict[str, Any]:
    a2a_parts = [_part_of(p) for p in parts]
    return {"artifactId": name, "name": name,
            "parts": a2a_parts if v1 else [_v03_part(p) for p in a2a_parts]}


def wire_task(task: Task, v1: bool, history_length: int | None = None) -> dict[str, Any]:
    first = _a2a_of(task).get("message")
    history: list[dict[str, Any]] = []
    if isinstance(first, dict):
        history.append({**first, "taskId": task.id.hex()})
    history += [m for i in range(len(task.history)) if (m := _agent_message(task, i))]
    if history_length is not None:
        history = history[-history_length:] if history_length > 0 else []
    out: dict[str, Any] = {
        "id": task.id.hex(),
        "contextId": context_of(task),
        "status": _status(task, len(task.history) - 1, v1),
        "artifacts": [_artifact(a.name, a.parts, v1) for a in task.artifacts.values()],
        "history": [wire_message(m, v1) for m in history],
        "metadata": {"clawmesh": {"worker": task.worker.hex(), "request": task.request}},
    }
    if not v1:
        out["kind"] = "task"
    return out


class StreamCursor:
    """What one stream has shown of a task; ``advance`` gives the events since."""

    def __init__(self, task: Task) -> None:
        self.statuses = len(task.history)
        self.parts = {a.name: len(a.parts) for a in task.artifacts.values()}

    def advance(self, task: Task, v1: bool) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for artifact in task.artifacts.values():
            shown = self.parts.get(artifact.name, 0)
            if len(artifact.parts) > shown:
                new = artifact.parts[shown:]
                self.parts[artifact.name] = len(artifact.parts)
                body = {"taskId": task.id.hex(), "contextId": context_of(task),
                        "artifact": _artifact(artifact.name, new, v1), "append": shown > 0,
                        "lastChunk": artifact.complete}
                events.append({"artifactUpdate": body} if v1 else
                              {**body, "kind": "artifact-update"})
        for index in range(self.statuses, len(task.history)):
            status = task.history[index]
            same = index > 0 and task.history[index - 1].state == status.state
            if same and not status.message:
                continue
            update = {"taskId": task.id.hex(), "contextId": context_of(task),
                      "status": _status(task, index, v1)}
            events.append({"statusUpdate": update} if v1 else
                          {**update, "kind": "status-update",
                           "final": status.state in TERMINAL})
        self.statuses = len(task.history)
        return events
