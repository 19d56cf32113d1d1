"""A relay-only seed as 2 worker processes (``--workers 2``), as a user runs it.

The seed is real processes (``python -m peer --relay-only --workers 2``); the
peers are in-process ``open_peer`` peers (cheap to start many: the kernel
spreads their connections over the workers, and we add peers until both
workers hold some). Checked: a channel message from a peer on one worker
reaches the subscribers on both exactly once; a subscriber that was away
catches up from whichever worker it lands on; ``kill -9`` of a worker is
survived (restarted, links redialled, messages flow again); SIGTERM of the
parent leaves no worker behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import peer
from tests._procs import REPO, free_port

CHANNEL = "w"
MAX_PEERS = 14


def start_seed(home: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cmd = [
        sys.executable, "-m", "peer", "--relay-only", "--listen", f"127.0.0.1:{port}",
        "--api", f"127.0.0.1:{free_port()}", "--key-dir", str(home / "keys"),
        "--data-dir", str(home / "data"), *extra,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    env["PYTHONPATH"] = str(REPO)
    home.mkdir(parents=True, exist_ok=True)
    with (home / "stderr.log").open("ab") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err)
    return proc, port


def seed_info(home: Path) -> dict[str, Any]:
    info: dict[str, Any] = json.loads((home / "data" / "peer.json").read_text())
    return info


async def holders(client: httpx.AsyncClient, info: dict[str, Any]) -> dict[str, int]:
    """Which worker holds each linked peer (by peer id hex), from each worker's /status."""
    out: dict[str, int] = {}
    for w in info["workers"]:
        status = (await client.get(str(w["api_url"]) + "/status")).json()
        for entry in status["relay_status"]:
            out[entry["peer_id"]] = w["index"]
    return out


async def until(check: Any, what: str, deadline: float = 20.0) -> Any:
    """Poll ``check()`` (async) until it returns something true, within ``deadline``."""
    with trio.fail_after(deadline):
        while True:
            value = await check()
            if value:
                return value
            await trio.sleep(0.05)


@contextlib.asynccontextmanager
async def a_peer(tmp: Path, name: str, boot: str) -> AsyncIterator[peer.Peer]:
    options = peer.PeerOptions(channels=(CHANNEL,), backoff_initial=0.2, backoff_max=1.0)
    async with peer.open_peer(tmp / name, bootstrap=[boot], options=options) as p:
        yield p


async def next_bodies(stream: Any, n: int, deadline: float = 20.0) -> list[str]:
    with trio.fail_after(deadline):
        return [(await anext(stream)).body for _ in range(n)]


async def test_two_workers_are_one_seed(tmp_path: Path) -> None:
    home = tmp_path / "seed"
    proc, port = start_seed(home, "--workers", "2")
    try:
        assert proc.stdout is not None
        with trio.fail_after(30):
            first = await trio.to_thread.run_sync(proc.stdout.readline)
        assert first.decode().startswith("clawmesh relay-only seed"), (home / "stderr.log")
        info = seed_info(home)
        assert [w["index"] for w in info["workers"]] == [0, 1]
        assert all(w["ready"] for w in info["workers"])
        async with httpx.AsyncClient(timeout=10) as client:
            for w in info["workers"]:  # one seed: same id; each worker linked to the other
                url = str(w["api_url"]) + "/status"

                async def linked(url: str = url) -> dict[str, Any] | None:
                    status: dict[str, Any] = (await client.get(url)).json()
                    return status if status["gossip"].get("siblings") == 1 else None

                status = await until(linked, "the workers are linked")
                assert status["peer_id"] == info["peer_id"] and status["relay_only"]
        boot = f"ws://127.0.0.1:{port}/#{info['peer_id']}"
        await _exchange(tmp_path, home, boot, info)
        # SIGTERM to the parent: every worker goes, nothing is left behind
        pids = [w["pid"] for w in seed_info(home)["workers"]]
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            code = await trio.to_thread.run_sync(proc.wait)
        assert code == 0
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


