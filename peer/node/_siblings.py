"""Sibling links between the worker processes of one seed (``--workers N``).

Each worker listens on ``<worker dir>/<index>.sock`` (a Unix socket in a
directory only the seed's user can enter, made by the parent) and dials every
worker with a lower index, again and again while it is away; so every pair
of workers has one link, whichever of them restarts. The link is trusted:
after a hello (``HELLO`` and the dialling worker's index) it carries the
plaintext gossip frames of the link protocol, and checked records (a
message this worker took off the network and opened, with its id:
``peer.wire._checked``), each behind a 4-byte big-endian length. No
handshake, no encryption, no budget: what a sibling sends was checked by
the worker that took it off the network (``peer.protocols._siblingrouter``
has the routing rules). The hello names the record format (``CMW2``: checked
records), so a worker of another version is refused, not misread.

Rules kept here:

* Only gossip frames and checked records are accepted from a sibling (a
  checked record from any other link is refused by the router, and a
  network link's records never reach ``handle_checked``); a frame that does not
  decode, an oversize length or anything else closes that sibling link (it
  is dialled again), never the worker.
* A sibling's sends are queued (bounded: ``SIBLING_QUEUE`` frames and
  ``SIBLING_QUEUE_BYTES`` bytes, whichever comes first) and written in
  batches by one writer task; a sibling that falls that far behind is closed
  as ``SLOW`` like any link, and relinked: no frame is dropped from a queue
  that stays up. What the closed queue held is lost to that sibling only as
  a relay hop: the sibling re-learns interest when it relinks, and what it
  missed comes back as for any link that went (gossip IHAVE/IWANT, and the
  subscribers' own gap repair and catch-up), so nothing acknowledged is
  lost (acknowledged means stored by the accepting worker).
* A burst of frames read together is handled in one synchronous stretch with
  the direct writes it causes held and flushed once per link, as for links.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from peer.protocols._siblingrouter import SiblingRouter, sibling_key
from peer.wire._checked import split_checked
from peer.wire._errors import ErrorCode, ProtocolError
from peer.wire._frames import decode_frame
from peer.wire._frametypes import Error, Sub, Unsub
from peer.wire._limits import MAX_RECORD

from ._swarm import GOSSIP_FRAMES

if TYPE_CHECKING:
    from ._node import Peer

HELLO = b"CMW2"  # CMW1 had no checked records
SIBLING_QUEUE = 65536  # frames queued for one sibling before it is closed as SLOW
SIBLING_QUEUE_BYTES = 32 << 20  # ... or bytes (a record's 4-byte length included)
WRITE_BATCH_BYTES = 1 << 20
READ_SIZE = 1 << 16
REDIAL_MIN, REDIAL_MAX = 0.05, 2.0  # seconds between dials of an absent sibling
_LEN = struct.Struct(">I")
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


def socket_path(worker_dir: Path, index: int) -> Path:
    return worker_dir / f"{index}.sock"


def split_records(buffer: bytearray, limit: int = MAX_RECORD) -> list[bytes]:
    """Take the complete length-prefixed records off the front of ``buffer``;
    raise ``ProtocolError`` for a length over ``limit``."""
    out: list[bytes] = []
    pos, size = 0, len(buffer)
    while size - pos >= 4:
        (n,) = _LEN.unpack_from(buffer, pos)
        if n > limit:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"sibling record of {n} bytes")
        if size - pos - 4 < n:
            break
        out.append(bytes(buffer[pos + 4 : pos + 4 + n]))
        pos += 4 + n
    del buffer[:pos]
    return out


def frame_record(frame: bytes) -> bytes:
    return _LEN.pack(len(frame)) + frame


class SiblingLink:
    """The sending half of one sibling link (a ``SideLink`` for the swarm)."""

    def __init__(self, index: int, stream: trio.abc.Stream) -> None:
        self.index = index
        self.peer_id = sibling_key(index)
        self.stream = stream
        self.scope = trio.CancelScope()
        self.close_code: ErrorCode | None = None
        self.frames_in = 0
        self.frames_out = 0
        self._queue: deque[bytes] = deque()
        self.queued_bytes = 0  # bytes in ``_queue``
        self._wake = trio.Event()

    def enqueue(self, frame: bytes) -> bool:
        """Queue ``frame``; False (nothing queued) if that would take the queue over
        ``SIBLING_QUEUE`` frames or ``SIBLING_QUEUE_BYTES`` bytes: the caller closes
        the link as ``SLOW``."""
        if self.close_code is not None:
            return True  # going: dropped, as for a closing link
        size = len(frame) + _LEN.size
        if len(self._queue) >= SIBLING_QUEUE or self.queued_bytes + size > SIBLING_QUEUE_BYTES:
            return False
        self._queue.append(frame_record(frame))
        self.queued_bytes += size
        self._wake.set()
        return True

    def close(self, code: ErrorCode, reason: str) -> None:
        if self.close_code is None:
            self.close_code = code
            self.scope.cancel()

    async def writer(self) -> None:
        queue = self._queue
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while queue:
                batch: list[bytes] = []
                size = 0
                while queue and size < WRITE_BATCH_BYTES:
                    record = queue.popleft()
                    batch.append(record)
                    size += len(record)
                self.queued_bytes -= size
                self.frames_out += len(batch)
                try:
                    await self.stream.send_all(b"".join(batch))
                except _GONE:
                    self.close(ErrorCode.SHUTDOWN, "the sibling went")
                    return


class Siblings:
    """The sibling links of worker ``index`` of ``count``; ``run`` keeps them up."""

    def __init__(self, peer: Peer, index: int, count: int, worker_dir: Path) -> None:
        self.peer = peer
        self.index, self.count = index, count
        self.worker_dir = worker_dir
        self.links: dict[int, SiblingLink] = {}
        self.linked_total = 0
        self.errors = 0

    def status(self) -> dict[str, object]:
        return {
            "index": self.index,
            "workers": self.count,
            "siblings": sorted(self.links),
            "sibling_links_made": self.linked_total,
            "sibling_errors": self.errors,
            "frames_in": {i: link.frames_in for i, link in self.links.items()},
            "frames_out": {i: link.frames_out for i, link in self.links.items()},
            "queued_bytes": {i: link.queued_bytes for i, link in self.links.items()},
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        path = socket_path(self.worker_dir, self.index)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale socket of this worker's previous life
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(self.count)
        listener = trio.SocketListener(sock)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._accepted, [listener])
            for other in range(self.index):
                nursery.start_soon(self._keep_dialling, other)
            task_status.started()

    async def _keep_dialling(self, other: int) -> None:
        delay = REDIAL_MIN
        path = socket_path(self.worker_dir, other)
        while True:
            try:
                stream = await trio.open_unix_socket(str(path))
            except OSError:
                await trio.sleep(delay)
                delay = min(REDIAL_MAX, delay * 2)
                continue
            delay = REDIAL_MIN
            try:
                await stream.send_all(HELLO + bytes([self.index]))
                await self._serve(other, stream, bytearray())
            except _GONE:
                pass
            finally:
                await _close(stream)
            await trio.sleep(REDIAL_MIN)

    async def _accepted(self, stream: trio.SocketStream) -> None:
        buffer = bytearray()
        try:
            with trio.move_on_after(5):
                while len(buffer) < len(HELLO) + 1:
                    data = await stream.receive_some(READ_SIZE)
                    if not data:
                        return
                    buffer += data
            if len(buffer) < len(HELLO) + 1 or bytes(buffer[:4]) != HELLO:
                self.errors += 1
                return
            other = buffer[4]
            if not self.index < other < self.count:
                self.errors += 1
                return
            del buffer[:5]
            await self._serve(other, stream, buffer)
        except _GONE:
            pass
        finally:
            await _close(stream)

    async def _serve(self, other: int, stream: trio.abc.Stream, buffer: bytearray) -> None:
        old = self.links.get(other)
        if old is not None:  # the sibling restarted: its old link is dead
            old.close(ErrorCode.SHUTDOWN, "replaced")
            self._unregister(old)
        link = SiblingLink(other, stream)
        peer = self.peer
        self.links[other] = link
        peer.swarm.side_links[link.peer_id] = link
        self.linked_total += 1
        peer.log.info("sibling worker linked", worker=other)
        router = peer.router
        if not isinstance(router, SiblingRouter):
            raise TypeError("a seed's worker needs a SiblingRouter")
        try:
            with link.scope:
                peer.perform(router.add_sibling(link.peer_id, peer.now()))
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(link.writer)
                    await self._reader(link, buffer)
                    nursery.cancel_scope.cancel()
        except Exception as exc:  # a bug: this sibling link goes (and is redialled), not the worker
            self.errors += 1
            peer.counters.link_errors += 1
            peer.log.error("sibling link crashed", worker=other, error=repr(exc), exc_info=exc)
        finally:
            self._unregister(link)
            peer.log.info("sibling worker unlinked", worker=other, code=link.close_code)

    def _unregister(self, link: SiblingLink) -> None:
        peer = self.peer
        if self.links.get(link.index) is link:
            del self.links[link.index]
        if peer.swarm.side_links.get(link.peer_id) is link:
            del peer.swarm.side_links[link.peer_id]
            peer.perform(peer.router.remove_link(link.peer_id))
            peer.notify_changed()

    async def _reader(self, link: SiblingLink, buffer: bytearray) -> None:
        while link.close_code is None:
            if buffer:
                try:
                    records = split_records(buffer)
                except ProtocolError as exc:
                    self._refused(link, exc)
                    return
                if records:
                    self._handle(link, records)
            try:
                data = await link.stream.receive_some(READ_SIZE)
            except _GONE:
                return
            if not data:
                return
            buffer += data

    def _handle(self, link: SiblingLink, records: list[bytes]) -> None:
        peer = self.peer
        router = peer.router
        assert isinstance(router, SiblingRouter)
        outbox = peer.link_manager.outbox
        outbox.hold()
        try:
            now, wall = peer.now(), peer.wall_ms()  # one read's records: one instant
            for raw in records:
                if link.close_code is not None:
                    return
                try:
                    checked = split_checked(raw)
                    frame = decode_frame(raw) if checked is None else None
                    if frame is not None and (
                        type(frame) not in GOSSIP_FRAMES or isinstance(frame, Error)
                    ):
                        raise ProtocolError(ErrorCode.UNEXPECTED, f"{frame.TYPE!r} from a sibling")
                except ProtocolError as exc:
                    self._refused(link, exc)
                    return
                link.frames_in += 1
                if frame is None:
                    assert checked is not None
                    peer.perform(router.handle_checked(link.peer_id, *checked, now, wall))
                else:
                    peer.perform(router.handle_frame(link.peer_id, frame, raw, now, wall))
                if isinstance(frame, Sub | Unsub):
                    peer.notify_changed()
        finally:
            outbox.flush()

    def _refused(self, link: SiblingLink, exc: ProtocolError) -> None:
        self.errors += 1
        self.peer.log.warning("sibling frame refused", code=exc.code.value, reason=exc.message)
        link.close(exc.code, exc.message)


async def _close(stream: trio.abc.Stream) -> None:
    with trio.CancelScope(shield=True), contextlib.suppress(*_GONE):
        await stream.aclose()
