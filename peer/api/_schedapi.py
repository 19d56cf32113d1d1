"""The schedule endpoints: ``POST/GET/DELETE /schedules``, ``POST
/schedules/pause`` and ``/schedules/resume``, ``GET /schedules/runs``, and
``send_at`` on ``POST /send``.

A schedule's message is a ``/send`` body, checked when the schedule is made
(fields, sizes, a channel or a recipient) so a typo fails at once, not at
3 a.m.; the firing sends it through the same code as ``/send``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from peer.protocols._schedule import ScheduleError, new_schedule

from ._endpoints import Endpoints
from ._schedules import ScheduleService, schedule_json
from ._spec import BY_ROUTE
from ._values import ApiError, bool_param, channel_name, hex_id, int_param

MAX_TIME_MS = 253402300799000  # 9999-12-31


def time_ms(value: Any, name: str) -> int:
    """An ISO 8601 time (no offset: UTC) or Unix milliseconds, as Unix milliseconds."""
    if isinstance(value, int) and not isinstance(value, bool):
        ms = value
    elif isinstance(value, str) and len(value) <= 64:
        try:
            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ApiError(400, "invalid", f"{name}: not an ISO 8601 time: {value!r}") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        ms = int(when.timestamp() * 1000)
    else:
        raise ApiError(400, "invalid", f"{name} must be an ISO 8601 time or Unix milliseconds")
    if not 0 <= ms <= MAX_TIME_MS:
        raise ApiError(400, "invalid", f"{name} out of range")
    return ms


SEND_AT_SLACK = 60  # seconds send_at may lie in the past (clock skew): sent at once


class ScheduleApi:
    """Handlers around one peer's ``ScheduleService``."""

    def __init__(self, endpoints: Endpoints, service: ScheduleService) -> None:
        self.endpoints = endpoints
        self.service = service
        self.peer = endpoints.peer
        send = BY_ROUTE[("POST", "/send")]
        self.message_fields = {f.name for f in send.body} - {"send_at"}

    def handlers(self) -> dict[str, Any]:
        return {
            "/send": self.send,
            "/schedules": self.schedules,
            "/schedules/pause": self.pause,
            "/schedules/resume": self.resume,
            "/schedules/runs": self.runs,
        }

    def check_message(self, message: Any) -> dict[str, Any]:
        """A /send body that would be accepted, or ApiError now."""
        if self.peer.options.relay_only:
            raise ApiError(400, "relay-only", "a relay-only peer has no agent to send as")
        if not isinstance(message, dict):
            raise ApiError(400, "invalid", "message must be an object: the body /send takes")
        unknown = set(message) - self.message_fields
        if unknown:
            raise ApiError(400, "unknown-field", f"message: unknown field {sorted(unknown)[0]!r}")
        self.endpoints._content(message)
        channel, to = message.get("channel"), message.get("to")
        if (channel is None) == (to is None):
            raise ApiError(400, "invalid", 'message: give "channel" or "to" (one of them)')
        if channel is not None:
            channel_name(channel)
        elif not (isinstance(to, str) and to.startswith("#")):
            hex_id(to, "message.to")
        else:
            channel_name(to)
        return dict(message)

    async def send(self, request: Request) -> Response:
        data = await self.endpoints.body(request)
        if "send_at" not in data:
            return JSONResponse(await self.endpoints.send_data(data))
        at = time_ms(data.pop("send_at"), "send_at")
        late_s = (self.peer.wall_ms() - at) / 1000
        if late_s > SEND_AT_SLACK:
            raise ApiError(400, "invalid", f"send_at is {late_s:.0f} s in the past (more than "
                           f"{SEND_AT_SLACK} s): leave send_at out to send now")
        message = self.check_message(data)
        s = await self._create(message, at_ms=at)
        return JSONResponse({"scheduled": schedule_json(s)}, status_code=202)

    async def _create(self, message: dict[str, Any], **spec: Any) -> Any:
        try:
            s = new_schedule(self.service.new_id(), message, self.peer.wall_ms(), **spec)
            return await self.service.add(s)
        except ScheduleError as exc:
            raise ApiError(400, "invalid", str(exc)) from None

    async def schedules(self, request: Request) -> Response:
        if request.method == "POST":
            return await self._post(request)
        if request.method == "DELETE":
            s = await self.service.delete(request.query_params.get("id"))
            return JSONResponse({"deleted": s.id})
        wanted = request.query_params.get("id")
        if wanted:
            return JSONResponse([schedule_json(self.service.get(wanted))])
        return JSONResponse([schedule_json(s) for s in self.service.core])

    async def _post(self, request: Request) -> Response:
        data = await self.endpoints.body(request)
        message = self.check_message(data.get("message"))
        spec: dict[str, Any] = {
            "every": data.get("every"),
            "cron": data.get("cron"),
            "tz": data.get("tz", "UTC"),
            "missed": data.get("missed", "fire"),
            "grace": data.get("grace", 60.0),
            "limit": data.get("limit"),
            "name": data.get("name", ""),
        }
        if data.get("at") is not None:
            spec["at_ms"] = time_ms(data["at"], "at")
        if data.get("start") is not None:
            spec["start_ms"] = time_ms(data["start"], "start")
        s = await self._create(message, **spec)
        return JSONResponse(schedule_json(s), status_code=201)

    async def pause(self, request: Request) -> Response:
        data = await self.endpoints.body(request)
        return JSONResponse(schedule_json(await self.service.pause(data.get("id"))))

    async def resume(self, request: Request) -> Response:
        data = await self.endpoints.body(request)
        return JSONResponse(schedule_json(await self.service.resume(data.get("id"))))

    async def runs(self, request: Request) -> Response:
        after = int_param(request, "after", 0, 2**53)
        limit = int_param(request, "limit", 100, 1000)
        newest = bool_param(request, "newest") or False
        rows = await self.service.runs(
            request.query_params.get("id"), after=after, limit=limit, newest=newest
        )
        return JSONResponse(rows)


__all__ = ["ScheduleApi", "time_ms"]
