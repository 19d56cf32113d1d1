"""The load generator: ``python -m bench._gen pub|sink ...``, one design for every system.

The harness starts one publisher process and one or more sink processes and
talks to them over pipes: each writes JSON lines to stdout (``ready``,
``warm``, ``progress``, ``sent``, ``done``) and reads commands from stdin,
one per line:

* ``warm``: the publisher sends a warm-up message every 50 ms, so every path
  through the system under test is open before anything is measured. A sink
  says ``warm`` once every one of its connections has seen one. Warm-up bodies
  are ``WARM_EXTRA`` bytes longer than measured ones, so no sink mistakes one
  for the other by size.
* ``go``: the publisher stops warming up and sends its measured messages:
  ``fanout`` mode as fast as the credit allows, or at most ``--rate`` per
  second if that is given (messages prepared, and for clawmesh signed, before
  the clock starts); ``latency`` mode at a fixed rate,
  each stamped with CLOCK_MONOTONIC just before it is prepared and sent.
* ``credit N``: the publisher may send messages up to number N. The harness
  sets it to what the slowest sink connection has received plus a window, so
  no server ever holds more than a window per subscriber; NATS and Redis
  would otherwise drop a subscriber that falls behind.
* ``expect SIZES`` (sinks, fanout): the sizes the publisher's ``ready`` gave for
  its measured messages; the counting sink (``bench._sink``) counts records of
  exactly those shapes and checks one in ``--check-every`` fully.
* ``stop``: report (``done``) and exit.

The sink's side is in ``bench._sink``. Every loop has a count and a deadline;
the process ends by itself at ``--timeout`` whatever the harness does.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import trio

from ._clients import connect
from ._conn import HEAD_LEN, Closed, Conn, make_body, now_ns
from ._genio import cpu_seconds, emit, percentiles, stdin_lines
from ._sink import CONNECT_CONCURRENCY, sink_main

PACE_EVERY = 64
BATCH = 64  # messages per write at most: the publisher's syscalls are not what is measured
WARMUP_INTERVAL = 0.05
# A warm-up body is this much longer than a measured one, so that the counting
# sink tells them apart by size alone (bench._count).
WARM_EXTRA = 97


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
            interval = self.args.warmup_interval
            for _ in range(int(self.args.timeout / interval)):
                if self.warm_stop.is_set():
                    return
                self.warm_seq += 1
                body = make_body(b"W", self.warm_seq, now_ns(), self.size + WARM_EXTRA)
                await self.conn.send(self.conn.prepare(body))
                with trio.move_on_after(interval):
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
        """As fast as the credit allows, in writes of up to BATCH messages; --rate > 0
        caps the pace (checked every PACE_EVERY messages), e.g. below a clawmesh
        relay's per-link frame budget for a long fill."""
        interval = 1.0 / self.args.rate if self.args.rate > 0 else 0.0
        i = 0
        while i < len(prepared):
            if trio.current_time() >= deadline or not await self.wait_credit(i, deadline):
                break
            j = min(len(prepared), self.credit, i + (PACE_EVERY if interval else BATCH))
            if interval:
                await trio.sleep_until(start + i * interval)
            await self.conn.send_many(prepared[i:j])
            self.sent += j - i
            i = j

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
        cpu0 = cpu_seconds()
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
        cpu1 = cpu_seconds()
        emit(
            "sent",
            n=self.sent,
            t0_ns=t0,
            t1_ns=t1,
            send_s=round((t1 - t0) / 1e9, 4),
            cpu_s=round(cpu1 - cpu0, 4),
            lag_ns=percentiles(self.lags, (50, 99, 100)),
            prepare_ns=percentiles(self.prepare_ns, (50, 99)),
        )


async def pub_main(args: argparse.Namespace) -> None:
    cpu_start = cpu_seconds()
    conn = await connect(args.proto, args.host, args.port, plaintext=args.plaintext)
    await conn.announce(args.topic)
    size = max(args.size, HEAD_LEN)
    prepared: list[bytes] = []
    sizes: set[int] = set()
    t = time.perf_counter()
    if args.mode == "fanout":
        for i in range(args.messages):
            body = make_body(b"M", i, 0, size)
            prepared.append(conn.prepare(body))
            sizes.add(conn.delivered_size(body, prepared[-1]))
    prepare_s = time.perf_counter() - t
    wire = len(prepared[0]) if prepared else len(conn.prepare(make_body(b"M", 0, 0, size)))
    # sizes: what the counting sinks expect a measured message to be (bench._sink)
    emit("ready", prepare_s=round(prepare_s, 3), wire_bytes=wire, sizes=sorted(sizes))

    pub = _Publisher(args, conn, size)
    commands_send, commands = trio.open_memory_channel[str](64)
    with trio.move_on_after(args.timeout):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stdin_lines, commands_send)
            nursery.start_soon(pub.commands_loop, commands, nursery)
            nursery.start_soon(_drain, conn)
            await pub.go.wait()
            if pub.stop.is_set():
                nursery.cancel_scope.cancel()
                return
            await pub.send_all(prepared)
            await pub.stop.wait()
            nursery.cancel_scope.cancel()
    emit("done", sent=pub.sent, cpu_total_s=round(cpu_seconds() - cpu_start, 4))


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
    p.add_argument("--connect-concurrency", type=int, default=CONNECT_CONCURRENCY,
                   help="sink: connections handshaking at once, at most")
    p.add_argument("--max-samples", type=int, default=200_000)
    p.add_argument("--return-samples", action="store_true")
    p.add_argument("--check-every", type=int, default=1000,
                   help="fanout: check every K-th measured message fully, count the rest")
    # publisher
    p.add_argument("--size", type=int, default=300)
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--window", type=int, default=4000)
    p.add_argument("--warmup-interval", type=float, default=WARMUP_INTERVAL,
                   help="seconds between two warm-up messages (longer for many subscribers)")
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
