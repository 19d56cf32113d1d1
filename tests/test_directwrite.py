"""Direct writes and held bursts put on the wire exactly what the writer task does.

``Link.enqueue`` writes a frame to its socket at once when nothing is ahead
of it (peer/node/_link.py, peer/node/_transport.py), holds frames per link
while the link manager handles a burst of records (``Outbox``), and leaves
what the socket does not take to the link's writer as a ``Tail``. These
tests drive a link over a real loopback WebSocket (its sending socket's
buffer made small, and records up to 200 KB, so that tails happen), as
server and as client, with random mixes of single frames, held bursts and
turns for the writer, and check that the other end opens the same frames
in the same order as with direct writes off (the general path: every frame
through the writer), and that the direct path really ran.
"""

from __future__ import annotations

import hashlib
import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
import trio
import trio_websocket

from peer import Handshake, Identity
from peer.node import _transport
from peer.node._link import Link, Outbox, Tail
from peer.node._linkhost import LinkManager
from peer.node._transport import WebSocketTransport
from peer.node._websocket import serve_ws
from peer.node._wsconn import WsConnection
from peer.wire._errors import ErrorCode
from peer.wire._frames import decode_frame
from peer.wire._frametypes import Error
from peer.wire._handshake import HandshakeResult

from ._wspair import own_pair

DEADLINE = 20
SIZES = (1, 60, 125, 126, 300, 4_000, 65_535, 65_536, 70_000, 200_000)


def _results() -> tuple[HandshakeResult, HandshakeResult]:
    ids = [Identity.from_seed(hashlib.sha256(n).digest()) for n in (b"dw-i", b"dw-r")]
    ini = Handshake(ids[0], initiator=True)
    res = Handshake(ids[1], initiator=False)
    to_res = ini.start()
    while not (ini.done and res.done):
        to_ini = [out for record in to_res for out in res.receive(record)]
        to_res = [out for record in to_ini for out in ini.receive(record)]
    assert ini.result is not None and res.result is not None
    return ini.result, res.result


@asynccontextmanager
async def _ws_pair(own: bool = False) -> AsyncIterator[tuple[Any, Any]]:
    """(client, server) transports over a real loopback WebSocket (``own``: our own
    WebSocket, peer/node/_wsconn.py; else trio-websocket's under ``WebSocketTransport``)."""
    if own:
        async with own_pair() as pair:
            yield pair
        return
    accepted: list[WebSocketTransport] = []
    ready = trio.Event()

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        accepted.append(WebSocketTransport(await request.accept(), "client"))
        ready.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_ws, handler, "127.0.0.1", 0, nursery)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            async with trio.open_nursery() as client_nursery:
                ws = await trio_websocket.wrap_client_stream(
                    client_nursery,
                    stream,
                    f"127.0.0.1:{port}",
                    "/",
                    message_queue_size=64,
                    max_message_size=1 << 20,
                )
                await ready.wait()
                yield WebSocketTransport(ws, "server"), accepted[0]
                client_nursery.cancel_scope.cancel()
        finally:
            await stream.aclose()
        nursery.cancel_scope.cancel()


def _frames(rng: random.Random, count: int) -> list[bytes]:
    return [bytes([n % 251]) * rng.choice(SIZES) + n.to_bytes(4, "big") for n in range(count)]


