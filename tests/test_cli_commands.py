"""``python -m peer COMMAND`` against two real peers: tables, ``--json``, and one-line failures.

Most commands run in-process through click's runner (the same code path as
the console, minus the interpreter start); a few run as real subprocesses to
pin the exit status and the single stderr line, and ``tail`` is a real
process across a peer's ``kill -9`` and restart (skipped while the peer has
no ``GET /events``: that endpoint lands on another branch).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from peer.cli._cli import build_parser
from peer.cli._commands import cli
from tests._mesh_pair import Pair, pair_fixture
from tests._procs import REPO, PeerProcess, free_port, kill_hard, start_peer, stop, wait_ready


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    yield from pair_fixture(tmp_path_factory.mktemp("cli"))


@pytest.fixture(autouse=True)
def _no_mesh_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MESH_KEY_DIR", "MESH_API_URL", "MESH_API_PORT", "MESH_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def run(p: PeerProcess, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(
        cli, [*args, "--key-dir", str(p.home / "keys")], input=stdin, catch_exceptions=False
    )


def ok_json(p: PeerProcess, *args: str) -> Any:
    result = run(p, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_status_peers_and_channels(pair: Pair) -> None:
    status = ok_json(pair.a, "status")
    assert isinstance(status, dict) and status["peer_id"] == pair.a.peer_id
    table = run(pair.a, "status")
    assert table.exit_code == 0 and f"peer id       {pair.a.peer_id}" in table.stdout
    peers = run(pair.a, "peers")
    assert peers.exit_code == 0
    header, row = peers.stdout.splitlines()[:2]
    assert header.split()[:2] == ["PEER", "ID"] and row.startswith(pair.b.peer_id)
    assert [p["peer_id"] for p in ok_json(pair.a, "peers", "--online")] == [pair.b.peer_id]
    assert run(pair.a, "join", "#dev").stdout == "joined #dev\n"
    assert run(pair.a, "channels").stdout.split() == ["#dev", "#lobby"]
    assert ok_json(pair.a, "leave", "dev") == ["lobby"]


def test_send_read_dm_and_ack(pair: Pair) -> None:
    run(pair.b, "read")  # nothing unread before this test
    sent = ok_json(pair.a, "send", "lobby", "hello", "from", "the", "cli")
    assert isinstance(sent, dict)
    got = ok_json(pair.b, "read", "--channel", "lobby", "--wait", "20", "--peek")
    assert [(m["id"], m["body"]) for m in got] == [(sent["id"], "hello from the cli")]
    table = run(pair.b, "read")
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["CURSOR", "TIME", "WHERE", "FROM", "BODY"]
    assert "#lobby" in lines[1] and lines[1].endswith("hello from the cli")
    assert run(pair.b, "read").stderr == "no messages\n"  # read marked them read

    piped = run(pair.a, "dm", pair.b.peer_id, "-", "--json", stdin="a secret\nin two lines\n")
    assert piped.exit_code == 0, piped.output
    dm = json.loads(piped.stdout)
    got = ok_json(pair.b, "read", "--peer", pair.a.peer_id, "--wait", "20", "--peek")
    assert [(m["id"], m["body"]) for m in got] == [(dm["id"], "a secret\nin two lines")]
    cursor = got[-1]["cursor"]
    acked = run(pair.b, "ack", "--through", str(cursor))
    assert acked.exit_code == 0 and acked.stdout.startswith("marked 1 read")
    everything = ok_json(pair.b, "read", "--all", "--after", str(cursor - 1))
    assert [m["id"] for m in everything] == [dm["id"]]


def test_failures_are_one_line_with_a_meaningful_status(pair: Pair) -> None:
    unknown = run(pair.a, "dm", "ab" * 32, "hello?")
    assert unknown.exit_code == 1
    assert unknown.stderr.startswith("clawmesh: unknown-peer: ")
    assert "no key known for " in unknown.stderr and "ab" * 32 in unknown.stderr
    big = run(pair.a, "send", "lobby", "x" * 70000)
    assert (big.exit_code, big.stderr) == (1, "clawmesh: too-large: body over 65536 bytes\n")
    bad = run(pair.a, "join", "two words")
    assert bad.exit_code == 1 and bad.stderr.startswith("clawmesh: invalid: not a channel name")
    payload = run(pair.a, "send", "lobby", "hi", "--payload", "{oops")
    assert payload.exit_code == 2 and "--payload" in payload.stderr
    assert run(pair.a, "send").exit_code == 2  # click's usage error
    for result in (unknown, big, bad):
        assert len(result.stderr.splitlines()) == 1 and result.stdout == ""
    assert ok_json(pair.a, "status")["peer_id"] == pair.a.peer_id


def _cli_process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    return subprocess.run(
        [sys.executable, "-m", "peer", *args], cwd=REPO, env={**base, **(env or {})},
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_exit_status_from_a_real_process(pair: Pair, tmp_path: Path) -> None:
    keys = str(pair.a.home / "keys")
    wrong = _cli_process("channels", "--key-dir", keys, env={"MESH_API_TOKEN": "not-this-one-123"})
    assert wrong.returncode == 4
    assert wrong.stderr == (
        f"clawmesh: the peer at {pair.a.api} refused the token from $MESH_API_TOKEN "
        "(is --key-dir that peer's key directory?)\n"
    )
    down = _cli_process("status", "--api", f"127.0.0.1:{free_port()}", "--key-dir", keys)
    assert down.returncode == 3 and down.stderr.startswith("clawmesh: no peer answers at ")
    none = _cli_process("channels", "--key-dir", str(tmp_path / "nothing-here"),
                        "--api", pair.a.api)
    assert none.returncode == 4 and "api-token does not exist" in none.stderr
    assert "tail" in build_parser().format_help()  # the run command points at the others


def _events_served(p: PeerProcess) -> bool:
    try:
        answer = httpx.get(p.api + "/events", headers=p.headers(), params={"after": "999999"},
                           timeout=httpx.Timeout(10, read=1))
    except httpx.ReadTimeout:
        return True  # a stream that is open and waiting: /events exists
    return answer.status_code != 404


def test_tail_follows_across_a_kill_9(tmp_path: Path) -> None:
    x = start_peer(tmp_path, "x", "--no-dht", "--channel", "lobby")
    wait_ready(x)
    tail = None
    try:
        if not _events_served(x):
            pytest.skip("GET /events is not on this branch yet (s1 builds it)")
        tail = subprocess.Popen(
            [sys.executable, "-m", "peer", "tail", "--json", "--after", "0", "--count", "4",
             "--key-dir", str(x.home / "keys")],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for body in ("one", "two"):
            assert x.post("/send", {"channel": "lobby", "body": body}).status_code == 200
        assert tail.stdout is not None
        first = [json.loads(tail.stdout.readline())["body"] for _ in range(2)]  # it follows
        assert first == ["one", "two"]
        kill_hard(x)
        x = start_peer(tmp_path, "x", "--no-dht", "--channel", "lobby",
                       ports=(x.mesh_port, x.api_port))
        wait_ready(x)
        for body in ("three", "four"):
            assert x.post("/send", {"channel": "lobby", "body": body}).status_code == 200
        out, err = tail.communicate(timeout=60)
        assert tail.returncode == 0, err
        assert [json.loads(line)["body"] for line in out.splitlines()] == ["three", "four"]
        assert "reconnecting" in err  # it saw the peer go, and came back
    finally:
        if tail is not None and tail.poll() is None:
            tail.kill()
            tail.communicate()
        stop(x)
