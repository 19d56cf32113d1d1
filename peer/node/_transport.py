"""Record transports: how link records move, over WebSocket or a byte stream.

A transport moves whole records (bytes) and knows nothing of what they mean.
``WebSocketTransport`` maps a record to one binary WebSocket message (text
messages are ignored, leaving them to JSON-speaking tools); ``StreamTransport``
length-prefixes records on any ``trio.abc.Stream`` (TCP, or the memory
streams the in-process tests use).

Links use neither by default: ``peer.node._wsconn.WsConnection`` (our own
WebSocket, no trio-websocket under it) is their transport while
``peer.node._websocket.OWN_WEBSOCKET`` is on. ``WebSocketTransport`` is the
trio-websocket path, kept for one release behind that switch; the constants
and ``DIRECT_WRITES`` here apply to both.

``send_many`` writes several records with one write to the socket: a relay
fanning a message out to a busy link drains its queue in batches rather
than paying a system call (and trio-websocket's lock) per record. For
WebSocket it frames the messages with the connection's own wsproto state
and writes them under trio-websocket's send lock, exactly as ``send_message``
does for one; the bytes on the wire are the same as sending them one by one.
On the server side of a link (unmasked frames; trio-websocket negotiates no
extensions) it writes the frame headers itself instead of calling wsproto
once per record. That reaches into trio-websocket's private attributes
(``_wsproto``, ``_stream``, ``_stream_lock``, ``_close_reason``,
``_abort_web_socket``): only on the trio-websocket versions in
``PRIVATE_API_VERSIONS`` (pyproject.toml bounds the dependency to them) and
only when every attribute is there; otherwise, or with ``FAST_PATH`` set to
False, it falls back to one public ``send_message`` per record
(tests/test_internals.py runs that path). The measured gain is noted at
``FAST_PATH``.

A relay holds many idle WebSocket links, so once the upgrade is done
``WebSocketTransport`` lets the connection keep only wsproto's frame-level
``Connection``: the HTTP/1.1 upgrade state (an h11 connection, the parsed
request) is no longer needed and is dropped. ``Connection`` answers every
call trio-websocket makes on it (``client``, ``state``, ``send``,
``receive_data``, ``events``); without the fast path, or if the attribute is
missing, nothing is dropped. Its two empty queues (wsproto's events, the
message channel) are swapped for ones that hold no buffer while empty
(``peer.node._slim``).

Before the other side has sent one acceptable handshake record a connection
is unauthenticated, and what it costs is bounded:

* What trio-websocket reads ahead of the handshake is bounded by its
  ``message_queue_size`` (64 messages, each at most ``MESSAGE_LIMIT``) plus
  one receive buffer (``RECEIVE_BUFFER``): its reader parses lazily and stops
  when the queue is full, so before the handshake reads the first record it
  has parsed at most 65 messages, however much is sent.
* ``abort()`` ends a refused connection at once: the TCP stream is closed
  (the kernel answers whatever else comes with a reset), with no WebSocket
  close handshake, which would read and parse everything the other side
  still sends until its close frame or a timeout (a flood of 100,000 empty
  frames cost the peer 0.9 s of CPU per connection that way,
  ``python -m bench --scenarios preauth``). With the private attributes
  (``_ABORT_ATTRS``) it also drops the messages queued and the bytes wsproto
  holds but has not parsed yet, so trio-websocket's reader parses nothing
  more; otherwise it cancels the public ``aclose()`` at once, which closes
  the stream just the same, then drains what the reader still parses: at
  most the one receive buffer it holds (tests/test_internals.py runs that
  path).

**Direct writes** (``ready``, ``send_now``): a relay fanning one message out
to N links used to wake N writer tasks, each paying Trio's scheduler and a
``send_all`` for one record. When nothing else is writing to a link (its
send queue empty, its writer idle: ``Link`` checks that; trio-websocket's
send lock free, the WebSocket open: ``ready`` checks this) the record is
framed and handed to the kernel at once with one non-blocking ``send`` on
the connection's socket, from the forwarding code itself. What the kernel
does not take (a full socket buffer) comes back as a tail, which the link's
writer writes before anything queued after it (``send_raw``), so the bytes
on the wire are exactly those of the queued path, in the same order. Only on
a plain TCP stream (not TLS) with the private attributes above; the socket
is trio's own (``trio.socket``'s private ``_sock``, checked to be a
``socket.socket``); ``DIRECT_WRITES`` False, or any other stream, leaves
every record to the writer task (tests/test_directwrite.py compares both).
"""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import Any, Protocol

