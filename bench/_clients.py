"""The load generator's side of every system's wire protocol, one class each.

WebSocket, plain TCP and clawmesh are here; NATS and Redis in ``bench._brokers``;
the interface, body format and clock in ``bench._conn``.

Every system is driven through the same small interface, :class:`Conn`:

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

import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from . import _ws
from ._brokers import NatsConn, RedisConn
from ._conn import (
    CONFIRM_TIMEOUT,
    MAX_PENDING,
    Closed,
    Conn,
    _open,
)
from ._count import Shape

if TYPE_CHECKING:
    from peer import LinkCipher

# -- WebSocket, no protocol on top (the ws-raw and ws-trio forwarders) ------------------


class WsConn(Conn):
    """Binary WebSocket messages; a text ``sub``/``pub`` first says which role."""

    proto = "ws"

    def __init__(self, stream: trio.SocketStream, rest: bytes) -> None:
        super().__init__(stream)
        self._parser = _ws.FrameParser()
        self._ready: list[tuple[int, bytes]] = self._parser.feed(rest)

    @classmethod
    async def connect(cls, host: str, port: int) -> WsConn:
        stream = await _open(host, port)
        try:
            rest = await _ws.client_handshake(stream, host, port)
        except (_ws.WsError, trio.BrokenResourceError) as exc:
            await stream.aclose()
            raise Closed(f"upgrade failed: {exc}") from None
        return cls(stream, rest)

    async def _frames(self) -> list[tuple[int, bytes]]:
        if self._ready:
            out, self._ready = self._ready, []
            return out
        try:
            return self._parser.feed(await self._read())
        except _ws.WsError as exc:
            raise Closed(str(exc)) from None

    async def _role(self, role: bytes) -> None:
        await self._write(_ws.encode(role, _ws.OP_TEXT, client=True))
        with trio.fail_after(CONFIRM_TIMEOUT):
            while True:
                for op, payload in await self._frames():
                    if op == _ws.OP_TEXT and payload == b"ok":
                        return
                    if op == _ws.OP_CLOSE:
                        raise Closed("closed before confirming")

    async def subscribe(self, topic: str) -> None:
        await self._role(b"sub")

    async def announce(self, topic: str) -> None:
        await self._role(b"pub")

    def prepare(self, body: bytes) -> bytes:
        return _ws.encode(body, client=True)

    async def receive(self) -> list[bytes]:
        while True:
            out = await self._deliver(await self._frames())
            if out:
                return out

    async def handle(self, data: bytes) -> list[bytes]:
        try:
            frames = self._parser.feed(data)
        except _ws.WsError as exc:
            raise Closed(str(exc)) from None
        return await self._deliver(frames)

    async def _deliver(self, frames: list[tuple[int, bytes]]) -> list[bytes]:
        out: list[bytes] = []
        for op, payload in frames:
            if op == _ws.OP_BINARY:
                out.append(payload)
            elif op == _ws.OP_PING:
                await self._write(_ws.encode(payload, _ws.OP_PONG, client=True))
            elif op == _ws.OP_CLOSE:
                raise Closed("server sent close")
        return out

    def split(self, buf: bytearray, pos: int, end: int) -> int | None:
        try:
            return _ws.record_length(buf, pos, end, MAX_PENDING)
        except _ws.WsError as exc:
            raise Closed(str(exc)) from None

    def shape(self, size: int) -> Shape:
        head = _ws.header(size)
        return Shape(len(head) + size, head)

    def take_pending(self) -> bytes:
        frames, self._ready = self._ready, []
        replay = b"".join(_ws.encode(payload, op) for op, payload in frames)
        try:
            return replay + self._parser.take_rest()
        except _ws.WsError as exc:
            raise Closed(str(exc)) from None


# -- plain TCP, length-prefixed records (the tcp-raw forwarder) ------------------------------


class TcpConn(Conn):
    """Records prefixed by a 4-byte big-endian length; role byte P or S first, ack K."""

    proto = "tcp"

    def __init__(self, stream: trio.SocketStream) -> None:
        super().__init__(stream)
        self._buf = bytearray()

    @classmethod
    async def connect(cls, host: str, port: int) -> TcpConn:
        return cls(await _open(host, port))

    async def _role(self, role: bytes) -> None:
        await self._write(role)
        with trio.fail_after(CONFIRM_TIMEOUT):
            data = await self._read()
        if data[:1] != b"K":
            raise Closed(f"unexpected confirmation {data[:8]!r}")
        self._buf += data[1:]

    async def subscribe(self, topic: str) -> None:
        await self._role(b"S")

    async def announce(self, topic: str) -> None:
        await self._role(b"P")

    def prepare(self, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + body

    async def handle(self, data: bytes) -> list[bytes]:
        self._buf += data
        buf = self._buf
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            size = int.from_bytes(buf[pos : pos + 4], "big")
            if end - pos - 4 < size:
                break
            out.append(bytes(buf[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        if pos:
            del buf[:pos]
        if len(buf) > MAX_PENDING:
            raise Closed("record too large")
        return out

    def split(self, buf: bytearray, pos: int, end: int) -> int | None:
        if end - pos < 4:
            return None
        size = 4 + int.from_bytes(buf[pos : pos + 4], "big")
        return size if end - pos >= size else None

    def shape(self, size: int) -> Shape:
        return Shape(4 + size, struct.pack(">I", size))

    def take_pending(self) -> bytes:
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


# -- clawmesh: handshake, link cipher, frames, signed envelopes ---------------------------


class _NullCipher:
    """For a peer that offers plaintext links (a benchmark-only peer flag)."""

    def seal(self, plaintext: bytes) -> bytes:
        return plaintext

    def open(self, ciphertext: bytes) -> bytes:
        return ciphertext


_PUB_SUFFIX = b"\x61t\x63pub"  # canonical {"e": ..., "t": "pub"} ends with "t": "pub"
PLAINTEXT_CAP = "bench-plaintext"


class ClawmeshConn(WsConn):
    """A clawmesh link: the real handshake and cipher from ``peer``, over our framing."""

    proto = "clawmesh"

    def __init__(self, stream: trio.SocketStream, rest: bytes) -> None:
        super().__init__(stream, rest)
        from peer import Identity

        self.identity = Identity.generate()
        self._cipher: Callable[[bytes], bytes] | None = None
        self._decipher: Callable[[bytes], bytes] | None = None
        self._link: LinkCipher | None = None  # None: plaintext links, nothing to skip
        self._topic = ""
        self._seq = 0
        self._prev: bytes | None = None  # our last message's id: we chain, as peers do
        self._ping_wanted: int | None = None
        self._pong_seen = False
        self.peer_caps: tuple[str, ...] = ()

    @classmethod
    async def connect_link(cls, host: str, port: int, *, plaintext: bool = False) -> ClawmeshConn:
        from peer import Handshake, ProtocolError

        stream = await _open(host, port)
        try:
            rest = await _ws.client_handshake(stream, host, port)
        except (_ws.WsError, trio.BrokenResourceError) as exc:
            await stream.aclose()
            raise Closed(f"upgrade failed: {exc}") from None
        conn = cls(stream, rest)
        caps = (PLAINTEXT_CAP,) if plaintext else ()
        hs = Handshake(conn.identity, initiator=True, caps=caps)
        try:
            with trio.fail_after(CONFIRM_TIMEOUT):
                for record in hs.start():
                    await conn._write(_ws.encode(record, client=True))
                while not hs.done:
                    frames = await conn._frames()
                    for i, (op, payload) in enumerate(frames):
                        if op == _ws.OP_CLOSE:
                            raise Closed("closed during the handshake")
                        if op != _ws.OP_BINARY:
                            continue
                        for reply in hs.receive(payload):
                            await conn._write(_ws.encode(reply, client=True))
                        if hs.done:
                            conn._ready = frames[i + 1 :] + conn._ready
                            break
        except ProtocolError as exc:
            await stream.aclose()
            raise Closed(f"handshake refused: {exc}") from None
        assert hs.result is not None
        conn.peer_caps = hs.result.caps
        if plaintext and PLAINTEXT_CAP in hs.result.caps:
            null = _NullCipher()
            conn._cipher, conn._decipher = null.seal, null.open
        else:
            conn._cipher, conn._decipher = hs.result.cipher.seal, hs.result.cipher.open
            conn._link = hs.result.cipher
        return conn

    async def _send_frame(self, frame: bytes) -> None:
        assert self._cipher is not None
        async with self._send_lock:  # the cipher's counter and the stream advance together
            record = _ws.encode(self._cipher(frame), client=True)
            try:
                await self.stream.send_all(record)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise Closed(f"send failed: {exc!r}") from None

    async def subscribe(self, topic: str) -> None:
        from peer import Ping, Sub

        self._topic = topic
        await self._send_frame(Sub(((topic, 0),)).encode())
        # The relay handles one link's frames in order: its pong proves the sub is in.
        self._ping_wanted = 7
        await self._send_frame(Ping(7).encode())
        with trio.fail_after(CONFIRM_TIMEOUT):
            while not self._pong_seen:
                await self._receive_once()

    async def announce(self, topic: str) -> None:
        from peer import Ping

        self._topic = topic
        self._ping_wanted = 8
        await self._send_frame(Ping(8).encode())
        with trio.fail_after(CONFIRM_TIMEOUT):
            while not self._pong_seen:
                await self._receive_once()

    def prepare(self, body: bytes) -> bytes:
        """Sign ``body`` as a channel message and wrap it in a ``pub`` frame (plaintext)."""
        from peer import Content, Pub, seal_message

        self._seq += 1
        env = seal_message(
            self.identity,
            topic=self._topic,
            content=Content(body=body.decode("ascii")),
            seq=self._seq,
            ts=time.time_ns() // 1_000_000,
            prev=self._prev,
        )
        self._prev = env.id
        frame: bytes = Pub(env.wire).encode()
        return frame

    async def send(self, message: bytes) -> None:
        await self._send_frame(message)

    async def send_many(self, messages: list[bytes]) -> None:
        assert self._cipher is not None
        async with self._send_lock:  # sealed in order, written in order
            data = b"".join([_ws.encode(self._cipher(m), client=True) for m in messages])
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise Closed(f"send failed: {exc!r}") from None

    async def _receive_once(self) -> list[bytes]:
        return await self._deliver(await self._frames())

    async def _deliver(self, frames: list[tuple[int, bytes]]) -> list[bytes]:
        from peer import Error, Ping, Pong, ProtocolError, decode_frame

        assert self._decipher is not None
        out: list[bytes] = []
        for op, payload in frames:
            if op == _ws.OP_BINARY:
                try:
                    plain = self._decipher(payload)
                except ProtocolError as exc:
                    raise Closed(f"record does not decrypt: {exc}") from None
                if plain.endswith(_PUB_SUFFIX):
                    out.append(plain)
                    continue
                try:
                    frame = decode_frame(plain)
                except ProtocolError as exc:
                    raise Closed(f"bad frame from the relay: {exc}") from None
                if isinstance(frame, Ping):
                    await self._send_frame(Pong(frame.n).encode())
                elif isinstance(frame, Pong) and frame.n == self._ping_wanted:
                    self._pong_seen = True
                elif isinstance(frame, Error):
                    raise Closed(f"relay closed the link: {frame.code}: {frame.msg}")
            elif op == _ws.OP_PING:
                await self._write(_ws.encode(payload, _ws.OP_PONG, client=True))
            elif op == _ws.OP_CLOSE:
                raise Closed("relay sent close")
        return out

    # -- the counting sink ----------------------------------------------------------

    def delivered_size(self, body: bytes, prepared: bytes) -> int:
        return len(prepared)  # the pub frame, which the relay forwards byte for byte

    def shape(self, size: int) -> Shape:
        record = size + (TAG_BYTES if self._link is not None else 0)
        head = _ws.header(record)
        return Shape(len(head) + record, head)

    def skippable(self) -> bool:
        return can_skip(self._link)

    def skip(self, count: int) -> None:
        skip_records(self._link, count)

    def open_payload(self, payload: bytes) -> bytes:
        from peer import ProtocolError

        assert self._decipher is not None
        try:
            return self._decipher(payload)
        except ProtocolError as exc:
            raise Closed(f"record does not decrypt: {exc}") from None

    def check_payload(self, payload: bytes) -> str | None:
        """Decode the pub frame, check the envelope and its signature, then the body."""
        from peer import ProtocolError, Pub, decode_frame, open_envelope

        try:
            frame = decode_frame(payload)
            if not isinstance(frame, Pub):
                return f"a {type(frame).__name__} frame, not a pub"
            env = open_envelope(frame.envelope)  # the signature is verified
        except ProtocolError as exc:
            return f"bad envelope: {exc}"
        return super().check_payload(env.content().body.encode())


TAG_BYTES = 16  # the link cipher's authentication tag (ChaCha20-Poly1305)


def can_skip(link: LinkCipher | None) -> bool:
    """Whether the counting sink may leave records of this link unread (see skip_records)."""
    return link is None or isinstance(getattr(link, "_recv_n", None), int)


def skip_records(link: LinkCipher | None, count: int) -> None:
    """Advance a link cipher past ``count`` records that were counted, not decrypted.

    The record nonce is the record's number on the link (protocol-spec: four
    zero bytes, then the counter), so the next record opens only if the cipher
    counts the skipped ones. ``LinkCipher`` has no public way to do that; this
    reaches into its ``_recv_n``. Where it is missing, ``can_skip`` says so and the
    sink decrypts every record instead (tests/test_bench_count.py covers both).
    """
    if link is not None and count:
        link._recv_n += count


PROTOCOLS = ("clawmesh", "ws", "tcp", "nats", "redis")


async def connect(proto: str, host: str, port: int, *, plaintext: bool = False) -> Conn:
    """Open a generator connection that speaks ``proto``."""
    if proto == "clawmesh":
        return await ClawmeshConn.connect_link(host, port, plaintext=plaintext)
    if proto == "ws":
        return await WsConn.connect(host, port)
    if proto == "tcp":
        return await TcpConn.connect(host, port)
    if proto == "nats":
        return await NatsConn.connect(host, port)
    if proto == "redis":
        return await RedisConn.connect(host, port)
    raise ValueError(f"unknown protocol {proto!r}")
