"""The load generator's connection interface, message bodies and clock.

Every system is driven through the same small interface, :class:`Conn`, whose
subclasses are in ``bench._clients`` (WebSocket, TCP, clawmesh) and
``bench._brokers`` (NATS, Redis):

* ``connect`` opens the connection and does whatever the protocol asks before
  messages flow (WebSocket upgrade, the clawmesh handshake, NATS ``CONNECT``);
* a sink calls ``subscribe`` and a publisher ``announce``: both return only once
  the server has confirmed, so the harness knows the server is ready for them;
* ``prepare`` turns a message body into the exact bytes ``send`` writes
  (clawmesh: a signed envelope in a ``pub`` frame; NATS: a ``PUB`` line; ...),
  so a publisher can prepare everything before the clock starts;
* ``receive`` returns the next batch of delivered payloads (each one a byte
  string that contains the body), answering pings and skipping everything else.

Bodies carry a marker, a kind (``W`` warm-up, ``M`` measured), a sequence
number and a CLOCK_MONOTONIC timestamp in nanoseconds (see :func:`make_body`),
so a sink finds them with one ``bytes.find`` in whatever framing surrounds
them. Loopback only: every ``connect`` takes a host the harness chose.
"""


from __future__ import annotations

import time

import trio

from ._count import Shape

MARK = b"@@cb:"
HEAD_LEN = len(MARK) + 1 + 10 + 1 + 20 + 1
KIND_OFFSET = len(MARK)
STAMP_OFFSET = len(MARK) + 1 + 10 + 1
KIND_MEASURED = ord("M")
KIND_WARMUP = ord("W")
RECEIVE_BYTES = 256 * 1024
CONFIRM_TIMEOUT = 30.0
MAX_PENDING = 64 * 1024 * 1024  # bytes a parser holds before giving up


def now_ns() -> int:
    """CLOCK_MONOTONIC in nanoseconds: one clock for every process on this host."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def make_body(kind: bytes, seq: int, stamp_ns: int, size: int) -> bytes:
    """A message body of ``size`` bytes (at least ``HEAD_LEN``), ASCII only."""
    head = b"%s%s%010d:%020d@" % (MARK, kind, seq, stamp_ns)
    return head + b"." * max(0, size - len(head))


class Closed(Exception):
    """The server closed the connection or broke its protocol."""


class Conn:
    """One connection of the load generator. Subclasses speak one protocol."""

    proto = ""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._send_lock = trio.Lock()

    async def _write(self, data: bytes) -> None:
        try:
            async with self._send_lock:
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise Closed(f"send failed: {exc!r}") from None

    async def _read(self) -> bytes:
        try:
            data = await self.stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise Closed(f"receive failed: {exc!r}") from None
        if not data:
            raise Closed("server closed the connection")
        return data

    # -- interface ---------------------------------------------------------------

    async def subscribe(self, topic: str) -> None:
        raise NotImplementedError

    async def announce(self, topic: str) -> None:
        raise NotImplementedError

    def prepare(self, body: bytes) -> bytes:
        raise NotImplementedError

    async def send(self, message: bytes) -> None:
        await self._write(message)

    async def send_many(self, messages: list[bytes]) -> None:
        """Send prepared messages in one write (the publisher's batches)."""
        await self._write(b"".join(messages))

    async def receive(self) -> list[bytes]:
        while True:
            out = await self.handle(await self._read())
            if out:
                return out

    async def handle(self, data: bytes) -> list[bytes]:
        """The general path: parse ``data`` (the next bytes of the stream), answer
        pings, return the payloads of the messages it completes."""
        raise NotImplementedError

    # -- the counting sink (bench._count, bench._sink) -------------------------------

    def delivered_size(self, body: bytes, prepared: bytes) -> int:
        """The size a subscriber's ``shape`` needs for the message ``prepare`` made."""
        return len(body)

    def split(self, buf: bytearray, pos: int, end: int) -> int | None:
        """Bytes of the whole record at ``pos``, or None until it has all arrived."""
        raise NotImplementedError

    def shape(self, size: int) -> Shape:
        """What a message of ``delivered_size`` ``size`` looks like on this connection."""
        raise NotImplementedError

    def take_pending(self) -> bytes:
        """Bytes read but not yet parsed, handed over to the counting sink."""
        return b""

    def skippable(self) -> bool:
        """Whether records may be counted unread (False: the sink checks every one)."""
        return True

    def skip(self, count: int) -> None:
        """``count`` records were counted without being read (clawmesh: the cipher's counter)."""

    def open_payload(self, payload: bytes) -> bytes:
        """A measured record's payload as the application sees it (clawmesh: decrypted)."""
        return payload

    def check_payload(self, payload: bytes) -> str | None:
        """Why this is not a measured message, or None if it is one."""
        j = payload.find(MARK)
        if j < 0 or j + KIND_OFFSET >= len(payload):
            return "no body marker"
        if payload[j + KIND_OFFSET] != KIND_MEASURED:
            return f"kind {payload[j + KIND_OFFSET : j + KIND_OFFSET + 1]!r}, not measured"
        return None

    def check(self, record: bytes, shape: Shape) -> str | None:
        """Check a measured record fully; why it is not one, or None."""
        if not record.startswith(shape.head) or not record.endswith(shape.tail):
            return "record does not have the shape"
        payload = record[len(shape.head) : len(record) - len(shape.tail)]
        try:
            return self.check_payload(self.open_payload(payload))
        except Closed as exc:
            return str(exc)

    async def drain(self) -> None:
        """Read and discard until closed (a publisher's reader: answers pings)."""
        while True:
            await self.receive()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def _open(host: str, port: int) -> trio.SocketStream:
    try:
        return await trio.open_tcp_stream(host, port)
    except OSError as exc:
        raise Closed(f"cannot connect to {host}:{port}: {exc}") from None
