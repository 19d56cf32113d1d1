"""A WebSocket connection of our own, once the HTTP upgrade is done: one object per link.

``WsConnection`` is a clawmesh link's ``Transport`` over RFC 6455 (the codec is
``peer.wire._wsframes``; the upgrade ``peer.wire._wsupgrade``, done here by
``accept_upgrade`` and ``open_client``). It replaces trio-websocket's
connection on links, which kept a reader task and its nursery, three Events,
wsproto's state and a memory channel per link, and made every record hop from
its reader task through the channel to the link's own.

Rules kept here:

* No task of its own. The task that calls ``receive`` (the link's reader)
  reads the socket, ``RECEIVE_BUFFER`` bytes at most per read, and parses
  lazily: one message per call, and ``receive_nowait`` parses the next from
  the bytes already read, with no I/O. What is held is one message
  (``MESSAGE_LIMIT``) plus one read, at most; an idle link holds no buffer.
* Pings are answered (by the reader, once what it read is parsed, the latest
  ping only, so a flood of pings costs one write per read; under the write
  lock, so a pong never lands inside another frame; while another task is
  writing, or the rest of a half-sent direct write is owed, the writer sends
  the pong after it, and the reader does not wait); pongs and
  text messages are dropped by ``receive`` (text is still checked to be
  UTF-8); ``get_message`` gives text too, for the OCM gateway, which speaks
  JSON text on the same listener.
* A frame against the RFC (``WsFrameError``) closes the connection with its
  code (1002, 1007, 1009): the close frame is sent within ``CLOSE_TIMEOUT``,
  then the stream is closed without waiting for an answer; the caller gets
  ``WsClosed`` (a ``TransportClosed`` and a ``trio.BrokenResourceError``, so
  the link layer and the OCM gateway both see the connection gone).
* ``aclose`` is the close handshake, bounded by ``CLOSE_TIMEOUT``: send a close
  frame, read (and drop) until the other's close frame or the end, close the
  stream. A close frame received is answered with the same code. ``abort``
  closes the stream at once and drops what was read but not parsed: for a
  connection refused before its handshake, nothing more it sent is parsed.
* Writes keep the transport's semantics (``peer.node._transport``): one
  write lock (made only when two writers meet), ``send_many`` frames a batch
  for one write, and direct writes (``ready``/``send_now``) hand a frame to a
  plain TCP socket with one non-blocking ``send`` when nobody is writing,
  returning the tail. A server's frames are unmasked, a client's masked with
  a fresh random key each: the bytes on the wire are what trio-websocket
  and wsproto wrote. A write cancelled part-way leaves the connection unable
  to write (a frame cut in two cannot be finished), and it is closed.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Final, NoReturn

import trio

from peer.wire._wsframes import (
    CLOSE_ABNORMAL,
    CLOSE_BAD_DATA,
    CLOSE_NO_STATUS,
    CLOSE_NORMAL,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    WsFrameError,
    close_payload,
    encode_frame,
    parse_close,
)
from peer.wire._wsupgrade import (
    HEAD_LIMIT,
    UpgradeFailed,
    UpgradeRefused,
    accept_response,
    check_response,
    client_request,
    head_end,
    new_key,
    parse_request,
    refusal,
)

from . import _transport
from ._transport import MESSAGE_LIMIT, RECEIVE_BUFFER, TransportClosed

CLOSE_TIMEOUT = 2.0  # seconds for the close handshake, at most
_OPEN: Final = 0
_CLOSING: Final = 1  # our close frame is out: no more data frames
_CLOSED: Final = 2
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


class WsClosed(TransportClosed, trio.BrokenResourceError):
    """The WebSocket is closed (``code``: the close code, 1006 if none was exchanged)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}".strip())
        self.code = code
        self.reason = reason


