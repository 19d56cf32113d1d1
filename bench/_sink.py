"""The load generator's sink process: ``--conns`` subscriber connections of one system.

A sink must never be what limits a fan-out figure, so in ``fanout`` mode it
does the least a correct subscriber can do (the counting sink):

* after the connections have subscribed, their sockets are read directly,
  non-blocking, up to 1 MiB a read: the sink waits until one of them is
  readable (one epoll set for all), lets data pile up for a tick (1 to 8 ms,
  longer while reads stay small), then empties every ready one, so one read
  takes many records and the sink wakes up at most a few hundred times a
  second, not once per message;
* ``bench._count`` cuts the stream at record boundaries and counts the records
  of a measured message's exact shape (the publisher says which sizes it
  prepared; the harness passes them on with ``expect``); every
  ``--check-every``-th one, the first included, is checked fully: for clawmesh
  decrypted with the link cipher, decoded, its envelope validated and its
  signature verified, then its body; for the others its body;
* every other record (warm-up messages are of another size on purpose, pings,
  control frames) takes the connection's general path, which answers pings.

In ``latency`` and ``idle`` mode every message takes the general path and is
timestamped on arrival, as latency needs. Commands on stdin: ``expect SIZES``
(fanout), ``stop``. Events on stdout: ``opened`` (every OPENED_EVERY connections up), ``ready``,
``warm``, ``progress``, ``done``.

Every connection is read from the moment it has subscribed (the general path
until the counting path takes over), so its pings are answered while the
process still opens the others: a relay never closes an early link as silent.
At most ``--connect-concurrency`` connections handshake at once.
"""

from __future__ import annotations

import argparse
import os
import select
import socket

import trio

from ._clients import connect
from ._conn import (
    KIND_MEASURED,
    KIND_OFFSET,
    KIND_WARMUP,
    MARK,
    MAX_PENDING,
    STAMP_OFFSET,
    Closed,
    Conn,
    now_ns,
)
from ._count import CHECK, SKIP, CountError, Event, RecordCounter, Shape
from ._genio import cpu_seconds, emit, percentiles, stdin_lines

PROGRESS_INTERVAL = 0.01
CONNECT_CONCURRENCY = 16  # handshakes in flight per sink process (--connect-concurrency)
OPENED_EVERY = 100  # connections between two ``opened`` events
RECV_BYTES = 1024 * 1024
TICK = 0.001  # seconds to let data pile up between reading rounds (see next_tick)
IDLE_TICK = 0.008  # at most, while reads stay small
BUSY_READ = 64 * 1024  # a read this large means more is waiting: go round again at once
SMALL_READ = 4 * 1024  # reads smaller than this on average: wait longer next time


class SinkState:
    def __init__(self, conns: int, latency: bool, max_samples: int) -> None:
        self.counts = [0] * conns
        self.warm = [False] * conns
        self.warm_count = 0
        self.first_ns = 0
        self.last_ns = 0
        self.latency = latency
        self.max_samples = max_samples
        self.samples: list[int] = []
        self.unknown = 0
        self.checked = 0
        self.check_failed = 0
        self.others = 0
        self.errors: list[str] = []
        self.warm_event = trio.Event()
        self.expect_event = trio.Event()

    def classify(self, i: int, payloads: list[bytes], now: int) -> int:
        """Count the measured messages among ``payloads`` (general path); mark warm-ups."""
        measured = 0
        for payload in payloads:
            j = payload.find(MARK)
            if j < 0:
                self.unknown += 1
                continue
            kind = payload[j + KIND_OFFSET]
            if kind == KIND_MEASURED:
                measured += 1
                if self.latency and len(self.samples) < self.max_samples:
                    stamp = int(payload[j + STAMP_OFFSET : j + STAMP_OFFSET + 20])
                    self.samples.append(now - stamp)
            elif kind == KIND_WARMUP and not self.warm[i]:
                self.warm[i] = True
                self.warm_count += 1
                if self.warm_count == len(self.warm):
                    self.warm_event.set()
        return measured

    def arrived(self, i: int, measured: int, now: int) -> None:
        if measured:
            self.counts[i] += measured
            if not self.first_ns:
                self.first_ns = now
            self.last_ns = now


# -- the general path (latency, idle) ----------------------------------------------------


async def _read_conn(i: int, conn: Conn, st: SinkState) -> None:
    try:
        while True:
            batch = await conn.receive()
            now = now_ns()
            st.arrived(i, st.classify(i, batch, now), now)
    except Closed as exc:
        st.errors.append(f"connection {i}: {exc}")


# -- the counting path (fanout) ------------------------------------------------------------


