"""Live delivery: ``GET /events`` (Server-Sent Events) and ``GET /ws`` (WebSocket).

Rules kept here:

* A stream reads the inbox by cursor (``Inbox.since``), at most ``BATCH``
  messages at a time, and waits on the inbox's change event only when it has
  read everything: it never skips nor repeats a message, and it holds at most
  one batch however far behind its client is (the inbox is the buffer).
* ``after`` (or ``Last-Event-ID``, which wins) is a cursor: the stream starts
  with the messages after it, then goes on live; absent, it starts at the
  current end. Every message event carries its cursor as its id.
* Status changes of our DMs come as ``status`` events, live only (no id: they
  do not move the resume point; a DM's current status is in its message).
  So do changes of our requests and rallies (``rally`` events: an answer, a
  late answer, complete, timed out, a new round, canceled).
* If the inbox no longer holds messages a stream has not sent (evicted past
  its capacity), a ``gap`` event says which cursors are gone: never silent.
* Idle streams get a heartbeat (an SSE comment; WebSocket pings by Hypercorn)
  every ``HEARTBEAT`` seconds. A client that took longer than ``SLOW_AFTER``
  seconds to take one batch is dropped with an ``error`` event ``slow``; it
  resumes by cursor. (Hypercorn shields its socket writes from cancellation,
  so a client that reads nothing at all holds its slot until its connection
  closes; the slots are bounded by ``MAX_STREAMS``.)
* A disconnect ends the stream at once (the ASGI ``receive`` is watched).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

import trio
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from peer.node._convhost import ConversationService
from peer.node._inbox import Inbox, InboxMessage, StatusChange
from peer.node._rallyhost import RallyService
from peer.node._taskhost import TaskService

from ._convapi import conversation_events
from ._rallyapi import rally_events
from ._select import MessageFilter
from ._taskapi import task_events
from ._values import ApiError, error_body, message_json, parse_int

BATCH = 256
HEARTBEAT = 15.0
SLOW_AFTER = 30.0
MAX_STREAMS = 256
RETRY_MS = 2000

Event = tuple[str, int | None, dict[str, Any]]  # (event, id or None, data)


class InboxOwner(Protocol):
    @property
    def inbox(self) -> Inbox: ...
    @property
    def rallies(self) -> RallyService: ...
    @property
    def conversations(self) -> ConversationService: ...
    @property
    def tasks(self) -> TaskService: ...
    @property
    def peer_id(self) -> bytes: ...
    async def wait_inbox_changed(self) -> None: ...


def start_cursor(conn: HTTPConnection, inbox: Inbox) -> int:
    """Where a stream starts: ``Last-Event-ID``, else ``after``, else the current end."""
    raw = conn.headers.get("last-event-id") or conn.query_params.get("after") or ""
    if raw == "":
        return inbox.last_cursor
    name = "Last-Event-ID" if conn.headers.get("last-event-id") else "after"
    return parse_int(raw.strip(), name, 2**63)


def status_json(change: StatusChange) -> dict[str, Any]:
    return {
        "id": change.id.hex(),
        "peer": None if change.peer is None else change.peer.hex(),
        "status": change.status,
        "cursor": change.cursor,
    }


class EventFeed:
    """The events of one stream, from a cursor on (see the module docstring)."""

    def __init__(self, peer: InboxOwner, cursor: int, wanted: MessageFilter) -> None:
        self.peer = peer
        self.cursor = cursor
        self.wanted = wanted
        self.status_seen = peer.inbox.status_count
        self.rally_seen = peer.rallies.change_count
        self.conv_seen = peer.conversations.change_count
        self.task_seen = peer.tasks.change_count
        self.sent = 0

    def ready(self) -> list[Event]:
        """What can be sent now (it may be empty though the cursor moved on)."""
        inbox = self.peer.inbox
        events: list[Event] = []
        first = inbox.first_cursor
        if first > self.cursor + 1 and inbox.last_cursor > self.cursor:
            gone: dict[str, Any] = {
                "after": self.cursor,
                "next": first,
                "lost": first - 1 - self.cursor,
                "message": f"cursors {self.cursor + 1}..{first - 1} are no longer held",
            }
            self.cursor = first - 1
            events.append(("gap", self.cursor, gone))
        batch: list[InboxMessage] = inbox.since(self.cursor, BATCH)
        if batch:
            self.cursor = batch[-1].cursor
            wanted = [m for m in batch if self.wanted.wants(m)]
            events += [("message", m.cursor, message_json(m)) for m in wanted]
            inbox.handed(wanted)
        changes = inbox.status_since(self.status_seen)
        if changes:
            self.status_seen = changes[-1].number
            events += [
                ("status", None, status_json(c))
                for c in changes
                if self.wanted.wants_status(c, inbox)
            ]
        self.rally_seen, more = rally_events(self.peer.rallies, self.rally_seen)
        self.conv_seen, convs = conversation_events(self.peer.conversations, self.conv_seen)
        self.task_seen, tasks = task_events(self.peer.tasks, self.task_seen, self.peer.peer_id)
        return events + more + convs + tasks

    async def next(self, idle: float) -> list[Event]:
        """The next events; [] after ``idle`` seconds with none (time for a heartbeat)."""
        with trio.move_on_after(idle):
            while True:
                before = self.cursor
                events = self.ready()
                if events:
                    self.sent += sum(1 for e in events if e[0] == "message")
                    return events
                if self.cursor == before:  # all read: wait for news
                    await self.peer.wait_inbox_changed()
                else:  # a batch the filters left empty: let others run, read on
                    await trio.lowlevel.checkpoint()
        return []


def sse_chunk(events: list[Event]) -> bytes:
    parts = []
    for name, ident, data in events:
        head = f"id: {ident}\n" if ident is not None and name != "status" else ""
        parts.append(f"{head}event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n")
    return "".join(parts).encode()


def slow_error() -> dict[str, Any]:
    return error_body(
        "slow",
        f"this client took over {SLOW_AFTER:.0f} s to read one batch of events: dropped; "
        "reconnect with Last-Event-ID (or after=) set to the last id received",
    )


class SseResponse(Response):
    """A ``text/event-stream`` answer fed by an :class:`EventFeed`."""

    def __init__(self, feed: EventFeed, release: Callable[[], None]) -> None:
        super().__init__(
            status_code=200,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
        # a stream has no length: drop the content-length: 0 of an empty Response
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.feed = feed
        self.release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_disconnect, receive, nursery.cancel_scope)
                await self._pump(send)
                nursery.cancel_scope.cancel()
        finally:
            self.release()

    async def _pump(self, send: Send) -> None:
        opening = f"retry: {RETRY_MS}\n: open after={self.feed.cursor}\n\n".encode()
        await send({"type": "http.response.body", "body": opening, "more_body": True})
        while True:
            events = await self.feed.next(HEARTBEAT)
            chunk = sse_chunk(events) if events else b": ping\n\n"
            began = trio.current_time()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if trio.current_time() - began > SLOW_AFTER:
                await send(
                    {"type": "http.response.body", "more_body": False,
                     "body": sse_chunk([("error", None, slow_error())])}
                )
                return


async def _watch_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


async def run_websocket(ws: WebSocket, feed: EventFeed) -> None:
    """Send ``feed``'s events as JSON text frames until the client goes."""
    await ws.accept()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_drain_websocket, ws, nursery.cancel_scope)
        try:
            while True:
                events = await feed.next(HEARTBEAT)
                began = trio.current_time()
                for name, ident, data in events:
                    frame: dict[str, Any] = {"event": name, "data": data}
                    if ident is not None and name != "status":
                        frame["id"] = ident
                    await ws.send_text(json.dumps(frame, separators=(",", ":")))
                if trio.current_time() - began > SLOW_AFTER:
                    await ws.send_text(json.dumps({"event": "error", "data": slow_error()}))
                    await ws.close(code=1008, reason="slow consumer: resume by cursor")
                    break
        except WebSocketDisconnect:
            pass
        nursery.cancel_scope.cancel()


async def _drain_websocket(ws: WebSocket, scope: trio.CancelScope) -> None:
    """Read (and ignore) what the client sends; its going away ends the stream."""
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            scope.cancel()
            return


def stream_error(exc: ApiError) -> dict[str, Any]:
    return error_body(exc.code, exc.message)
