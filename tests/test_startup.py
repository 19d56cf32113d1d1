"""Start-up and misuse of ``python -m peer``: each mistake is one clear line, fast.

A second peer on the same key directory is refused (and a ``kill -9``-ed
peer leaves no stale lock), an API port clash and a bootstrap spec that can
never work stop start-up, and the join command a first node prints works
when pasted as is, outside the virtualenv and the checkout. SIGINT and SIGTERM
stop a peer with links and API requests in flight cleanly (exit 0).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests._procs import REPO, free_port, kill_hard, running, start_peer, wait_ready


def _run_peer(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """``python -m peer ARGS`` that is expected to stop by itself."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    return subprocess.run(
        [sys.executable, "-m", "peer", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=30, check=False,
    )


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def test_a_second_peer_on_the_same_key_directory_is_refused(tmp_path: Path) -> None:
    first = start_peer(tmp_path, "a")
    with running(first):
        wait_ready(first)
        keys, data = first.home / "keys", first.home / "data"
        second = _run_peer(
            "--key-dir", str(keys), "--data-dir", str(tmp_path / "other-data"),
            "--listen", f"127.0.0.1:{free_port()}", "--api", f"127.0.0.1:{free_port()}",
        )
        assert second.returncode != 0
        line = _last_line(second.stderr)
        assert line.startswith("clawmesh: another peer") and str(first.proc.pid) in line
        assert str(keys) in line
        assert "Traceback" not in second.stderr
        # its data directory is guarded too, under another key directory
        third = _run_peer(
            "--key-dir", str(tmp_path / "other-keys"), "--data-dir", str(data),
            "--listen", f"127.0.0.1:{free_port()}", "--api", f"127.0.0.1:{free_port()}",
        )
        assert third.returncode != 0 and "another peer" in _last_line(third.stderr)
        assert first.get("/status").status_code == 200  # the first one never noticed


def test_test_ports_come_from_outside_the_ephemeral_range() -> None:
    # a peer restarted on its old ports must find them free: the kernel gives ports of
    # its ephemeral range to outgoing connections, so ours come from below it
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    if low < 11_000:
        pytest.skip(f"the ephemeral range starts at {low}: no room below it")
    ports = {free_port() for _ in range(20)}
    assert all(10_000 <= port < low for port in ports) and len(ports) > 1


def test_kill_9_leaves_no_stale_lock(tmp_path: Path) -> None:
    first = start_peer(tmp_path, "a")
    wait_ready(first)
    peer_id = first.peer_id
    kill_hard(first)
    again = start_peer(tmp_path, "a", ports=(first.mesh_port, first.api_port))
    with running(again):
        wait_ready(again)
        assert again.peer_id == peer_id


def test_sigint_and_sigterm_stop_a_busy_peer_cleanly(tmp_path: Path) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        a = start_peer(tmp_path, f"a{sig}")
        with running(a):
            wait_ready(a)
            b = start_peer(tmp_path, f"b{sig}", bootstrap=a.ws_url)
            with running(b):
                wait_ready(b)
                assert a.get("/peers", min="1", wait="20").json()  # a link is up
                with httpx.stream("GET", a.api + "/events", headers=a.headers(),
                                  timeout=30) as events:  # an API stream held open
                    assert events.status_code == 200
                    a.proc.send_signal(sig)
                    assert a.proc.wait(timeout=20) == 0, a.log_text()
        log = a.log_text()
        assert "clawmesh: stopped" in log and "Traceback" not in log, log


def test_an_api_port_clash_is_one_line(tmp_path: Path) -> None:
    first = start_peer(tmp_path, "a")
    with running(first):
        wait_ready(first)
        clash = _run_peer(
            "--key-dir", str(tmp_path / "b" / "keys"), "--data-dir", str(tmp_path / "b" / "data"),
            "--listen", f"127.0.0.1:{free_port()}", "--api", f"127.0.0.1:{first.api_port}",
        )
        assert clash.returncode != 0
        assert "Traceback" not in clash.stderr
        line = _last_line(clash.stderr)
        assert line.startswith(f"clawmesh: cannot serve the API on 127.0.0.1:{first.api_port}")
        assert "--api" in line
        assert first.get("/status").status_code == 200


def test_a_bootstrap_spec_that_can_never_work_stops_start_up(tmp_path: Path) -> None:
    garbage = tmp_path / "peers.json"
    garbage.write_text("{not json")
    empty = tmp_path / "empty.json"
    empty.write_text('{"version": 1, "peers": []}')
    cases = {
        "ws://": "not a WebSocket address",
        "nonsense": "not a peer address",
        str(tmp_path / "missing.json"): "cannot read",
        str(garbage): "is not JSON",
        str(empty): "lists no peers",
        "ws://127.0.0.1:7433/#abc": "is not a 64-hex-digit peer id",
    }
    for spec, expected in cases.items():
        result = _run_peer(
            "--key-dir", str(tmp_path / "keys"), "--data-dir", str(tmp_path / "data"),
            "--listen", "127.0.0.1:0", "--no-api", "--bootstrap", spec,
        )
        assert result.returncode != 0, spec
        line = _last_line(result.stderr)
        assert line.startswith("clawmesh: --bootstrap:") and expected in line, result.stderr
        assert "Traceback" not in result.stderr


def test_the_printed_join_command_works_pasted_anywhere(tmp_path: Path) -> None:
    first = start_peer(tmp_path, "a")
    with running(first):
        wait_ready(first)
        assert first.proc.stdout is not None
        banner = "".join(first.proc.stdout.readline().decode() for _ in range(4))
        join = next(
            line.strip() for line in banner.splitlines() if "--bootstrap" in line
        )
        argv = shlex.split(join)
        assert os.path.isabs(argv[0]) and argv[1:3] == ["-m", "peer"]
        api_port = free_port()
        home = tmp_path / "pasted"
        argv += [
            "--key-dir", str(home / "keys"), "--data-dir", str(home / "data"),
            "--listen", f"127.0.0.1:{free_port()}", "--api", f"127.0.0.1:{api_port}",
        ]
        # as a person would paste it: another directory, no virtualenv on PATH
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
        with (tmp_path / "pasted.log").open("wb") as log:
            proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=log)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().decode().startswith("clawmesh peer")
            token = (home / "keys" / "api-token").read_text().strip()
            peers = httpx.get(
                f"http://127.0.0.1:{api_port}/peers",
                params={"min": "1", "wait": "20"},
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            ).json()
            assert [p["peer_id"] for p in peers] == [first.peer_id]
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
