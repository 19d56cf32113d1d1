"""One authenticated link to another peer: its send queue and how it closes.

A ``Link`` owns a bounded queue of plaintext frames (``SEND_QUEUE``);
``enqueue`` never blocks, and a full queue means the link is too slow and
must be closed by its owner. ``close`` is idempotent: the first call records
the reason, queues an error frame if there is room, ends the queue and puts a
short deadline on the link's cancel scope. Sealing and writing happen in the
link's writer task (``peer._linkhost``), never here.
"""

from __future__ import annotations

import contextlib

import trio

from ._errors import ErrorCode
from ._frames import clip_utf8, encode_frame
from ._handshake import HandshakeResult, LinkCipher
from ._transport import Transport

SEND_QUEUE = 4096  # records waiting for a slow link before it is dropped
HANDSHAKE_TIMEOUT = 10.0


class Link:
    """One authenticated, encrypted link to another peer."""

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
        self.send_channel, self.receive_channel = trio.open_memory_channel[bytes](SEND_QUEUE)
        self.scope = trio.CancelScope()
        self.closed = trio.Event()
        self.close_code: ErrorCode | None = None
        self.close_reason = ""
        self.frames_out = 0

    @property
    def relay(self) -> bool:
        return "relay" in self.result.caps

    def enqueue(self, frame: bytes) -> bool:
        """Queue a plaintext frame; False if the link is closing or too far behind."""
        try:
            self.send_channel.send_nowait(frame)
        except trio.WouldBlock:
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return True  # closing already; nothing to do
        return True

    def close(self, code: ErrorCode, reason: str) -> None:
        """Send an error frame if possible, then end the link within a deadline."""
        if self.close_code is not None:
            return
        self.close_code = code
        self.close_reason = reason
        with contextlib.suppress(
            trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError
        ):
            self.send_channel.send_nowait(
                encode_frame("error", code=code.value, msg=clip_utf8(reason, 200))
            )
        self.send_channel.close()
        self.scope.deadline = min(self.scope.deadline, trio.current_time() + 2.0)
