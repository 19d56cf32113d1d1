"""Just enough RFC 6455 for the load generator and the raw WebSocket forwarder.

The generator's clients and the ``ws-raw`` forwarder frame WebSocket messages
themselves instead of going through wsproto, so that the generator costs little
and the forwarder is a true ceiling: a message is framed once and the same
bytes are written to every sink.

* Clients mask with the all-zero key. RFC 6455 makes the client choose a key,
  and any server must unmask with whatever key it gets; with zeros the payload
  bytes are sent unchanged, so the generator does no per-byte work.
* Only what the benchmark needs: binary and text messages, fragmentation on
  receive, ping/pong and close. No extensions, no subprotocols.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct

import trio

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
MAX_HEADER_BYTES = 16 * 1024
ZERO_MASK = b"\x00\x00\x00\x00"


class WsError(Exception):
    """The other side broke the WebSocket rules (or closed)."""


def accept_key(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept value for a Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def encode(payload: bytes, opcode: int = OP_BINARY, *, client: bool = False) -> bytes:
    """One final frame carrying ``payload``; a client frame is masked with zeros."""
    return header(len(payload), opcode, client=client) + payload


def header(n: int, opcode: int = OP_BINARY, *, client: bool = False) -> bytes:
    """The head of one final frame of ``n`` payload bytes (the shortest length form)."""
    first = 0x80 | opcode
    mask_bit = 0x80 if client else 0
    if n < 126:
        head = struct.pack("!BB", first, mask_bit | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if client:
        head += ZERO_MASK
    return head


def _unmask(mask: bytes, data: bytes) -> bytes:
    if mask == ZERO_MASK or not data:
        return data
    n = len(data)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def record_length(buf: bytearray, pos: int, end: int, max_payload: int) -> int | None:
    """Bytes of the whole frame at ``pos`` (header and payload), or None until it has
    all arrived (the counting sink's ``split``)."""
    if end - pos < 2:
        return None
    b1 = buf[pos + 1]
    size = b1 & 0x7F
    head = 2
    if size == 126:
        if end - pos < 4:
            return None
        size = (buf[pos + 2] << 8) | buf[pos + 3]
        head = 4
    elif size == 127:
        if end - pos < 10:
            return None
        size = int.from_bytes(buf[pos + 2 : pos + 10], "big")
        head = 10
    if size > max_payload:
        raise WsError(f"frame of {size} bytes over {max_payload}")
    if b1 & 0x80:
        head += 4
    return head + size if end - pos >= head + size else None


def payload_of(record: bytes) -> tuple[int, bool, bytes]:
    """``(opcode, fin, payload)`` of one whole frame, unmasked."""
    b0, b1 = record[0], record[1]
    size = b1 & 0x7F
    head = 2 if size < 126 else 4 if size == 126 else 10
    payload = record[head + 4 :] if b1 & 0x80 else record[head:]
    if b1 & 0x80:
        payload = _unmask(record[head : head + 4], payload)
    return b0 & 0x0F, bool(b0 & 0x80), payload


class FrameParser:
    """Reassembles messages from a byte stream: feed bytes, get ``(opcode, payload)``.

    Control frames (ping, pong, close) are returned as they come, even between
    the fragments of a data message; fragments are joined into one message.
    """

    def __init__(self, max_message: int = 4 * 1024 * 1024) -> None:
        self._buf = bytearray()
        self._max = max_message
        self._frag_op: int | None = None
        self._frag: list[bytes] = []
        self._frag_len = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf
        buf += data
        out: list[tuple[int, bytes]] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            header = self._header(buf, pos, end)
            if header is None:
                break
            size, head, masked = header
            if end - pos < head + size:
                break
            payload = bytes(buf[pos + head : pos + head + size])
            if masked:
                payload = _unmask(bytes(buf[pos + head - 4 : pos + head]), payload)
            b0 = buf[pos]
            pos += head + size
            message = self._frame(b0 & 0x0F, bool(b0 & 0x80), payload)
            if message is not None:
                out.append(message)
        if pos:
            del buf[:pos]
        return out

    def take_rest(self) -> bytes:
        """The bytes not yet parsed (a partial frame), handed over to another reader."""
        if self._frag_op is not None:
            raise WsError("a fragmented message is half-way through")
        rest = bytes(self._buf)
        self._buf.clear()
        return rest

    def _header(self, buf: bytearray, pos: int, end: int) -> tuple[int, int, bool] | None:
        """``(payload size, header length, masked)`` of the frame at ``pos``, or
        ``None`` while its length bytes have not all arrived."""
        b1 = buf[pos + 1]
        size = b1 & 0x7F
        head = 2
        if size == 126:
            if end - pos < 4:
                return None
            size = (buf[pos + 2] << 8) | buf[pos + 3]
            head = 4
        elif size == 127:
            if end - pos < 10:
                return None
            size = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            head = 10
        if size > self._max:
            raise WsError(f"frame of {size} bytes over {self._max}")
        masked = bool(b1 & 0x80)
        return size, head + 4 if masked else head, masked

    def _frame(self, opcode: int, fin: bool, payload: bytes) -> tuple[int, bytes] | None:
        """One frame's part in the message stream: a whole message, or ``None``
        while a fragmented message is still arriving."""
        if opcode >= 0x8:
            return (opcode, payload)
        if opcode == OP_CONT:
            if self._frag_op is None:
                raise WsError("continuation without a message")
            self._frag.append(payload)
            self._frag_len += len(payload)
            if self._frag_len > self._max:
                raise WsError("message too large")
            if not fin:
                return None
            message = (self._frag_op, b"".join(self._frag))
            self._frag_op = None
            self._frag = []
            self._frag_len = 0
            return message
        if fin:
            return (opcode, payload)
        self._frag_op = opcode
        self._frag = [payload]
        self._frag_len = len(payload)
        return None


async def _read_head(stream: trio.abc.ReceiveStream) -> tuple[bytes, bytes]:
    """Read an HTTP head; return it and whatever bytes came after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEADER_BYTES:
            raise WsError("HTTP head too large")
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise WsError("connection closed during the upgrade")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _headers(head: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    lines = head.split(b"\r\n")
    fields: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            fields[name.strip().lower()] = value.strip()
    return lines[0], fields


async def client_handshake(
    stream: trio.abc.Stream, host: str, port: int, path: str = "/"
) -> bytes:
    """Upgrade ``stream`` as a client; returns bytes received after the 101 head."""
    key = base64.b64encode(os.urandom(16))
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    ).encode() + b"Sec-WebSocket-Key: " + key + b"\r\n\r\n"
    await stream.send_all(request)
    head, rest = await _read_head(stream)
    status, fields = _headers(head)
    if b" 101 " not in status + b" ":
        raise WsError(f"upgrade refused: {status[:80]!r}")
    if fields.get(b"sec-websocket-accept") != accept_key(key):
        raise WsError("bad Sec-WebSocket-Accept")
    return rest


async def server_handshake(stream: trio.abc.Stream) -> bytes:
    """Accept an upgrade on ``stream``; returns bytes received after the request head."""
    head, rest = await _read_head(stream)
    _, fields = _headers(head)
    key = fields.get(b"sec-websocket-key")
    if key is None:
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        raise WsError("not a WebSocket upgrade")
    await stream.send_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n"
    )
    return rest
