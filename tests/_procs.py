"""Starting real ``python -m peer`` processes on loopback and talking to their API."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench._procs import free_port as free_port  # one rule for tests and the bench

REPO = Path(__file__).resolve().parent.parent


@dataclass
class PeerProcess:
    name: str
    home: Path
    mesh_port: int
    api_port: int
    proc: subprocess.Popen[bytes]
    token: str = ""
    peer_id: str = ""
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=70.0))

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.mesh_port}/"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, **params: Any) -> httpx.Response:
        try:
            return self.client.get(self.api + path, params=params, headers=self.headers())
        except httpx.TransportError as exc:
            raise self._gone(exc) from exc

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        try:
            return self.client.post(self.api + path, json=body, headers=self.headers())
        except httpx.TransportError as exc:
            raise self._gone(exc) from exc

    def _gone(self, exc: Exception) -> AssertionError:
        return AssertionError(
            f"{self.name} (api {self.api}, exit {self.proc.poll()}): {exc!r}\n"
            + self.log_text()[-4000:]
        )

    def log_text(self) -> str:
        path = self.home / "stderr.log"
        return path.read_text() if path.exists() else ""


def start_peer(
    tmp: Path,
    name: str,
    *extra: str,
    bootstrap: str | None = None,
    ports: tuple[int, int] | None = None,
) -> PeerProcess:
    """Start ``python -m peer`` with its home in ``tmp/name``; ``ports`` (mesh, API)
    to start it again where it was, free ones otherwise."""
    home = tmp / name
    home.mkdir(parents=True, exist_ok=True)
    mesh_port, api_port = ports or (free_port(), free_port())
    cmd = [
        sys.executable,
        "-m",
        "peer",
        "--listen",
        f"127.0.0.1:{mesh_port}",
        "--api",
        f"127.0.0.1:{api_port}",
        "--key-dir",
        str(home / "keys"),
        "--data-dir",
        str(home / "data"),
        *extra,
    ]
    if bootstrap:
        cmd += ["--bootstrap", bootstrap]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    with (home / "stderr.log").open("ab") as stderr:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr)
    return PeerProcess(name, home, mesh_port, api_port, proc)


def wait_ready(p: PeerProcess, deadline_s: float = 30.0) -> None:
    """Block until the peer printed its banner and its API answers."""
    assert p.proc.stdout is not None
    end = time.monotonic() + deadline_s
    first = p.proc.stdout.readline().decode()  # the banner's first line: blocks until started
    if not first.startswith("clawmesh"):
        raise AssertionError(f"{p.name} did not start: {first!r}\n{p.log_text()}")
    p.token = (p.home / "keys" / "api-token").read_text().strip()
    info = json.loads((p.home / "data" / "peer.json").read_text())
    p.peer_id = info["peer_id"]
    while True:
        try:
            r = p.client.get(p.api + "/status")
            if r.status_code == 200:
                return
        except httpx.TransportError:
            if time.monotonic() > end:
                raise
        if p.proc.poll() is not None:
            raise AssertionError(f"{p.name} exited:\n{p.log_text()}")


def restart_peer(
    tmp: Path, name: str, *extra: str, bootstrap: str | None, ports: tuple[int, int]
) -> PeerProcess:
    """``start_peer`` again where it was (``ports``), and ``wait_ready``; on free ports
    instead if one of them was taken meanwhile: a port ``free_port`` gave is one of the
    machine's ephemeral ports, so once its peer is gone any outgoing connection on the
    machine may get it (seen on a shared machine: "Address already in use")."""
    p = start_peer(tmp, name, *extra, bootstrap=bootstrap, ports=ports)
    try:
        wait_ready(p)
    except AssertionError as exc:
        stop(p)
        if "Address already in use" not in str(exc):
            raise
        p = start_peer(tmp, name, *extra, bootstrap=bootstrap)
        wait_ready(p)
    return p


def kill_hard(p: PeerProcess) -> None:
    """``kill -9``: no shutdown at all."""
    p.proc.kill()
    p.proc.wait()
    if p.proc.stdout is not None:
        p.proc.stdout.close()
    p.client.close()


def stop(p: PeerProcess) -> None:
    with contextlib.suppress(ProcessLookupError):
        p.proc.send_signal(signal.SIGINT)
    try:
        p.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.proc.kill()
        p.proc.wait()
    if p.proc.stdout is not None:
        p.proc.stdout.close()
    p.client.close()


@contextlib.contextmanager
def running(*peers: PeerProcess) -> Iterator[None]:
    try:
        yield
    finally:
        for p in peers:
            stop(p)
