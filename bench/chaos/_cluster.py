"""Real ``python -m peer`` processes on loopback that the harness kills and restarts.

A :class:`Node` keeps its home (keys, store) and its two ports for its whole
life, so a restart after ``kill -9`` is the same peer at the same address.
``up`` is a fresh :class:`trio.Event` per incarnation: whoever needs the
node's API waits on it instead of sleeping. Waiting for a process to answer
is the only poll here (no event exists for it), bounded by ``START_S``.
Peers dial each other only through their bootstrap list; when a
:class:`~bench.chaos._proxy.FaultProxy` is given, every such URL points at
the proxy's listener for that ordered pair, so the proxy owns every link.
In netns mode (``_netns.py``) a node runs inside its own network namespace
(``wrap``) and listens and serves its API on that namespace's ``host``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
import trio

from .._procs import REPO, free_port

START_S = 60.0  # a start on a loaded 2-core machine may take a while
POLL_S = 0.05
PORT_TRIES = 3


class Dialing(Protocol):
    async def route(self, src: str, dst: str, port: int) -> int:
        """The local port ``src`` should dial to reach ``dst`` listening on ``port``."""
        ...


class NodeFailed(Exception):
    """A peer process did not start (its stderr tail is in the message)."""


@dataclass
class Node:
    name: str
    home: Path
    seed: bool
    channels: tuple[str, ...]
    mesh_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    bootstrap: list[str] = field(default_factory=list)
    no_dht: bool = False
    host: str = "127.0.0.1"
    wrap: list[str] = field(default_factory=list)  # e.g. ``ip netns exec NS``
    extra: list[str] = field(default_factory=list)  # more ``python -m peer`` flags
    peer_id: str = ""
    token: str = ""
    proc: subprocess.Popen[bytes] | None = None
    up: trio.Event = field(default_factory=trio.Event)
    starts: int = 0
    log_from: int = 0  # where this incarnation's stderr starts in stderr.log
    kills: int = 0

    @property
    def api(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def command(self) -> list[str]:
        cmd = [
            *self.wrap, sys.executable, "-m", "peer",
            "--listen", f"{self.host}:{self.mesh_port}",
            "--api", f"{self.host}:{self.api_port}",
            "--key-dir", str(self.home / "keys"),
            "--data-dir", str(self.home / "data"),
            "--log-level", "warning",
        ]  # fmt: skip
        if self.seed:
            cmd.append("--relay-only")
        if self.no_dht:
            cmd.append("--no-dht")
        for channel in self.channels:
            cmd += ["--channel", channel]
        for url in self.bootstrap:
            cmd += ["--bootstrap", url]
        return cmd + self.extra

    def log_tail(self) -> str:
        """The end of this incarnation's stderr."""
        path = self.home / "stderr.log"
        if not path.exists():
            return ""
        with path.open("rb") as f:
            f.seek(self.log_from)
            return f.read()[-3000:].decode(errors="replace")

    def spawn(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
        with (self.home / "stderr.log").open("ab") as stderr:
            self.log_from = stderr.tell()
            self.proc = subprocess.Popen(
                self.command(), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr
            )
        self.starts += 1

    async def first_start(self, client: httpx.AsyncClient) -> None:
        """Start a new node. Its ports were free when picked, but on a shared machine
        another program may bind one before the peer does: then it gets fresh
        ports (nobody dials it yet) and starts again, a few times at most."""
        for attempt in range(PORT_TRIES):
            self.spawn()
            try:
                await self.wait_ready(client)
                return
            except NodeFailed as exc:
                if "already in use" not in str(exc) or attempt + 1 == PORT_TRIES:
                    raise
            self.mesh_port, self.api_port = free_port(), free_port()

    async def wait_ready(self, client: httpx.AsyncClient) -> None:
        """Poll until the API answers; then set ``up``."""
        with trio.fail_after(START_S):
            while True:
                if self.proc is None or self.proc.poll() is not None:
                    raise NodeFailed(f"{self.name} exited:\n{self.log_tail()}")
                if await self._answers(client):
                    self.up.set()
                    return
                await trio.sleep(POLL_S)

    async def _answers(self, client: httpx.AsyncClient) -> bool:
        token = self.home / "keys" / "api-token"
        info = self.home / "data" / "peer.json"
        if not (token.exists() and info.exists()):
            return False
        try:
            self.token = token.read_text().strip()
            self.peer_id = json.loads(info.read_text())["peer_id"]
            r = await client.get(self.api + "/status", headers=self.headers(), timeout=5)
        except (httpx.HTTPError, ValueError, KeyError, OSError):
            return False
        return r.status_code == 200

    def kill(self) -> None:
        """``kill -9``: no shutdown at all; ``up`` is replaced by an unset event."""
        self.up = trio.Event()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            self.kills += 1

    def stop(self) -> None:
        self.up = trio.Event()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Cluster:
    seeds: list[Node]
    peers: list[Node]
    client: httpx.AsyncClient

    @property
    def nodes(self) -> list[Node]:
        return self.seeds + self.peers

    async def start(self, nodes: list[Node]) -> None:
        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(node.first_start, self.client)

    async def restart(self, node: Node) -> None:
        node.spawn()
        await node.wait_ready(self.client)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def plan(
    root: Path,
    *,
    seeds: int,
    peers: int,
    channels: tuple[str, ...],
    no_dht: bool,
    client: httpx.AsyncClient,
) -> Cluster:
    """The nodes, their homes and ports; bootstrap lists come from :func:`boot`."""
    seed_nodes = [Node(f"seed{i}", root / f"seed{i}", True, (), no_dht=no_dht)
                  for i in range(seeds)]  # fmt: skip
    peer_nodes = [Node(f"peer{i}", root / f"peer{i}", False, channels, no_dht=no_dht)
                  for i in range(peers)]  # fmt: skip
    return Cluster(seed_nodes, peer_nodes, client)


async def boot(cluster: Cluster, proxy: Dialing | None) -> None:
    """Start the seeds (each linked to the ones before it), then the peers (each
    linked to every seed): the peer ids are known only once a node has started."""
    for i, seed in enumerate(cluster.seeds):
        seed.bootstrap = [await _url(seed, other, proxy) for other in cluster.seeds[:i]]
        await cluster.start([seed])
    for peer in cluster.peers:
        peer.bootstrap = [await _url(peer, seed, proxy) for seed in cluster.seeds]
    await cluster.start(cluster.peers)


async def _url(src: Node, dst: Node, proxy: Dialing | None) -> str:
    port = await proxy.route(src.name, dst.name, dst.mesh_port) if proxy else dst.mesh_port
    host = "127.0.0.1" if proxy else dst.host
    return f"ws://{host}:{port}/#{dst.peer_id}"
