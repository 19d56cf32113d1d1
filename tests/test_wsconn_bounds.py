"""Our WebSocket under the cases a review found: a pong never lands inside the rest of
a half-sent direct write, a message held in fragments costs about its limit however it
is cut, a flood of pings costs one write per read, and ``aclose`` closes the stream even
when it is called in a cancelled scope."""

from __future__ import annotations

import contextlib
import socket
import sys

import pytest
import trio
import trio.testing

from peer.node._wsconn import WsClosed, WsConnection
from peer.wire._wsframes import (
    CLOSE_TOO_BIG,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    FrameReader,
    WsFrameError,
    close_payload,
    encode_frame,
)

MASK = b"\x11\x22\x33\x44"


def _pair(small: bool = False) -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    sa, sb = trio.socket.socketpair()
    if small:
        sa.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sb.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sa, sb


def _events(data: bytes) -> list[tuple[int | str, int]]:
    reader = FrameReader(server=False, limit=4 << 20)
    reader.feed(data)
    out: list[tuple[int | str, int]] = []
    try:
        while (event := reader.next()) is not None:
            out.append((event[0], len(event[1])))
    except WsFrameError as exc:
        out.append(("error", exc.code))
    return out


async def test_a_pong_waits_for_the_rest_of_a_half_sent_frame() -> None:
    sa, sb = _pair(small=True)
    server = WsConnection(trio.SocketStream(sa), client=False, remote="x")
    client = trio.SocketStream(sb)
    record = bytes(range(256)) * 4096  # 1 MiB: the kernel takes part of it
    assert server.ready()
    tail = server.send_now(record)
    assert tail and not server.ready()  # the rest is owed: no direct write meanwhile
    got = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.receive)
        await client.send_all(encode_frame(OP_PING, b"p", MASK))
        with trio.fail_after(10):
            await trio.testing.wait_all_tasks_blocked()  # the reader met the ping
        assert server._pong == b"p"  # owed after the rest of the frame
        drained = trio.Event()

        async def drain() -> None:
            while data := await client.receive_some(65536):
                got.extend(data)
                if len(got) >= len(record) + 10 + 3:
                    drained.set()
                    return

        nursery.start_soon(drain)
        await server.send_raw(tail)  # what the link's writer does with the Tail
        assert server.ready()
        with trio.fail_after(10):
            await drained.wait()
        nursery.cancel_scope.cancel()
    assert _events(bytes(got)) == [(OP_BINARY, len(record)), (OP_PONG, 1)]
    await server.abort()
    await client.aclose()


@pytest.mark.parametrize("size", [0, 1])
def test_a_message_in_tiny_fragments_is_refused_near_its_limit(size: int) -> None:
    limit = 64 * 1024
    reader = FrameReader(server=True, limit=limit)
    reader.feed(bytes([0x02, 0x80 | size]) + MASK + b"x" * size)  # binary, not final
    assert reader.next() is None
    fragment = bytes([0x00, 0x80 | size]) + MASK + b"x" * size  # continuation
    with pytest.raises(WsFrameError) as refused:
        for _ in range(limit):
            reader.feed(fragment * 64)
            assert reader.next() is None
            parts = reader._parts or []
            held = sys.getsizeof(parts) + sum(sys.getsizeof(p) for p in parts)
            assert held < 2 * limit
    assert refused.value.code == CLOSE_TOO_BIG


async def test_a_flood_of_pings_costs_a_write_per_read_not_per_ping() -> None:
    sa, sb = _pair()
    server = WsConnection(trio.SocketStream(sa), client=False, remote="x")
    client = trio.SocketStream(sb)
    writes = 0
    send_all = server._stream.send_all

    async def counting(data: bytes | bytearray | memoryview) -> None:
        nonlocal writes
        writes += 1
        await send_all(data)

    server._stream.send_all = counting  # type: ignore[method-assign]
    flood = encode_frame(OP_PING, b"", MASK) * 20_000 + encode_frame(OP_BINARY, b"end", MASK)
    async with trio.open_nursery() as nursery:

        async def drain() -> None:
            while await client.receive_some(1 << 16):
                pass

        nursery.start_soon(drain)
        await client.send_all(flood)
        with trio.fail_after(10):
            assert await server.get_message() == b"end"
        nursery.cancel_scope.cancel()
    assert writes < 100  # one pong per read at most (it was one per ping: 20,000)
    await server.abort()
    await client.aclose()


