"""Stopping a peer on SIGINT or SIGTERM by cancellation, not by KeyboardInterrupt.

Trio's default turns SIGINT into a KeyboardInterrupt raised in whatever task runs when
it arrives. On a peer with connections in flight that can be the middle of a
connection handler (ours or Hypercorn's), which then leaves through a path its
nurseries were not written for (seen once in CI: "Nursery stack corrupted" and exit
1 on a plain stop). Here the signals are received as messages instead: the first one
cancels the peer, which closes as on any other cancellation (links, store, API in
order). The close is bounded:

* the first signal again, ``SAME_STOP_S`` or more after it (a person pressing
  Ctrl-C again), ends the process at once; another signal, or the same one sooner,
  is the same stop arriving twice (a terminal's Ctrl-C reaches a seed's workers and
  their parent, which then sends them SIGTERM; systemd signals the whole group) and
  is ignored;
* a close still running ``STOP_GRACE_S`` after the first signal ends the process at
  once (an API client that stopped reading holds Hypercorn's shielded write).

Ending at once loses nothing acknowledged: what the peer acknowledged is committed.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Awaitable, Callable

import trio

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
SAME_STOP_S = 1.0
STOP_GRACE_S = 15.0


async def run_until_signal(
    main: Callable[[], Awaitable[None]],
    grace: float = STOP_GRACE_S,
    same_stop: float = SAME_STOP_S,
) -> int | None:
    """Run ``main`` until it returns or a stop signal comes; the signal's number, or
    None when ``main`` returned by itself."""
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        body = trio.CancelScope()
        got: list[int] = []

        async def watch(nursery: trio.Nursery) -> None:
            first = 0.0
            async for signum in signals:
                if not got:
                    got.append(signum)
                    first = trio.current_time()
                    body.cancel()
                    nursery.start_soon(_deadline, grace, signum)
                elif signum == got[0] and trio.current_time() - first >= same_stop:
                    _exit_now("stopped at once", signum)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, nursery)
            with body:
                await main()
            nursery.cancel_scope.cancel()
    return got[0] if got else None


async def _deadline(grace: float, signum: int) -> None:
    await trio.sleep(grace)
    _exit_now(f"the close took over {grace:g} s: stopped at once", signum)


def _exit_now(why: str, signum: int) -> None:
    print(f"\nclawmesh: {why}", file=sys.stderr, flush=True)
    os._exit(128 + signum)
