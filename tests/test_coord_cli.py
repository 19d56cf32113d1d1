"""The coordination subcommands of ``python -m peer`` (receipts, request,
rally, rallies, converse, say, verdict, conversations, task, alert,
retry-dead) against two real peers, through click's runner with ``--json``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

import peer.cli._coordcmds  # noqa: F401  (registers the subcommands)
from peer.cli._commands import cli
from tests._mesh_pair import Pair, pair_fixture
from tests._procs import PeerProcess


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    yield from pair_fixture(tmp_path_factory.mktemp("coordcli"))


@pytest.fixture(autouse=True)
def _no_mesh_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MESH_KEY_DIR", "MESH_API_URL", "MESH_API_PORT", "MESH_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def cmd(p: PeerProcess, *args: str) -> Any:
    result = CliRunner().invoke(cli, [*args, "--key-dir", str(p.home / "keys"), "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _until(what: str, check: Any, deadline_s: float = 20.0) -> Any:
    end = time.monotonic() + deadline_s
    while not (value := check()):
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def _question(p: PeerProcess, body: str) -> dict[str, Any]:
    return dict(_until(body, lambda: next(
        (m for m in p.get("/messages", peek="true").json() if m["body"] == body), None)))


def test_request_rally_and_receipts(pair: Pair) -> None:
    a, b = pair.a, pair.b
    sent = cmd(a, "dm", b.peer_id, "hi there", "--kind", "notification", "--ttl", "60",
               "--idempotency-key", "k-1", "--priority", "low")
    _until("stored", lambda: "stored" in cmd(a, "receipts", sent["id"])["states"])
    asked = cmd(a, "request", b.peer_id, "cli ping?", "--timeout", "30")
    assert asked["state"] == "open"
    question = _question(b, "cli ping?")
    cmd(b, "dm", a.peer_id, "cli pong", "--reply-to", question["id"])
    done = cmd(a, "rallies", asked["id"], "--wait", "20")
    assert done["state"] == "complete" and done["response"]["body"] == "cli pong"
    rally = cmd(a, "rally", "cli rally?", "--to", b.peer_id, "--quorum", "1")
    cmd(b, "dm", a.peer_id, "yes", "--reply-to", _question(b, "cli rally?")["id"])
    assert cmd(a, "rallies", rally["id"], "--wait", "20")["state"] == "complete"
    follow = cmd(a, "rally-round", rally["id"], "cli round two?")
    assert follow["round"] == 2 and follow["state"] == "open"
    second = _question(b, "cli round two?")
    assert second["payload"]["previous"][0]["body"] == "yes"  # carries round 1's answers
    assert [r["id"] for r in cmd(a, "rallies", "--state", "open")] == [rally["id"]]


def test_conversation_task_alert_and_dead_letters(pair: Pair) -> None:
    a, b = pair.a, pair.b
    conv = cmd(a, "converse", "opinion", "cli", "subject", "--to", b.peer_id, "--rule",
               "unanimity")
    _until("b has it", lambda: b.get(f"/conversations/{conv['id']}").status_code == 200)
    cmd(b, "say", conv["id"], "agreed", "--vote", "yes")
    verdict = _until("verdict", lambda: cmd(b, "conversations", conv["id"])["verdict"])
    assert verdict["decision"] == "yes" and verdict["verified"] is True
    assert [c["id"] for c in cmd(a, "conversations", "-q", "subject")] == [conv["id"]]
    task = cmd(a, "task", "--to", b.peer_id, "--text", "cli job")
    _until("b has the task", lambda: b.get(f"/tasks/{task['id']}").status_code == 200)
    moved = cmd(b, "task", task["id"], "--set", "working", "--progress", "0.5")
    assert moved["state"] == "working"
    _until("a sees progress", lambda: cmd(a, "task", task["id"])["progress"] == 0.5)
    assert cmd(a, "task", task["id"], "--cancel")["state"] == "canceled"
    first = cmd(a, "alert", "h1", "cpu", "--to", b.peer_id)
    again = cmd(a, "alert", "h1", "cpu", "--to", b.peer_id)
    assert (first["decision"], again["decision"]) == ("new", "suppressed")
    assert cmd(a, "retry-dead")["count"] == 0


def test_rally_to_a_skill_nobody_declares(pair: Pair) -> None:
    args = ["--key-dir", str(pair.a.home / "keys"), "--json"]
    both = CliRunner().invoke(cli, ["rally", "q", "--skill", "x", "--to", pair.b.peer_id, *args])
    assert both.exit_code != 0 and "--skill" in both.output
    none = CliRunner().invoke(cli, ["rally", "q", "--skill", "no-one-does-this", *args])
    assert none.exit_code != 0 and "no agent declares" in none.output, none.output


def test_rally_lines_count_peers_in_english() -> None:
    from peer.cli._coordcmds import _rally_lines

    view = {"id": "r1", "kind": "request", "state": "open", "round": 1, "quorum": 1,
            "deadline": "soon", "answers": []}
    assert " to 1 peer: " in _rally_lines({**view, "to": ["ab" * 32]})
    assert " to 2 peers: " in _rally_lines({**view, "to": ["ab" * 32, "cd" * 32]})
