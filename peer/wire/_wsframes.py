"""RFC 6455 frames, sans-IO: what a clawmesh link's own WebSocket reads and writes.

``FrameReader`` takes bytes as they come (``feed``) and gives whole messages
(``next``): a binary or text message as ``(opcode, payload)`` once its last
fragment is in, and each control frame (ping, pong, close) as it comes, also
between the fragments of a message. It parses lazily: ``next`` parses one
message at most, so bytes fed but not asked for cost nothing (a flood before
the link's handshake is refused after the frames it read). Anything against
the RFC raises ``WsFrameError`` with the close code to send:

* reserved bits set (no extension is ever negotiated), a reserved opcode, a
  control frame longer than 125 bytes or fragmented, a continuation with no
  message to continue, a new message inside a fragmented one, a 64-bit
  length with its top bit set, a length not in its shortest form (section
  5.2: "the minimal number of bytes MUST be used"), a client frame not masked (the server side
  requires masks) or a masked server frame (the client side refuses them),
  a close payload of one byte or with a code no endpoint may send: 1002;
* a message (all its fragments) over the reader's ``limit``: 1009, as soon as
  a frame header says so, before its payload is read;
* a close reason or a text message that is not UTF-8: 1007 (text is checked
  by the caller, which decodes it).

What the reader holds is bounded by the caller: bytes fed and not parsed are
at most one message (``limit``) plus the last read. An idle reader holds no
buffer (the empty ``bytes``), and one waiting for the rest of a frame holds
that frame's bytes only.

``encode_frame`` writes one final frame: unmasked for a server, masked with
the four bytes given for a client (RFC 6455 section 5.3: the caller draws
them at random for each frame). The server's data frames are exactly what
``peer.node._transport`` wrote before (the shortest length form).
"""

from __future__ import annotations

import struct

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
_DATA_OPS = (OP_CONT, OP_TEXT, OP_BINARY)
_CONTROL_OPS = (OP_CLOSE, OP_PING, OP_PONG)

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL = 1002
CLOSE_NO_STATUS = 1005  # never sent: what a close frame without a code means
CLOSE_ABNORMAL = 1006  # never sent: the connection ended without a close frame
CLOSE_BAD_DATA = 1007
CLOSE_TOO_BIG = 1009
CONTROL_LIMIT = 125  # payload bytes of a control frame, at most

_SHORT = struct.Struct(">BB")
_MEDIUM = struct.Struct(">BBH")
_LONG = struct.Struct(">BBQ")
_ZERO_KEY = b"\x00\x00\x00\x00"


class WsFrameError(Exception):
    """The other side broke RFC 6455: close the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def unmask(key: bytes, data: bytes) -> bytes:
    """``data`` XORed with the repeated four-byte ``key`` (masking is its own inverse)."""
    size = len(data)
    if not size or key == _ZERO_KEY:
        return bytes(data)
    stream = (key * ((size >> 2) + 1))[:size]
    mixed = int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")
    return mixed.to_bytes(size, "little")


def encode_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One final frame: unmasked when ``mask`` is None (a server), else masked with it."""
    size = len(payload)
    first = 0x80 | opcode
    bit = 0 if mask is None else 0x80
    if size <= 125:
        head = _SHORT.pack(first, bit | size)
    elif size <= 0xFFFF:
        head = _MEDIUM.pack(first, bit | 126, size)
    else:
        head = _LONG.pack(first, bit | 127, size)
    if mask is None:
        return head + payload
    return head + mask + unmask(mask, payload)


def close_payload(code: int, reason: str = "") -> bytes:
    """The payload of a close frame: the code, then the reason clipped to fit 125 bytes."""
    data = reason.encode()[: CONTROL_LIMIT - 2]
    return code.to_bytes(2, "big") + data.decode(errors="ignore").encode()


def parse_close(payload: bytes) -> tuple[int, str]:
    """The code and reason of a received close frame (1005: it had no code)."""
    if not payload:
        return CLOSE_NO_STATUS, ""
    if len(payload) == 1:
        raise WsFrameError(CLOSE_PROTOCOL, "a close payload of one byte")
    code = int.from_bytes(payload[:2], "big")
    if not _sendable_close_code(code):
        raise WsFrameError(CLOSE_PROTOCOL, f"close code {code} may not be sent")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise WsFrameError(CLOSE_BAD_DATA, "a close reason that is not UTF-8") from None
    return code, reason


def _sendable_close_code(code: int) -> bool:
    if 3000 <= code <= 4999:  # registered and private codes
        return True
    return 1000 <= code <= 1014 and code not in (1004, 1005, 1006)


# what a fragment of a message held costs against the message limit at least (its
# bytes object and list slot), so 1-byte or empty fragments cannot make a message held
# in parts cost many times the limit; a fragment larger than this counts its payload
FRAGMENT_COST = 64


