"""The key and data directories and the store's files are the owner's alone,
whatever the umask: decrypted DMs are on that disk."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import peer
from store import MessageStore


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("open_umask")
async def test_a_new_peer_keeps_its_files_private(tmp_path: Path) -> None:
    async with peer.open_peer(tmp_path / "keys", data_dir=tmp_path / "data") as p:
        await p.send_message("lobby", peer.Content("secret"))
    for directory in (tmp_path / "keys", tmp_path / "data", tmp_path / "data" / "store"):
        assert mode(directory) == 0o700, directory
    for name in ("data.mdb", "lock.mdb"):
        assert mode(tmp_path / "data" / "store" / name) == 0o600, name
    assert mode(tmp_path / "keys" / "ed25519.seed") == 0o600


@pytest.mark.usefixtures("open_umask")
def test_a_store_made_wider_is_tightened_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "store"
    MessageStore(path).close()
    os.chmod(path, 0o755)
    os.chmod(path / "data.mdb", 0o644)
    MessageStore(path).close()
    assert mode(path) == 0o700 and mode(path / "data.mdb") == 0o600