class _Counted:
    """One connection read by the counting sink."""

    def __init__(self, i: int, conn: Conn, check_every: int) -> None:
        self.i = i
        self.conn = conn
        every = check_every if conn.skippable() else 1  # else decrypt every record
        self.counter = RecordCounter(conn.split, every, MAX_PENDING)
        self.shapes: dict[int, Shape] = {}
        self.sock = socket.socket(fileno=os.dup(conn.stream.socket.fileno()))
        self.sock.setblocking(False)
        self.pending = conn.take_pending()

    def expect(self, sizes: list[int]) -> None:
        shapes = [self.conn.shape(size) for size in sizes]
        self.shapes = {s.length: s for s in shapes}
        self.counter.expect(shapes)

    async def apply(self, events: list[Event], st: SinkState, now: int) -> int:
        """Act on the counter's events; how many measured messages they held."""
        measured = 0
        for kind, value in events:
            if kind == SKIP:
                assert isinstance(value, int)
                self.conn.skip(value)
                measured += value
            elif kind == CHECK:
                assert isinstance(value, bytes)
                why = self.conn.check(value, self.shapes[len(value)])
                st.checked += 1
                if why is None:
                    measured += 1
                else:
                    st.check_failed += 1
                    if len(st.errors) < 20:
                        st.errors.append(f"connection {self.i}: check failed: {why}")
            else:
                assert isinstance(value, bytes)
                st.others += 1
                measured += st.classify(self.i, await self.conn.handle(value), now)
        return measured

    async def read_all(self, view: memoryview, st: SinkState) -> int:
        """Read what the kernel holds for this connection; the bytes read."""
        total = 0
        if self.pending:
            data, self.pending = self.pending, b""
            st.arrived(self.i, await self.apply(self.counter.feed(data), st, now_ns()), now_ns())
        while True:
            try:
                n = self.sock.recv_into(view)
            except BlockingIOError:
                return total
            except OSError as exc:
                raise Closed(f"receive failed: {exc!r}") from None
            if n == 0:
                raise Closed("server closed the connection")
            total += n
            now = now_ns()
            try:
                events = self.counter.feed(view[:n])
            except CountError as exc:
                raise Closed(str(exc)) from None
            st.arrived(self.i, await self.apply(events, st, now), now)
            if n < len(view):
                return total


def next_tick(tick: float, per_read: float) -> float:
    """How long to let data pile up before the next round, from the bytes an
    average read took in the last one: at once if reads come back large, TICK
    if they are middling, longer (up to IDLE_TICK) while they stay small, a
    little shorter in between. A socket holds ~64 KiB before its sender has to
    wait (loopback, before autotuning), so reads are kept well below that."""
    if per_read >= BUSY_READ:
        return 0.0
    if per_read >= SMALL_READ * 4:
        return TICK
    if per_read < SMALL_READ:
        return min(IDLE_TICK, max(tick, TICK) * 1.5)
    return max(TICK, tick / 1.5)


async def _count_loop(items: list[_Counted], st: SinkState) -> None:
    """Wait until some connection is readable (one epoll set for all of them), let
    data pile up for a tick, then read every ready connection until it is empty."""
    view = memoryview(bytearray(RECV_BYTES))
    live = {item.sock.fileno(): item for item in items}
    with select.epoll() as ready:
        for fd in list(live):
            ready.register(fd, select.EPOLLIN)
            await _read_one(live, fd, ready, view, st)  # bytes read before the loop
        tick = TICK
        while live:
            await trio.lowlevel.wait_readable(ready.fileno())
            await trio.sleep(tick)
            total = reads = 0
            for fd, _ in ready.poll(0):
                total += await _read_one(live, fd, ready, view, st)
                reads += 1
            tick = next_tick(tick, total / reads if reads else 0.0)


async def _read_one(live: dict[int, _Counted], fd: int, ready: select.epoll,
                    view: memoryview, st: SinkState) -> int:
    """Read connection ``fd`` empty; a connection that fails is dropped and noted."""
    item = live.get(fd)
    if item is None:
        return 0
    try:
        return await item.read_all(view, st)
    except Closed as exc:
        st.errors.append(f"connection {item.i}: {exc}")
        ready.unregister(fd)
        del live[fd]
        item.sock.close()
        return 0


# -- the process ------------------------------------------------------------------------------