class WsConnection:
    """One upgraded WebSocket: a link's ``Transport``, and messages for the OCM gateway."""

    __slots__ = (
        "_busy",
        "_client",
        "_first",
        "_held",
        "_lot",
        "_owed",
        "_pong",
        "_reader",
        "_sock",
        "_state",
        "_stream",
        "close_code",
        "close_reason",
        "remote",
    )

    def __init__(
        self, stream: trio.abc.Stream, *, client: bool, remote: str, leftover: bytes = b""
    ) -> None:
        self._stream = stream
        self._client = client
        self.remote = remote
        self._reader = FrameReader(server=not client, limit=MESSAGE_LIMIT)
        if leftover:
            self._reader.feed(leftover)
        self._sock = _raw_socket(stream) if _transport.DIRECT_WRITES else None
        self._state = _OPEN
        self._busy = False  # a write is under way (the write lock)
        self._lot: trio.lowlevel.ParkingLot | None = None  # writers waiting for it
        self._pong: bytes | None = None  # a pong for the writer under way to send next
        # the rest of a frame a direct write left half-sent: the link's writer sends it
        # (``send_raw``) before anything else may go (a pong or close frame waits for it)
        self._owed: bytes | None = None
        self._first: bytes | None = None  # a record read before (the listener's peek)
        self._held: tuple[int, bytes] | WsFrameError | None = None  # met by receive_nowait
        self.close_code: int | None = None
        self.close_reason = ""

    @property
    def connection(self) -> WsConnection:
        """The WebSocket itself (the OCM gateway speaks text on a dialled one)."""
        return self

    @property
    def is_client(self) -> bool:
        return self._client

    def unread(self, record: bytes) -> None:
        """Give ``record`` back: ``receive`` returns it first."""
        self._first = record

    # -- writing --------------------------------------------------------------------

    def frame(self, record: bytes, opcode: int = OP_BINARY) -> bytes:
        return encode_frame(opcode, record, os.urandom(4) if self._client else None)

    def frame_many(self, records: list[bytes]) -> bytes:
        if self._client:
            return b"".join([encode_frame(OP_BINARY, r, os.urandom(4)) for r in records])
        return b"".join([encode_frame(OP_BINARY, r) for r in records])

    async def send(self, record: bytes) -> None:
        await self.send_raw(self.frame(record))

    async def send_many(self, records: list[bytes]) -> None:
        await self.send_raw(self.frame_many(records))

    async def send_message(self, message: bytes | str) -> None:
        """A binary or text message (the OCM gateway's interface)."""
        if isinstance(message, str):
            await self.send_raw(self.frame(message.encode(), OP_TEXT))
        else:
            await self.send_raw(self.frame(message))

    async def send_raw(self, data: bytes) -> None:
        tail = data is self._owed
        if self._state != _OPEN and not (tail and self._state == _CLOSING):
            raise WsClosed(self.close_code or CLOSE_ABNORMAL, "the WebSocket is closing")
        await self._write(data, tail=tail)

    def ready(self) -> bool:
        return (
            self._sock is not None and self._state == _OPEN and not self._busy
            and self._owed is None
        )

    def send_now(self, record: bytes) -> bytes:
        return self._write_now(self.frame(record))

    def send_now_many(self, records: list[bytes]) -> bytes:
        return self._write_now(self.frame_many(records))

    def _write_now(self, data: bytes) -> bytes:
        assert self._sock is not None
        try:
            sent = self._sock.send(data)
        except OSError:  # would block, or broken: the writer's write sends it or finds out
            return data
        if sent >= len(data):
            return b""
        tail = data[sent:]
        if sent:
            self._owed = tail  # a frame cut in two: nothing else goes before its rest
        return tail

    async def _write(self, data: bytes, *, tail: bool = False) -> None:
        """Write ``data`` under the write lock (whole frames never interleave); while a
        direct write's half-sent frame is owed, only its rest (``tail``) may go."""
        while self._busy or (self._owed is not None and not tail):
            lot = self._lot
            if lot is None:
                lot = self._lot = trio.lowlevel.ParkingLot()
            await lot.park()
        if self._state == _CLOSED:  # a write was cut mid-frame meanwhile: nothing may follow
            raise WsClosed(self.close_code or CLOSE_ABNORMAL, self.close_reason)
        if tail and self._owed is None:  # ``aclose`` sent the rest itself meanwhile
            return
        self._busy = True
        done = False
        try:
            await self._stream.send_all(data)
            if tail:
                self._owed = None
            while self._pong is not None and self._state == _OPEN:  # met while we wrote
                pong, self._pong = self._pong, None
                await self._stream.send_all(self.frame(pong, OP_PONG))
            done = True
        except _GONE as exc:
            self._gone(str(exc) or "the connection broke")
            raise WsClosed(CLOSE_ABNORMAL, self.close_reason) from None
        finally:
            self._busy = False
            if not done:  # cut mid-frame: nothing more can go, nor is anything owed
                if self._state != _CLOSED:
                    self._state = _CLOSED
                    self.close_code = self.close_code or CLOSE_ABNORMAL
                self._owed = None
            lot = self._lot
            if lot is not None:
                if not lot:
                    self._lot = None
                elif done:
                    lot.unpark()
                else:
                    lot.unpark_all()  # each finds the connection closed

    # -- reading --------------------------------------------------------------------

    async def receive(self) -> bytes:
        """The next binary message (text and control frames are dealt with here)."""
        message = await self._message(text=False)
        assert isinstance(message, bytes)
        return message

    async def get_message(self) -> bytes | str:
        """The next binary or text message."""
        return await self._message(text=True)

    async def _message(self, *, text: bool) -> bytes | str:
        first = self._first
        if first is not None:
            self._first = None
            return first
        while True:
            opcode, payload = await self._event()
            if opcode == OP_BINARY:
                return payload
            got = await self._other(opcode, payload)
            if text and got is not None:
                return got

    def receive_nowait(self) -> bytes | None:
        first = self._first
        if first is not None:
            self._first = None
            return first
        if self._held is not None or self._state == _CLOSED:
            return None
        try:
            event = self._reader.next()
        except WsFrameError as exc:  # ``receive`` closes the connection for it
            self._held = exc
            return None
        if event is None:
            return None
        if event[0] == OP_BINARY:
            return event[1]
        self._held = event  # a control frame or text: ``receive`` deals with it
        return None

    def backlog(self) -> tuple[int, bool]:
        # Nothing is parsed ahead: ``receive_nowait`` parses what was read, so
        # there is never a reader to give turns to.
        return 0, False

    async def _event(self) -> tuple[int, bytes]:
        held = self._held
        if held is not None:
            self._held = None
            if isinstance(held, WsFrameError):
                await self._fail(held)
            else:
                return held
        reader = self._reader
        while True:
            if self._state == _CLOSED:
                raise WsClosed(self.close_code or CLOSE_ABNORMAL, self.close_reason)
            try:
                event = reader.next()
            except WsFrameError as exc:
                await self._fail(exc)
            if event is not None:
                return event
            if self._pong is not None:
                await self._answer_ping()
            try:
                data = await self._stream.receive_some(RECEIVE_BUFFER)
            except _GONE as exc:
                self._gone(str(exc) or "the connection broke")
                continue
            if not data:
                self._gone("the connection ended without a close frame")
                continue
            reader.feed(data)

    async def _other(self, opcode: int, payload: bytes) -> str | None:
        """Deal with what is not a binary message; returns a text message's text."""
        if opcode == OP_TEXT:
            try:
                return payload.decode()
            except UnicodeDecodeError:
                await self._fail(WsFrameError(CLOSE_BAD_DATA, "a text message that is not UTF-8"))
        if opcode == OP_PING and self._state == _OPEN:
            # answered once what was read is parsed, or after the write under way: the
            # latest ping only (RFC 6455 5.5.3), so a flood of pings costs one write
            self._pong = payload
        elif opcode == OP_CLOSE:
            await self._closed_by_other(payload)
        return None

    async def _answer_ping(self) -> None:
        """Send the pong owed, unless a write is under way (it sends it) or a half-sent
        frame is owed (its rest goes first, then the pong)."""
        if self._busy or self._owed is not None or self._state != _OPEN:
            return
        pong, self._pong = self._pong, None
        if pong is not None:
            with contextlib.suppress(WsClosed):
                await self._write(self.frame(pong, OP_PONG))

    async def _closed_by_other(self, payload: bytes) -> NoReturn:
        try:
            code, reason = parse_close(payload)
        except WsFrameError as exc:
            await self._fail(exc)
        if self._state == _OPEN and self._owed is None:  # answer with the same code
            self._state = _CLOSING
            self._pong = None  # nothing goes after our close frame
            answer = b"" if code == CLOSE_NO_STATUS else payload[:2]
            with trio.move_on_after(CLOSE_TIMEOUT), contextlib.suppress(WsClosed):
                await self._write(self.frame(answer, OP_CLOSE))
        self._gone(reason, code)
        await self._close_stream()
        raise WsClosed(code, reason)

    async def _fail(self, exc: WsFrameError) -> NoReturn:
        """Close for a broken rule: the close frame goes (bounded), the stream closes."""
        self._reader.drop()
        if self._state == _OPEN and self._owed is None:  # else no close frame can go
            self._state = _CLOSING
            self._pong = None  # nothing goes after our close frame
            with trio.move_on_after(CLOSE_TIMEOUT), contextlib.suppress(WsClosed):
                await self._write(self.frame(close_payload(exc.code, exc.reason), OP_CLOSE))
        self._gone(exc.reason, exc.code)
        await trio.aclose_forcefully(self._stream)
        raise WsClosed(exc.code, exc.reason)

    def _gone(self, reason: str, code: int = CLOSE_ABNORMAL) -> None:
        if self._state != _CLOSED:
            self._state = _CLOSED
            self.close_code = code
            self.close_reason = reason

    async def _close_stream(self) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT) as scope, contextlib.suppress(Exception):
            await self._stream.aclose()
        if scope.cancelled_caught:
            await trio.aclose_forcefully(self._stream)

    # -- closing --------------------------------------------------------------------

    async def aclose(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """The close handshake, within ``CLOSE_TIMEOUT`` (called by the reading task)."""
        if self._state == _CLOSED:
            await trio.aclose_forcefully(self._stream)
            return
        try:
            with trio.move_on_after(CLOSE_TIMEOUT):
                if self._state == _OPEN:
                    self._state = _CLOSING
                    self._pong = None  # nothing goes after our close frame
                    with contextlib.suppress(WsClosed):
                        if self._owed is not None:  # the rest of a half-sent frame first
                            await self._write(self._owed, tail=True)
                        await self._write(self.frame(close_payload(code, reason), OP_CLOSE))
                self._held = None
                self._first = None
                with contextlib.suppress(WsClosed):
                    while True:  # what comes before its close frame is dropped
                        opcode, payload = await self._event()
                        if opcode == OP_CLOSE:
                            await self._closed_by_other(payload)
        finally:  # cancelled or not, the stream is closed
            self._gone("closed", code)
            self._reader.drop()
            await trio.aclose_forcefully(self._stream)

    async def abort(self) -> None:
        """Close at once: nothing more is read or parsed, no close handshake."""
        self._reader.drop()
        self._held = None
        self._first = None
        self._gone("aborted")
        await trio.aclose_forcefully(self._stream)


def _raw_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """The non-blocking socket under a plain TCP stream (not TLS), or None."""
    if not isinstance(stream, trio.SocketStream):
        return None
    raw = getattr(stream.socket, "_sock", None)
    return raw if type(raw) is socket.socket else None


class HeadError(Exception):
    """No complete HTTP head came: the stream ended, or the head is over ``HEAD_LIMIT``."""


async def read_head(stream: trio.abc.Stream) -> tuple[bytes, bytes]:
    """An HTTP head (up to its blank line) and the bytes read after it."""
    data = bytearray()
    while True:
        end = head_end(data)
        if end >= 0:
            if end > HEAD_LIMIT:
                break
            return bytes(data[:end]), bytes(data[end:])
        if len(data) >= HEAD_LIMIT:
            break
        chunk = await stream.receive_some(HEAD_LIMIT)
        if not chunk:
            raise HeadError("the connection ended before the HTTP head did")
        data += chunk
    raise HeadError(f"an HTTP head over {HEAD_LIMIT} bytes")


async def accept_upgrade(stream: trio.abc.Stream, remote: str) -> WsConnection:
    """Read the upgrade request and answer it: 101 and the connection, or an HTTP
    refusal sent and ``UpgradeRefused`` raised (the caller bounds the time)."""
    try:
        try:
            head, rest = await read_head(stream)
        except HeadError as exc:
            raise UpgradeRefused(400 if "ended" in str(exc) else 431, str(exc)) from None
        request = parse_request(head)
    except UpgradeRefused as refused:
        await refuse_upgrade(stream, refused)
        raise
    await stream.send_all(accept_response(request))
    return WsConnection(stream, client=False, remote=remote, leftover=rest)


REFUSAL_LINGER = 1.0  # seconds a refused client has to read the answer, at most
OVER_LIMIT_LINGER = 0.05  # ... when its address is already over its connection limit
_LINGER_BYTES = 64 * 1024  # what is read (and dropped) meanwhile, at most


async def refuse_upgrade(
    stream: trio.abc.Stream, refused: UpgradeRefused, *, linger: float = REFUSAL_LINGER
) -> None:
    """Send an HTTP refusal and end our side, then drop what the client still sends
    for ``linger`` seconds at most: closing with unread bytes would reset the
    connection, and the client could lose the answer. An address already over its
    connection limit is given a far shorter linger, so its refused connections,
    which no limit counts, cannot pile up."""
    answer = refusal(refused.status, refused.body, refused.headers)
    with trio.move_on_after(linger), contextlib.suppress(*_GONE, OSError):
        await stream.send_all(answer)
        if isinstance(stream, trio.SocketStream):
            await stream.send_eof()
        dropped = 0
        while dropped < _LINGER_BYTES and (chunk := await stream.receive_some(16384)):
            dropped += len(chunk)


async def open_client(stream: trio.abc.Stream, host: str, resource: str, url: str) -> WsConnection:
    """Upgrade ``stream`` as a client; ``UpgradeFailed`` if the server does not agree."""
    key = new_key(os.urandom(16))
    await stream.send_all(client_request(host, resource, key))
    try:
        head, rest = await read_head(stream)
    except HeadError as exc:
        raise UpgradeFailed(str(exc)) from None
    check_response(head, key)
    return WsConnection(stream, client=True, remote=url, leftover=rest)
