"""The local HTTP API (v1) that agents call on 127.0.0.1.

ocmesh's endpoints with their semantics, extended; ``peer.api._spec`` lists
every endpoint with its parameters and body fields (``GET /openapi.json``).
Everything but ``/status``, ``/bootstrap.json`` and ``/openapi.json`` wants
``Authorization: Bearer <token>`` (the token lives in the key directory);
under ``--compat ocmesh`` loopback clients may also call ``/status``,
``/peers``, ``/messages`` and ``/send`` without it. Errors are JSON:
``{"error": {"code": ..., "message": ...}}`` with 400 for bad input (an
unknown field or query parameter included) or an unknown recipient, 401
without the token, 413 for oversize, 503 when too busy.

Requests run under ``MAX_IN_FLIGHT``; live streams (``/events``, ``/ws``)
count instead under their own cap, ``MAX_STREAMS`` (see ``_streams``).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import trio
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from peer.node._node import Peer

from ._a2a import A2aGateway
from ._endpoints import VERSION, Endpoints
from ._meshhooks import MESH_TOKEN_PATHS, MeshHooks
from ._opsapi import OpsEndpoints
from ._page import Page
from ._select import message_filter
from ._session import Sessions, same_origin
from ._spec import BY_ROUTE, Endpoint
from ._streams import MAX_STREAMS, EventFeed, SseResponse, run_websocket, start_cursor
from ._values import (
    ApiError,
    cbor_to_json_value,
    check_json_value,
    digits,
    error_response,
    no_constant,
)
from ._webhooks import WebhookService

__all__ = ["MAX_IN_FLIGHT", "MAX_STREAMS", "ApiError", "LocalApi", "cbor_to_json_value"]

MAX_REQUEST = 1024 * 1024
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
MAX_IN_FLIGHT = 1024  # requests handled at once; more get 503 at once, not silence
BODY_TIMEOUT = 10.0  # seconds a client has to send its whole request body
COMPAT_MODES = ("ocmesh",)

Handler = Callable[[Request], Awaitable[Response]]
_PAGE = Endpoint("GET", "/", "the web page", open=True)


def _hostname(value: str) -> str:
    """The host of a ``Host`` header or an ``Origin`` (``scheme://host:port``)."""
    if "://" in value:
        return (urlsplit(value).hostname or "").lower()
    host = value.rsplit("]", 1)[0].lstrip("[") if value.startswith("[") else value.split(":")[0]
    return host.lower()


def _loopback_client(conn: HTTPConnection) -> bool:
    host = conn.client.host if conn.client is not None else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
        compat: str | None = None,
        webhooks: WebhookService | None = None,
        sessions: Sessions | None = None,
    ) -> None:
        if compat is not None and compat not in COMPAT_MODES:
            raise ValueError(f"unknown compatibility mode {compat!r}")
        self.peer = peer
        self.token = token
        self.allowed_hosts = LOOPBACK_NAMES | {h.lower() for h in allowed_hosts}
        self.compat = compat
        self.endpoints = Endpoints(peer, self._json_body, compat=compat, webhooks=webhooks)
        self.endpoints.api_url = api_url
        self._in_flight = 0
        self.streams = 0
        self.sessions = sessions or Sessions(token, peer.identity.peer_id_hex)
        self.page = Page(self.sessions)
        self.ops = OpsEndpoints(peer, VERSION, self.endpoints)
        self.mesh = MeshHooks(peer)  # MESH's webhook clients (protocol-spec/gateways.md 2)
        self.a2a = A2aGateway(peer)  # A2A clients (protocol-spec/gateways.md 3)
        self.endpoints.mesh_stats = self.mesh.statistics
        self.endpoints.a2a_stats = self.a2a.statistics
        handlers = (
            self.endpoints.handlers() | self.page.handlers() | self.ops.handlers()
            | self.mesh.handlers() | self.a2a.handlers()
        )
        routes: list[Route | WebSocketRoute] = [
            Route(path, self._page_route(handler), methods=["GET"])
            for path, handler in self.page.routes().items()
        ]
        for (method, path), spec in BY_ROUTE.items():
            if spec.stream == "websocket":
                routes.append(WebSocketRoute(path, self._websocket))
            elif spec.stream == "sse":
                routes.append(Route(path, self._sse, methods=[method]))
            else:
                routes.append(Route(path, self._guarded(handlers[path], spec), methods=[method]))
        self.app = Starlette(
            routes=routes, exception_handlers={404: self._not_found, 405: self._not_allowed}
        )

    @property
    def api_url(self) -> str:
        return self.endpoints.api_url

    @api_url.setter
    def api_url(self, url: str) -> None:
        self.endpoints.api_url = url
        self.sessions.api_url = url
        self.a2a.api_url = url

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        path = request.url.path
        spec = BY_ROUTE.get(("GET", path))
        if spec is not None and spec.stream == "websocket":  # plain HTTP to a WebSocket
            answer = error_response(
                426, "upgrade-required", f"{path} is a WebSocket: connect with Upgrade: websocket"
            )
            answer.headers["Upgrade"] = "websocket"
            return answer
        return error_response(404, "not-found", f"no endpoint {path}")

    async def _not_allowed(self, request: Request, exc: Exception) -> Response:
        return error_response(
            405, "method", f"{request.method} is not allowed on {request.url.path}"
        )

    # -- plumbing ------------------------------------------------------------------

    def _authorised(self, conn: HTTPConnection, spec: Endpoint) -> bool:
        if spec.open:
            return True
        if self.compat == "ocmesh" and spec.compat_open and _loopback_client(conn):
            return True
        header = conn.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        tokens = [self.token]
        if spec.path in MESH_TOKEN_PATHS and self.peer.options.mesh_token:
            tokens.append(self.peer.options.mesh_token)  # MESH senders' hook token
        if scheme.lower() == "bearer" and any(
            hmac.compare_digest(given.strip().encode(), token.encode()) for token in tokens
        ):
            return True
        if not header and self.sessions.signed_in(conn):  # the web page: same origin only
            changing = conn.scope["type"] == "websocket" or conn.scope["method"] != "GET"
            return same_origin(conn, changing=changing)
        return False

    async def _json_body(self, request: Request, spec: Endpoint) -> dict[str, Any]:
        length = request.headers.get("content-length")
        if length is not None and digits(length) and int(length) > MAX_REQUEST:
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
            data = json.loads(body or b"{}", parse_constant=no_constant)
        except (ValueError, RecursionError):
            raise ApiError(400, "invalid", "request body is not JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "invalid", "request body must be a JSON object")
        check_json_value(data)
        spec.check_body(data)
        return data

    def _guarded(self, handler: Handler, spec: Endpoint) -> Handler:
        """``handler`` behind the origin and token checks, ApiError as JSON."""

        async def endpoint(request: Request) -> Response:
            refused = self._refused(request, spec)
            if refused is not None:
                return refused
            if self._in_flight >= MAX_IN_FLIGHT:
                return error_response(503, "busy", "too many requests at once; retry shortly")
            self._in_flight += 1
            try:
                spec.check_params(list(request.query_params.keys()))
                return await handler(request)
            except ApiError as exc:
                return error_response(exc.status, exc.code, exc.message)
            except Exception as exc:  # a bug: the client still gets JSON, the peer goes on
                self.peer.log.error(
                    "API handler crashed", path=request.url.path, error=repr(exc), exc_info=exc
                )
                return error_response(500, "internal", "internal error; the peer logged it")
            finally:
                self._in_flight -= 1

        return endpoint

    def _refused(self, conn: HTTPConnection, spec: Endpoint) -> Response | None:
        """A refusal for a foreign Host or Origin, or a missing token; None if allowed."""
        host = _hostname(conn.headers.get("host", ""))
        if host not in self.allowed_hosts:
            return error_response(403, "host", f"Host {host!r} is not this peer's API address")
        site = conn.headers.get("sec-fetch-site", "").strip().lower()
        if site == "cross-site" and spec is not _PAGE:  # a link to the page may still open it
            return error_response(  # a browser says another site's page sent it, no-cors too
                403, "origin", "requests from web pages of other sites are refused"
            )
        origin = conn.headers.get("origin")
        if origin is not None and _hostname(origin) not in self.allowed_hosts:
            return error_response(
                403, "origin", "requests from web pages of other origins are refused"
            )
        if not self._authorised(conn, spec):
            if "authorization" not in conn.headers and self.sessions.signed_in(conn):
                return error_response(  # a good cookie, from somewhere else than the page
                    403, "origin",
                    "signed in by the web page's session, but this request is not from "
                    "that page: a cookie-only request must come from this API's own origin "
                    "(a POST or WebSocket carries its Origin header); scripts send "
                    "Authorization: Bearer <token> instead",
                )
            return error_response(
                401,
                "unauthorised",
                "send Authorization: Bearer <token from the key directory's api-token>, "
                "or sign in to the web page through its login link (clawmesh web)",
            )
        return None

    def _page_route(self, handler: Handler) -> Handler:
        """An open page route, behind the Host and Origin checks."""

        async def route(request: Request) -> Response:
            refused = self._refused(request, _PAGE)
            return refused if refused is not None else await handler(request)

        return route

    # -- streams -------------------------------------------------------------------

    def _open_feed(self, conn: HTTPConnection, spec: Endpoint) -> EventFeed:
        """The feed a stream request asks for; ApiError for bad parameters or no room."""
        spec.check_params(list(conn.query_params.keys()))
        if self.peer.options.relay_only:
            raise ApiError(400, "relay-only", "a relay-only peer has no inbox to stream")
        wanted = message_filter(conn, self.peer.peer_id)
        cursor = start_cursor(conn, self.peer.inbox)
        if self.streams >= MAX_STREAMS:
            raise ApiError(503, "busy", f"{MAX_STREAMS} streams are open; retry shortly")
        return EventFeed(self.peer, cursor, wanted)

    def _release_stream(self) -> None:
        self.streams -= 1

    async def _sse(self, request: Request) -> Response:
        spec = BY_ROUTE[("GET", "/events")]
        refused = self._refused(request, spec)
        if refused is not None:
            return refused
        try:
            feed = self._open_feed(request, spec)
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.message)
        self.streams += 1
        return SseResponse(feed, self._release_stream)

    async def _websocket(self, ws: WebSocket) -> None:
        spec = BY_ROUTE[("GET", "/ws")]
        refused = self._refused(ws, spec)
        if refused is None:
            try:
                feed = self._open_feed(ws, spec)
            except ApiError as exc:
                refused = error_response(exc.status, exc.code, exc.message)
        if refused is not None:
            await ws.send_denial_response(refused)
            return
        self.streams += 1
        try:
            await run_websocket(ws, feed)
        finally:
            self.streams -= 1
