"""The load generator's clients for the broker baselines: NATS and Redis.

:class:`NatsConn` speaks the NATS text protocol (``CONNECT``, ``SUB``/``PUB``,
``MSG``, with ``PING``/``PONG`` to confirm each step); :class:`RedisConn`
speaks RESP (``SUBSCRIBE``/``PUBLISH``). Both implement :class:`bench._conn.Conn`
and hold at most ``MAX_PENDING`` unparsed bytes. Loopback only.
"""

from __future__ import annotations

import json

import trio

from ._conn import CONFIRM_TIMEOUT, MAX_PENDING, Closed, Conn, _open
from ._count import Shape

NATS_SID = b"1"  # the one subscription of a sink connection

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
        await self._write(b"SUB " + self._subject + b" " + NATS_SID + b"\r\n")
        await self._confirm()

    async def announce(self, topic: str) -> None:
        self._subject = topic.encode()
        await self._confirm()

    def prepare(self, body: bytes) -> bytes:
        return b"PUB %s %d\r\n%s\r\n" % (self._subject, len(body), body)

    async def _receive_once(self) -> list[bytes]:
        return await self.handle(await self._read())

    async def handle(self, data: bytes) -> list[bytes]:
        self._buf += data
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

    def split(self, buf: bytearray, pos: int, end: int) -> int | None:
        eol = buf.find(b"\r\n", pos, min(end, pos + 4096))
        if eol < 0:
            if end - pos >= 4096:
                raise Closed("NATS line too long")
            return None
        if not buf.startswith(b"MSG ", pos):
            return eol + 2 - pos
        try:
            size = int(bytes(buf[buf.rfind(b" ", pos, eol) + 1 : eol]))
        except ValueError:
            raise Closed("bad NATS MSG line") from None
        whole = eol + 2 + size + 2 - pos
        return whole if end - pos >= whole else None

    def shape(self, size: int) -> Shape:
        head = b"MSG %s %s %d\r\n" % (self._subject, NATS_SID, size)
        return Shape(len(head) + size + 2, head, b"\r\n")

    def take_pending(self) -> bytes:
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


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
        return self._parse(await self._read())

    def _parse(self, data: bytes) -> list[RespValue]:
        self._buf += data
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
            out = _messages(values + await self._parse_more())
            if out:
                return out

    async def handle(self, data: bytes) -> list[bytes]:
        values, self._values = self._values, []
        return _messages(values + self._parse(data))

    def split(self, buf: bytearray, pos: int, end: int) -> int | None:
        try:
            _value, after = _resp_parse(buf, pos)
        except _Incomplete:
            return None
        except ValueError as exc:
            raise Closed(f"bad RESP: {exc}") from None
        return after - pos if after <= end else None

    def shape(self, size: int) -> Shape:
        head = b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n" % (
            len(self._channel), self._channel, size)
        return Shape(len(head) + size + 2, head, b"\r\n")

    def take_pending(self) -> bytes:
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


def _messages(values: list[RespValue]) -> list[bytes]:
    """The payloads of the ``message`` pushes among ``values``."""
    return [
        v[2] for v in values
        if isinstance(v, list) and len(v) == 3 and v[0] == b"message" and isinstance(v[2], bytes)
    ]
