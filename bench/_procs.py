"""Child processes of the harness, and what /proc says about them.

A :class:`Child` is a process whose stdout carries JSON lines (the load
generator, the forwarders) or a banner (``python -m peer``). A reader task
keeps the latest event of each kind, so the harness can wait for one
(``wait_for``) or look at the newest (``last``) without a queue that could
fill up; stdin takes commands, stderr goes to a log file.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
MAX_KEPT_LINES = 50


class ChildFailed(Exception):
    """A child exited, reported an error, or did not answer in time."""


_LOWEST_PORT = 10_000
_port_rng = random.Random()


def free_port() -> int:
    """A loopback port free now, drawn from below the kernel's ephemeral range: a
    port the kernel hands out (``bind(0)``) may go to any outgoing connection of the
    machine once its listener is gone, and a peer restarted on its old ports (as the
    chaos harness and the tests do) then fails with "Address already in use"."""
    top = _ephemeral_low()
    for _ in range(200 if top - _LOWEST_PORT >= 1000 else 0):
        port = _port_rng.randrange(_LOWEST_PORT, top)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # no such range here
        s.bind(("127.0.0.1", 0))
        bound: int = s.getsockname()[1]
        return bound


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads), from /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def runqueue_wait_seconds(pid: int) -> float:
    """Time the threads of a process spent runnable but waiting for a CPU, in
    seconds, from /proc/<pid>/task/*/schedstat (the second field, ns)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_pressure() -> float | None:
    """The share of the last 10 s in which some runnable task waited for a CPU (PSI), %."""
    try:
        first = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    for field in first.split():
        if field.startswith("avg10="):
            return float(field[6:])
    return None


async def http_get_json(host: str, port: int, path: str) -> Any:
    """GET ``path`` from a loopback HTTP server; the decoded JSON body, or None."""
    with trio.move_on_after(5):
        try:
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                await stream.send_all(
                    f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
                data = b""
                while len(data) < 4 * 1024 * 1024:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    data += chunk
        except OSError:
            return None
        _, _, body = data.partition(b"\r\n\r\n")
        try:
            return json.loads(body)
        except ValueError:
            return None
    return None


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH", "")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Child:
    def __init__(self, name: str, proc: trio.Process, log_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path
        self.last: dict[str, dict[str, Any]] = {}
        self.lines: list[str] = []
        self.eof = False
        self._changed = trio.Event()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def start(
        cls,
        nursery: trio.Nursery,
        name: str,
        cmd: Sequence[str],
        log_dir: Path,
        *,
        cwd: Path = REPO,
    ) -> Child:
        os.makedirs(log_dir, exist_ok=True)
        log_path = log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            log.write(("$ " + " ".join(cmd) + "\n").encode())
            log.flush()
            proc = await trio.lowlevel.open_process(
                list(cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                cwd=str(cwd), env=child_env(),
            )
        child = cls(name, proc, log_path)
        nursery.start_soon(child._read_stdout)
        return child

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        buf = b""
        try:
            while True:
                data = await self.proc.stdout.receive_some(65536)
                if not data:
                    break
                buf += data
                while b"\n" in buf:
                    raw, buf = buf.split(b"\n", 1)
                    self._line(raw.decode(errors="replace"))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self.eof = True
        self._notify()

    def _line(self, line: str) -> None:
        event: Any = None
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                event = json.loads(line)
        if isinstance(event, dict) and isinstance(event.get("ev"), str):
            self.last[event["ev"]] = event
        elif len(self.lines) < MAX_KEPT_LINES:
            self.lines.append(line)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def changed(self) -> None:
        await self._changed.wait()

    async def wait_for(self, event: str, within: float) -> dict[str, Any]:
        """The latest ``event``, waiting up to ``within`` s; ChildFailed otherwise."""
        with trio.move_on_after(within):
            while True:
                if event in self.last:
                    return self.last[event]
                if "error" in self.last:
                    raise ChildFailed(f"{self.name}: {self.last['error']}")
                if self.eof:
                    raise ChildFailed(f"{self.name} exited ({self.proc.poll()}): {self.tail()}")
                await self.changed()
        raise ChildFailed(f"{self.name}: no {event!r} within {within:g} s")

    async def wait_line(self, prefix: str, within: float) -> str:
        """The first stdout line starting with ``prefix`` (for banners)."""
        with trio.move_on_after(within):
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line
                if self.eof:
                    raise ChildFailed(f"{self.name} exited ({self.proc.poll()}): {self.tail()}")
                await self.changed()
        raise ChildFailed(f"{self.name}: did not print {prefix!r} within {within:g} s")

    async def send(self, command: str) -> None:
        if self.proc.stdin is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.proc.stdin.send_all(command.encode() + b"\n")

    def tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    async def stop(self, grace: float = 10.0, sig: int = signal.SIGINT) -> int | None:
        """Signal the process, wait up to ``grace`` s, then kill it."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            with trio.move_on_after(grace):
                await self.proc.wait()
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                with trio.move_on_after(5):
                    await self.proc.wait()
        if self.proc.stdin is not None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.proc.stdin.aclose()
        return self.proc.poll()


def python_cmd(*args: str) -> list[str]:
    return [sys.executable, *args]
