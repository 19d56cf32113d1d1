"""deploy/: the systemd unit and the container image definition start what
they say (a relay-only seed, JSON logs on stderr), checked by running their
exact commands as real processes (no container runtime or systemd needed)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests._procs import REPO, free_port

DEPLOY = REPO / "deploy"


def _unit() -> dict[str, list[str]]:
    """``key -> values`` of the unit (continuation lines joined)."""
    text = (DEPLOY / "clawmesh-seed.service").read_text().replace("\\\n", " ")
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _containerfile() -> tuple[list[str], dict[str, str]]:
    """The ENTRYPOINT (JSON form) and the ENV settings of the Containerfile."""
    text = (DEPLOY / "Containerfile").read_text().replace("\\\n", " ")
    entry: list[str] = []
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENTRYPOINT "):
            entry = json.loads(line[len("ENTRYPOINT "):])
        elif line.startswith("ENV "):
            env.update(dict(pair.split("=", 1) for pair in shlex.split(line[4:])))
    return entry, env


def _run_seed(argv: list[str], env: dict[str, str], home: Path) -> None:
    """Start ``argv`` (a seed) on free ports, check its API and JSON logs, stop it."""
    api = free_port()
    argv = [*argv, "--listen", f"127.0.0.1:{free_port()}", "--api", f"127.0.0.1:{api}"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    log = home / "stderr.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(argv, cwd=REPO, env={**clean, **env}, stdout=subprocess.DEVNULL,
                                stderr=err)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status = httpx.get(f"http://127.0.0.1:{api}/status", timeout=5).json()
                break
            except httpx.TransportError:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        assert status["relay_only"] is True
        metrics = httpx.get(f"http://127.0.0.1:{api}/metrics", timeout=5).text
        assert 'mode="relay-only"' in metrics
    finally:
        proc.send_signal(2)  # SIGINT, the stop signal both files name
        assert proc.wait(timeout=20) == 0 or proc.returncode == 130, log.read_text()
    lines = [x for x in log.read_text().splitlines() if x.strip()]
    assert lines, "the seed logged nothing"
    events = [json.loads(x) for x in lines if x.startswith("{")]
    assert len(events) == len([x for x in lines if not x.startswith("clawmesh: stopped")])
    assert all("event" in e for e in events)


def test_systemd_unit_runs_a_relay_only_seed_with_json_logs(tmp_path: Path) -> None:
    unit = _unit()
    assert unit["KillSignal"] == ["SIGINT"]
    assert "MESH_LOG_JSON=1" in unit["Environment"]
    assert unit["StateDirectory"] == ["clawmesh"] and unit["Restart"] == ["always"]
    argv = shlex.split(unit["ExecStart"][0].replace("$CLAWMESH_ARGS", ""))
    assert argv[0] == "/opt/clawmesh/.venv/bin/python" and argv[1:4] == ["-m", "peer",
                                                                          "--relay-only"]
    argv = [sys.executable, *argv[1:]]
    argv = [re.sub(r"^/var/lib/clawmesh", str(tmp_path), a) for a in argv]
    _run_seed(argv, {"MESH_LOG_JSON": "1"}, tmp_path)
    if shutil.which("systemd-analyze"):  # the unit's syntax, where systemd's tools exist
        copy = tmp_path / "clawmesh-seed.service"
        copy.write_text((DEPLOY / "clawmesh-seed.service").read_text().replace(
            "/opt/clawmesh/.venv/bin/python", sys.executable))
        done = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                              text=True, timeout=60, cwd=tmp_path)
        assert done.returncode == 0, done.stderr


def test_container_image_runs_a_relay_only_seed_with_json_logs(tmp_path: Path) -> None:
    entry, env = _containerfile()
    assert entry[:4] == ["python", "-m", "peer", "--relay-only"]
    assert env["MESH_LOG_JSON"] == "1"
    text = (DEPLOY / "Containerfile").read_text()
    assert "STOPSIGNAL SIGINT" in text and "USER clawmesh" in text
    env = {k: v.replace("/var/lib/clawmesh", str(tmp_path)) for k, v in env.items()}
    _run_seed([sys.executable, *entry[1:]], env, tmp_path)
    assert (tmp_path / "keys" / "api-token").exists()  # MESH_KEY_DIR was used


@pytest.mark.parametrize("value", ["0", ""])
def test_log_json_env_off(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from peer.cli._cli import build_parser

    monkeypatch.setenv("MESH_LOG_JSON", value)
    assert build_parser().parse_args([]).log_json is False
    monkeypatch.setenv("MESH_LOG_JSON", "1")
    monkeypatch.setenv("MESH_LOG_LEVEL", "DEBUG")
    args = build_parser().parse_args([])
    assert args.log_json is True and args.log_level == "debug"
