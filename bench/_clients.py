"""The load generator's side of every system's wire protocol, one class each.

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

import json
import struct
import time
from collections.abc import Callable

import trio

from . import _ws

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

    async def receive(self) -> list[bytes]:
        raise NotImplementedError

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


# -- NATS text protocol --------------------------------------------------------------------


class NatsConn(Conn):
    """``CONNECT``, ``SUB``/``PUB`` and ``MSG``; ``PING``/``PONG`` confirms each step."""

    proto = "nats"

    def __init__(self, stream: trio.SocketStream) -> None:
        super().__init__(stream)
        self._buf = bytearray()
        self._pongs = 0
        self._subject = b""

    @classmethod
    async def connect(cls, host: str, port: int) -> NatsConn:
        conn = cls(await _open(host, port))
        options = {"verbose": False, "pedantic": False, "name": "clawmesh-bench", "lang": "python"}
        await conn._write(b"CONNECT " + json.dumps(options).encode() + b"\r\n")
        await conn._confirm()
        return conn

    async def _confirm(self) -> None:
        want = self._pongs + 1
        await self._write(b"PING\r\n")
        with trio.fail_after(CONFIRM_TIMEOUT):
            while self._pongs < want:
                await self._receive_once()

    async def subscribe(self, topic: str) -> None:
        self._subject = topic.encode()
        await self._write(b"SUB " + self._subject + b" 1\r\n")
        await self._confirm()

    async def announce(self, topic: str) -> None:
        self._subject = topic.encode()
        await self._confirm()

    def prepare(self, body: bytes) -> bytes:
        return b"PUB %s %d\r\n%s\r\n" % (self._subject, len(body), body)

    async def _receive_once(self) -> list[bytes]:
        self._buf += await self._read()
        buf = self._buf
        out: list[bytes] = []
        pos = 0
        replies: list[bytes] = []
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            if buf.startswith(b"MSG ", pos):
                size = int(bytes(buf[buf.rfind(b" ", pos, eol) + 1 : eol]))
                start = eol + 2
                if len(buf) < start + size + 2:
                    break
                out.append(bytes(buf[start : start + size]))
                pos = start + size + 2
                continue
            line = bytes(buf[pos:eol])
            pos = eol + 2
            if line == b"PING":
                replies.append(b"PONG\r\n")
            elif line == b"PONG":
                self._pongs += 1
            elif line.startswith(b"-ERR"):
                raise Closed(f"NATS error: {line.decode(errors='replace')}")
            # INFO and +OK carry nothing we need
        if pos:
            del buf[:pos]
        if len(buf) > MAX_PENDING:
            raise Closed("NATS message too large")
        for reply in replies:
            await self._write(reply)
        return out

    async def receive(self) -> list[bytes]:
        while True:
            out = await self._receive_once()
            if out:
                return out


# -- Redis RESP (PUBLISH / SUBSCRIBE) ----------------------------------------------------


RespValue = bytes | int | list["RespValue"] | None


class _Incomplete(Exception):
    pass


def _resp_parse(buf: bytearray, pos: int) -> tuple[RespValue, int]:
    """One RESP2 value at ``pos``; raises _Incomplete if the buffer ends first."""
    eol = buf.find(b"\r\n", pos)
    if eol < 0:
        raise _Incomplete
    kind = buf[pos]
    line = bytes(buf[pos + 1 : eol])
    if kind == ord("$"):
        size = int(line)
        if size < 0:
            return None, eol + 2
        if len(buf) < eol + 2 + size + 2:
            raise _Incomplete
        return bytes(buf[eol + 2 : eol + 2 + size]), eol + 2 + size + 2
    if kind == ord("*"):
        count = int(line)
        items: list[RespValue] = []
        at = eol + 2
        for _ in range(max(0, count)):
            item, at = _resp_parse(buf, at)
            items.append(item)
        return items, at
    if kind == ord(":"):
        return int(line), eol + 2
    if kind == ord("+"):
        return line, eol + 2
    if kind == ord("-"):
        raise Closed(f"Redis error: {line.decode(errors='replace')}")
    raise Closed(f"unexpected RESP type {chr(kind)!r}")


def _resp_command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class RedisConn(Conn):
    """``SUBSCRIBE`` then ``message`` pushes; ``PUBLISH`` answered by a subscriber count."""

    proto = "redis"

    def __init__(self, stream: trio.SocketStream) -> None:
        super().__init__(stream)
        self._buf = bytearray()
        self._channel = b""
        self._values: list[RespValue] = []

    @classmethod
    async def connect(cls, host: str, port: int) -> RedisConn:
        return cls(await _open(host, port))

    async def _parse_more(self) -> list[RespValue]:
        self._buf += await self._read()
        values: list[RespValue] = []
        pos = 0
        buf = self._buf
        while pos < len(buf):
            try:
                value, pos_after = _resp_parse(buf, pos)
            except _Incomplete:
                break
            except ValueError as exc:
                raise Closed(f"bad RESP: {exc}") from None
            values.append(value)
            pos = pos_after
        if pos:
            del buf[:pos]
        if len(buf) > MAX_PENDING:
            raise Closed("RESP value too large")
        return values

    async def subscribe(self, topic: str) -> None:
        self._channel = topic.encode()
        await self._write(_resp_command(b"SUBSCRIBE", self._channel))
        with trio.fail_after(CONFIRM_TIMEOUT):
            while True:
                for value in await self._parse_more():
                    if isinstance(value, list) and value[:1] == [b"subscribe"]:
                        return
                    self._values.append(value)

    async def announce(self, topic: str) -> None:
        self._channel = topic.encode()
        await self._write(_resp_command(b"PING"))
        with trio.fail_after(CONFIRM_TIMEOUT):
            while b"PONG" not in await self._parse_more():
                pass

    def prepare(self, body: bytes) -> bytes:
        return _resp_command(b"PUBLISH", self._channel, body)

    async def receive(self) -> list[bytes]:
        while True:
            values, self._values = self._values, []
            values += await self._parse_more()
            out = [
                v[2] for v in values
                if isinstance(v, list) and len(v) == 3 and v[0] == b"message"
                and isinstance(v[2], bytes)
            ]
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
