"""``EventStream``: an async iterator whose connection is read by a task it owns.

The reader task (``follow(send)``) runs in an anyio task group opened by
``async with``; events reach the iterator through a bounded memory stream.
Leaving the block cancels the reader, so nothing (no httpx generator, no
socket) outlives it, on Trio or asyncio alike. An error the reader raises
is raised by the iterator, as itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._errors import ClawmeshError
from ._types import Event

BUFFER = 256  # events read ahead of the consumer; beyond it the reader waits

Follow = Callable[[Callable[[Event], Awaitable[None]]], Awaitable[None]]


class _Failed:
    def __init__(self, error: ClawmeshError) -> None:
        self.error = error


class EventStream:
    def __init__(self, follow: Follow) -> None:
        self._follow = follow
        self._group: TaskGroup | None = None
        self._receive: MemoryObjectReceiveStream[Event | _Failed] | None = None

    async def __aenter__(self) -> EventStream:
        send, receive = anyio.create_memory_object_stream[Event | _Failed](BUFFER)
        self._receive = receive
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        self._group.start_soon(self._read, send)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._group is not None and self._receive is not None
        self._group.cancel_scope.cancel()
        try:
            # the block's own exception goes on as itself: the group only reaps its reader
            await self._group.__aexit__(None, None, None)
        finally:
            self._receive.close()

    async def _read(self, send: MemoryObjectSendStream[Event | _Failed]) -> None:
        async with send:
            try:
                await self._follow(send.send)
            except ClawmeshError as exc:
                await send.send(_Failed(exc))

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        if self._receive is None:
            raise RuntimeError("use the stream inside `async with client.stream(...) as events`")
        try:
            item = await self._receive.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None
        if isinstance(item, _Failed):
            raise item.error
        return item
