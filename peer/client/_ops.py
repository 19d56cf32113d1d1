"""The fleet operator's calls (schedules, audit, fleet, metrics) for both clients.

``SyncOps`` and ``AsyncOps`` are mixed into ``Client`` and ``AsyncClient``;
each method builds a ``Call`` here and performs it with the client's ``_do``.
Answers are the API's JSON as plain dicts and lists (README: Running a fleet).
"""

from __future__ import annotations

from typing import Any

from ._calls import Call, _params


def schedule_call(
    message: dict[str, Any],
    *,
    at: str | int | None = None,
    every: float | None = None,
    cron: str | None = None,
    tz: str | None = None,
    start: str | int | None = None,
    missed: str | None = None,
    grace: float | None = None,
    limit: int | None = None,
    name: str | None = None,
) -> Call:
    fields = {
        "at": at, "every": every, "cron": cron, "tz": tz, "start": start, "missed": missed,
        "grace": grace, "limit": limit, "name": name,
    }
    body = {"message": message, **{k: v for k, v in fields.items() if v is not None}}
    return Call("POST", "/schedules", body=body)


def message_body(
    channel: str | None, to: str | None, body: str, payload: Any = None
) -> dict[str, Any]:
    """A /send body: for ``schedule`` and ``send_at``."""
    out: dict[str, Any] = {"body": body}
    if channel is not None:
        out["channel"] = channel
    if to is not None:
        out["to"] = to
    if payload is not None:
        out["payload"] = payload
    return out


def runs_call(
    schedule_id: str, *, after: int | None = None, limit: int | None = None,
    newest: bool | None = None,
) -> Call:
    params = _params(id=schedule_id, after=after, limit=limit, newest=newest)
    return Call("GET", "/schedules/runs", params=params)


class SyncOps:
    """Schedules and the other operator calls, blocking."""

    def _do(self, call: Call, *, wait: float = 0.0) -> Any:
        raise NotImplementedError

    def schedule(self, message: dict[str, Any], **when: Any) -> dict[str, Any]:
        """Make a schedule sending ``message`` (a /send body, see ``message_body``)
        ``at`` a time, ``every`` N seconds or on ``cron`` (with ``tz``); also
        ``start``, ``missed`` ("fire" or "skip"), ``grace``, ``limit``, ``name``."""
        result: dict[str, Any] = self._do(schedule_call(message, **when))
        return result

    def send_at(
        self, at: str | int, body: str, *, channel: str | None = None, to: str | None = None,
        payload: Any = None,
    ) -> dict[str, Any]:
        """Send later: a one-off schedule; returns it."""
        data = {**message_body(channel, to, body, payload), "send_at": at}
        result: dict[str, Any] = self._do(Call("POST", "/send", body=data))["scheduled"]
        return result

    def schedules(self, schedule_id: str | None = None) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._do(
            Call("GET", "/schedules", params=_params(id=schedule_id))
        )
        return result

    def pause_schedule(self, schedule_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._do(
            Call("POST", "/schedules/pause", body={"id": schedule_id})
        )
        return result

    def resume_schedule(self, schedule_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._do(
            Call("POST", "/schedules/resume", body={"id": schedule_id})
        )
        return result

    def delete_schedule(self, schedule_id: str) -> None:
        self._do(Call("DELETE", "/schedules", params={"id": schedule_id}))

    def schedule_runs(self, schedule_id: str, **page: Any) -> list[dict[str, Any]]:
        """The job history: ``after`` (a run number), ``limit``, ``newest``."""
        result: list[dict[str, Any]] = self._do(runs_call(schedule_id, **page))
        return result

    def fleet(self, *, online: bool | None = None) -> dict[str, Any]:
        """This peer's status and every status heard: ``{"self", "peers", ...}``."""
        result: dict[str, Any] = self._do(Call("GET", "/fleet", params=_params(online=online)))
        return result

    def audit(self, **filters: Any) -> list[dict[str, Any]]:
        """A page of audit records: ``agent``, ``kind``, ``direction``, ``topic``,
        ``conversation``, ``since``, ``until``, ``after``, ``limit``."""
        result: list[dict[str, Any]] = self._do(Call("GET", "/audit", params=_params(**filters)))
        return result


class AsyncOps:
    """Schedules and the other operator calls, for Trio or asyncio code."""

    async def _do(self, call: Call, *, wait: float = 0.0) -> Any:
        raise NotImplementedError

    async def schedule(self, message: dict[str, Any], **when: Any) -> dict[str, Any]:
        """See ``Client.schedule``."""
        result: dict[str, Any] = await self._do(schedule_call(message, **when))
        return result

    async def send_at(
        self, at: str | int, body: str, *, channel: str | None = None, to: str | None = None,
        payload: Any = None,
    ) -> dict[str, Any]:
        data = {**message_body(channel, to, body, payload), "send_at": at}
        result: dict[str, Any] = (await self._do(Call("POST", "/send", body=data)))["scheduled"]
        return result

    async def schedules(self, schedule_id: str | None = None) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._do(
            Call("GET", "/schedules", params=_params(id=schedule_id))
        )
        return result

    async def pause_schedule(self, schedule_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._do(
            Call("POST", "/schedules/pause", body={"id": schedule_id})
        )
        return result

    async def resume_schedule(self, schedule_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._do(
            Call("POST", "/schedules/resume", body={"id": schedule_id})
        )
        return result

    async def delete_schedule(self, schedule_id: str) -> None:
        await self._do(Call("DELETE", "/schedules", params={"id": schedule_id}))

    async def schedule_runs(self, schedule_id: str, **page: Any) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._do(runs_call(schedule_id, **page))
        return result

    async def fleet(self, *, online: bool | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self._do(
            Call("GET", "/fleet", params=_params(online=online))
        )
        return result

    async def audit(self, **filters: Any) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._do(
            Call("GET", "/audit", params=_params(**filters))
        )
        return result


__all__ = ["AsyncOps", "SyncOps", "message_body"]
