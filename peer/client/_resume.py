"""The stream's memory across reconnects: the last cursor yielded, and the backoff.

Pure (time comes in as ``now``). ``event`` turns one SSE event into a client
event, skipping anything at or before the cursor already yielded (so a
replay after a reconnect never repeats a message), and raising the API's own
error events except ``slow``, which only ends the stream for a reconnect.
"""

from __future__ import annotations

from typing import Any

from ._errors import ApiError
from ._types import Event, Gap, Message, StatusChange

HEARTBEAT = 15.0  # the peer's ": ping" period
FIRST_DELAY = 0.2
MAX_DELAY = 5.0


class StreamCut(Exception):
    """The peer ended the stream on purpose (a slow consumer): reconnect by cursor."""


class Resume:
    def __init__(self, after: int | None, give_up_after: float | None) -> None:
        self.after = after
        self.give_up_after = give_up_after
        self.read_timeout = 3 * HEARTBEAT  # three missed pings: the link is dead
        self._delay = FIRST_DELAY
        self._failing_since: float | None = None

    def headers(self) -> dict[str, str]:
        return {} if self.after is None else {"Last-Event-ID": str(self.after)}

    def connected(self, now: float) -> None:
        self._delay = FIRST_DELAY
        self._failing_since = None

    def failed(self, now: float) -> float | None:
        """Seconds to wait before reconnecting, or None to give up."""
        if self._failing_since is None:
            self._failing_since = now
        elif self.give_up_after is not None and now - self._failing_since > self.give_up_after:
            return None
        delay, self._delay = self._delay, min(self._delay * 2, MAX_DELAY)
        return delay

    def event(self, kind: str, data: Any, event_id: str | None) -> Event | None:
        if not isinstance(data, dict):
            return None
        if kind == "message":
            message = Message.from_json(data)
            cursor = int(event_id) if event_id and event_id.isdigit() else message.cursor
            if self.after is not None and cursor <= self.after:
                return None  # already yielded before a reconnect
            self.after = cursor
            return message
        if kind == "status":
            return StatusChange.from_json(data)
        if kind == "gap":
            if event_id and event_id.isdigit():
                self.after = max(self.after or 0, int(event_id))
            return Gap.from_json(data)
        if kind == "error":
            err = data.get("error")
            err = err if isinstance(err, dict) else {}
            code, text = str(err.get("code", "error")), str(err.get("message", ""))
            if code == "slow":
                raise StreamCut(text)
            raise ApiError(200, code, text)
        return None
