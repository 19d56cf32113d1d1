"""A stand-in ``GET /events`` for client tests: the stream contract, served by Hypercorn on Trio.

It holds a list of messages; a request gets those after its cursor
(``Last-Event-ID`` wins over ``after``), a ``: ping`` comment, DM status
events when asked, and then the connection is cut after ``cut_after``
events (a dropped link) or ends with a ``slow`` error event.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.lowlevel
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

TOKEN = "test-token-0123456789"


def message(cursor: int) -> dict[str, Any]:
    return {
        "cursor": cursor, "id": f"{cursor:064x}", "kind": "msg", "topic": "lobby",
        "channel": "lobby", "from": "ab" * 32, "body": f"m{cursor}", "content": f"m{cursor}",
        "timestamp": "2026-12-07T10:00:00.000+00:00", "received": "x", "read": False,
        "outgoing": False, "seq": cursor,
    }


@dataclass
class FakeEvents:
    total: int = 10
    cut_after: int = 4  # events per connection, then the connection drops
    end_with: str = "drop"  # or "slow": an error event, then the end
    requests: list[dict[str, str]] = field(default_factory=list)
    url: str = ""

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/events", self._events)])

    async def _events(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return JSONResponse(
                {"error": {"code": "unauthorised", "message": "send the token"}}, 401
            )
        if request.query_params.get("channel") == "bad name":
            return JSONResponse({"error": {"code": "invalid", "message": "not a channel"}}, 400)
        self.requests.append(
            {"after": request.query_params.get("after", ""),
             "last": request.headers.get("last-event-id", "")}
        )
        raw = request.headers.get("last-event-id") or request.query_params.get("after")
        start = int(raw) if raw else self.total  # absent: live only (nothing new here)
        return StreamingResponse(self._body(start), media_type="text/event-stream")

    async def _body(self, start: int) -> AsyncIterator[str]:
        yield ": ping\n\n"
        for cursor in range(start + 1, min(self.total, start + self.cut_after) + 1):
            # a status event without an id line, and a multi-line comment first
            yield f"event: status\ndata: {json.dumps({'id': 'cd' * 32, 'peer': 'ef' * 32, 'status': 'delivered', 'cursor': cursor})}\n\n"  # noqa: E501
            yield f"id: {cursor}\nevent: message\ndata: {json.dumps(message(cursor))}\n\n"
        if self.end_with == "slow":
            error = {"error": {"code": "slow", "message": "you read too slowly"}}
            yield f"event: error\ndata: {json.dumps(error)}\n\n"
        await trio.lowlevel.checkpoint()

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        config.errorlog = None

        status: Any = _Forward(task_status, self)
        await serve(self.app(), config, task_status=status)  # type: ignore[arg-type]


class _Forward:
    """Hypercorn reports its bound URLs to ``task_status.started``: keep the first."""

    def __init__(self, inner: trio.TaskStatus[str], fake: FakeEvents) -> None:
        self.inner, self.fake = inner, fake

    def started(self, binds: Any = None) -> None:
        self.fake.url = str(binds[0])
        self.inner.started(self.fake.url)
