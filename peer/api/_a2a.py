"""The A2A gateway: mesh agents as A2A agents on the local API (JSON-RPC 2.0 binding).

``/a2a/<peer id>/.well-known/agent-card.json`` is the card of a mesh agent,
``POST /a2a/<peer id>`` its JSON-RPC endpoint; ``/.well-known/agent-card.json``
(and ``agent.json``) is this peer's own card. A message sent there becomes a
task (``peer/protocols/_a2atasks.py``) that travels to the agent as a DM and
comes back as its updates: the task is the mesh's own (``peer.tasks``,
``peer/node/_taskhost.py``: stored, with A2A's states), so the agent works
it with the local API's ``/tasks`` endpoints. protocol-spec/gateways.md part 3.

Rules kept here:

* Methods by ``A2A-Version``: 1.0 names (``SendMessage``, ``SendStreamingMessage``,
  ``GetTask``, ``ListTasks``, ``CancelTask``, ``SubscribeToTask``) answer in
  v1.0 JSON; 0.3 names (``message/send``, ``message/stream``, ``tasks/get``,
  ``tasks/cancel``, ``tasks/resubscribe``) in v0.3 JSON. With no header both
  sets are served (0.3 is what an absent header means; 1.0 names are still
  unambiguous); with ``A2A-Version: 1.0`` the 0.3 names are not found, and a
  version we do not speak is ``-32009``.
* Streams are Server-Sent Events, one JSON-RPC response per event, that end
  after a final state; at most ``MAX_STREAMS`` at once; a heartbeat comment
  every ``HEARTBEAT`` seconds.
* A blocking ``SendMessage`` waits until the task is final or waits for
  input, at most ``BLOCK_WAIT`` seconds, then answers with the task as it is.
* Only tasks this peer requested of that agent are reachable at
  ``/a2a/<agent>``; only the agent a task was sent to can update it.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from peer.node._node import Peer, UnknownPeer
from peer.protocols._a2atasks import (
    INVALID_PARAMS,
    PAUSED,
    TASK_NOT_CANCELABLE,
    TASK_NOT_FOUND,
    A2aError,
    StreamCursor,
    check_message,
    context_of,
    request_payload,
    state_name,
    text_of,
    wire_task,
)
from peer.protocols._tasks import Task, TaskError
from peer.wire._errors import ProtocolError
from store import StoreError

from ._meshhooks import _read_body
from ._values import ApiError, error_response, json_to_cbor_value

MAX_STREAMS = 256
HEARTBEAT = 15.0
BLOCK_WAIT = 60.0
RESOLVE_WAIT = 10.0
V1 = {"SendMessage": "send", "SendStreamingMessage": "stream", "GetTask": "get",
      "ListTasks": "list", "CancelTask": "cancel", "SubscribeToTask": "subscribe"}
V03 = {"message/send": "send", "message/stream": "stream", "tasks/get": "get",
       "tasks/cancel": "cancel", "tasks/resubscribe": "subscribe", "tasks/list": "list"}
STREAMING = frozenset({"stream", "subscribe"})


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class A2aGateway:
    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.streams = 0
        self.api_url = ""
        self.log = peer.log.bind(part="a2a")

    def handlers(self) -> dict[str, Any]:
        return {
            "/.well-known/agent-card.json": self.own_card,
            "/.well-known/agent.json": self.own_card,
            "/a2a/{peer}/.well-known/agent-card.json": self.card,
            "/a2a/{peer}/.well-known/agent.json": self.card,
            "/a2a/{peer}": self.rpc,
        }

    async def _wait_changed(self, seconds: float) -> None:
        await self.peer.tasks.wait_changed(seconds)

    # -- cards -----------------------------------------------------------------------------

    def _base(self, request: Request) -> str:
        return self.api_url or str(request.base_url).rstrip("/")

    def _card_json(self, request: Request, peer_id: bytes) -> dict[str, Any]:
        info = self.peer.directory.get(peer_id)
        own = peer_id == self.peer.peer_id
        name = (self.peer.options.name if own else (info.name if info else "")) or peer_id.hex()
        url = f"{self._base(request)}/a2a/{peer_id.hex()}"
        return {
            "name": name,
            "description": f"clawmesh agent {peer_id.hex()}, reached over the mesh",
            "version": "1.0.0",
            "supportedInterfaces": [
                {"url": url, "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
                {"url": url, "protocolBinding": "JSONRPC", "protocolVersion": "0.3"},
                {"url": f"clawmesh:{peer_id.hex()}", "protocolBinding": "CLAWMESH-DM",
                 "protocolVersion": "1"},
            ],
            # v0.3 readers of agent.json
            "url": url,
            "preferredTransport": "JSONRPC",
            "protocolVersion": "0.3.0",
            "capabilities": {"streaming": True, "pushNotifications": False},
            "defaultInputModes": ["text/plain", "application/json"],
            "defaultOutputModes": ["text/plain", "application/json"],
            "skills": _skills(self._declared() if own else (
                info.extra.get("skills", ()) if info is not None else ())),
            "securitySchemes": {"bearer": {"httpAuthSecurityScheme": {"scheme": "bearer"}}},
            "securityRequirements": [{"schemes": {"bearer": {"list": []}}}],
        }

    def _declared(self) -> tuple[tuple[str, str], ...]:
        return self.peer.agents.declared_skills(self.peer.options.skills)

    async def own_card(self, request: Request) -> Response:
        return JSONResponse(self._card_json(request, self.peer.peer_id))

    async def card(self, request: Request) -> Response:
        return JSONResponse(self._card_json(request, _peer_param(request)))

    # -- JSON-RPC ---------------------------------------------------------------------------

    async def rpc(self, request: Request) -> Response:
        peer_id = _peer_param(request)
        try:
            body = json.loads(await _read_body(request), parse_constant=_no_constant)
        except (ValueError, RecursionError):
            return _rpc_error(None, -32700, "not JSON (NaN and Infinity are not JSON either)")
        except Exception as exc:  # MeshError from the bounded reader: too large, too slow
            return _rpc_error(None, -32600, str(exc))
        rpc_id = body.get("id") if isinstance(body, dict) else None
        if not _valid_id(rpc_id):
            return _rpc_error(None, -32600, "id must be a string, a finite number or null")
        try:
            method, v1, params = self._method(request, body)
            if method in STREAMING:
                return await self._open_stream(method, v1, params, peer_id, rpc_id)
            result = await self._call(method, v1, params, peer_id)
        except RpcError as exc:
            return _rpc_error(rpc_id, exc.code, exc.message)
        except A2aError as exc:
            return _rpc_error(rpc_id, exc.code, exc.message)
        return JSONResponse({"jsonrpc": "2.0", "id": rpc_id, "result": result})

    def _method(self, request: Request, body: Any) -> tuple[str, bool, dict[str, Any]]:
        if not isinstance(body, dict) or body.get("jsonrpc") != "2.0":
            raise RpcError(-32600, "not a JSON-RPC 2.0 request")
        name, params = body.get("method"), body.get("params", {})
        if not isinstance(name, str) or not isinstance(params, dict):
            raise RpcError(-32600, "method must be a string and params an object")
        version = request.headers.get("a2a-version", "").strip()
        if version and not (version.startswith("1.") or version.startswith("0.3")
                            or version in ("1", "0.3")):
            raise RpcError(-32009, f"A2A-Version {version} is not supported (1.0, 0.3)")
        wants_v03 = version.startswith("0.3")
        if name in V1 and not wants_v03:
            return V1[name], True, params
        if name in V03 and (not version or wants_v03):
            return V03[name], False, params
        raise RpcError(-32601, f"method {name!r} not found for A2A-Version {version or '0.3'}")

    async def _call(self, method: str, v1: bool, params: dict[str, Any],
                    peer_id: bytes) -> Any:
        if method == "send":
            configuration = _configuration(params)  # checked before anything is sent
            task = await self._send(params, peer_id)
            blocking = not (configuration.get("returnImmediately") is True
                            or configuration.get("blocking") is False)
            if blocking:
                with trio.move_on_after(BLOCK_WAIT):
                    while not task.final and task.state not in PAUSED:
                        await self._wait_changed(BLOCK_WAIT)
            return {"task": wire_task(task, v1)} if v1 else wire_task(task, v1)
        if method == "get":
            task = self._task(params, peer_id)
            length = params.get("historyLength")
            return wire_task(task, v1, length if isinstance(length, int) else None)
        if method == "cancel":
            task = self._task(params, peer_id)
            if task.final:
                raise A2aError(TASK_NOT_CANCELABLE, f"task {task.id.hex()} is {task.state}")
            await self._mesh(self.peer.tasks.cancel(task))
            return wire_task(task, v1)
        return self._list(params, peer_id, v1)

    def _mine(self, peer_id: bytes) -> list[Task]:
        me = self.peer.peer_id
        return [t for t in self.peer.tasks.by_id.values()
                if t.requester == me and t.worker == peer_id]

    def _list(self, params: dict[str, Any], peer_id: bytes, v1: bool) -> dict[str, Any]:
        tasks = self._mine(peer_id)
        context, status = params.get("contextId"), params.get("status")
        if isinstance(context, str) and context:
            tasks = [t for t in tasks if context_of(t) == context]
        if isinstance(status, str) and status:
            tasks = [t for t in tasks if t.state == state_name(status)]
        tasks.sort(key=lambda t: t.history[-1].at_ms, reverse=True)
        size = params.get("pageSize")
        size = size if isinstance(size, int) and 0 < size <= 100 else 50
        token = params.get("pageToken")
        start = int(token) if (isinstance(token, str) and token.isascii() and token.isdigit()
                               and len(token) <= 9) else 0
        page = tasks[start:start + size]
        more = start + size < len(tasks)
        history = params.get("historyLength")
        return {"tasks": [wire_task(t, v1, history if isinstance(history, int) else 0)
                          for t in page],
                "nextPageToken": str(start + size) if more else "",
                "pageSize": size, "totalSize": len(tasks)}

    def _task(self, params: dict[str, Any], peer_id: bytes) -> Task:
        wanted = params.get("id")
        task = None
        if isinstance(wanted, str) and len(wanted) == 32:
            try:
                task = self.peer.tasks.by_id.get(bytes.fromhex(wanted))
            except ValueError:
                task = None
        if task is None or task.worker != peer_id or task.requester != self.peer.peer_id:
            raise A2aError(TASK_NOT_FOUND, f"no task {wanted!r} for this agent")
        return task

    async def _mesh(self, work: Any) -> Any:
        """A TaskService call; what the mesh refuses is a JSON-RPC error."""
        try:
            return await work
        except TaskError as exc:
            raise A2aError(INVALID_PARAMS, str(exc)) from None
        except UnknownPeer as exc:
            raise A2aError(INVALID_PARAMS, f"no mesh agent {exc} is known") from None
        except (ProtocolError, StoreError, ApiError, ValueError) as exc:
            raise A2aError(-32603, f"not sent over the mesh: {exc}") from None

    async def _send(self, params: dict[str, Any], peer_id: bytes) -> Task:
        message = check_message(params.get("message"))
        if "taskId" in message:  # more input for a task that asked for it
            task = self._task({"id": message["taskId"]}, peer_id)
            if task.state not in PAUSED:
                raise A2aError(INVALID_PARAMS, f"task {task.id.hex()} is {task.state}, "
                                               "not waiting for input")
            data = _value({"a2a": {"message": message}})
            await self._mesh(self.peer.tasks.give_input(task, text_of(message), data))
            return task
        if peer_id == self.peer.peer_id:
            raise RpcError(-32004, "this peer's own agent is not reached through A2A: "
                                   "address a mesh agent at /a2a/<its peer id>")
        if self.peer.directory.get(peer_id) is None:
            with trio.move_on_after(RESOLVE_WAIT):
                await self.peer.resolve_peer(peer_id)
        if self.peer.directory.get(peer_id) is None:
            raise RpcError(INVALID_PARAMS, f"no mesh agent {peer_id.hex()} is known")
        payload = _value(request_payload(message))
        submitted: Task = await self._mesh(
            self.peer.tasks.submit(peer_id, text_of(message), payload))
        return submitted

    # -- streams ----------------------------------------------------------------------------

    async def _open_stream(self, method: str, v1: bool, params: dict[str, Any],
                           peer_id: bytes, rpc_id: Any) -> Response:
        if self.streams >= MAX_STREAMS:
            raise RpcError(-32603, f"{MAX_STREAMS} streams are open; retry shortly")
        if method == "stream":
            _configuration(params)
        task = await self._send(params, peer_id) if method == "stream" else self._task(
            params, peer_id)
        self.streams += 1
        return _CountedStream(self, self._events(task, v1, rpc_id))

    async def _events(self, task: Task, v1: bool, rpc_id: Any) -> AsyncIterator[str]:
        """The task as it is, then each change after it, until a final state (the stream
        slot is released by :class:`_CountedStream`)."""
        cursor = StreamCursor(task)
        first = {"task": wire_task(task, v1)} if v1 else wire_task(task, v1)
        yield _sse(rpc_id, first)
        while True:
            for event in cursor.advance(task, v1):
                yield _sse(rpc_id, event)
            if task.final:
                return
            before = self.peer.tasks.change_count
            await self._wait_changed(HEARTBEAT)
            if self.peer.tasks.change_count == before:
                yield ": keep-alive\n\n"

    def statistics(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        me = self.peer.peer_id
        for task in self.peer.tasks.by_id.values():
            if task.requester == me:
                counts[task.state] = counts.get(task.state, 0) + 1
        return {"tasks": sum(counts.values()), "by_state": counts, "streams": self.streams}


class _CountedStream(StreamingResponse):
    """An SSE response that gives its stream slot back however it ends: a client gone
    before the first event never starts the generator, so its ``finally`` cannot."""

    def __init__(self, gateway: A2aGateway, events: AsyncIterator[str]) -> None:
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-store"})
        self._gateway: A2aGateway | None = gateway
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()
            aclose = getattr(self._events, "aclose", None)
            if aclose is not None:
                with trio.CancelScope(shield=True):
                    await aclose()

    def release(self) -> None:
        if self._gateway is not None:
            self._gateway.streams -= 1
            self._gateway = None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _valid_id(rpc_id: Any) -> bool:
    if rpc_id is None or (isinstance(rpc_id, int) and not isinstance(rpc_id, bool)):
        return True
    if isinstance(rpc_id, float):
        return math.isfinite(rpc_id)  # 1e400 parses as inf, which JSON cannot carry back
    return isinstance(rpc_id, str) and len(rpc_id) <= 1024


def _configuration(params: dict[str, Any]) -> dict[str, Any]:
    configuration = params.get("configuration")
    if configuration is None:
        return {}
    if not isinstance(configuration, dict):
        raise A2aError(INVALID_PARAMS, "configuration must be an object")
    return configuration


def _value(value: Any) -> Any:
    """A client's JSON as the CBOR value a task carries (A2aError if it cannot be)."""
    try:
        return json_to_cbor_value(value)
    except ApiError as exc:
        raise A2aError(INVALID_PARAMS, exc.message) from None


def _skills(declared: Any) -> list[dict[str, Any]]:
    """The card's skills: those the agent declares in its presence (``--skill``), or
    one generic skill when it declares none."""
    out = [{"id": skill_id, "name": skill_id, "description": text or skill_id,
            "tags": ["clawmesh"]} for skill_id, text in declared]
    return out or [{"id": "mesh-task", "name": "tasks over the mesh",
                    "description": "any task, sent to this agent as an encrypted DM",
                    "tags": ["clawmesh"]}]


def _peer_param(request: Request) -> bytes:
    text = str(request.path_params.get("peer", "")).lower()
    if len(text) != 64:
        raise ApiError(400, "invalid", "a mesh agent is named by its peer id (64 hex digits)")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ApiError(400, "invalid", "a mesh agent is named by its peer id (64 hex digits)") \
            from None


def _sse(rpc_id: Any, result: Any) -> str:
    return f"data: {json.dumps({'jsonrpc': '2.0', 'id': rpc_id, 'result': result})}\n\n"


def _rpc_error(rpc_id: Any, code: int, message: str) -> Response:
    return JSONResponse({"jsonrpc": "2.0", "id": rpc_id,
                         "error": {"code": code, "message": message}})


__all__ = ["A2aGateway", "error_response"]
