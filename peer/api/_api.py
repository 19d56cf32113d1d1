"""The local HTTP API (v1) that agents call on 127.0.0.1.

ocmesh's endpoints with their semantics, extended: ``GET /status`` (open),
``GET /peers``, ``POST /send``, ``GET /messages``, ``POST /ack``,
``POST /subscribe``, ``POST /unsubscribe``, ``GET /channels``,
``GET /bootstrap.json``. Everything but ``/status`` wants
``Authorization: Bearer <token>`` (the token lives in the key directory).
Errors are JSON: ``{"error": {"code": ..., "message": ...}}`` with 400 for bad
input or an unknown recipient, 401 without the token, 413 for oversize.

Payloads are JSON values, carried as CBOR in the envelope; an object
``{"$b64": "..."}`` stands for raw bytes both ways, so files and images
travel without base64 inside the CBOR.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import math
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from peer.node._bootstrap import bootstrap_entry
from peer.node._node import Peer, UnknownPeer
from peer.wire import _cbor
from peer.wire._envelope import Content, dm_topic
from peer.wire._errors import ProtocolError
from peer.wire._frames import is_topic
from peer.wire._identity import parse_peer_id
from peer.wire._limits import MAX_BODY_BYTES, MAX_PAYLOAD
from store import StoreError

API_VERSION = 1
MAX_REQUEST = 1024 * 1024
MAX_LIMIT = 1000
MAX_WAIT = 60.0
RESOLVE_TIMEOUT = 10.0  # seconds a DM to an unseen peer id may spend in the DHT
VERSION = "0.1.0"


Handler = Callable[[Request], Awaitable[Response]]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _digits(raw: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also takes ``²`` and other digits ``int`` refuses."""
    return raw.isascii() and raw.isdigit()


def _no_constant(name: str) -> Any:
    raise ApiError(400, "invalid", f"{name} is not a JSON number (no NaN or Infinity)")


