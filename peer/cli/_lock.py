"""One peer per key directory: an exclusive ``flock`` on ``peer.lock`` in its directories.

The kernel drops the lock when the process ends, however it ends (``kill -9``
too), so a stale lock cannot outlive its peer; the file itself stays and
holds the last owner's pid, which only the refusal message reads.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "peer.lock"


class DirectoryLocked(Exception):
    """Another running peer holds the lock on this directory."""


def lock_directories(*dirs: Path) -> list[int]:
    """Lock each distinct directory for this process; the returned descriptors must stay
    open while the peer runs. Raises ``DirectoryLocked`` naming the other peer's pid."""
    held: list[int] = []
    seen: set[Path] = set()
    try:
        for directory in dirs:
            real = directory.expanduser().resolve()
            if real in seen:
                continue
            seen.add(real)
            held.append(_lock(real))
    except BaseException:
        for fd in held:
            os.close(fd)
        raise
    return held


def _lock(directory: Path) -> int:
    path = directory / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise DirectoryLocked(
            f"another peer (pid {other}) is already running on {directory}; stop it, "
            "or give this peer its own --key-dir and --data-dir"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
