"""The two sides of ``--workers N`` that need a peer: the parent's banner and
entry (``run_seed_workers``) and what a worker runs besides its peer
(``run_worker``: its sibling links and a watch on its parent).
``peer.cli._workers`` is the process supervision itself."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

import trio

from peer.node._bootstrap import bootstrap_entry
from peer.node._node import Peer
from peer.node._siblings import Siblings
from peer.wire._identity import Identity

from ._workers import run_workers

PARENT_WATCH = 0.5  # seconds between checks that the parent is still there


async def run_worker(
    peer: Peer, index: int, count: int, worker_dir: Path | None, ready: Callable[[], None]
) -> None:
    """Link to the sibling workers, say ``ready``, and run until cancelled or until the
    parent is gone (then exit: a worker never outlives its seed)."""
    if worker_dir is None or not 0 <= index < count:
        raise SystemExit("clawmesh: --worker-index is set by --workers, with --worker-dir")
    parent = os.getppid()
    siblings = Siblings(peer, index, count, worker_dir)
    async with trio.open_nursery() as nursery:
        await nursery.start(siblings.run)
        ready()
        while os.getppid() == parent:  # noqa: ASYNC110 (no event says a parent died)
            await trio.sleep(PARENT_WATCH)
        nursery.cancel_scope.cancel()
    raise SystemExit(0)


def run_seed_workers(args: argparse.Namespace, argv: list[str], identity: Identity) -> None:
    """The parent of a seed's workers: start them, print one banner, supervise."""
    host, _, port = args.listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    api = None if args.no_api else args.api

    def banner(first: dict[str, object], workers: list[dict[str, object]]) -> str:
        urls = [str(u) for u in first.get("ws_urls") or []]  # type: ignore[attr-defined]
        pid = identity.peer_id_hex
        caps = ("relay", "relay-only")
        lines = [
            f"clawmesh relay-only seed {pid}",
            f"  workers:      {len(workers)} (pids "
            + " ".join(str(w["pid"]) for w in workers) + f"; parent {os.getpid()})",
        ]
        if urls:
            lines.append(f"  mesh address: {urls[0]}   (every worker listens on {args.listen})")
            lines.append(f"  others join with: --bootstrap {urls[0]}#{pid}")
        if first.get("api_url"):
            lines.append(f"  local API:    {first['api_url']}   (worker 0; every worker's in "
                         f"{args.data_dir / 'peer.json'})")
        lines.append(f"  bootstrap.json entry: {json.dumps(bootstrap_entry(identity, urls, caps))}")
        return "\n".join(lines)

    run_workers(argv, args.workers, host, int(port), args.data_dir, api, banner)