import trio
import trio_websocket
from wsproto import WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import BytesMessage
from wsproto.frame_protocol import Buffer
from wsproto.utilities import LocalProtocolError

from peer.wire._frames import RecordBuffer, frame_record
from peer.wire._limits import MAX_RECORD

from ._slim import slim_websocket

# trio-websocket reads 4 KiB per receive by default: a busy link then costs a
# system call and a parse pass per few records. Links read up to this much.
RECEIVE_BUFFER = 64 * 1024
ABORT_DRAIN = 2.0  # seconds the public-API abort drains the reader's queue, at most
# What trio-websocket accepts as one message (its limit; the record checks come after).
MESSAGE_LIMIT = MAX_RECORD + 1024

_WS_SHORT = struct.Struct(">BB")  # FIN + binary opcode, then a length up to 125
_WS_MEDIUM = struct.Struct(">BBH")  # ... 126, then a 16-bit length
_WS_LONG = struct.Struct(">BBQ")  # ... 127, then a 64-bit length

_WS_GONE = (trio_websocket.ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError)

# The private trio-websocket attributes the fast path uses, and the releases
# they were read from. What they buy, measured on the 2 shared cores of the dev
# machine with `.venv/bin/python -m bench._internals` (CPython 3.11.7,
# trio-websocket 0.12.2, wsproto 1.3.2; a loopback pair, both ends in one
# process; the median of 200 batches of 64 records of 300 bytes):
#   send_many, server side: 65 us a batch; fallback (64 send_message) 4157 us
#   send_many, client side: 463 us a batch; fallback 6039 us
#   an idle link, both ends: 33.4 KiB with the upgrade state dropped, 36.7 KiB kept
# The fallback (one public send_message per record, the upgrade state kept)
# runs on any other version and when FAST_PATH is False (tests/test_internals.py).
PRIVATE_API_VERSIONS = ("0.12.",)
_PRIVATE_ATTRS = (
    "_wsproto",
    "_stream",
    "_stream_lock",
    "_close_reason",
    "_abort_web_socket",
    "_recv_channel",
)
# ... and what ``abort`` uses (see the module header)
_ABORT_ATTRS = ("_wsproto", "_close_reason", "_abort_web_socket", "_close_stream", "_recv_channel")
FAST_PATH = trio_websocket.__version__.startswith(PRIVATE_API_VERSIONS)
DIRECT_WRITES = True  # see the module header: records written from the forwarding path


class TransportClosed(Exception):
    """The other side went away, or the transport broke."""


class Transport(Protocol):
    remote: str

    async def send(self, record: bytes) -> None: ...

    async def send_many(self, records: list[bytes]) -> None: ...

    def ready(self) -> bool:
        """A record may go out with ``send_now`` in this synchronous step: nobody else is
        writing. (The caller also makes sure that nothing of its own is queued.)"""

    def send_now(self, record: bytes) -> bytes:
        """Frame ``record`` and write what the socket takes without blocking (only
        right after ``ready()`` said True); returns the framed bytes not written, which
        must go out next through ``send_raw`` (b"" if all went)."""

    def send_now_many(self, records: list[bytes]) -> bytes:
        """``send_now`` for several records, with one write."""

    def frame_many(self, records: list[bytes]) -> bytes:
        """The framed bytes of ``records`` (for ``send_raw``)."""

    async def send_raw(self, data: bytes) -> None:
        """Write bytes already framed (a tail ``send_now`` returned)."""

    async def receive(self) -> bytes: ...

    def receive_nowait(self) -> bytes | None:
        """A record already read and waiting, or None (then ``receive`` waits or raises)."""

    def backlog(self) -> tuple[int, bool]:
        """Records waiting for ``receive``, and whether more bytes were read that are
        not parsed into records yet (more records are coming without waiting for I/O)."""

    async def aclose(self) -> None:
        """Close gracefully: what is sent is flushed, the other side told."""

    async def abort(self) -> None:
        """Close at once, reading nothing more: for a connection that was refused."""


