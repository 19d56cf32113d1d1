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
            out: list[bytes] = []
            for op, payload in await self._frames():
                if op == _ws.OP_BINARY:
                    out.append(payload)
                elif op == _ws.OP_PING:
                    await self._write(_ws.encode(payload, _ws.OP_PONG, client=True))
                elif op == _ws.OP_CLOSE:
                    raise Closed("server sent close")
            if out:
                return out


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

    async def receive(self) -> list[bytes]:
        while True:
            self._buf += await self._read()
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
            if out:
                return out


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

    async def _receive_once(self) -> list[bytes]:
        from peer import Error, Ping, Pong, ProtocolError, decode_frame

        assert self._decipher is not None
        out: list[bytes] = []
        for op, payload in await self._frames():
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

    async def receive(self) -> list[bytes]:
        while True:
            out = await self._receive_once()
            if out:
                return out


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
