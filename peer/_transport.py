"""Record transports: how link records move, over WebSocket or a byte stream.

A transport moves whole records (bytes) and knows nothing of what they mean.
``WebSocketTransport`` maps a record to one binary WebSocket message (text
messages are ignored, leaving them to JSON-speaking tools); ``StreamTransport``
length-prefixes records on any ``trio.abc.Stream`` (TCP, or the memory
streams the in-process tests use).
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import trio
import trio_websocket

from ._frames import RecordBuffer, frame_record
from ._limits import MAX_RECORD

_WS_GONE = (trio_websocket.ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError)


class TransportClosed(Exception):
    """The other side went away, or the transport broke."""


class Transport(Protocol):
    remote: str

    async def send(self, record: bytes) -> None: ...

    async def receive(self) -> bytes: ...

    async def aclose(self) -> None: ...


class WebSocketTransport:
    def __init__(self, ws: trio_websocket.WebSocketConnection, remote: str) -> None:
        self._ws = ws
        self.remote = remote

    async def send(self, record: bytes) -> None:
        try:
            await self._ws.send_message(record)
        except _WS_GONE as exc:
            raise TransportClosed(str(exc)) from None

    async def receive(self) -> bytes:
        while True:
            try:
                message = await self._ws.get_message()
            except _WS_GONE as exc:
                raise TransportClosed(str(exc)) from None
            if isinstance(message, bytes):
                return message

    async def aclose(self) -> None:
        with trio.move_on_after(2), contextlib.suppress(*_WS_GONE):
            await self._ws.aclose()


class StreamTransport:
    def __init__(
        self, stream: trio.abc.Stream, remote: str = "stream", max_record: int = MAX_RECORD
    ) -> None:
        self._stream = stream
        self._buffer = RecordBuffer(max_record)
        self._ready: list[bytes] = []
        self.remote = remote

    async def send(self, record: bytes) -> None:
        try:
            await self._stream.send_all(frame_record(record))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportClosed(str(exc)) from None

    async def receive(self) -> bytes:
        while not self._ready:
            try:
                data = await self._stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise TransportClosed(str(exc)) from None
            if not data:
                raise TransportClosed("end of stream")
            self._ready.extend(self._buffer.feed(data))  # ProtocolError if oversize
        return self._ready.pop(0)

    async def aclose(self) -> None:
        await self._stream.aclose()