async def _keepalive(i: int, conn: Conn, st: SinkState) -> None:
    """Before the counting path takes over: read, answer pings, count what arrives.

    Only the wait for bytes can be cancelled (when the counting path starts);
    handling what was read is shielded, so a pong is never cut in half and
    nothing read is dropped (a partial record stays in the parser for
    ``take_pending``)."""
    try:
        while True:
            data = await conn._read()
            with trio.CancelScope(shield=True):
                now = now_ns()
                st.arrived(i, st.classify(i, await conn.handle(data), now), now)
    except Closed as exc:
        st.errors.append(f"connection {i}: {exc}")


async def _open_all(args: argparse.Namespace, st: SinkState, counting: bool,
                    readers: trio.Nursery) -> list[Conn] | None:
    """Open and subscribe ``--conns`` connections, at most ``--connect-concurrency`` in
    flight; each is read from the moment it is up (answering pings), so a link
    opened early is never silent while later ones handshake."""
    conns: list[Conn | None] = [None] * args.conns
    limiter = trio.CapacityLimiter(max(1, args.connect_concurrency))
    opened = 0

    async def open_one(i: int) -> None:
        nonlocal opened
        async with limiter:
            conn = await connect(args.proto, args.host, args.port, plaintext=args.plaintext)
            await conn.subscribe(args.topic)
            conns[i] = conn
            readers.start_soon(_keepalive if counting else _read_conn, i, conn, st)
            opened += 1
            if opened % OPENED_EVERY == 0:
                emit("opened", conns=opened)

    failed: list[str] = []
    try:
        async with trio.open_nursery() as opening:
            for i in range(args.conns):
                opening.start_soon(open_one, i)
    except* (Closed, trio.TooSlowError) as group:
        failed.extend(repr(e) for e in group.exceptions)
    if failed:
        emit("error", stage="connect", error=failed[0], failures=len(failed))
        return None
    return [c for c in conns if c is not None]


async def _commands(commands: trio.MemoryReceiveChannel[str], items: list[_Counted],
                    st: SinkState) -> None:
    async for command in commands:
        if command == "stop":
            return
        words = command.split()
        if words and words[0] == "expect":
            sizes = [int(x) for x in (words[1] if len(words) > 1 else "").split(",") if x]
            for item in items:
                item.expect(sizes)
            st.expect_event.set()


async def sink_main(args: argparse.Namespace) -> None:
    cpu0 = cpu_seconds()
    st = SinkState(args.conns, args.mode == "latency", args.max_samples)
    counting = args.mode == "fanout"
    commands_send, commands = trio.open_memory_channel[str](64)
    with trio.move_on_after(args.timeout):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stdin_lines, commands_send)
            async with trio.open_nursery() as keepalive:  # counting: until it takes over
                conns = await _open_all(args, st, counting, keepalive if counting else nursery)
                keepalive.cancel_scope.cancel()
            if conns is None:
                nursery.cancel_scope.cancel()
                return
            emit("ready", conns=args.conns, connect_s=round(cpu_seconds() - cpu0, 3),
                 counting=counting)
            items: list[_Counted] = []
            if counting:
                items = [_Counted(i, c, args.check_every) for i, c in enumerate(conns)]
                nursery.start_soon(_count_loop, items, st)
            else:
                st.expect_event.set()

            async def report_warm() -> None:
                await st.warm_event.wait()
                await st.expect_event.wait()  # counting: never go before the shapes are known
                emit("warm")

            async def progress() -> None:
                last: tuple[int, int] | None = None
                while True:
                    await trio.sleep(PROGRESS_INTERVAL)
                    now = (min(st.counts), sum(st.counts))
                    if now != last:
                        emit("progress", min=now[0], sum=now[1], errors=len(st.errors))
                        last = now

            nursery.start_soon(report_warm)
            nursery.start_soon(progress)
            await _commands(commands, items, st)
            nursery.cancel_scope.cancel()
    _report_done(args, st, cpu0, counting)


def _report_done(args: argparse.Namespace, st: SinkState, cpu0: float, counting: bool) -> None:
    samples = st.samples
    emit(
        "done",
        conns=args.conns,
        counts_min=min(st.counts),
        counts_max=max(st.counts),
        received=sum(st.counts),
        first_ns=st.first_ns,
        last_ns=st.last_ns,
        latency_ns=percentiles(samples, (50, 90, 99, 99.9, 100)),
        latency_samples=len(samples),
        latency_mean_ns=(sum(samples) / len(samples)) if samples else None,
        latency_values_us=[round(s / 1000, 1) for s in samples] if args.return_samples else [],
        unknown=st.unknown,
        counting=counting,
        checked=st.checked,
        check_failed=st.check_failed,
        others=st.others,
        errors=st.errors[:20],
        error_count=len(st.errors),
        cpu_s=round(cpu_seconds() - cpu0, 4),
    )