class FrameReader:
    """Bytes in (``feed``), whole messages and control frames out (``next``)."""

    __slots__ = ("_buf", "_limit", "_part_op", "_parts", "_pos", "_server", "_size")

    def __init__(self, *, server: bool, limit: int) -> None:
        self._server = server  # frames must be masked (we are the server), or must not be
        self._limit = limit
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._parts: list[bytes] | None = None  # the fragments of a message in progress
        self._part_op = OP_BINARY
        self._size = 0  # bytes in ``_parts``

    def feed(self, data: bytes | bytearray) -> None:
        buf, pos = self._buf, self._pos
        if pos >= len(buf):  # all parsed: the new bytes are the buffer, uncopied
            self._buf, self._pos = data, 0
            return
        if pos or not isinstance(buf, bytearray):
            buf = bytearray(memoryview(buf)[pos:])
            self._pos = 0
        buf += data
        self._buf = buf

    def pending(self) -> int:
        """Bytes fed and not parsed yet."""
        return len(self._buf) - self._pos

    def drop(self) -> None:
        """Forget everything fed and every fragment held (the connection is going)."""
        self._buf, self._pos, self._parts, self._size = b"", 0, None, 0

    def next(self) -> tuple[int, bytes] | None:
        """The next whole message or control frame, or None until more bytes come."""
        while True:
            frame = self._frame()
            if frame is None:
                if self._pos:  # keep only the partial frame, not what was parsed before it
                    self._buf, self._pos = bytearray(memoryview(self._buf)[self._pos :]), 0
                return None
            fin, opcode, payload = frame
            if opcode >= OP_CLOSE or (fin and opcode != OP_CONT):
                return opcode, payload
            if opcode != OP_CONT:  # the first fragment of a message
                size = max(len(payload), FRAGMENT_COST)
                self._parts, self._part_op, self._size = [payload], opcode, size
                continue
            parts = self._parts
            assert parts is not None  # checked with the header
            parts.append(payload)
            self._size += max(len(payload), FRAGMENT_COST)
            if fin:
                self._parts, self._size = None, 0
                return self._part_op, b"".join(parts)

    def _frame(self) -> tuple[bool, int, bytes] | None:
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail < 2:
            return None
        first, second = buf[pos], buf[pos + 1]
        size = second & 0x7F
        head = 2
        if size == 126:
            if avail < 4:
                return None
            size = int.from_bytes(buf[pos + 2 : pos + 4], "big")
            head = 4
            if size < 126:
                raise WsFrameError(CLOSE_PROTOCOL, "a 16-bit length for under 126 bytes")
        elif size == 127:
            if avail < 10:
                return None
            size = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            head = 10
            if size <= 0xFFFF:
                raise WsFrameError(CLOSE_PROTOCOL, "a 64-bit length for under 64 KiB")
        fin = bool(first & 0x80)
        opcode = first & 0x0F
        self._check(first, opcode, fin, size, bool(second & 0x80))
        if second & 0x80:
            head += 4
        end = pos + head + size
        if len(buf) < end:
            return None
        payload = bytes(buf[pos + head : end])
        if second & 0x80:
            payload = unmask(bytes(buf[pos + head - 4 : pos + head]), payload)
        if end >= len(buf):
            self._buf, self._pos = b"", 0  # nothing held while idle
        else:
            self._pos = end
        return fin, opcode, payload

    def _check(self, first: int, opcode: int, fin: bool, size: int, masked: bool) -> None:
        """Refuse a frame header against the RFC's rules and the size limit."""
        if first & 0x70:
            raise WsFrameError(CLOSE_PROTOCOL, "reserved bits set (no extension was agreed)")
        if opcode >= OP_CLOSE:
            if opcode not in _CONTROL_OPS:
                raise WsFrameError(CLOSE_PROTOCOL, f"reserved opcode {opcode:#x}")
            if not fin:
                raise WsFrameError(CLOSE_PROTOCOL, "a fragmented control frame")
            if size > CONTROL_LIMIT:
                raise WsFrameError(CLOSE_PROTOCOL, "a control frame over 125 bytes")
        else:
            if opcode not in _DATA_OPS:
                raise WsFrameError(CLOSE_PROTOCOL, f"reserved opcode {opcode:#x}")
            if opcode == OP_CONT and self._parts is None:
                raise WsFrameError(CLOSE_PROTOCOL, "a continuation frame with no message")
            if opcode != OP_CONT and self._parts is not None:
                raise WsFrameError(CLOSE_PROTOCOL, "a new message inside a fragmented one")
            if size >> 63:
                raise WsFrameError(CLOSE_PROTOCOL, "a 64-bit length with its top bit set")
            charged = max(size, FRAGMENT_COST) if self._parts is not None else size
            if self._size + charged > self._limit:
                raise WsFrameError(CLOSE_TOO_BIG, f"a message over {self._limit} bytes")
        if masked != self._server:
            if self._server:
                raise WsFrameError(CLOSE_PROTOCOL, "a client frame that is not masked")
            raise WsFrameError(CLOSE_PROTOCOL, "a masked server frame")
