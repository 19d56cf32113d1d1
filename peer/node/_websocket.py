"""WebSocket plumbing: dialling a ``ws://``/``wss://`` URL, the listener, memory links.

Rules kept here:

* ``dial_websocket`` opens and closes the TCP (or TLS) stream itself, rather
  than leaving it to trio-websocket, which skips closing it when the other
  side closed first; it never raises for a failed dial (it logs and returns
  None) and bounds connecting and the upgrade by ``HANDSHAKE_TIMEOUT``.
* ``serve_ws`` runs a listener whose connection handlers live in the nursery
  the caller gives (the peer's), and reports the bound port when started.
* Nothing here knows the protocol: it hands a ``Transport`` to a callback.
* With ``OWN_WEBSOCKET`` (the default) links run on our own WebSocket
  (``peer.node._wsconn``): ``dial_websocket`` does the client upgrade itself and
  ``serve_own`` hands the accepted TCP streams to a handler that upgrades them
  (``accept_upgrade``). False: trio-websocket does both, as in earlier releases
  (kept for one release; tests run both).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import trio
import trio.testing
import trio_websocket

from peer.wire._wsupgrade import UpgradeFailed

from ._link import HANDSHAKE_TIMEOUT
from ._transport import MESSAGE_LIMIT, RECEIVE_BUFFER, StreamTransport, WebSocketTransport
from ._wsconn import WsConnection, open_client

T = TypeVar("T")
OWN_WEBSOCKET = True  # links on our own WebSocket; False: on trio-websocket (see the header)


_DIAL_TROUBLE = (
    OSError,
    trio.TooSlowError,
    trio_websocket.HandshakeError,
    trio_websocket.ConnectionClosed,
    trio.BrokenResourceError,
    UpgradeFailed,
)


async def dial_websocket(
    url: str,
    run: Callable[[WebSocketTransport | WsConnection], Awaitable[T | None]],
    log: Any,
    on_bug: Callable[[BaseException], None] | None = None,
) -> T | None:
    """Connect to ``url`` and ``await run(transport)``; None if the dial failed.

    A failed dial is logged at debug level; anything else that escapes (a bug)
    is logged at error level and handed to ``on_bug`` to be counted.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    secure = parts.scheme == "wss"
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    stream: trio.abc.Stream | None = None
    result: T | None = None
    own: WsConnection | None = None
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            stream = await trio.open_tcp_stream(host, parts.port or (443 if secure else 80))
            if secure:
                stream = trio.SSLStream(stream, ssl.create_default_context(), server_hostname=host)
            if OWN_WEBSOCKET:
                own = await open_client(stream, _host_header(parts.hostname or "", parts.port),
                                        resource, url)
        if own is not None:
            result = await run(own)
            return result
        async with trio.open_nursery() as nursery:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                ws = await trio_websocket.wrap_client_stream(
                    nursery,
                    stream,
                    host,
                    resource,
                    max_message_size=MESSAGE_LIMIT,
                    message_queue_size=64,
                    receive_buffer_size=RECEIVE_BUFFER,
                )
            result = await run(WebSocketTransport(ws, url))
            nursery.cancel_scope.cancel()
    except _DIAL_TROUBLE as exc:
        log.debug("dial failed", dial=url, error=repr(exc))
    except ExceptionGroup as group:  # trio-websocket may wrap close errors
        _, bugs = group.split(_DIAL_TROUBLE)
        if bugs is None:
            log.debug("dial failed", dial=url, error=repr(group))
        else:
            log.error("dial crashed", dial=url, error=repr(bugs), exc_info=bugs)
            if on_bug is not None:
                on_bug(bugs)
    finally:
        if stream is not None:
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await stream.aclose()
    return result


def _host_header(host: str, port: int | None) -> str:
    name = f"[{host}]" if ":" in host else host
    return name if port is None else f"{name}:{port}"


async def serve_own(
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    host: str,
    port: int,
    handler_nursery: trio.Nursery,
    *,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept TCP connections on ``host:port`` for ``handler`` (which upgrades them
    itself, ``peer.node._wsconn.accept_upgrade``), in ``handler_nursery``."""
    listeners = await _listeners(host, port, reuse_port)
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handler, listeners, handler_nursery=handler_nursery)


async def serve_ws(
    handler: Callable[[trio_websocket.WebSocketRequest], Awaitable[None]],
    host: str,
    port: int,
    handler_nursery: trio.Nursery,
    *,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    listeners = await _listeners(host, port, reuse_port)
    server = trio_websocket.WebSocketServer(
        handler,
        listeners,
        handler_nursery=handler_nursery,
        message_queue_size=64,
        max_message_size=MESSAGE_LIMIT,
        connect_timeout=HANDSHAKE_TIMEOUT,
        disconnect_timeout=2,
        receive_buffer_size=RECEIVE_BUFFER,
    )
    bound = listeners[0].socket.getsockname()[1]
    task_status.started(bound)
    await server.run()


async def _listeners(host: str, port: int, reuse_port: bool) -> list[trio.SocketListener]:
    if reuse_port:  # one of the workers of a seed (peer.cli._workers): the kernel spreads
        return await reuse_port_listeners(host, port)
    return await trio.open_tcp_listeners(port, host=host)


async def reuse_port_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """A listener on ``host:port`` with ``SO_REUSEPORT``: several processes that each
    open one share the port, and the kernel hands each its share of connections."""
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
    try:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
        await sock.bind((host, port))
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    return [trio.SocketListener(sock)]


def is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip in ("::1", "[::1]", "localhost")


def describe_remote(request: trio_websocket.WebSocketRequest) -> str:
    remote = request.remote
    if isinstance(remote, str):
        return remote
    return f"{remote.address}:{remote.port}"


def memory_link_pair(
    remote_a: str = "mem-a", remote_b: str = "mem-b"
) -> tuple[StreamTransport, StreamTransport]:
    """Two transports joined by Trio memory streams, for in-process meshes."""
    a, b = trio.testing.memory_stream_pair()
    return StreamTransport(a, remote_b), StreamTransport(b, remote_a)
