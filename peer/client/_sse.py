"""A Server-Sent Events parser, pure: lines in, events out (the WHATWG event-stream rules).

``SseParser.feed(line)`` takes one line without its line ending and returns
the event that a blank line completes, or None. Comments (``: ping``) are
skipped; ``data`` lines join with newlines; an event with no data is not
dispatched; a field without a colon has an empty value; one space after the
colon is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_EVENT_CHARS = 4 * 1024 * 1024  # a bound on one event's data: a broken server cannot fill memory


class SseError(Exception):
    """The stream broke the event-stream rules (an event over the size bound)."""


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str
    id: str | None


class SseParser:
    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._size = 0
        self._id: str | None = None

    def feed(self, line: str) -> SseEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._size += len(value) + 1
            if self._size > MAX_EVENT_CHARS:
                raise SseError(f"an event over {MAX_EVENT_CHARS} characters")
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None  # retry and unknown fields: nothing to do here

    def _dispatch(self) -> SseEvent | None:
        event = None
        if self._data:
            event = SseEvent(self._event or "message", "\n".join(self._data), self._id)
        self._event, self._data, self._size, self._id = "", [], 0, None
        return event