class WebSocketTransport:
    __slots__ = ("_abortable", "_batching", "_first", "_raw", "_server", "_ws", "remote")

    def __init__(
        self, ws: trio_websocket.WebSocketConnection, remote: str, first: bytes | None = None
    ) -> None:
        self._ws = ws
        self._first = first  # a record already read (the listener peeks at the first one)
        self.remote = remote
        self._batching = FAST_PATH and all(hasattr(ws, name) for name in _PRIVATE_ATTRS)
        self._abortable = FAST_PATH and all(hasattr(ws, name) for name in _ABORT_ATTRS)
        self._server = self._batching and not ws.is_client
        self._raw = _raw_socket(ws) if self._batching and DIRECT_WRITES else None
        if self._batching:
            _drop_upgrade_state(ws)
            any_ws: Any = ws
            slim_websocket(ws, any_ws._wsproto)

    async def send(self, record: bytes) -> None:
        try:
            await self._ws.send_message(record)
        except _WS_GONE as exc:
            raise TransportClosed(str(exc)) from None

    async def send_many(self, records: list[bytes]) -> None:
        if not self._batching:
            for record in records:
                await self.send(record)
            return
        ws: Any = self._ws
        if ws._close_reason:
            raise TransportClosed(str(ws._close_reason))
        if self._server:
            if ws._wsproto.state is not ConnectionState.OPEN:
                raise TransportClosed("the WebSocket is closing")
            data = b"".join([_server_frame(record) for record in records])
        else:
            frame = ws._wsproto.send
            try:
                data = b"".join([frame(BytesMessage(data=record)) for record in records])
            except LocalProtocolError as exc:  # the connection is closing
                raise TransportClosed(str(exc)) from None
        await self.send_raw(data)

    def ready(self) -> bool:
        ws: Any = self._ws
        return (
            self._raw is not None
            and not ws._close_reason
            and ws._wsproto.state is ConnectionState.OPEN
            and not ws._stream_lock.locked()
        )

    def send_now(self, record: bytes) -> bytes:
        if self._server:
            data = _server_frame(record)
        else:
            ws: Any = self._ws
            data = ws._wsproto.send(BytesMessage(data=record))  # masked, as the client must
        return self._write_now(data)

    def send_now_many(self, records: list[bytes]) -> bytes:
        return self._write_now(self.frame_many(records))

    def frame_many(self, records: list[bytes]) -> bytes:
        if self._server:
            return b"".join([_server_frame(record) for record in records])
        ws: Any = self._ws
        frame = ws._wsproto.send
        try:
            return b"".join([frame(BytesMessage(data=record)) for record in records])
        except LocalProtocolError:  # closing: nothing more goes out on this link anyway
            return b""

    def _write_now(self, data: bytes) -> bytes:
        assert self._raw is not None
        try:
            sent = self._raw.send(data)
        except OSError:  # would block, or broken: the writer's write sends it or finds out
            return data
        return data[sent:] if sent < len(data) else b""

    async def send_raw(self, data: bytes) -> None:
        if not self._batching:  # pragma: no cover - send_now never runs without the fast path
            raise RuntimeError("no framed writes without the fast path")
        ws: Any = self._ws
        if ws._close_reason:
            raise TransportClosed(str(ws._close_reason))
        async with ws._stream_lock:
            try:
                await ws._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await ws._abort_web_socket()
                raise TransportClosed(str(ws._close_reason)) from None

    @property
    def connection(self) -> trio_websocket.WebSocketConnection:
        """The WebSocket itself (the OCM gateway speaks JSON text on it)."""
        return self._ws

    def receive_nowait(self) -> bytes | None:
        if self._first is not None:  # the record the listener peeked at goes first
            first, self._first = self._first, None
            return first
        if not self._batching:
            return None
        ws: Any = self._ws
        while True:
            try:
                message = ws._recv_channel.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return None  # ``receive`` waits for the next, or says why there is none
            if isinstance(message, bytes):
                return message

    def backlog(self) -> tuple[int, bool]:
        if not self._batching:
            return 0, False
        ws: Any = self._ws
        queued = ws._recv_channel.statistics().current_buffer_used
        decoder = getattr(getattr(ws._wsproto, "_proto", None), "_frame_decoder", None)
        buffer = getattr(decoder, "buffer", None)
        return queued, isinstance(buffer, Buffer) and len(buffer) > 0

    async def receive(self) -> bytes:
        if self._first is not None:
            first, self._first = self._first, None
            return first
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

    async def abort(self) -> None:
        if self._abortable:
            ws: Any = self._ws
            _drop_unparsed(ws._wsproto)
            if ws._close_reason is None:
                await ws._abort_web_socket()  # closed (1006): waiters wake, the reader stops
            await ws._recv_channel.aclose()  # the messages queued are dropped, not read
            with contextlib.suppress(*_WS_GONE):
                await ws._close_stream()
            return
        # Public API: a close cancelled before it sends anything closes the stream
        # at once (trio-websocket closes it in a finally) and marks the socket
        # closed. Its reader may still hold one receive buffer, which it parses
        # into the queue: drain that (then the reader ends) rather than leave
        # the reader blocked on a full queue for good.
        with trio.CancelScope() as scope, contextlib.suppress(*_WS_GONE):
            scope.cancel()
            await self._ws.aclose()
        with trio.move_on_after(ABORT_DRAIN), contextlib.suppress(*_WS_GONE):
            while True:
                await self._ws.get_message()


