"""The load generator: ``python -m bench._gen pub|sink ...``, one design for every system.

The harness starts one publisher process and one or more sink processes and
talks to them over pipes: each writes JSON lines to stdout (``ready``,
``warm``, ``progress``, ``sent``, ``done``) and reads commands from stdin,
one per line:

* ``warm``: the publisher sends a warm-up message every 50 ms, so every path
  through the system under test is open before anything is measured. A sink
  says ``warm`` once every one of its connections has seen one.
* ``go``: the publisher stops warming up and sends its measured messages:
  ``fanout`` mode as fast as the credit allows, or at most ``--rate`` per
  second if that is given (messages prepared, and for clawmesh signed, before
  the clock starts); ``latency`` mode at a fixed rate,
  each stamped with CLOCK_MONOTONIC just before it is prepared and sent.
* ``credit N``: the publisher may send messages up to number N. The harness
  sets it to what the slowest sink connection has received plus a window, so
  no server ever holds more than a window per subscriber; NATS and Redis
  would otherwise drop a subscriber that falls behind.
* ``stop``: report (``done``) and exit.

Every loop has a count and a deadline; the process ends by itself at
``--timeout`` whatever the harness does.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import trio

from ._clients import connect
from ._conn import (
    HEAD_LEN,
    KIND_MEASURED,
    KIND_OFFSET,
    KIND_WARMUP,
    MARK,
    STAMP_OFFSET,
    Closed,
    Conn,
    make_body,
    now_ns,
)

PROGRESS_INTERVAL = 0.02
PACE_EVERY = 64
WARMUP_INTERVAL = 0.05
CONNECT_CONCURRENCY = 16


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"ev": event, **fields}), flush=True)


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


async def _stdin_lines(send: trio.MemorySendChannel[str]) -> None:
    """Forward stdin lines to ``send``; end of input counts as ``stop``."""
    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buf = b""
    async with stream, send:
        while True:
            data = await stream.receive_some(4096)
            if not data:
                await send.send("stop")
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                await send.send(line.decode().strip())


def _percentiles(values: list[int], points: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    out: dict[str, float] = {}
    for p in points:
        idx = min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))
        out[f"p{p:g}"] = ordered[idx]
    return out


# -- sink --------------------------------------------------------------------------------


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
        self.errors: list[str] = []
        self.warm_event = trio.Event()


async def _sink_conn(i: int, conn: Conn, st: SinkState) -> None:
    counts = st.counts
    try:
        while True:
            batch = await conn.receive()
            now = now_ns()
            measured = 0
            for payload in batch:
                j = payload.find(MARK)
                if j < 0:
                    st.unknown += 1
                    continue
                kind = payload[j + KIND_OFFSET]
                if kind == KIND_MEASURED:
                    measured += 1
                    if st.latency and len(st.samples) < st.max_samples:
                        stamp = int(payload[j + STAMP_OFFSET : j + STAMP_OFFSET + 20])
                        st.samples.append(now - stamp)
                elif kind == KIND_WARMUP and not st.warm[i]:
                    st.warm[i] = True
                    st.warm_count += 1
                    if st.warm_count == len(st.warm):
                        st.warm_event.set()
            if measured:
                counts[i] += measured
                if not st.first_ns:
                    st.first_ns = now
                st.last_ns = now
    except Closed as exc:
        st.errors.append(f"connection {i}: {exc}")


async def sink_main(args: argparse.Namespace) -> None:
    cpu0 = _cpu_seconds()
    st = SinkState(args.conns, args.mode == "latency", args.max_samples)
    conns: list[Conn | None] = [None] * args.conns
    limiter = trio.CapacityLimiter(CONNECT_CONCURRENCY)

    async def open_one(i: int) -> None:
        async with limiter:
            conn = await connect(args.proto, args.host, args.port, plaintext=args.plaintext)
            await conn.subscribe(args.topic)
            conns[i] = conn

    commands_send, commands = trio.open_memory_channel[str](64)
    with trio.move_on_after(args.timeout):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stdin_lines, commands_send)
            failed: list[str] = []
            try:
                async with trio.open_nursery() as opening:
                    for i in range(args.conns):
                        opening.start_soon(open_one, i)
            except* (Closed, trio.TooSlowError) as group:
                failed.extend(repr(e) for e in group.exceptions)
            if failed:
                emit("error", stage="connect", error=failed[0], failures=len(failed))
                nursery.cancel_scope.cancel()
                return
            emit("ready", conns=args.conns, connect_s=round(_cpu_seconds() - cpu0, 3))
            for i, conn in enumerate(conns):
                assert conn is not None
                nursery.start_soon(_sink_conn, i, conn, st)

            async def report_warm() -> None:
                await st.warm_event.wait()
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
            async for command in commands:
                if command == "stop":
                    break
            nursery.cancel_scope.cancel()
    samples = st.samples
    emit(
        "done",
        conns=args.conns,
        counts_min=min(st.counts),
        counts_max=max(st.counts),
        received=sum(st.counts),
        first_ns=st.first_ns,
        last_ns=st.last_ns,
        latency_ns=_percentiles(samples, (50, 90, 99, 99.9, 100)),
        latency_samples=len(samples),
        latency_mean_ns=(sum(samples) / len(samples)) if samples else None,
        latency_values_us=[round(s / 1000, 1) for s in samples] if args.return_samples else [],
        unknown=st.unknown,
        errors=st.errors[:20],
        error_count=len(st.errors),
        cpu_s=round(_cpu_seconds() - cpu0, 4),
    )


# -- publisher ------------------------------------------------------------------------------


class _Publisher:
    """The publisher's state: credit from the harness, the warm-up loop, and what it sent."""

    def __init__(self, args: argparse.Namespace, conn: Conn, size: int) -> None:
        self.args = args
        self.conn = conn
        self.size = size
        self.credit: int = args.window
        self.credit_changed = trio.Event()
        self.go = trio.Event()
        self.stop = trio.Event()
        self.warm_seq = 0
        self.warm_stop = trio.Event()  # the warm-up loop ends between two sends, never inside
        self.warm_done = trio.Event()  # one: a cancelled send_all would leave half a record
        self.sent = 0
        self.lags: list[int] = []
        self.prepare_ns: list[int] = []

    async def warmup(self) -> None:
        try:
            for _ in range(int(self.args.timeout / WARMUP_INTERVAL)):
                if self.warm_stop.is_set():
                    return
                self.warm_seq += 1
                body = make_body(b"W", self.warm_seq, now_ns(), self.size)
                await self.conn.send(self.conn.prepare(body))
                with trio.move_on_after(WARMUP_INTERVAL):
                    await self.warm_stop.wait()
        finally:
            self.warm_done.set()

    async def commands_loop(
        self, commands: trio.MemoryReceiveChannel[str], nursery: trio.Nursery
    ) -> None:
        warming = False
        async for command in commands:
            if command == "warm" and not warming:
                warming = True
                nursery.start_soon(self.warmup)
            elif command.startswith("credit "):
                self.credit = max(self.credit, int(command.split()[1]))
                self.credit_changed.set()
                self.credit_changed = trio.Event()
            elif command == "go":
                self.warm_stop.set()
                if warming:
                    await self.warm_done.wait()
                self.go.set()
            elif command == "stop":
                self.warm_stop.set()
                self.stop.set()
                self.go.set()
                return

    async def wait_credit(self, i: int, deadline: float) -> bool:
        while i >= self.credit:
            with trio.move_on_at(deadline):
                await self.credit_changed.wait()
            if trio.current_time() >= deadline:
                return False
        return True

    async def send_fanout(self, prepared: list[bytes], start: float, deadline: float) -> None:
        # --rate > 0 caps the pace (checked every PACE_EVERY messages), e.g.
        # below a clawmesh relay's per-link frame budget for a long fill
        interval = 1.0 / self.args.rate if self.args.rate > 0 else 0.0
        for i, message in enumerate(prepared):
            if trio.current_time() >= deadline or not await self.wait_credit(i, deadline):
                break
            if interval and i % PACE_EVERY == 0:
                await trio.sleep_until(start + i * interval)
            await self.conn.send(message)
            self.sent += 1

    async def send_paced(self, start: float, deadline: float) -> None:
        interval = 1.0 / self.args.rate
        for i in range(self.args.messages):
            scheduled = start + i * interval
            if scheduled >= deadline or not await self.wait_credit(i, deadline):
                break
            await trio.sleep_until(scheduled)
            stamp = now_ns()
            message = self.conn.prepare(make_body(b"M", i, stamp, self.size))
            prepared_at = now_ns()
            await self.conn.send(message)
            self.lags.append(int((trio.current_time() - scheduled) * 1e9))
            self.prepare_ns.append(prepared_at - stamp)
            self.sent += 1

    async def send_all(self, prepared: list[bytes]) -> None:
        """The measured run: send, then report ``sent`` with the timings."""
        await trio.sleep(0.2)  # let the last warm-up messages clear the system
        cpu0 = _cpu_seconds()
        t0 = now_ns()
        start = trio.current_time()
        deadline = start + self.args.duration
        try:
            if self.args.mode == "fanout":
                await self.send_fanout(prepared, start, deadline)
            else:
                await self.send_paced(start, deadline)
        except Closed as exc:
            emit("error", stage="send", error=str(exc), sent=self.sent)
        t1 = now_ns()
        cpu1 = _cpu_seconds()
        emit(
            "sent",
            n=self.sent,
            t0_ns=t0,
            t1_ns=t1,
            send_s=round((t1 - t0) / 1e9, 4),
            cpu_s=round(cpu1 - cpu0, 4),
            lag_ns=_percentiles(self.lags, (50, 99, 100)),
            prepare_ns=_percentiles(self.prepare_ns, (50, 99)),
        )