class Counting:
    """Counts direct writes and tails, to prove the path under test ran."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cls: Any = WebSocketTransport) -> None:
        self.direct = 0
        self.tails = 0
        send_now = cls.send_now
        send_now_many = cls.send_now_many

        def one(transport: Any, record: bytes) -> bytes:
            self.direct += 1
            return self._tail(send_now(transport, record))

        def many(transport: Any, records: list[bytes]) -> bytes:
            self.direct += len(records)
            return self._tail(send_now_many(transport, records))

        monkeypatch.setattr(cls, "send_now", one)
        monkeypatch.setattr(cls, "send_now_many", many)

    def _tail(self, tail: bytes) -> bytes:
        self.tails += bool(tail)
        return tail


async def _send_and_receive(
    seed: int, sender_is_server: bool, count: int, own: bool = False
) -> list[bytes]:
    """Send ``count`` random frames in a random mix of ways; what the other end opens."""
    rng = random.Random(seed)
    frames = _frames(rng, count)
    ini, res = _results()
    got: list[bytes] = []
    with trio.fail_after(DEADLINE):
        async with _ws_pair(own) as (client, server):
            sender, receiver = (server, client) if sender_is_server else (client, server)
            raw = getattr(sender, "_raw", None) or getattr(sender, "_sock", None)
            if raw is not None:
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            outbox = Outbox()
            link = Link(ini, sender, initiator=True, opened=trio.current_time(), outbox=outbox)

            done = trio.Event()

            async def receive() -> None:
                while len(got) < count:
                    got.append(res.cipher.open(await receiver.receive()))
                done.set()

            async with trio.open_nursery() as nursery:
                link.scope = nursery.cancel_scope
                nursery.start_soon(receive)
                nursery.start_soon(LinkManager._writer, cast(Any, None), link)
                i = 0
                while i < count:
                    kind = rng.random()
                    if kind < 0.4:  # a burst, held and flushed once
                        outbox.hold()
                        for frame in frames[i : i + rng.randint(1, 20)]:
                            assert link.enqueue(frame)
                            i += 1
                        outbox.flush()
                    else:
                        assert link.enqueue(frames[i])
                        i += 1
                    if rng.random() < 0.3:
                        await trio.lowlevel.checkpoint()  # the writer may run, part-way or all
                await done.wait()
                nursery.cancel_scope.cancel()
    assert got == frames
    return got


@pytest.mark.parametrize("own", [True, False], ids=["own", "trio-websocket"])
@pytest.mark.parametrize("sender_is_server", [True, False], ids=["server", "client"])
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_direct_writes_match_the_writer_path(
    monkeypatch: pytest.MonkeyPatch, seed: int, sender_is_server: bool, own: bool
) -> None:
    counting = Counting(monkeypatch, WsConnection if own else WebSocketTransport)
    fast = await _send_and_receive(seed, sender_is_server, 120, own)
    assert counting.direct > 0, "the direct path never ran"
    assert counting.tails > 0, "no write was short: the tail path never ran"
    monkeypatch.setattr(_transport, "DIRECT_WRITES", False)
    before = counting.direct
    general = await _send_and_receive(seed, sender_is_server, 120, own)
    assert counting.direct == before  # the general path: every frame through the writer
    assert general == fast


async def test_close_while_holding_sends_the_held_frames_before_the_error() -> None:
    ini, res = _results()
    with trio.fail_after(DEADLINE):
        async with _ws_pair() as (client, server):
            outbox = Outbox()
            link = Link(ini, server, initiator=True, opened=trio.current_time(), outbox=outbox)
            outbox.hold()
            assert link.enqueue(b"one") and link.enqueue(b"two")
            link.close(ErrorCode.SLOW, "not reading fast enough")
            assert link.enqueue(b"after close")  # dropped, as with the queue
            outbox.flush()  # nothing left to flush: close queued it, ahead of its error
            queued = cast(Any, link.queue)._frames
            assert isinstance(queued[0], Tail) and len(queued) == 2
            async with trio.open_nursery() as nursery:
                link.scope = nursery.cancel_scope
                nursery.start_soon(LinkManager._writer, cast(Any, None), link)
                got = [res.cipher.open(await client.receive()) for _ in range(3)]
    assert got[:2] == [b"one", b"two"]
    error = decode_frame(got[2])
    assert isinstance(error, Error) and error.code == ErrorCode.SLOW.value


async def test_a_direct_write_waits_for_what_the_writer_holds() -> None:
    """While the writer has frames in hand, a new frame queues behind them."""
    ini, res = _results()
    with trio.fail_after(DEADLINE):
        async with _ws_pair() as (client, server):
            link = Link(ini, server, initiator=True, opened=trio.current_time())
            assert link.enqueue(b"direct")
            assert link.queue.idle  # written at once
            link.writing = True  # as while the writer holds a batch
            assert link.enqueue(b"queued")
            assert not link.queue.idle
            link.writing = False
            assert link.enqueue(b"behind")  # the queue is not empty: behind it
            async with trio.open_nursery() as nursery:
                link.scope = nursery.cancel_scope
                nursery.start_soon(LinkManager._writer, cast(Any, None), link)
                got = [res.cipher.open(await client.receive()) for _ in range(3)]
                nursery.cancel_scope.cancel()
    assert got == [b"direct", b"queued", b"behind"]


@pytest.mark.parametrize("own", [True, False], ids=["own", "trio-websocket"])
async def test_a_burst_already_read_is_handed_out_whole_and_in_order(own: bool) -> None:
    """``receive_nowait`` and ``backlog`` (what the reader gathers a burst with) agree
    with ``receive``: every record once, in order, and the backlog is seen (our own
    WebSocket parses on demand: ``receive_nowait`` hands out what was read, and there
    is never a backlog to wait for)."""
    records = [bytes([n]) * 300 for n in range(40)]
    nowait = 0
    with trio.fail_after(DEADLINE):
        async with _ws_pair(own) as (client, server):
            await client.send_many(records)
            got = [await server.receive()]
            backlog_seen = False
            while len(got) < len(records):
                queued, more = server.backlog()
                backlog_seen |= queued > 0 or more
                record = server.receive_nowait()
                if record is None:
                    assert queued == 0
                    record = await server.receive()
                else:
                    nowait += 1
                got.append(record)
            assert server.receive_nowait() is None and server.backlog() == (0, False)
    assert got == records
    assert nowait > 0
    assert backlog_seen or own
