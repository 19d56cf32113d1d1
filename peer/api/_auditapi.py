"""``GET /audit`` (a page of records, as JSON) and ``GET /audit/export`` (every
matching record, streamed as JSON lines or CSV in bounded memory).

Filters: ``agent`` (a peer id, as sender or recipient), ``kind`` (``channel``,
``dm``, ``receipt``, ``state``), ``direction`` (``in``, ``out``,
``relayed``), ``topic``,
``conversation`` (a coordination conversation, request, rally or task id, or
a thread or replied-to message id), ``since`` and ``until``
(ISO 8601 or Unix ms; ``until`` exclusive). ``/audit`` pages with ``after``
(the ``X-Clawmesh-Next`` header of the previous page).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ._audit import PREFIX, AuditFilter, AuditTrail, csv_header, csv_rows
from ._schedapi import time_ms
from ._values import ApiError, channel_name, hex_id, int_param

MAX_EXPORTS = 4  # exports streaming at once; more get 503
KINDS = ("channel", "dm", "receipt", "state")
DIRECTIONS = ("in", "out", "relayed")
HEX = frozenset("0123456789abcdef")


def _choice(request: Request, name: str, allowed: tuple[str, ...]) -> str | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    if value not in allowed:
        raise ApiError(400, "invalid", f"{name} must be one of {', '.join(allowed)}")
    return value


def audit_filter(request: Request) -> AuditFilter:
    q = request.query_params
    agent = q.get("agent")
    conversation = q.get("conversation")
    topic = q.get("topic")
    if topic and not topic.startswith(("inbox/", "dm/")):
        channel_name(topic)
    return AuditFilter(
        agent=hex_id(agent, "agent").hex() if agent else None,
        kind=_choice(request, "kind", KINDS),
        direction=_choice(request, "direction", DIRECTIONS),
        topic=topic or None,
        conversation=_conversation_id(conversation) if conversation else None,
        since_ms=time_ms(_int_or_text(q["since"]), "since") if q.get("since") else None,
        until_ms=time_ms(_int_or_text(q["until"]), "until") if q.get("until") else None,
    )


def _conversation_id(raw: str) -> str:
    """A conversation id as the records hold it: 1..32 bytes in hex (lowercased)."""
    value = raw.lower()
    if not 2 <= len(value) <= 64 or len(value) % 2 or not all(c in HEX for c in value):
        raise ApiError(400, "invalid", "conversation must be an id: 1..32 bytes in hex")
    return value


def _int_or_text(raw: str) -> int | str:
    return int(raw) if raw.isascii() and raw.isdigit() else raw


class AuditApi:
    """Handlers around one peer's ``AuditTrail``."""

    def __init__(self, trail: AuditTrail) -> None:
        self.trail = trail
        self.exports = 0

    def handlers(self) -> dict[str, Any]:
        return {"/audit": self.audit, "/audit/export": self.export}

    async def audit(self, request: Request) -> Response:
        wanted = audit_filter(request)
        limit = int_param(request, "limit", 100, 1000)
        after = request.query_params.get("after") or None
        if after is not None and not after.startswith(PREFIX):
            raise ApiError(400, "invalid", "after must be an X-Clawmesh-Next value")
        out: list[dict[str, Any]] = []
        last = after or ""
        more = False
        async with aclosing(self.trail.records(wanted, after)) as found:
            async for key, record in found:
                if len(out) == limit:
                    more = True
                    break
                out.append(record)
                last = key
        headers = {"X-Clawmesh-Count": str(len(out)), "X-Clawmesh-More": _flag(more)}
        if last:
            headers["X-Clawmesh-Next"] = last
        return JSONResponse(out, headers=headers)

    async def export(self, request: Request) -> Response:
        fmt = _choice(request, "format", ("jsonl", "csv")) or "jsonl"
        wanted = audit_filter(request)
        if self.exports >= MAX_EXPORTS:
            raise ApiError(503, "busy", f"{MAX_EXPORTS} exports are running; retry shortly")
        self.exports += 1
        media = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
        name = f"clawmesh-audit.{fmt}"
        return StreamingResponse(
            self._stream(wanted, fmt),
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    async def _stream(self, wanted: AuditFilter, fmt: str) -> AsyncIterator[bytes]:
        try:
            if fmt == "csv":
                yield csv_header().encode()
            async with aclosing(self.trail.pages(wanted)) as pages:
                async for page in pages:  # one store page in memory at a time
                    records = [record for _key, record in page]
                    text = csv_rows(records) if fmt == "csv" else "".join(map(_json_line, records))
                    yield text.encode()
        finally:
            self.exports -= 1


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


def _flag(value: bool) -> str:
    return "true" if value else "false"


__all__ = ["AuditApi", "audit_filter"]
