"""One authenticated link to another peer: its send queue and how it closes.

A ``Link`` owns a bounded queue of plaintext frames (``SEND_QUEUE``);
``enqueue`` never blocks, and a full queue means the link is too slow and
must be closed by its owner. ``close`` is idempotent: the first call records
the reason, queues an error frame if there is room, ends the queue and puts a
short deadline on the link's cancel scope. Sealing and writing happen in the
link's writer task (``peer.node._linkhost``), never here.

A relay holds one ``Link`` per idle peer for hours, so what an idle link
keeps is kept small: ``__slots__``, and a ``SendQueue`` that holds no buffer
while it is empty (a Trio memory channel costs a few KiB per link).
"""

from __future__ import annotations

from collections import deque

import trio

from peer.wire._errors import ErrorCode
from peer.wire._frames import clip_utf8
from peer.wire._frametypes import Error
from peer.wire._handshake import HandshakeResult, LinkCipher

from ._transport import Transport

SEND_QUEUE = 4096  # records waiting for a slow link before it is dropped
HANDSHAKE_TIMEOUT = 10.0
CLOSE_GRACE = 2.0  # seconds a closing link has to flush its error frame


class SendQueue:
    """Frames waiting for one writer task: bounded, and ``put`` never blocks.

    ``close`` ends it: ``get`` returns what is still queued, then None.
    """

    __slots__ = ("_closed", "_frames", "_limit", "_writer")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._frames: deque[bytes] | None = None  # made by the first put, dropped when drained
        self._closed = False
        self._writer: trio.lowlevel.Task | None = None  # parked in get()

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, frame: bytes) -> bool:
        """Queue ``frame``; False if the queue is full. Frames put after close are dropped."""
        if self._closed:
            return True
        if self._frames is None:
            self._frames = deque()
        elif len(self._frames) >= self._limit:
            return False
        self._frames.append(frame)
        self._wake()
        return True

    def close(self) -> None:
        self._closed = True
        self._wake()

    def __len__(self) -> int:
        """Frames waiting."""
        return 0 if self._frames is None else len(self._frames)

    def get_nowait(self) -> bytes | None:
        """The next frame, or None if none is waiting."""
        frames = self._frames
        if not frames:
            return None
        frame = frames.popleft()
        if not frames:
            self._frames = None
        return frame

    async def get(self) -> bytes | None:
        """Wait for the next frame; None once the queue is closed and empty."""
        if self._frames or self._closed:
            await trio.lowlevel.checkpoint()
        else:
            if self._writer is not None:
                raise RuntimeError("a SendQueue has one reader")
            self._writer = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort)
        return self.get_nowait()

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._writer = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _wake(self) -> None:
        if self._writer is not None:
            trio.lowlevel.reschedule(self._writer)
            self._writer = None


class Link:
    """One authenticated, encrypted link to another peer."""

    __slots__ = (
        "_closed",
        "cipher",
        "close_code",
        "close_reason",
        "frames_out",
        "initiator",
        "opened",
        "peer_id",
        "queue",
        "result",
        "scope",
        "transport",
    )

    def __init__(
        self,
        result: HandshakeResult,
        transport: Transport,
        initiator: bool,
        opened: float,
    ) -> None:
        self.result = result
        self.peer_id = result.peer_id
        self.transport = transport
        self.initiator = initiator
        self.opened = opened
        self.cipher: LinkCipher = result.cipher
        self.queue = SendQueue(SEND_QUEUE)
        # the cancel scope of the nursery serving the link, once it is served
        self.scope: trio.CancelScope | None = None
        self._closed: trio.Event | None = None
        self.close_code: ErrorCode | None = None
        self.close_reason = ""
        self.frames_out = 0

    @property
    def closed(self) -> trio.Event:
        """Set when the link is down; made when first asked for, as most are never awaited."""
        if self._closed is None:
            self._closed = trio.Event()
        return self._closed

    @property
    def relay(self) -> bool:
        return "relay" in self.result.caps

    def enqueue(self, frame: bytes) -> bool:
        """Queue a plaintext frame; False if the link is too far behind (closing: dropped)."""
        return self.queue.put(frame)

    def close(self, code: ErrorCode, reason: str) -> None:
        """Send an error frame if possible, then end the link within a deadline."""
        if self.close_code is not None:
            return
        self.close_code = code
        self.close_reason = reason
        self.queue.put(Error(code.value, clip_utf8(reason, 200)).encode())
        self.queue.close()
        if self.scope is not None:  # None: closed before it was served, and it never will be
            self.scope.deadline = min(self.scope.deadline, trio.current_time() + CLOSE_GRACE)