async def test_aclose_in_a_cancelled_scope_still_closes_the_stream() -> None:
    sa, sb = _pair()
    server = WsConnection(trio.SocketStream(sa), client=False, remote="x")
    with trio.CancelScope() as scope:
        scope.cancel()
        await server.aclose()
    assert sa.fileno() == -1
    sb.close()


async def test_after_a_frame_cut_in_two_nothing_more_is_written() -> None:
    sa, sb = _pair(small=True)
    server = WsConnection(trio.SocketStream(sa), client=False, remote="x")
    started: list[int] = []
    send_all = server._stream.send_all

    async def spy(data: bytes | bytearray | memoryview) -> None:
        started.append(len(data))
        await send_all(data)

    server._stream.send_all = spy  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:

        async def big() -> None:
            with trio.move_on_after(0.2), contextlib.suppress(WsClosed):
                await server.send(b"x" * (1 << 20))  # nobody reads: cut part-way

        nursery.start_soon(big)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(WsClosed), trio.fail_after(5):  # parked behind it, then refused
            await server.send(b"after")
    assert len(started) == 1
    await server.abort()
    sb.close()


async def test_nothing_follows_our_close_frame_not_even_a_pong() -> None:
    sa, sb = _pair()
    server = WsConnection(trio.SocketStream(sa), client=False, remote="x")
    client = trio.SocketStream(sb)
    await client.send_all(encode_frame(OP_PING, b"p", MASK)
                          + encode_frame(OP_CLOSE, close_payload(1000, ""), MASK))
    with pytest.raises(WsClosed), trio.fail_after(5):
        await server.receive()
    got = bytearray()
    with trio.fail_after(5):
        while data := await client.receive_some(65536):
            got += data
    events = _events(bytes(got))
    close_at = [kind for kind, _ in events].index(OP_CLOSE)
    assert events[close_at + 1 :] == []  # the pong, if any, went before it
    await client.aclose()


async def test_aclose_sends_the_rest_of_a_half_sent_frame_before_its_close_frame() -> None:
    sa, sb = _pair(small=True)
    server = WsConnection(trio.SocketStream(sa), client=False, remote="x")
    client = trio.SocketStream(sb)
    record = b"y" * (1 << 20)
    assert server.send_now(record)  # the link's writer will never send the rest
    got = bytearray()
    async with trio.open_nursery() as nursery:

        async def drain() -> None:
            while data := await client.receive_some(1 << 16):
                got.extend(data)
                if _events(bytes(got))[-1:] == [(OP_CLOSE, 2)]:
                    await client.send_all(encode_frame(OP_CLOSE, close_payload(1000, ""), MASK))
                    return

        nursery.start_soon(drain)
        with trio.fail_after(5):
            await server.aclose()
    assert _events(bytes(got)) == [(OP_BINARY, len(record)), (OP_CLOSE, 2)]
    await client.aclose()


def test_a_message_in_large_fragments_is_taken_up_to_its_limit() -> None:
    limit = 320 * 1024
    reader = FrameReader(server=True, limit=limit)
    part = limit // 20
    frames = b"".join(
        encode_frame_fragment(i == 0, i == 19, b"z" * part) for i in range(20)
    )
    reader.feed(frames)
    event = reader.next()
    assert event is not None and event[0] == OP_BINARY and len(event[1]) == 20 * part


def encode_frame_fragment(first: bool, last: bool, payload: bytes) -> bytes:
    """One masked fragment (a client's) of a binary message."""
    head = bytes([(0x80 if last else 0) | (OP_BINARY if first else 0)])
    size = len(payload)
    head += bytes([0x80 | 126]) + size.to_bytes(2, "big") if size < 1 << 16 else (
        bytes([0x80 | 127]) + size.to_bytes(8, "big"))
    masked = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return head + MASK + masked