def check_json_value(value: Any, depth: int = 0) -> None:
    """Refuse what the wire or a reader could not carry: lone surrogates in text,
    numbers that overflowed to infinity (``1e999``), nesting past 64 levels."""
    if depth > 64:
        raise ApiError(400, "invalid", "request body nests too deeply")
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(400, "invalid", "text holds a lone surrogate") from None
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ApiError(400, "invalid", "numbers must be finite")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_json_value(key, depth + 1)
            check_json_value(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_json_value(item, depth + 1)


def json_to_cbor_value(value: Any, depth: int = 0) -> Any:
    """A JSON value as the CBOR value we put in a payload (bytes for {"$b64": ...})."""
    if depth > 12:
        raise ApiError(400, "invalid", "payload nests too deeply")
    if isinstance(value, dict):
        if set(value) == {"$b64"} and isinstance(value["$b64"], str):
            try:
                return base64.b64decode(value["$b64"], validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(400, "invalid", "$b64 is not base64") from None
        return {str(k): json_to_cbor_value(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [json_to_cbor_value(v, depth + 1) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str | float):
        return value
    if isinstance(value, int):
        if not -(2**64) <= value < 2**64:
            raise ApiError(400, "invalid", "payload integers must fit in 64 bits")
        return value
    raise ApiError(400, "invalid", f"unsupported payload value {type(value).__name__}")


def cbor_to_json_value(value: Any) -> Any:
    """The inverse of :func:`json_to_cbor_value` for what a peer received."""
    if isinstance(value, bytes):
        return {"$b64": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {_json_key(k): cbor_to_json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [cbor_to_json_value(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):  # no JSON form: null
        return None
    # text from the wire is valid UTF-8 (the strict decoder sees to it): as it is
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bytes):
        return base64.b64encode(key).decode()
    return repr(key)  # an integer, a float or a bool key from another implementation


def _hex_id(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise ApiError(400, "invalid", f"{name} must be a 64-hex-digit id")
    try:
        return parse_peer_id(value)
    except ValueError:
        raise ApiError(400, "invalid", f"{name} must be a 64-hex-digit id") from None


def _bool_param(request: Request, name: str) -> bool | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise ApiError(400, "invalid", f"{name} must be true or false")


def _int_param(request: Request, name: str, default: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not _digits(raw) or int(raw) > maximum:
        raise ApiError(400, "invalid", f"{name} must be an integer 0..{maximum}")
    return int(raw)


def _wait_param(request: Request) -> float:
    """``wait=S``: long-poll for up to S seconds (at most MAX_WAIT)."""
    raw = request.query_params.get("wait")
    if raw is None or raw == "":
        return 0.0
    try:
        seconds = float(raw)
    except ValueError:
        raise ApiError(400, "invalid", "wait must be a number of seconds") from None
    if not 0 <= seconds <= MAX_WAIT:
        raise ApiError(400, "invalid", f"wait must be 0..{MAX_WAIT} seconds")
    return seconds


def _channel_name(value: Any) -> str:
    if not isinstance(value, str):
        raise ApiError(400, "invalid", "channel must be a string")
    name = value[1:] if value.startswith("#") else value
    if not is_topic(name) or "/" in name:
        raise ApiError(
            400, "invalid", f"not a channel name: {value!r} (letters, digits, . _ -; max 64)"
        )
    return name


LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
MAX_IN_FLIGHT = 1024  # requests handled at once; more get 503 at once, not silence
BODY_TIMEOUT = 10.0  # seconds a client has to send its whole request body


def _hostname(value: str) -> str:
    """The host of a ``Host`` header or an ``Origin`` (``scheme://host:port``)."""
    if "://" in value:
        return (urlsplit(value).hostname or "").lower()
    host = value.rsplit("]", 1)[0].lstrip("[") if value.startswith("[") else value.split(":")[0]
    return host.lower()


class LocalApi:
    """Builds the Starlette app around one running :class:`Peer`.

    Only loopback names (and ``allowed_hosts``) are accepted in ``Host`` and
    ``Origin``, so a web page that rebinds its DNS name to 127.0.0.1 cannot
    read the API; every refusal and error is JSON.
    """

    def __init__(
        self,
        peer: Peer,
        token: str,
        *,
        api_url: str = "",
        allowed_hosts: Iterable[str] = (),
    ) -> None:
        self.peer = peer
        self.token = token
        self.api_url = api_url
        self.allowed_hosts = LOOPBACK_NAMES | {h.lower() for h in allowed_hosts}
        self._in_flight = 0
        routes = [
            Route("/status", self._guarded(self._status, open_=True), methods=["GET"]),
            Route("/peers", self._guarded(self._peers), methods=["GET"]),
            Route("/send", self._guarded(self._send), methods=["POST"]),
            Route("/messages", self._guarded(self._messages), methods=["GET"]),
            Route("/ack", self._guarded(self._ack), methods=["POST"]),
            Route("/subscribe", self._guarded(self._subscribe), methods=["POST"]),
            Route("/unsubscribe", self._guarded(self._unsubscribe), methods=["POST"]),
            Route("/channels", self._guarded(self._channels), methods=["GET"]),
            Route("/bootstrap.json", self._guarded(self._bootstrap, open_=True), methods=["GET"]),
            Route("/dht", self._guarded(self._dht), methods=["GET"]),
            Route("/outbox", self._guarded(self._outbox), methods=["GET"]),
            Route("/dead-letters", self._guarded(self._dead_letters), methods=["GET"]),
        ]
        self.app = Starlette(
            routes=routes, exception_handlers={404: self._not_found, 405: self._not_allowed}
        )

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return _error(404, "not-found", f"no endpoint {request.url.path}")

    async def _not_allowed(self, request: Request, exc: Exception) -> Response:
        return _error(405, "method", f"{request.method} is not allowed on {request.url.path}")

    # -- plumbing ------------------------------------------------------------------

    def _authorised(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), self.token)

    async def _json_body(self, request: Request) -> dict[str, Any]:
        length = request.headers.get("content-length")
        if length is not None and _digits(length) and int(length) > MAX_REQUEST:
            raise ApiError(413, "too-large", f"request body over {MAX_REQUEST} bytes")
        body = bytearray()
        with trio.move_on_after(BODY_TIMEOUT) as reading:
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_REQUEST:
                    raise ApiError(413, "too-large", f"request body over {MAX_REQUEST} bytes")
        if reading.cancelled_caught:
            raise ApiError(408, "timeout", f"request body not sent within {BODY_TIMEOUT:.0f} s")
        try:
            data = json.loads(body or b"{}", parse_constant=_no_constant)
        except (ValueError, RecursionError):
            raise ApiError(400, "invalid", "request body is not JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "invalid", "request body must be a JSON object")
        check_json_value(data)
        return data

    def _guarded(self, handler: Handler, *, open_: bool = False) -> Handler:
        """``handler`` behind the token check (unless ``open_``), ApiError as JSON."""

        async def endpoint(request: Request) -> Response:
            refused = self._refused_origin(request)
            if refused is not None:
                return refused
            if self._in_flight >= MAX_IN_FLIGHT:
                return _error(503, "busy", "too many requests at once; retry shortly")
            self._in_flight += 1
            try:
                return await self._handle(request, handler, open_)
            finally:
                self._in_flight -= 1

        return endpoint

    def _refused_origin(self, request: Request) -> Response | None:
        host = _hostname(request.headers.get("host", ""))
        if host not in self.allowed_hosts:
            return _error(403, "host", f"Host {host!r} is not this peer's API address")
        origin = request.headers.get("origin")
        if origin is not None and _hostname(origin) not in self.allowed_hosts:
            return _error(403, "origin", "requests from web pages of other origins are refused")
        return None

    async def _handle(self, request: Request, handler: Handler, open_: bool) -> Response:
        if not open_ and not self._authorised(request):
            return _error(
                401,
                "unauthorised",
                "send Authorization: Bearer <token from the key directory's api-token>",
            )
        try:
            return await handler(request)
        except ApiError as exc:
            return _error(exc.status, exc.code, exc.message)
        except Exception as exc:  # a bug: the client still gets JSON, the peer goes on
            self.peer.log.error(
                "API handler crashed", path=request.url.path, error=repr(exc), exc_info=exc
            )
            return _error(500, "internal", "internal error; the peer logged it")

    # -- endpoints -------------------------------------------------------------------

    async def _status(self, request: Request) -> Response:
        peer = self.peer
        return JSONResponse(
            {
                "daemon_version": VERSION,
                "api_version": API_VERSION,
                "protocol_version": 1,
                "peer_id": peer.identity.peer_id_hex,
                "pubkey": peer.identity.public_key.hex(),
                "uptime_seconds": round(peer.uptime, 1),
                "peer_count": len(peer.links),
                "known_peers": len(peer.known_peers()),
                "online_peers": len(peer.known_peers(online=True)),
                "listen": peer.listen_urls,
                "api": self.api_url,
                "caps": list(peer.caps),
                "relay_only": peer.options.relay_only,
                "channels": sorted(peer.channels),
                "unread": peer.inbox.unread(),
                **peer.statistics().to_json(),
            }
        )

    async def _peers(self, request: Request) -> Response:
        online = _bool_param(request, "online")
        wanted = _int_param(request, "min", 0, 100_000)
        deadline = trio.current_time() + _wait_param(request)
        found = self.peer.known_peers(online=online)
        while len(found) < wanted and trio.current_time() < deadline:
            with trio.move_on_at(deadline):
                await self.peer.wait_changed()
            found = self.peer.known_peers(online=online)
        now_ms = self.peer.wall_ms()
        out = []
        for info in found:
            out.append(
                {
                    "peer_id": info.peer_id.hex(),
                    "pubkey": info.public_key.hex(),
                    "online": self.peer.is_online(info, now_ms),
                    "linked": info.linked,
                    "times_linked": info.times_linked,
                    "last_seen": _iso(info.last_seen_ms),
                    "listen": list(info.listen),
                    "features": list(info.caps),
                    "agent": info.agent or None,
                }
            )
        return JSONResponse(out)

    async def _send(self, request: Request) -> Response:
        peer = self.peer
        data = await self._json_body(request)
        if peer.options.relay_only:
            raise ApiError(400, "relay-only", "a relay-only peer has no agent to send as")
        body = data.get("body", data.get("content", ""))
        if not isinstance(body, str):
            raise ApiError(400, "invalid", "body must be a string")
        if len(body.encode()) > MAX_BODY_BYTES:
            raise ApiError(413, "too-large", f"body over {MAX_BODY_BYTES} bytes")
        payload = None
        if "payload" in data and data["payload"] is not None:
            try:
                payload = _cbor.encode(json_to_cbor_value(data["payload"]))
            except (ValueError, TypeError, OverflowError) as exc:
                raise ApiError(400, "invalid", f"payload cannot be encoded: {exc}") from None
            if len(payload) > MAX_PAYLOAD:
                raise ApiError(413, "too-large", f"payload over {MAX_PAYLOAD} bytes as CBOR")
        reply_to = _hex_id(data["reply_to"], "reply_to") if data.get("reply_to") else None
        thread = _hex_id(data["thread"], "thread") if data.get("thread") else None
        content = Content(body=body, payload=payload, reply_to=reply_to, thread=thread)
        channel = data.get("channel")
        to = data.get("to")
        if channel is None and isinstance(to, str) and to.startswith("#"):
            channel = to
        try:
            if channel is not None:
                name = _channel_name(channel)
                env = await peer.send_message(name, content)
                target = {"channel": name}
            elif to is not None:
                recipient = _hex_id(to, "to")
                if peer.directory.get(recipient) is None:
                    with trio.move_on_after(RESOLVE_TIMEOUT):
                        await peer.resolve_peer(recipient)  # ask the DHT for its record
                try:
                    env = await peer.send_direct(recipient, content)
                except UnknownPeer:
                    raise ApiError(
                        400,
                        "unknown-peer",
                        f"no key known for peer {to}: not seen on the mesh nor found in the DHT",
                    ) from None
                target = {"to": recipient.hex()}
            else:
                raise ApiError(400, "invalid", 'say where: "channel": name, or "to": peer id')
        except ProtocolError as exc:
            status = {"too-large": 413, "rate": 429}.get(exc.code.value, 400)
            raise ApiError(status, exc.code.value, exc.message) from None
        except StoreError as exc:
            raise ApiError(507, "store", f"not stored, not sent: {exc}") from None
        return JSONResponse(
            {
                "id": env.id.hex(),
                "stored": peer.storage is not None,
                **target,
                "topic": env.topic,
                "seq": env.seq,
                "timestamp": _iso(env.ts),
                "routed": peer.router.reachable(env.route),
            }
        )

    async def _messages(self, request: Request) -> Response:
        peer = self.peer
        unread = _bool_param(request, "unread")
        peek = _bool_param(request, "peek") or False
        after = _int_param(request, "after", 0, 2**63)
        limit = _int_param(request, "limit", 100, MAX_LIMIT)
        topic = None
        if request.query_params.get("channel"):
            topic = _channel_name(request.query_params["channel"])
        elif request.query_params.get("peer"):
            topic = dm_topic(peer.peer_id, _hex_id(request.query_params["peer"], "peer"))
        deadline = trio.current_time() + _wait_param(request)
        found = peer.inbox.query(unread=unread, topic=topic, after=after, limit=limit)
        while not found and trio.current_time() < deadline:
            with trio.move_on_at(deadline):
                await peer.wait_inbox_changed()
            found = peer.inbox.query(unread=unread, topic=topic, after=after, limit=limit)
        out = []
        for message in found:
            item = message.to_json()
            item["timestamp"] = _iso(message.ts)
            item["received"] = _iso(message.received_ms)
            if message.has_payload:
                item["payload"] = cbor_to_json_value(message.payload)
            out.append(item)
        headers = {"X-Clawmesh-Cursor": str(found[-1].cursor if found else after)}
        response = JSONResponse(out, headers=headers)  # rendered before anything is marked read
        if unread and not peek:
            await peer.mark_read([m.id for m in found])
        return response

    async def _ack(self, request: Request) -> Response:
        data = await self._json_body(request)
        marked = 0
        if "ids" in data:
            ids = data["ids"]
            if not isinstance(ids, list) or len(ids) > 10_000:
                raise ApiError(400, "invalid", "ids must be a list of message ids")
            marked += await self.peer.mark_read([_hex_id(i, "ids[]") for i in ids])
        if "through" in data:
            through = data["through"]
            if type(through) is not int or through < 0:
                raise ApiError(400, "invalid", "through must be a cursor (integer)")
            marked += await self.peer.mark_read_through(through)
        return JSONResponse({"marked": marked, "unread": self.peer.inbox.unread()})

    async def _subscribe(self, request: Request) -> Response:
        data = await self._json_body(request)
        if self.peer.options.relay_only:
            raise ApiError(400, "relay-only", "a relay-only peer subscribes to nothing")
        name = _channel_name(data.get("channel"))
        self.peer.subscribe(name)
        if self.peer.storage is not None:
            await self.peer.storage.save_channels()
        return JSONResponse({"channel": name, "channels": sorted(self.peer.channels)})

    async def _unsubscribe(self, request: Request) -> Response:
        data = await self._json_body(request)
        name = _channel_name(data.get("channel"))
        self.peer.unsubscribe(name)
        if self.peer.storage is not None:
            await self.peer.storage.save_channels()
        return JSONResponse({"channel": name, "channels": sorted(self.peer.channels)})

    async def _channels(self, request: Request) -> Response:
        return JSONResponse(sorted(self.peer.channels))

    async def _dht(self, request: Request) -> Response:
        service = self.peer.dht
        if service is None:
            return JSONResponse({"enabled": False})
        stats = service.statistics().to_json()
        return JSONResponse(
            {"enabled": True, **stats, "buckets": service.node.table.buckets_summary()}
        )

    async def _outbox(self, request: Request) -> Response:
        """DMs waiting for their recipient's receipt; ``wait=S`` waits up to S s for none."""
        storage = self.peer.storage
        if storage is None:
            return JSONResponse([])
        limit = _int_param(request, "limit", 100, MAX_LIMIT)
        deadline = trio.current_time() + _wait_param(request)
        entries = await storage.service.read(lambda s: s.outbox(limit=limit))
        while entries and trio.current_time() < deadline:  # wait=S: until it empties
            with trio.move_on_at(deadline):
                await self.peer.wait_changed()
            entries = await storage.service.read(lambda s: s.outbox(limit=limit))
        return JSONResponse(
            [
                {
                    "id": e.msg_id.hex(),
                    "to": e.recipient.hex(),
                    "attempts": e.attempts,
                    "next_try": _iso(e.next_try_ms),
                    "deadline": _iso(e.deadline_ms),
                }
                for e in entries
            ]
        )

    async def _dead_letters(self, request: Request) -> Response:
        """DMs no receipt came for before their deadline."""
        storage = self.peer.storage
        if storage is None:
            return JSONResponse([])
        limit = _int_param(request, "limit", 100, MAX_LIMIT)
        letters = await storage.service.read(lambda s: s.dead_letters(limit=limit))
        out = []
        for letter in letters:
            message = self.peer.inbox.get(letter.msg_id)
            out.append(
                {
                    "id": letter.msg_id.hex(),
                    "to": letter.recipient.hex(),
                    "attempts": letter.attempts,
                    "failed": _iso(letter.failed_ms),
                    "reason": letter.reason,
                    "body": None if message is None else message.body,
                }
            )
        return JSONResponse(out)

    async def _bootstrap(self, request: Request) -> Response:
        entry = bootstrap_entry(self.peer.identity, self.peer.listen_urls, self.peer.caps)
        return JSONResponse({"version": 1, "peers": [entry]})