def _drop_unparsed(state: object) -> None:
    """Empty wsproto's buffer of received bytes not parsed yet, if it is where
    wsproto 1.x keeps it (``Connection._proto._frame_decoder.buffer``)."""
    connection = state.connection if isinstance(state, WSConnection) else state
    decoder = getattr(getattr(connection, "_proto", None), "_frame_decoder", None)
    if isinstance(getattr(decoder, "buffer", None), Buffer):
        any_decoder: Any = decoder
        any_decoder.buffer = Buffer()


def _drop_upgrade_state(ws: trio_websocket.WebSocketConnection) -> None:
    """Let an upgraded connection keep wsproto's ``Connection`` alone (see the module header).

    The upgrade's ``WSConnection`` holds the h11 handshake until the link ends;
    past the upgrade it only passes calls on to its ``connection``, which
    queues the events of everything received since.
    """
    wrapper = getattr(ws, "_wsproto", None)
    if isinstance(wrapper, WSConnection) and isinstance(wrapper.connection, Connection):
        any_ws: Any = ws
        any_ws._wsproto = wrapper.connection


def _raw_socket(ws: trio_websocket.WebSocketConnection) -> socket.socket | None:
    """The non-blocking socket under a plain TCP WebSocket (not TLS), or None."""
    stream = getattr(ws, "_stream", None)
    if not isinstance(stream, trio.SocketStream):
        return None
    raw = getattr(stream.socket, "_sock", None)
    return raw if type(raw) is socket.socket else None


def _server_frame(record: bytes) -> bytes:
    """One unmasked, final, binary WebSocket frame (RFC 6455 section 5.2)."""
    size = len(record)
    if size <= 125:
        return _WS_SHORT.pack(0x82, size) + record
    if size <= 0xFFFF:
        return _WS_MEDIUM.pack(0x82, 126, size) + record
    return _WS_LONG.pack(0x82, 127, size) + record


class StreamTransport:
    __slots__ = ("_buffer", "_ready", "_stream", "remote")

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

    async def send_many(self, records: list[bytes]) -> None:
        try:
            await self._stream.send_all(b"".join([frame_record(r) for r in records]))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportClosed(str(exc)) from None

    def ready(self) -> bool:
        return False  # in-process and test streams: every record goes through the writer

    def send_now(self, record: bytes) -> bytes:  # pragma: no cover - ready() is always False
        raise RuntimeError("a stream transport has no direct writes")

    def send_now_many(self, records: list[bytes]) -> bytes:  # pragma: no cover - as send_now
        raise RuntimeError("a stream transport has no direct writes")

    def frame_many(self, records: list[bytes]) -> bytes:
        return b"".join([frame_record(r) for r in records])

    async def send_raw(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportClosed(str(exc)) from None

    def receive_nowait(self) -> bytes | None:
        return self._ready.pop(0) if self._ready else None

    def backlog(self) -> tuple[int, bool]:
        return len(self._ready), False

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

    async def abort(self) -> None:
        await self._stream.aclose()  # there is no close handshake to skip
