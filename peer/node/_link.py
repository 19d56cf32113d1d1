"""One authenticated link to another peer: its send queue and how it closes.

A ``Link`` owns a bounded queue of plaintext frames (``SEND_QUEUE``);
``enqueue`` never blocks, and a full queue means the link is too slow and
must be closed by its owner. ``close`` is idempotent: the first call records
the reason, queues an error frame if there is room, ends the queue and puts a
short deadline on the link's cancel scope.

``enqueue`` writes at once when it can (a direct write, see
``peer.node._transport``): if nothing is queued, the link's writer is idle
(``writing`` False) and the transport is ``ready``, the frame is sealed and
handed to the socket here, and only what the socket did not take is queued,
as a ``Tail`` the writer sends first. Otherwise the frame is queued, and the
link's writer task (``peer.node._linkhost``) seals and sends it in a batch.
Either way frames are sealed in the order they were enqueued and reach the
wire in that order.

While the link manager handles a burst of records that were already read
(``Outbox.hold`` .. ``Outbox.flush``, one synchronous stretch with no await
in between), direct writes are collected per link instead (``held``) and
``flush`` writes each link's share with one ``send``: a relay that got 16
messages in one read writes each subscriber once, not 16 times. ``close``
moves what a link holds into its queue, ahead of its error frame.

A relay holds one ``Link`` per idle peer for hours, so what an idle link
keeps is kept small: ``__slots__``, a ``SendQueue`` that holds no buffer
while it is empty (a Trio memory channel costs a few KiB per link), and no
writer task while nothing is queued: a served link (``nursery`` set, and an
``Outbox`` that names the writer) starts one when a frame is queued or the
queue closes (``kick``); it ends when the queue is empty again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable

import trio

from peer.wire._errors import ErrorCode
from peer.wire._frames import clip_utf8
from peer.wire._frametypes import Error
from peer.wire._handshake import HandshakeResult, LinkCipher

from ._transport import Transport

SEND_QUEUE = 4096  # records waiting for a slow link before it is dropped
HANDSHAKE_TIMEOUT = 10.0
CLOSE_GRACE = 2.0  # seconds a closing link has to flush its error frame


class Tail:
    """Framed bytes a direct write left over: the writer sends them as they are."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class Outbox:
    """Shared by the links of one manager: whether direct writes are being held, and
    the writer that a served link starts when it has something queued."""

    __slots__ = ("dirty", "holding", "writer")

    def __init__(self, writer: Callable[[Link], Awaitable[None]] | None = None) -> None:
        self.holding = False
        self.dirty: list[Link] = []  # links holding bytes, in the order they started
        self.writer = writer

    def hold(self) -> None:
        self.holding = True

    def flush(self) -> None:
        """Write what every link holds (what the socket does not take goes to its writer)."""
        self.holding = False
        dirty, self.dirty = self.dirty, []
        error: Exception | None = None
        for link in dirty:  # every link, even if one fails: none may keep holding
            try:
                link.flush_held()
            except Exception as exc:  # a bug: the caller's handler closes its link
                error = error or exc
        if error is not None:
            raise error


_NO_OUTBOX = Outbox()  # never holds: for links made without a manager


class SendQueue:
    """Frames waiting for one writer task: bounded, and ``put`` never blocks.

    ``close`` ends it: ``get`` returns what is still queued, then None.
    """

    __slots__ = ("_closed", "_frames", "_limit", "_writer")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        # made by the first put, dropped when drained
        self._frames: deque[bytes | Tail] | None = None
        self._closed = False
        self._writer: trio.lowlevel.Task | None = None  # parked in get()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def idle(self) -> bool:
        """Nothing is queued and the queue is open."""
        return self._frames is None and not self._closed

    def put(self, frame: bytes | Tail) -> bool:
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

    def get_nowait(self) -> bytes | Tail | None:
        """The next frame, or None if none is waiting."""
        frames = self._frames
        if not frames:
            return None
        frame = frames.popleft()
        if not frames:
            self._frames = None
        return frame

    async def get(self) -> bytes | Tail | None:
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
        "held",
        "initiator",
        "nursery",
        "opened",
        "outbox",
        "peer_id",
        "queue",
        "result",
        "scope",
        "transport",
        "writer_on",
        "writing",
    )

    def __init__(
        self,
        result: HandshakeResult,
        transport: Transport,
        initiator: bool,
        opened: float,
        outbox: Outbox | None = None,
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
        # the nursery serving the link: its writer task is started there when needed
        self.nursery: trio.Nursery | None = None
        self.writer_on = False  # a writer task is running (started by ``kick``)
        self._closed: trio.Event | None = None
        self.close_code: ErrorCode | None = None
        self.close_reason = ""
        self.frames_out = 0
        self.writing = False  # the writer holds frames it took from the queue
        self.outbox = outbox if outbox is not None else _NO_OUTBOX
        self.held: list[bytes] | None = None  # sealed records held for the outbox's flush

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
        """Send a plaintext frame: written at once if nothing is ahead of it and the
        socket takes it, queued otherwise; False if the link is too far behind
        (closing: dropped)."""
        held = self.held
        if held is not None:  # ahead of anything else: it stays ahead
            if len(held) >= SEND_QUEUE:
                return False
            held.append(self.cipher.seal(frame))
            return True
        queue = self.queue
        if queue.idle and not self.writing and self.transport.ready():
            if self.outbox.holding:
                self.held = [self.cipher.seal(frame)]
                self.outbox.dirty.append(self)
                return True
            tail = self.transport.send_now(self.cipher.seal(frame))
            self.frames_out += 1
            if tail:
                self._put(Tail(tail))  # first in line; the writer sends it before the rest
            return True
        return self._put(frame)

    def _put(self, frame: bytes | Tail) -> bool:
        ok = self.queue.put(frame)
        self.kick()
        return ok

    def kick(self) -> None:
        """Start the link's writer if something waits for it and none is running.

        An idle link has no writer task (a parked task costs ~1.7 KiB): it is
        started in the link's nursery when a frame is queued (or the queue is
        closed) and ends once the queue is empty (``LinkManager._writer``).
        """
        nursery, writer = self.nursery, self.outbox.writer
        if nursery is None or writer is None or self.writer_on or self.queue.idle:
            return
        if nursery.cancel_scope.cancel_called:  # the link is ending: nothing more goes out
            return
        try:
            nursery.start_soon(writer, self)
        except RuntimeError:  # closed to new tasks (its last task just ended): as above
            self.nursery = None
            return
        self.writer_on = True

    def flush_held(self) -> None:
        """Write the records held for the outbox in one go; the rest goes to the writer."""
        held, self.held = self.held, None
        if not held:
            return
        self.frames_out += len(held)
        if self.transport.ready():
            tail = self.transport.send_now_many(held)
        else:  # cannot happen within one synchronous stretch; kept safe all the same
            tail = self.transport.frame_many(held)
        if tail:
            self._put(Tail(tail))

    def close(self, code: ErrorCode, reason: str) -> None:
        """Send an error frame if possible, then end the link within a deadline."""
        if self.close_code is not None:
            return
        self.close_code = code
        self.close_reason = reason
        held, self.held = self.held, None
        if held:  # sealed before the error frame: they go first
            self.frames_out += len(held)
            self.queue.put(Tail(self.transport.frame_many(held)))
        self.queue.put(Error(code.value, clip_utf8(reason, 200)).encode())
        self.queue.close()
        self.kick()
        if self.scope is not None:  # None: closed before it was served, and it never will be
            self.scope.deadline = min(self.scope.deadline, trio.current_time() + CLOSE_GRACE)