class Running:
    """A peer run in a task of its own, so that it can be stopped alone."""

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.done = trio.Event()
        self.peer: peer.Peer | None = None

    async def run(self, tmp: Path, name: str, boot: str, *,
                  task_status: trio.TaskStatus[peer.Peer]) -> None:  # fmt: skip
        try:
            with self.scope:
                async with a_peer(tmp, name, boot) as p:
                    self.peer = p
                    task_status.started(p)
                    await trio.sleep_forever()
        finally:
            self.done.set()

    async def stop(self) -> None:
        self.scope.cancel()
        await self.done.wait()


async def _exchange(tmp: Path, home: Path, boot: str, info: dict[str, Any]) -> None:
    seed_id = bytes.fromhex(info["peer_id"])
    async with httpx.AsyncClient(timeout=10) as client, trio.open_nursery() as nursery:
        running: dict[str, Running] = {}
        where: dict[str, int] = {}
        # add peers until both workers hold at least one link
        while len(set(where.values())) < 2:
            assert len(running) < MAX_PEERS, f"the kernel gave every link to one worker: {where}"
            name = f"p{len(running)}"
            running[name] = Running()
            p = await nursery.start(running[name].run, tmp, name, boot)
            mine = p.identity.peer_id_hex

            async def linked(pid: str = mine) -> dict[str, int] | None:
                now = await holders(client, info)
                return now if pid in now else None

            where = await until(linked, "the peer is linked")
        peers = {n: r.peer for n, r in running.items() if r.peer is not None}
        worker_of = {n: where[p.identity.peer_id_hex] for n, p in peers.items()}
        pub_name = next(n for n, w in worker_of.items() if w == 0)
        away_name = next(n for n, w in worker_of.items() if w == 1)
        pub = peers[pub_name]
        streams = {n: p.messages(channel=CHANNEL) for n, p in peers.items() if n != pub_name}
        # interest must have reached the publisher through the seed before it publishes
        await until(_reachable(pub), "the channel is reachable")
        await pub.send_message(CHANNEL, peer.Content("m1"))
        await pub.send_message(CHANNEL, peer.Content("m2"))
        for s in streams.values():  # in order, each once: after m1 comes m2, not m1 again
            assert await next_bodies(s, 2) == ["m1", "m2"]

        # a subscriber held by worker 1 leaves; a message is sent while it is away; it
        # comes back (on whichever worker) and catches up
        await running[away_name].stop()
        del streams[away_name]
        await pub.send_message(CHANNEL, peer.Content("m3"))
        back = await nursery.start(Running().run, tmp, away_name, boot)
        inbox = back.messages(after=0, channel=CHANNEL)
        assert await next_bodies(inbox, 3) == ["m1", "m2", "m3"]

        # kill -9 the worker that holds the publisher: restarted, redialled, and
        # messages flow again to everyone, once
        victim = info["workers"][0]
        os.kill(victim["pid"], signal.SIGKILL)
        # sent (and acknowledged: stored by its author) while its link is going down
        await pub.send_message(CHANNEL, peer.Content("m4"))

        async def restarted() -> bool:
            now = seed_info(home)["workers"][0]
            return bool(now["pid"] != victim["pid"] and now["ready"] and now["restarts"] == 1)

        await until(restarted, "worker 0 restarted")

        async def relinked() -> bool:
            return seed_id in pub.links and pub.router.reachable(CHANNEL)

        await until(relinked, "the publisher is linked again")
        await pub.send_message(CHANNEL, peer.Content("m5"))
        for s in streams.values():
            assert await next_bodies(s, 3) == ["m3", "m4", "m5"]
        assert await next_bodies(inbox, 2) == ["m4", "m5"]
        nursery.cancel_scope.cancel()


def _reachable(p: peer.Peer) -> Any:
    async def check() -> bool:
        return p.router.reachable(CHANNEL)

    return check


def test_workers_need_relay_only(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "peer", "--workers", "2", "--key-dir", str(tmp_path / "k"),
           "--data-dir", str(tmp_path / "d")]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert "--workers > 1 is for --relay-only seeds" in done.stderr
