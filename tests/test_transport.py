"""``WebSocketTransport`` over a real loopback WebSocket, both ends in this process.

Once the upgrade is done the transport lets trio-websocket keep only wsproto's
frame-level ``Connection`` (a relay holds many idle links); records, batches,
pings and the close must still work on both sides.
"""

from __future__ import annotations

import trio
import trio_websocket
from wsproto.connection import Connection

from peer.node._transport import TransportClosed, WebSocketTransport
from peer.node._websocket import serve_ws

DEADLINE = 10


async def test_an_upgraded_link_keeps_only_the_frame_level_state() -> None:
    server_side: list[WebSocketTransport] = []
    got_server: list[bytes] = []
    server_ready = trio.Event()
    server_done = trio.Event()
    got_three = trio.Event()

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        transport = WebSocketTransport(await request.accept(), "client")
        server_side.append(transport)
        server_ready.set()
        try:
            while True:
                got_server.append(await transport.receive())
                if len(got_server) == 3:
                    got_three.set()
        except TransportClosed:
            server_done.set()

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_ws, handler, "127.0.0.1", 0, nursery)
            async with trio_websocket.open_websocket("127.0.0.1", port, "/", use_ssl=False) as ws:
                client = WebSocketTransport(ws, "server")
                await server_ready.wait()
                server = server_side[0]
                for end in (client, server):
                    wsproto_state: object = end._ws._wsproto
                    assert type(wsproto_state) is Connection
                assert ws.is_client and not server._ws.is_client

                # server to client: one record, then a batch (its own framing)
                await server.send(b"one")
                await server.send_many([b"two", b"x" * 200, b"y" * 70_000])
                assert [await client.receive() for _ in range(4)] == [
                    b"one",
                    b"two",
                    b"x" * 200,
                    b"y" * 70_000,
                ]
                # client to server: a batch framed by wsproto's Connection
                await client.send_many([b"a", b"b" * 300])
                await client.send(b"c")
                await ws.ping(b"still there?")  # answered by the server's reader
                await got_three.wait()
                assert got_server == [b"a", b"b" * 300, b"c"]

                await client.aclose()
                await server_done.wait()
                try:
                    await server.send(b"after the close")
                except TransportClosed:
                    pass
                else:
                    raise AssertionError("a closed link took a record")
            nursery.cancel_scope.cancel()
