"""The embedding face: ``open_peer``, ``Peer.messages`` and ``examples/embed.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio

import peer

ROOT = Path(__file__).resolve().parent.parent


def test_the_embedding_example_exchanges_a_dm(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "embed.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # standard output carries only what the program printed: no logs
    assert done.stdout.splitlines() == [done.stdout.strip()]
    assert "'hello from Alice'" in done.stdout
    assert (tmp_path / "alice" / "ed25519.seed").exists()
    assert (tmp_path / "bob" / "store").is_dir()


async def test_messages_resume_from_a_cursor_and_filter(tmp_path: Path) -> None:
    async with peer.open_peer(tmp_path / "a", options=peer.PeerOptions(channels=("x", "y"))) as a:
        for i in range(3):
            await a.send_message("x", peer.Content(f"x{i}"))
            await a.send_message("y", peer.Content(f"y{i}"))
        mine = a.messages(after=0, channel="x", outgoing=True)
        with trio.fail_after(5):
            got = [await anext(mine) for _ in range(3)]
        assert [m.body for m in got] == ["x0", "x1", "x2"]
        # others' messages only (the default): ours are skipped
        later = a.messages(after=0)
        await a.send_message("x", peer.Content("x3"))
        with trio.move_on_after(0.5) as idle:
            await anext(later)
        assert idle.cancelled_caught
        # resuming after a cursor gives what came after it, nothing before
        resumed = a.messages(after=got[1].cursor, channel="x", outgoing=True)
        with trio.fail_after(5):
            assert [(await anext(resumed)).body for _ in range(2)] == ["x2", "x3"]


async def test_a_busy_address_is_a_clear_start_error(tmp_path: Path) -> None:
    async with peer.open_peer(tmp_path / "a") as a:
        port = a.listen_urls[0].rsplit(":", 1)[1].rstrip("/")
        with pytest.raises(peer.StartError, match=r"cannot listen on 127\.0\.0\.1:"):
            async with peer.open_peer(tmp_path / "b", listen=f"127.0.0.1:{port}"):
                pass  # pragma: no cover
        with pytest.raises(peer.StartError, match="HOST:PORT"):
            async with peer.open_peer(tmp_path / "c", listen="127.0.0.1:²"):
                pass  # pragma: no cover


async def test_an_api_without_an_address_binds_loopback(tmp_path: Path) -> None:
    async with peer.open_peer(tmp_path / "a", api=":0", listen=None) as a:
        assert a.api_url is not None and a.api_url.startswith("http://127.0.0.1:")


async def test_the_callers_own_error_comes_out_unwrapped(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="mine"):
        async with peer.open_peer(tmp_path / "a", store=False):
            raise KeyError("mine")
