"""``python -m bench._internals``: what the reaches into other libraries' internals buy.

Two places use private parts of a dependency for speed or memory, each with a
public-API fallback (tests/test_internals.py runs the fallbacks):

* ``peer.node._transport``: trio-websocket's ``_wsproto``, ``_stream``,
  ``_stream_lock``, ``_close_reason``, ``_abort_web_socket`` to write a batch
  of records with one ``send_all`` (and, on the server side, frame them
  without wsproto), and to drop the finished upgrade's h11 state.
* ``peer.wire._handshake``: PyNaCl's ``nacl._sodium`` to call libsodium's
  ChaCha20-Poly1305 without the bindings' per-call checks.

This script measures each against its fallback, on loopback and in memory
only, in a few seconds, and prints one line per figure; the comments at those
places quote its output. Every loop has a fixed count.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
import tracemalloc

import trio
import trio_websocket

from peer.node import _transport
from peer.node._transport import WebSocketTransport
from peer.node._websocket import serve_ws
from peer.wire import _handshake
from peer.wire._handshake import LinkCipher

BATCH = 64
RECORD = 300
ROUNDS = 200
IDLE_LINKS = 100


async def _batches(fast: bool, server_sends: bool) -> float:
    """Median microseconds that one ``send_many`` of BATCH records takes (the
    sender's cost: the batch fits the socket buffer); each batch is received in
    full before the next."""
    _transport.FAST_PATH = fast
    records = [bytes([i % 251]) * RECORD for i in range(BATCH)]
    times: list[float] = []
    accepted: list[WebSocketTransport] = []
    ready = trio.Event()

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        accepted.append(WebSocketTransport(await request.accept(), "client"))
        ready.set()
        await trio.sleep_forever()

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_ws, handler, "127.0.0.1", 0, nursery)
            async with trio_websocket.open_websocket(
                "127.0.0.1", port, "/", use_ssl=False, message_queue_size=4 * BATCH
            ) as ws:
                client = WebSocketTransport(ws, "server")
                await ready.wait()
                sender, receiver = (accepted[0], client) if server_sends else (client, accepted[0])
                for _ in range(ROUNDS):
                    t0 = time.perf_counter()
                    await sender.send_many(records)
                    times.append(time.perf_counter() - t0)
                    for _ in range(BATCH):
                        await receiver.receive()
            nursery.cancel_scope.cancel()
    return statistics.median(times) * 1e6


async def _idle_link_bytes(fast: bool) -> float:
    """Python heap bytes per accepted, idle link (both ends in this process)."""
    _transport.FAST_PATH = fast
    accepted: list[WebSocketTransport] = []
    all_in = trio.Event()

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        accepted.append(WebSocketTransport(await request.accept(), "client"))
        if len(accepted) == IDLE_LINKS:
            all_in.set()
        await trio.sleep_forever()

    async def client(port: int, opened: trio.Semaphore) -> None:
        async with trio_websocket.open_websocket("127.0.0.1", port, "/", use_ssl=False) as ws:
            WebSocketTransport(ws, "server")
            opened.release()
            await trio.sleep_forever()

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_ws, handler, "127.0.0.1", 0, nursery)
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            opened = trio.Semaphore(0, max_value=IDLE_LINKS)
            for _ in range(IDLE_LINKS):
                nursery.start_soon(client, port, opened)
            for _ in range(IDLE_LINKS):
                await opened.acquire()
            await all_in.wait()
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
            nursery.cancel_scope.cancel()
    return (after - before) / IDLE_LINKS


def _cipher_us(fast: bool, size: int, number: int = 10_000) -> tuple[float, float]:
    """Microseconds per ``seal`` and per ``open`` of a ``size``-byte record."""
    module = vars(_handshake)  # the switch: no nacl._sodium means the checked bindings
    lib = module["_lib"]
    if not fast:
        module["_lib"] = None
    try:
        key = bytes(range(32))
        plain = b"x" * size
        seals: list[float] = []
        opens: list[float] = []
        for _ in range(5):  # the best of 5: the machine is shared
            sealer, opener = LinkCipher(key, key), LinkCipher(key, key)
            t0 = time.perf_counter()
            sealed = [sealer.seal(plain) for _ in range(number)]
            t1 = time.perf_counter()
            for record in sealed:
                opener.open(record)
            t2 = time.perf_counter()
            seals.append(t1 - t0)
            opens.append(t2 - t1)
        return min(seals) / number * 1e6, min(opens) / number * 1e6
    finally:
        module["_lib"] = lib


def main() -> None:
    default = _transport.FAST_PATH
    print(
        f"python {sys.version.split()[0]}, trio-websocket {trio_websocket.__version__}, "
        f"batch {BATCH} x {RECORD} B, {ROUNDS} rounds"
    )
    try:
        for side, server_sends in (("server", True), ("client", False)):
            fast = trio.run(_batches, True, server_sends)
            slow = trio.run(_batches, False, server_sends)
            print(
                f"send_many from the {side} side: fast path {fast:.0f} us, "
                f"fallback {slow:.0f} us per batch ({slow / fast:.2f}x)"
            )
        tracemalloc.start()
        fast_mem = trio.run(_idle_link_bytes, True)
        slow_mem = trio.run(_idle_link_bytes, False)
        tracemalloc.stop()
        print(
            f"idle link, both ends: upgrade state dropped {fast_mem / 1024:.1f} KiB, "
            f"kept {slow_mem / 1024:.1f} KiB per link"
        )
    finally:
        _transport.FAST_PATH = default
    for size in (RECORD, 16 * 1024):
        fs, fo = _cipher_us(True, size)
        ss, so = _cipher_us(False, size)
        print(
            f"LinkCipher {size} B: nacl._sodium seal {fs:.2f} us open {fo:.2f} us; "
            f"nacl.bindings seal {ss:.2f} us open {so:.2f} us"
        )


if __name__ == "__main__":
    main()
