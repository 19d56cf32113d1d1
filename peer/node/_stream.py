"""``Peer.messages``: an async iterator over a peer's inbox, from a cursor on.

It never misses a message the inbox still holds and never repeats one: it
reads by cursor (``Inbox.since``), and waits on the inbox's change event
when it has read everything.
"""

from __future__ import annotations

from typing import Protocol

from ._inbox import Inbox, InboxMessage


class InboxOwner(Protocol):
    @property
    def inbox(self) -> Inbox: ...
    async def wait_inbox_changed(self) -> None: ...


class MessageStream:
    """An async iterator over a peer's inbox from a cursor on (see ``Peer.messages``).

    ``cursor`` is the last message handed out (or skipped by the filters):
    keep it to resume later with ``peer.messages(after=cursor)``.
    """

    def __init__(
        self,
        peer: InboxOwner,
        cursor: int,
        channel: str | None,
        sender: bytes | None,
        outgoing: bool,
    ) -> None:
        self.peer = peer
        self.cursor = cursor
        self._channel = channel
        self._sender = sender
        self._outgoing = outgoing
        self._ready: list[InboxMessage] = []

    def __aiter__(self) -> MessageStream:
        return self

    async def __anext__(self) -> InboxMessage:
        while not self._ready:
            batch = self.peer.inbox.since(self.cursor)
            if not batch:
                await self.peer.wait_inbox_changed()
                continue
            self.cursor = batch[-1].cursor
            self._ready = [m for m in batch if self._wanted(m)]
            self._ready.reverse()
        return self._ready.pop()

    def _wanted(self, message: InboxMessage) -> bool:
        if message.outgoing and not self._outgoing:
            return False
        if self._channel is not None and message.channel != self._channel:
            return False
        return self._sender is None or message.peer == self._sender
