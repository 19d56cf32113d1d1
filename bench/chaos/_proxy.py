"""A Trio TCP fault proxy that owns every link between the harness's peers.

Each ordered pair (dialer, listener) gets its own loopback port
(:meth:`FaultProxy.route`), so the proxy knows which two nodes a connection
joins without reading a byte of it. Faults:

- **partition** (:meth:`cut`/:meth:`heal`): connections between the two groups
  are closed and new ones refused (accepted, then closed at once) until healed.
- **lossy links** (:meth:`lossy`): what packet loss does to a TCP link, since
  bytes cannot be dropped inside a TCP stream without corrupting it: each
  connection, once per ``tick``, is reset with probability ``reset_p`` or
  stalled (nothing forwarded either way) for a random 0.2–2 s with
  probability ``stall_p``.

Everything is bounded: the pump reads at most 64 KiB at a time, and a pair's
open connections are tracked in a set that a cut empties.
"""

from __future__ import annotations

import random
import socket
import struct
from collections import defaultdict
from dataclasses import dataclass, field

import trio

CHUNK = 65536
TICK_S = 0.5
LINGER_RST = struct.pack("ii", 1, 0)


@dataclass
class Loss:
    reset_p: float = 0.0
    stall_p: float = 0.0


@dataclass(eq=False)
class _Conn:
    src: str
    dst: str
    scope: trio.CancelScope
    stalled_until: float = 0.0
    reset: bool = False


@dataclass
class ProxyStats:
    accepted: int = 0
    refused: int = 0
    cut: int = 0
    resets: int = 0
    stalls: int = 0

    def to_json(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass
class FaultProxy:
    nursery: trio.Nursery
    rng: random.Random
    loss: Loss = field(default_factory=Loss)
    stats: ProxyStats = field(default_factory=ProxyStats)
    _blocked: set[frozenset[str]] = field(default_factory=set)
    _conns: dict[frozenset[str], set[_Conn]] = field(default_factory=lambda: defaultdict(set))

    async def route(self, src: str, dst: str, port: int) -> int:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        local: int = listeners[0].socket.getsockname()[1]

        async def handle(stream: trio.SocketStream) -> None:
            await self._serve(stream, src, dst, port)

        self.nursery.start_soon(trio.serve_listeners, handle, listeners)
        return local

    def cut(self, group_a: set[str], group_b: set[str]) -> None:
        for a in group_a:
            for b in group_b:
                pair = frozenset((a, b))
                self._blocked.add(pair)
                for conn in self._conns.pop(pair, set()):
                    conn.scope.cancel()
                    self.stats.cut += 1

    def heal(self) -> None:
        self._blocked.clear()

    def lossy(self, loss: Loss) -> None:
        self.loss = loss

    async def _serve(self, stream: trio.SocketStream, src: str, dst: str, port: int) -> None:
        pair = frozenset((src, dst))
        async with stream:
            if pair in self._blocked:
                self.stats.refused += 1
                return
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                return  # the listener is down (killed): the dialer sees a closed link
            self.stats.accepted += 1
            async with upstream:
                with trio.CancelScope() as scope:
                    conn = _Conn(src, dst, scope)
                    self._conns[pair].add(conn)
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._pump, stream, upstream, conn)
                            nursery.start_soon(self._pump, upstream, stream, conn)
                            nursery.start_soon(self._chaos, conn)
                    finally:
                        self._conns[pair].discard(conn)
                if conn.reset:  # an RST, as a peer sees after losing too many packets
                    for s in (stream, upstream):
                        s.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream, conn: _Conn) -> None:
        try:
            while data := await src.receive_some(CHUNK):
                if conn.stalled_until > trio.current_time():
                    await trio.sleep_until(conn.stalled_until)
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        conn.scope.cancel()  # one side closed: close the other

    async def _chaos(self, conn: _Conn) -> None:
        while True:
            await trio.sleep(TICK_S)  # the fault clock itself, not a wait for an event
            draw = self.rng.random()
            if draw < self.loss.reset_p:
                self.stats.resets += 1
                conn.reset = True
                conn.scope.cancel()
                return
            if draw < self.loss.reset_p + self.loss.stall_p:
                self.stats.stalls += 1
                conn.stalled_until = trio.current_time() + self.rng.uniform(0.2, 2.0)
