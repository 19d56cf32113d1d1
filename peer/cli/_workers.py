"""``python -m peer --relay-only --workers N``: one seed as N worker processes.

The parent process runs no peer. It holds the key and data directory locks,
reserves the listen port (a bound, never listening ``SO_REUSEPORT`` socket:
the port stays ours while a worker restarts), makes a private directory for
the workers' sibling sockets (``<data-dir>/workers``), and starts N children
``python -m peer <the same flags> --worker-index I`` that each listen on that
port with ``SO_REUSEPORT`` (the kernel spreads connections over them) and link
to each other (``peer.node._siblings``). Design and figures: bench/README.md,
"Every core".

What each worker is given, besides the parent's flags:

* the same key directory: one identity, so every ``ws://host:port#peerid``
  bootstrap entry works whichever worker accepts the connection;
* its own data directory ``<data-dir>/worker-I`` (its store, its ``peer.json``):
  each worker stores what it relays and what its siblings relay, so a
  returning peer catches up from whichever worker it lands on;
* its own API: worker 0 on ``--api``, the others on free ports of that host;
  ``<data-dir>/peer.json`` lists them all;
* only worker 0 dials the bootstrap peers (N links from one peer id to one
  peer would replace each other); the rest are reached through it.

Supervision: a worker that exits (``kill -9``) is started again (after 0.2 s,
backing off to 10 s while it keeps dying within 30 s); its links redial.
SIGTERM or SIGINT to the parent stops every worker (SIGTERM, then SIGKILL
after ``STOP_GRACE``) and removes the socket directory; a worker also stops
when the parent is gone (``PR_SET_PDEATHSIG``, and a watchdog on its parent
pid), so no worker outlives the seed.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from ._signals import STOP_GRACE_S

# seconds workers have to exit on SIGTERM before SIGKILL: longer than a worker gives
# its own close (``peer.cli._signals``), so a slow close ends the worker's way
STOP_GRACE = STOP_GRACE_S + 5.0
READY_TIMEOUT = 60.0
RESTART_MIN, RESTART_MAX = 0.2, 10.0
STABLE_AFTER = 30.0  # a worker that ran this long restarts at once again next time
MAX_WORKERS = 64
_PR_SET_PDEATHSIG = 1


def check_workers(workers: int, relay_only: bool, listens: bool = True) -> None:
    """Refuse a worker count the seed cannot run, with the reason."""
    if workers < 1:
        raise SystemExit("clawmesh: --workers wants 1 or more")
    if workers > MAX_WORKERS:
        raise SystemExit(f"clawmesh: --workers is at most {MAX_WORKERS}")
    if workers > 1 and not relay_only:
        raise SystemExit(
            "clawmesh: --workers > 1 is for --relay-only seeds (a peer with an agent is one "
            "process: its inbox, outbox and API are one)"
        )
    if workers > 1 and not listens:
        raise SystemExit("clawmesh: --workers > 1 share a listener: not with --no-listen")


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (never listen) a ``SO_REUSEPORT`` socket on ``host:port``: it picks the
    port if 0, and keeps it ours while no worker is listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(
            f"clawmesh: cannot listen on {host}:{port}: {exc.strerror or exc}"
            " (is another peer running? pick another port)"
        ) from None
    return sock


def worker_api(api: str, index: int) -> str:
    """Worker ``index``'s API address: worker 0 on ``--api``, the others on a free port
    of its host (``<data-dir>/peer.json`` lists them: a fixed offset would collide
    with the mesh port, 7432 and 7433 by default)."""
    if index == 0:
        return api
    host, _, _ = api.rpartition(":")
    return f"{host}:0"


def socket_dir(data_dir: Path) -> Path:
    """A private (0700) directory for the workers' sibling sockets: ``<data-dir>/workers``,
    or a fresh one under the temporary directory when that path is too long for a Unix
    socket's name (about 107 bytes)."""
    here = data_dir.resolve() / "workers"
    if len(str(here)) + len(f"/{MAX_WORKERS}.sock") < 100:
        here.mkdir(mode=0o700, exist_ok=True)
        os.chmod(here, 0o700)
        for stale in here.glob("*.sock"):
            stale.unlink(missing_ok=True)
        return here
    return Path(tempfile.mkdtemp(prefix="clawmesh-workers-"))


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class Worker:
    index: int
    argv: list[str]
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = RESTART_MIN
    due: float = 0.0  # when a dead worker is started again

    def start(self) -> None:
        (self.data_dir / "peer.json").unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
        self.started = time.monotonic()

    def info(self) -> dict[str, object]:
        try:
            data = json.loads((self.data_dir / "peer.json").read_text())
        except (OSError, ValueError):
            data = {}
        alive = self.proc is not None and self.proc.poll() is None
        return {
            "index": self.index,
            "pid": self.proc.pid if self.proc is not None else None,
            "alive": alive,
            "ready": alive and data.get("pid") == (self.proc.pid if self.proc else None),
            "api_url": data.get("api_url"),
            "restarts": self.restarts,
        }


