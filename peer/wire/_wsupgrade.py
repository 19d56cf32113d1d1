"""The HTTP/1.1 upgrade to a WebSocket (RFC 6455 section 4), sans-IO, both sides.

The server side reads one request head of at most ``HEAD_LIMIT`` bytes
(``head_end`` finds where it ends) and ``parse_request`` accepts it or says
why not with an ``UpgradeRefused`` that carries the HTTP status and a plain
body for the answer (``refusal``):

* not ``GET`` or not HTTP/1.1 and later, a malformed line, no ``Host`` or
  more than one: 400;
* no ``Upgrade: websocket`` or no ``Connection: upgrade`` token: 400 (the
  answer names what to upgrade to);
* ``Sec-WebSocket-Version`` other than 13: 426 with the version we speak;
* ``Sec-WebSocket-Key`` missing or not 16 bytes of base64: 400.

The answer to an accepted request (``accept_response``) agrees to no
extension and no subprotocol, so every frame is plain RFC 6455. The client
side writes a request (``client_request``, with a random key the caller
draws) and checks the answer (``check_response``): 101, the upgrade
headers, and ``Sec-WebSocket-Accept`` for its key, no extension and no
subprotocol (we offer neither).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

HEAD_LIMIT = 8 * 1024  # bytes of an HTTP head, at most (request or response)
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_REASONS = {400: "Bad Request", 426: "Upgrade Required", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}


class UpgradeRefused(Exception):
    """A request that is not a WebSocket upgrade we take: answer ``status`` with ``body``."""

    def __init__(self, status: int, body: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(body)
        self.status = status
        self.body = body
        self.headers = headers


class UpgradeFailed(Exception):
    """The server did not accept our upgrade (the client side)."""


@dataclass(frozen=True, slots=True)
class UpgradeRequest:
    resource: str
    key: bytes  # Sec-WebSocket-Key as sent (base64)
    host: str


def head_end(data: bytes | bytearray) -> int:
    """Where a head ends (the index after its blank line), or -1 if not yet."""
    at = data.find(b"\r\n\r\n")
    return -1 if at < 0 else at + 4


def accept_key(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` value that answers ``key``."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def _headers(lines: list[bytes]) -> dict[str, str]:
    """Header fields by lower-case name (repeated fields joined with commas)."""
    fields: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or b" " in name:
            raise UpgradeRefused(400, "a malformed header line")
        key = name.decode("latin-1").lower()
        text = value.strip().decode("latin-1")
        fields[key] = f"{fields[key]}, {text}" if key in fields else text
    return fields


def _tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",")}


def parse_request(head: bytes) -> UpgradeRequest:
    """The upgrade a request head asks for (``head`` ends with its blank line)."""
    lines = head[:-4].split(b"\r\n") if head.endswith(b"\r\n\r\n") else []
    if not lines:
        raise UpgradeRefused(400, "no complete request head")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[0] != b"GET" or not parts[1].startswith(b"/"):
        raise UpgradeRefused(400, "a WebSocket upgrade is a GET of a path")
    if not parts[2].startswith(b"HTTP/1.") or parts[2] == b"HTTP/1.0":
        raise UpgradeRefused(400, "a WebSocket upgrade needs HTTP/1.1")
    fields = _headers(lines[1:])
    if not fields.get("host") or "," in fields["host"]:
        raise UpgradeRefused(400, "an HTTP/1.1 request needs one Host header")
    upgrade = (("Upgrade", "websocket"), ("Connection", "Upgrade"))
    if "websocket" not in _tokens(fields.get("upgrade", "")):
        raise UpgradeRefused(400, "this port speaks WebSocket only (Upgrade: websocket)", upgrade)
    if "upgrade" not in _tokens(fields.get("connection", "")):
        raise UpgradeRefused(400, "a WebSocket upgrade needs Connection: Upgrade", upgrade)
    if fields.get("sec-websocket-version", "").strip() != "13":
        raise UpgradeRefused(426, "WebSocket version 13 only", (("Sec-WebSocket-Version", "13"),))
    key = fields.get("sec-websocket-key", "").strip().encode("latin-1")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError("not 16 bytes")
    except (ValueError, binascii.Error):
        raise UpgradeRefused(400, "Sec-WebSocket-Key must be 16 bytes in base64") from None
    return UpgradeRequest(parts[1].decode("latin-1"), key, fields["host"])


def accept_response(request: UpgradeRequest) -> bytes:
    """The 101 answer to an accepted request: no extension, no subprotocol."""
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(request.key) + b"\r\n\r\n"
    )


def refusal(status: int, body: str, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A complete HTTP answer that refuses an upgrade; the connection closes after it."""
    data = (body + "\n").encode()
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Refused')}",
             "Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(data)}",
             "Connection: close", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def client_request(host: str, resource: str, key: bytes) -> bytes:
    """The upgrade request a client sends (``key``: 16 random bytes, base64)."""
    return (
        f"GET {resource} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    ).encode() + b"Sec-WebSocket-Key: " + key + b"\r\n\r\n"


def new_key(random16: bytes) -> bytes:
    """A ``Sec-WebSocket-Key`` from 16 random bytes."""
    return base64.b64encode(random16)


def check_response(head: bytes, key: bytes) -> None:
    """Raise ``UpgradeFailed`` unless ``head`` accepts the upgrade asked for with ``key``."""
    lines = head[:-4].split(b"\r\n") if head.endswith(b"\r\n\r\n") else []
    status = lines[0].split(b" ", 2) if lines else []
    if len(status) < 2 or not status[0].startswith(b"HTTP/1."):
        raise UpgradeFailed("not an HTTP answer")
    if status[1] != b"101":
        raise UpgradeFailed(f"the server answered {status[1].decode('latin-1')!r}")
    try:
        fields = _headers(lines[1:])
    except UpgradeRefused:
        raise UpgradeFailed("a malformed header line") from None
    if "websocket" not in _tokens(fields.get("upgrade", "")):
        raise UpgradeFailed("the answer does not upgrade to websocket")
    if "upgrade" not in _tokens(fields.get("connection", "")):
        raise UpgradeFailed("the answer lacks Connection: Upgrade")
    if fields.get("sec-websocket-accept", "").encode("latin-1") != accept_key(key):
        raise UpgradeFailed("a wrong Sec-WebSocket-Accept")
    if fields.get("sec-websocket-extensions"):
        raise UpgradeFailed("the server chose an extension we did not offer")
    if fields.get("sec-websocket-protocol"):
        raise UpgradeFailed("the server chose a subprotocol we did not offer")
