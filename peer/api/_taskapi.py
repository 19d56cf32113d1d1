"""The local API's tasks (A2A's states): submit, follow, update, cancel, answer.

``POST /tasks`` gives a task to a peer; ``GET /tasks`` lists ours (``role``
requester or worker, ``state``); ``GET /tasks/{id}`` shows one (``wait=S``
waits for a change); the worker's agent moves it on with ``POST
/tasks/{id}/status`` (state, message, progress, artifact), the requester
cancels with ``POST /tasks/{id}/cancel`` and answers an ``input-required``
with ``POST /tasks/{id}/input``. Progress and partial results reach the
requester as ``task`` events on ``/events`` and ``/ws``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from peer.node._node import Peer
from peer.node._taskhost import TaskService
from peer.protocols._tasks import STATES, Task, TaskError
from peer.wire._limits import MAX_BODY_BYTES
from store import StoreError

from ._spec import BY_ROUTE, Endpoint
from ._values import ApiError, cbor_to_json_value, hex_id, iso, json_to_cbor_value, wait_param

JsonBody = Callable[[Request, Endpoint], Awaitable[dict[str, Any]]]
Event = tuple[str, int | None, dict[str, Any]]


def task_json(task: Task, me: bytes) -> dict[str, Any]:
    return {
        "id": task.id.hex(),
        "role": "requester" if task.requester == me else "worker",
        "requester": task.requester.hex(),
        "worker": task.worker.hex(),
        "state": task.state,
        "final": task.final,
        "progress": task.progress,
        "request": task.request,
        "payload": cbor_to_json_value(task.payload),
        "created": iso(task.created_ms),
        "history": [
            {"state": s.state, "message": s.message, "progress": s.progress, "at": iso(s.at_ms)}
            for s in task.history
        ],
        "artifacts": [
            {"name": a.name, "parts": cbor_to_json_value(a.parts), "complete": a.complete}
            for a in task.artifacts.values()
        ],
    }


def task_events(service: TaskService, seen: int, me: bytes) -> tuple[int, list[Event]]:
    """The ``task`` stream events after the ``seen``-th change (live only)."""
    if seen >= service.change_count:
        return seen, []
    events: list[Event] = []
    for task_id, state in service.changes[-(service.change_count - seen):]:
        task = service.by_id.get(task_id)
        data: dict[str, Any] = {"id": task_id.hex(), "state": state}
        if task is not None:
            last = task.history[-1]
            data.update(progress=task.progress, message=last.message,
                        role="requester" if task.requester == me else "worker",
                        artifacts=[{"name": a.name, "parts": len(a.parts),
                                    "complete": a.complete} for a in task.artifacts.values()])
        events.append(("task", None, data))
    return service.change_count, events


def _body(data: dict[str, Any], name: str, required: bool = True) -> str:
    value = data.get(name, "")
    if not isinstance(value, str) or (required and not value):
        raise ApiError(400, "invalid", f"{name} must be a non-empty string")
    if len(value.encode()) > MAX_BODY_BYTES:
        raise ApiError(413, "too-large", f"{name} over {MAX_BODY_BYTES} bytes")
    return value


def _value(value: Any, name: str) -> Any:
    try:
        return None if value is None else json_to_cbor_value(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ApiError(400, "invalid", f"{name} cannot be encoded: {exc}") from None


class TaskEndpoints:
    def __init__(self, peer: Peer, json_body: JsonBody) -> None:
        self.peer = peer
        self._json_body = json_body

    def handlers(self) -> dict[str, Callable[[Request], Awaitable[Response]]]:
        return {
            "/tasks": self.tasks,
            "/tasks/{id}": self.show,
            "/tasks/{id}/status": self.status,
            "/tasks/{id}/cancel": self.cancel,
            "/tasks/{id}/input": self.input,
        }

    async def _do(self, work: Coroutine[Any, Any, Any]) -> None:
        try:
            await work
        except TaskError as exc:
            raise ApiError(400, "invalid", str(exc)) from None
        except StoreError as exc:
            raise ApiError(507, "store", f"not stored, not sent: {exc}") from None

    def _find(self, request: Request) -> Task:
        try:
            task_id = bytes.fromhex(request.path_params.get("id", ""))
        except ValueError:
            task_id = b""
        task = self.peer.tasks.by_id.get(task_id)
        if task is None:
            raise ApiError(404, "not-found", "no task with this id")
        return task

    def _open(self, request: Request) -> Task:
        """A task still taking updates (409 once completed, failed or canceled)."""
        task = self._find(request)
        if task.final:
            raise ApiError(409, "conflict", f"the task is {task.state}: it takes no more updates")
        return task

    def _json(self, task: Task) -> Response:
        return JSONResponse(task_json(task, self.peer.peer_id))

    async def tasks(self, request: Request) -> Response:
        if request.method == "POST":
            data = await self._json_body(request, BY_ROUTE[("POST", "/tasks")])
            worker = hex_id(data.get("to"), "to")
            if worker == self.peer.peer_id:
                raise ApiError(400, "invalid", "a task goes to another peer")
            body, payload = _body(data, "body"), _value(data.get("payload"), "payload")
            try:
                task = await self.peer.tasks.submit(worker, body, payload)
            except TaskError as exc:
                raise ApiError(400, "invalid", str(exc)) from None
            except StoreError as exc:
                raise ApiError(507, "store", f"not stored, not sent: {exc}") from None
            return self._json(task)
        role, state = request.query_params.get("role"), request.query_params.get("state")
        if role not in (None, "requester", "worker"):
            raise ApiError(400, "invalid", "role is requester or worker")
        if state is not None and state not in STATES:
            raise ApiError(400, "invalid", f"state must be one of {', '.join(STATES)}")
        out = [task_json(t, self.peer.peer_id) for t in sorted(
            self.peer.tasks.by_id.values(), key=lambda t: t.created_ms)]
        out = [t for t in out if (role is None or t["role"] == role)
               and (state is None or t["state"] == state)]
        return JSONResponse(out[-500:])

    async def show(self, request: Request) -> Response:
        task = self._find(request)
        wait = wait_param(request)
        if wait > 0 and not task.final:
            await self.peer.tasks.wait_changed(wait)
        return self._json(task)

    async def status(self, request: Request) -> Response:
        task = self._open(request)
        data = await self._json_body(request, BY_ROUTE[("POST", "/tasks/{id}/status")])
        progress = data.get("progress")
        if progress is not None and type(progress) not in (int, float):
            raise ApiError(400, "invalid", "progress is a fraction in [0, 1]")
        artifact = data.get("artifact")
        if artifact is not None and not isinstance(artifact, dict):
            raise ApiError(400, "invalid", "artifact is {name, data, append, last}")
        if artifact is not None:
            artifact = {**artifact, "data": _value(artifact.get("data"), "artifact data")}
        await self._do(self.peer.tasks.update(
            task, str(data.get("state", "")), message=_body(data, "message", required=False),
            progress=None if progress is None else float(progress), artifact=artifact))
        return self._json(task)

    async def cancel(self, request: Request) -> Response:
        task = self._open(request)
        await self._do(self.peer.tasks.cancel(task))
        return self._json(task)

    async def input(self, request: Request) -> Response:
        task = self._open(request)
        data = await self._json_body(request, BY_ROUTE[("POST", "/tasks/{id}/input")])
        await self._do(self.peer.tasks.give_input(
            task, _body(data, "body"), _value(data.get("payload"), "payload")))
        return self._json(task)


__all__ = ["TaskEndpoints", "task_events", "task_json"]
