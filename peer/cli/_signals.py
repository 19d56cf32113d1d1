"""Stopping a peer on SIGINT or SIGTERM by cancellation, not by KeyboardInterrupt.

Trio's default turns SIGINT into a KeyboardInterrupt raised in whatever task runs when
it arrives. On a peer with connections in flight that can be the middle of a
connection handler (ours or Hypercorn's), which then leaves through a path its
nurseries were not written for (seen once in CI: "Nursery stack corrupted" and exit
1 on a plain stop). Here the signals are received as messages instead: the first one
cancels the peer, which closes as on any other cancellation (links, store, API in
order); a second one, while that close hangs, ends the process at once.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Awaitable, Callable

import trio

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def run_until_signal(main: Callable[[], Awaitable[None]]) -> int | None:
    """Run ``main`` until it returns or a stop signal comes; the signal's number, or
    None when ``main`` returned by itself."""
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        body = trio.CancelScope()
        got: list[int] = []

        async def watch() -> None:
            async for signum in signals:
                if got:  # the second: the graceful close is taking too long
                    print("\nclawmesh: stopped at once", file=sys.stderr, flush=True)
                    os._exit(128 + signum)
                got.append(signum)
                body.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            with body:
                await main()
            nursery.cancel_scope.cancel()
    return got[0] if got else None