async def pub_main(args: argparse.Namespace) -> None:
    cpu_start = _cpu_seconds()
    conn = await connect(args.proto, args.host, args.port, plaintext=args.plaintext)
    await conn.announce(args.topic)
    size = max(args.size, HEAD_LEN)
    prepared: list[bytes] = []
    t = time.perf_counter()
    if args.mode == "fanout":
        prepared = [conn.prepare(make_body(b"M", i, 0, size)) for i in range(args.messages)]
    prepare_s = time.perf_counter() - t
    wire = len(prepared[0]) if prepared else len(conn.prepare(make_body(b"M", 0, 0, size)))
    emit("ready", prepare_s=round(prepare_s, 3), wire_bytes=wire)

    pub = _Publisher(args, conn, size)
    commands_send, commands = trio.open_memory_channel[str](64)
    with trio.move_on_after(args.timeout):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stdin_lines, commands_send)
            nursery.start_soon(pub.commands_loop, commands, nursery)
            nursery.start_soon(_drain, conn)
            await pub.go.wait()
            if pub.stop.is_set():
                nursery.cancel_scope.cancel()
                return
            await pub.send_all(prepared)
            await pub.stop.wait()
            nursery.cancel_scope.cancel()
    emit("done", sent=pub.sent, cpu_total_s=round(_cpu_seconds() - cpu_start, 4))


async def _drain(conn: Conn) -> None:
    try:
        await conn.drain()
    except Closed as exc:
        emit("error", stage="receive", error=str(exc))


# -- command line -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench._gen", description=__doc__.split("\n")[0])
    p.add_argument("role", choices=["pub", "sink"])
    p.add_argument("--proto", required=True, choices=["clawmesh", "ws", "tcp", "nats", "redis"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--topic", default="bench")
    p.add_argument("--plaintext", action="store_true", help="clawmesh: offer plaintext links")
    p.add_argument("--mode", choices=["fanout", "latency", "idle"], default="fanout")
    p.add_argument("--timeout", type=float, default=300.0, help="the process ends by then")
    # sink
    p.add_argument("--conns", type=int, default=1)
    p.add_argument("--max-samples", type=int, default=200_000)
    p.add_argument("--return-samples", action="store_true")
    # publisher
    p.add_argument("--size", type=int, default=300)
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--window", type=int, default=4000)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("the load generator only talks to loopback addresses")
    try:
        trio.run(sink_main if args.role == "sink" else pub_main, args)
    except Closed as exc:
        emit("error", stage="setup", error=str(exc))
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
