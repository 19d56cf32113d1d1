"""The ceilings: forwarders with no protocol, ``python -m bench._forwarder --kind K``.

* ``ws`` (system ``ws-raw``): WebSocket framed by hand (``bench._ws``). Each
  message from the publisher is framed once and the same bytes are written to
  every sink in turn, straight to its socket (see ``Sinks``): the least a Trio
  WebSocket relay can do per delivery.
* ``ws-trio``: the same forwarding through trio-websocket, the library the
  peer uses (one ``send_message`` per sink): the cost of the library alone.
* ``tcp`` (system ``tcp-raw``): plain TCP, records prefixed by a 4-byte length;
  each record is written unchanged to every sink.

A connection says what it is first (WebSocket: a text message ``sub`` or
``pub``; TCP: one byte ``S`` or ``P``) and is answered once it is registered
(``ok`` / ``K``). ``--upstream HOST:PORT`` makes the forwarder a sink of
another forwarder and forward what it gets, for line topologies. One source
feeds the sinks at a time (the publisher, or the upstream): that is all a
benchmark needs and it keeps writes to a sink from interleaving.

Prints ``{"ev": "ready", "port": P}`` on stdout when it listens; stops on SIGINT
or SIGTERM.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import socket
import struct
from collections.abc import Sequence

import trio
import trio_websocket

from . import _ws

MAX_MESSAGE = 1024 * 1024
RECEIVE_BYTES = 256 * 1024
_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError)


class Sinks:
    """The registered sink streams; a write that fails drops that sink.

    A write goes straight to each sink's socket with one non-blocking ``send``
    (a duplicate of the stream's descriptor) and only falls back to Trio's
    ``send_all`` for what the kernel did not take, so the forwarder pays one
    system call per delivery and one Trio checkpoint per message, not one
    scheduler round per delivery: the least a Trio forwarder can do.
    """

    def __init__(self) -> None:
        self.streams: list[trio.SocketStream] = []
        self._raw: dict[trio.SocketStream, socket.socket] = {}

    def add(self, stream: trio.SocketStream) -> None:
        raw = socket.socket(fileno=os.dup(stream.socket.fileno()))
        raw.setblocking(False)
        self._raw[stream] = raw
        self.streams.append(stream)

    async def write(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        for stream in tuple(self.streams):
            raw = self._raw.get(stream)
            try:
                sent = raw.send(data) if raw is not None else 0
            except BlockingIOError:
                sent = 0
            except OSError:
                self.remove(stream)
                continue
            if sent == len(data):
                continue
            try:  # the kernel took part of it: the rest in order, waiting as needed
                await stream.send_all(memoryview(data)[sent:])
            except _BROKEN:
                self.remove(stream)

    def remove(self, stream: trio.SocketStream) -> None:
        if stream in self.streams:
            self.streams.remove(stream)
        raw = self._raw.pop(stream, None)
        if raw is not None:
            raw.close()


# -- ws (hand-framed) ------------------------------------------------------------------


async def _ws_source(stream: trio.SocketStream, parser: _ws.FrameParser, sinks: Sinks,
                     pending: list[tuple[int, bytes]]) -> None:
    """Forward every binary message read from ``stream`` to the sinks."""
    frames = pending
    while True:
        for op, payload in frames:
            if op == _ws.OP_BINARY:
                await sinks.write(_ws.encode(payload))
            elif op == _ws.OP_PING:
                await stream.send_all(_ws.encode(payload, _ws.OP_PONG))
            elif op == _ws.OP_CLOSE:
                return
        data = await stream.receive_some(RECEIVE_BYTES)
        if not data:
            return
        frames = parser.feed(data)


async def _ws_handler(stream: trio.SocketStream, sinks: Sinks) -> None:
    try:
        rest = await _ws.server_handshake(stream)
        parser = _ws.FrameParser(MAX_MESSAGE)
        frames = parser.feed(rest)
        while not frames:
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:
                return
            frames = parser.feed(data)
        op, role = frames.pop(0)
        if op != _ws.OP_TEXT or role not in (b"sub", b"pub"):
            return
        await stream.send_all(_ws.encode(b"ok", _ws.OP_TEXT))
        if role == b"pub":
            await _ws_source(stream, parser, sinks, frames)
            return
        sinks.add(stream)
        try:
            while await stream.receive_some(RECEIVE_BYTES):
                pass  # a sink says nothing more; reading notices when it leaves
        finally:
            sinks.remove(stream)
    except (_ws.WsError, *_BROKEN):
        pass
    finally:
        sinks.remove(stream)
        with trio.move_on_after(1):
            await stream.aclose()


async def _ws_upstream(host: str, port: int, sinks: Sinks) -> None:
    stream = await trio.open_tcp_stream(host, port)
    rest = await _ws.client_handshake(stream, host, port)
    parser = _ws.FrameParser(MAX_MESSAGE)
    await stream.send_all(_ws.encode(b"sub", _ws.OP_TEXT, client=True))
    frames = parser.feed(rest)
    while not any(op == _ws.OP_TEXT for op, _ in frames):
        data = await stream.receive_some(RECEIVE_BYTES)
        if not data:
            return
        frames += parser.feed(data)
    frames = [f for f in frames if f[0] != _ws.OP_TEXT]
    await _ws_source(stream, parser, sinks, frames)


# -- tcp ------------------------------------------------------------------------------------


async def _tcp_source(stream: trio.SocketStream, sinks: Sinks, buf: bytearray) -> None:
    while True:
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            (size,) = struct.unpack_from(">I", buf, pos)
            if size > MAX_MESSAGE:
                return
            if end - pos - 4 < size:
                break
            await sinks.write(bytes(buf[pos : pos + 4 + size]))  # the record as it came
            pos += 4 + size
        if pos:
            del buf[:pos]
        data = await stream.receive_some(RECEIVE_BYTES)
        if not data:
            return
        buf += data


async def _tcp_handler(stream: trio.SocketStream, sinks: Sinks) -> None:
    try:
        first = await stream.receive_some(RECEIVE_BYTES)
        if not first or first[:1] not in (b"S", b"P"):
            return
        await stream.send_all(b"K")
        if first[:1] == b"P":
            await _tcp_source(stream, sinks, bytearray(first[1:]))
            return
        sinks.add(stream)
        try:
            while await stream.receive_some(RECEIVE_BYTES):
                pass
        finally:
            sinks.remove(stream)
    except _BROKEN:
        pass
    finally:
        sinks.remove(stream)
        with trio.move_on_after(1):
            await stream.aclose()


async def _tcp_upstream(host: str, port: int, sinks: Sinks) -> None:
    stream = await trio.open_tcp_stream(host, port)
    await stream.send_all(b"S")
    first = await stream.receive_some(RECEIVE_BYTES)
    if first[:1] != b"K":
        return
    await _tcp_source(stream, sinks, bytearray(first[1:]))


# -- ws-trio (trio-websocket) ----------------------------------------------------------------


async def _serve_ws_trio(host: str, port: int, upstream: tuple[str, int] | None,
                         task_status: trio.TaskStatus[int]) -> None:
    sinks: set[trio_websocket.WebSocketConnection] = set()

    async def forward(ws: trio_websocket.WebSocketConnection) -> None:
        while True:
            message = await ws.get_message()
            for sink in tuple(sinks):
                try:
                    await sink.send_message(message)
                except trio_websocket.ConnectionClosed:
                    sinks.discard(sink)

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            role = await ws.get_message()
            await ws.send_message("ok")
            if role == "pub":
                await forward(ws)
            elif role == "sub":
                sinks.add(ws)
                while True:
                    await ws.get_message()
        except trio_websocket.ConnectionClosed:
            pass
        finally:
            sinks.discard(ws)

    async with trio.open_nursery() as nursery:
        serve = functools.partial(
            trio_websocket.serve_websocket, handler, host, port, None,
            message_queue_size=64, max_message_size=MAX_MESSAGE,  # as the peer configures it
        )
        server = await nursery.start(serve)
        if upstream is not None:
            url = f"ws://{upstream[0]}:{upstream[1]}/"
            ws_up = await trio_websocket.connect_websocket_url(nursery, url)
            await ws_up.send_message("sub")
            await ws_up.get_message()
            nursery.start_soon(forward, ws_up)
        task_status.started(server.port)


# -- entry ---------------------------------------------------------------------------------


async def _serve_stream(kind: str, host: str, port: int, upstream: tuple[str, int] | None,
                        task_status: trio.TaskStatus[int]) -> None:
    sinks = Sinks()
    handler = _ws_handler if kind == "ws" else _tcp_handler

    async def handle(stream: trio.SocketStream) -> None:
        await handler(stream, sinks)

    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound: int = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, handle, listeners)
        if upstream is not None:
            source = _ws_upstream if kind == "ws" else _tcp_upstream
            nursery.start_soon(source, upstream[0], upstream[1], sinks)
        task_status.started(bound)


async def run(kind: str, host: str, port: int, upstream: tuple[str, int] | None) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            serve = _serve_ws_trio if kind == "ws-trio" else None
            if serve is not None:
                bound = await nursery.start(serve, host, port, upstream)
            else:
                bound = await nursery.start(_serve_stream, kind, host, port, upstream)
            print(json.dumps({"ev": "ready", "port": bound}), flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if host not in ("127.0.0.1", "localhost"):
        raise SystemExit("forwarders listen and dial on loopback only")
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench._forwarder",
                                description="a forwarder with no protocol (a benchmark ceiling)")
    p.add_argument("--kind", choices=["ws", "ws-trio", "tcp"], required=True)
    p.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT")
    p.add_argument("--upstream", default=None, metavar="HOST:PORT",
                   help="subscribe to this forwarder and forward what it sends")
    args = p.parse_args(argv)
    host, port = _hostport(args.listen)
    upstream = _hostport(args.upstream) if args.upstream else None
    trio.run(run, args.kind, host, port, upstream)


if __name__ == "__main__":
    main()
