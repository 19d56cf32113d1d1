"""Client calls for tasks (A2A's states): ``TaskCalls`` is mixed into ``Client``,
``AsyncTaskCalls`` into ``AsyncClient``; answers are the API's JSON as dicts."""

from __future__ import annotations

from typing import Any, Protocol

from ._calls import Call, _params


def status_call(task_id: str, state: str, message: str | None, progress: float | None,
                artifact: dict[str, Any] | None) -> Call:
    data: dict[str, Any] = {"state": state}
    for key, value in (("message", message), ("progress", progress), ("artifact", artifact)):
        if value is not None:
            data[key] = value
    return Call("POST", f"/tasks/{task_id}/status", body=data)


def submit_call(peer_id: str, body: str, payload: Any) -> Call:
    data: dict[str, Any] = {"to": peer_id, "body": body}
    if payload is not None:
        data["payload"] = payload
    return Call("POST", "/tasks", body=data)


class _Sync(Protocol):
    def _do(self, call: Call, *, wait: float = 0.0) -> Any: ...


class _Async(Protocol):
    async def _do(self, call: Call, *, wait: float = 0.0) -> Any: ...


class TaskCalls:
    """Tasks, blocking."""

    def submit_task(self: _Sync, peer_id: str, body: str, *, payload: Any = None
                    ) -> dict[str, Any]:
        """Give ``peer_id`` a task; it starts ``submitted``."""
        out: dict[str, Any] = self._do(submit_call(peer_id, body, payload))
        return out

    def get_task(self: _Sync, task_id: str, *, wait: float = 0.0) -> dict[str, Any]:
        call = Call("GET", f"/tasks/{task_id}", params=_params(wait=wait or None))
        out: dict[str, Any] = self._do(call, wait=wait)
        return out

    def tasks(self: _Sync, *, role: str | None = None, state: str | None = None
              ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self._do(
            Call("GET", "/tasks", params=_params(role=role, state=state)))
        return out

    def update_task(self: _Sync, task_id: str, state: str, *, message: str | None = None,
                    progress: float | None = None, artifact: dict[str, Any] | None = None,
                    ) -> dict[str, Any]:
        """As the worker: move the task on (``artifact``: {name, data, append, last})."""
        out: dict[str, Any] = self._do(status_call(task_id, state, message, progress, artifact))
        return out

    def cancel_task(self: _Sync, task_id: str) -> dict[str, Any]:
        out: dict[str, Any] = self._do(Call("POST", f"/tasks/{task_id}/cancel"))
        return out

    def answer_task(self: _Sync, task_id: str, body: str, *, payload: Any = None
                    ) -> dict[str, Any]:
        data: dict[str, Any] = {"body": body}
        if payload is not None:
            data["payload"] = payload
        out: dict[str, Any] = self._do(Call("POST", f"/tasks/{task_id}/input", body=data))
        return out


class AsyncTaskCalls:
    """Tasks, on Trio or asyncio (the same calls as ``TaskCalls``)."""

    async def submit_task(self: _Async, peer_id: str, body: str, *, payload: Any = None
                          ) -> dict[str, Any]:
        out: dict[str, Any] = await self._do(submit_call(peer_id, body, payload))
        return out

    async def get_task(self: _Async, task_id: str, *, wait: float = 0.0) -> dict[str, Any]:
        call = Call("GET", f"/tasks/{task_id}", params=_params(wait=wait or None))
        out: dict[str, Any] = await self._do(call, wait=wait)
        return out

    async def tasks(self: _Async, *, role: str | None = None, state: str | None = None
                    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = await self._do(
            Call("GET", "/tasks", params=_params(role=role, state=state)))
        return out

    async def update_task(self: _Async, task_id: str, state: str, *,
                          message: str | None = None, progress: float | None = None,
                          artifact: dict[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = await self._do(
            status_call(task_id, state, message, progress, artifact))
        return out

    async def cancel_task(self: _Async, task_id: str) -> dict[str, Any]:
        out: dict[str, Any] = await self._do(Call("POST", f"/tasks/{task_id}/cancel"))
        return out

    async def answer_task(self: _Async, task_id: str, body: str, *, payload: Any = None
                          ) -> dict[str, Any]:
        data: dict[str, Any] = {"body": body}
        if payload is not None:
            data["payload"] = payload
        out: dict[str, Any] = await self._do(Call("POST", f"/tasks/{task_id}/input", body=data))
        return out


def alert_call(host: str, check: str, *, ok: bool, to: list[str] | None, channel: str | None,
               body: str | None) -> Call:
    data: dict[str, Any] = {"host": host, "check": check, "status": "ok" if ok else "firing"}
    for key, value in (("to", to), ("channel", channel), ("body", body)):
        if value is not None:
            data[key] = value
    return Call("POST", "/alerts", body=data)


def retry_call(ids: list[str] | None) -> Call:
    if ids is not None and len(ids) == 1:
        return Call("POST", f"/dead-letters/{ids[0]}/retry")
    return Call("POST", "/dead-letters/retry", body={} if ids is None else {"ids": ids})


class PolicyCalls:
    """Dead letters and alerts, blocking."""

    def retry_dead_letters(self: _Sync, ids: list[str] | None = None) -> dict[str, Any]:
        """Put dead letters (these ids, or all) back into the outbox."""
        out: dict[str, Any] = self._do(retry_call(ids))
        return out

    def alert(self: _Sync, host: str, check: str, *, ok: bool = False,
              to: list[str] | None = None, channel: str | None = None,
              body: str | None = None) -> dict[str, Any]:
        """Raise (or clear, ``ok=True``) an alert, deduplicated by host and check: the
        answer's ``decision`` is new, suppressed, escalate, recovery or ignored."""
        out: dict[str, Any] = self._do(
            alert_call(host, check, ok=ok, to=to, channel=channel, body=body))
        return out


class AsyncPolicyCalls:
    """Dead letters and alerts, on Trio or asyncio."""

    async def retry_dead_letters(self: _Async, ids: list[str] | None = None
                                 ) -> dict[str, Any]:
        out: dict[str, Any] = await self._do(retry_call(ids))
        return out

    async def alert(self: _Async, host: str, check: str, *, ok: bool = False,
                    to: list[str] | None = None, channel: str | None = None,
                    body: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = await self._do(
            alert_call(host, check, ok=ok, to=to, channel=channel, body=body))
        return out