@dataclass
class Supervisor:
    """The parent: starts, watches, restarts and stops the workers."""

    workers: list[Worker]
    data_dir: Path
    stopping: bool = False

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True

    def wait_ready(self) -> bool:
        end = time.monotonic() + READY_TIMEOUT
        while not self.stopping and time.monotonic() < end:
            infos = [w.info() for w in self.workers]
            if all(i["ready"] for i in infos):
                return True
            if any(w.proc is not None and w.proc.poll() is not None for w in self.workers):
                return False
            time.sleep(0.05)
        return False

    def write_info(self, peer: dict[str, object]) -> None:
        info = dict(peer, pid=os.getpid(), workers=[w.info() for w in self.workers])
        tmp = self.data_dir / "peer.json.tmp"
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, self.data_dir / "peer.json")

    def step(self, now: float) -> bool:
        """Restart the workers that died; True if anything changed."""
        changed = False
        for w in self.workers:
            if w.proc is None or w.proc.poll() is None:
                continue
            if w.due == 0.0:
                quick = now - w.started < STABLE_AFTER
                w.backoff = min(RESTART_MAX, w.backoff * 2) if quick else RESTART_MIN
                w.due = now + w.backoff
                print(f"clawmesh: worker {w.index} exited ({w.proc.returncode}); restarting "
                      f"in {w.backoff:.1f} s", file=sys.stderr, flush=True)
            elif now >= w.due:
                w.due = 0.0
                w.restarts += 1
                w.start()
                changed = True
        return changed

    def stop(self) -> None:
        live = [w.proc for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + STOP_GRACE
        for proc in live:
            try:
                proc.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def child_argv(argv: Sequence[str], index: int, count: int, listen: str, data: Path,
               worker_dir: Path) -> list[str]:
    """The parent's flags, then the worker's own (argparse keeps the last of each)."""
    return [sys.executable, "-m", "peer", *argv, "--listen", listen,
            "--data-dir", str(data), "--workers", str(count),
            "--worker-index", str(index), "--worker-dir", str(worker_dir)]  # fmt: skip


Banner = Callable[[dict[str, object], list[dict[str, object]]], str]


def run_workers(argv: Sequence[str], count: int, host: str, port: int, data_dir: Path,
                api: str | None, banner: Banner) -> None:
    """Run the seed as ``count`` workers until SIGTERM or SIGINT (the locks are held by
    the caller). ``banner(worker 0's peer.json, the workers)`` is printed once every
    worker is up."""
    reserved = reserve_port(host, port)
    bound = reserved.getsockname()[1]
    worker_dir = socket_dir(data_dir)
    workers = []
    for i in range(count):
        data = data_dir / f"worker-{i}"
        data.mkdir(mode=0o700, exist_ok=True)
        extra = [] if api is None else ["--api", worker_api(api, i)]
        listen = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        workers.append(Worker(i, child_argv([*argv, *extra], i, count, listen, data, worker_dir),
                              data))
    sup = Supervisor(workers, data_dir)
    old = {s: signal.signal(s, sup.on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for w in workers:
            w.start()
        if not sup.wait_ready():
            if not sup.stopping:
                raise SystemExit("clawmesh: a worker did not start (its error is above)")
            return
        first = json.loads((workers[0].data_dir / "peer.json").read_text())
        sup.write_info(first)
        print(banner(first, [w.info() for w in workers]), flush=True)
        written = time.monotonic()
        while not sup.stopping:
            now = time.monotonic()
            if sup.step(now) or now - written > 1.0:  # restarts, and their readiness
                sup.write_info(first)
                written = now
            time.sleep(0.05)
    finally:
        sup.stop()
        for s, handler in old.items():
            signal.signal(s, handler)
        reserved.close()
        if worker_dir.parent == data_dir.resolve():
            for stale in worker_dir.glob("*.sock"):
                stale.unlink(missing_ok=True)
        else:
            shutil.rmtree(worker_dir, ignore_errors=True)
        print("clawmesh: stopped", file=sys.stderr, flush=True)
