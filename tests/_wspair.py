"""Pairs of our own WebSocket connections (peer/node/_wsconn.py) over loopback TCP.

``own_pair`` upgrades a loopback TCP connection with our client and our
server; ``own_server`` runs our listener side alone (each accepted
connection goes to a callback), for tests that bring another client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from peer.node._websocket import serve_own
from peer.node._wsconn import WsConnection, accept_upgrade, open_client


@asynccontextmanager
async def own_server(
    on_conn: Callable[[WsConnection], Awaitable[None]],
) -> AsyncIterator[int]:
    """Our listener on a free loopback port (yielded); each upgraded connection is
    handed to ``on_conn`` in its own task, and its stream closed after."""

    async def handler(stream: trio.SocketStream) -> None:
        try:
            with trio.fail_after(10):
                conn = await accept_upgrade(stream, "client")
            await on_conn(conn)
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_own, handler, "127.0.0.1", 0, nursery)
        yield port
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def own_pair() -> AsyncIterator[tuple[WsConnection, WsConnection]]:
    """(client, server): both ends our own connection."""
    accepted: list[WsConnection] = []
    ready = trio.Event()

    async def keep(conn: WsConnection) -> None:
        accepted.append(conn)
        ready.set()
        await trio.sleep_forever()

    async with own_server(keep) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            client = await open_client(stream, f"127.0.0.1:{port}", "/", "server")
            await ready.wait()
            yield client, accepted[0]
        finally:
            await trio.aclose_forcefully(stream)
