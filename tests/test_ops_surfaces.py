"""The operator's surfaces against a real peer: the Python client (sync and
async), the CLI (``python -m peer schedule ...``) and the MCP tools."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from click.testing import CliRunner
from mcp import Client as McpClient
from mcp.client.stdio import StdioServerParameters
from mcp_types import CallToolResult, TextContent

from peer.cli._opscmds import cli
from peer.client import ApiError, AsyncClient, Client
from peer.client._ops import message_body
from tests._procs import REPO, PeerProcess, running, start_peer, wait_ready


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerProcess]:
    p = start_peer(tmp_path_factory.mktemp("ops"), "a", "--channel", "lobby", "--no-dht")
    wait_ready(p)
    with running(p):
        yield p


@pytest.fixture(autouse=True)
def _no_mesh_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MESH_KEY_DIR", "MESH_API_URL", "MESH_API_PORT", "MESH_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def _cli(p: PeerProcess, *args: str) -> Any:
    result = CliRunner().invoke(
        cli, [*args, "--key-dir", str(p.home / "keys"), "--json"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_client_schedules(peer: PeerProcess) -> None:
    with Client(key_dir=peer.home / "keys") as mesh:
        made = mesh.schedule(message_body("lobby", None, "hourly"), cron="0 * * * *",
                             tz="Europe/Paris", name="hourly")
        assert made["kind"] == "cron" and made["tz"] == "Europe/Paris"
        assert made["id"] in {s["id"] for s in mesh.schedules()}
        assert mesh.pause_schedule(made["id"])["state"] == "paused"
        assert mesh.resume_schedule(made["id"])["state"] == "active"
        assert mesh.schedule_runs(made["id"]) == []
        later = mesh.send_at("2999-01-01T00:00:00+02:00", "far", channel="lobby")
        assert later["at"].startswith("2998-12-31T22:00:00")
        with pytest.raises(ApiError) as refused:
            mesh.schedule(message_body("lobby", None, "x"), every=0.2)
        assert refused.value.code == "invalid"
        mesh.delete_schedule(made["id"])
        mesh.delete_schedule(later["id"])
        assert mesh.schedules() == []


async def test_async_client_schedules(peer: PeerProcess) -> None:
    async with AsyncClient(key_dir=peer.home / "keys") as mesh:
        made = await mesh.schedule(message_body("lobby", None, "tick"), every=1, limit=2)
        with trio.fail_after(20):
            runs = await mesh.schedule_runs(made["id"])
            while len(runs) < 2 or any(r["outcome"] == "firing" for r in runs):
                await trio.sleep(0.2)  # polling the API with a deadline (another process)
                runs = await mesh.schedule_runs(made["id"])
        assert [r["outcome"] for r in runs] == ["sent", "sent"]
        assert (await mesh.schedules(made["id"]))[0]["state"] == "finished"
        await mesh.delete_schedule(made["id"])


def test_cli_schedule_commands(peer: PeerProcess) -> None:
    made = _cli(peer, "schedule", "add", "--channel", "lobby", "--every", "3600",
                "--missed", "skip", "--name", "cli", "hello", "there")
    assert made["message"] == {"body": "hello there", "channel": "lobby"}
    assert made["missed"] == "skip"
    assert [s["id"] for s in _cli(peer, "schedule", "list")] == [made["id"]]
    assert _cli(peer, "schedule", "pause", made["id"])["state"] == "paused"
    assert _cli(peer, "schedule", "resume", made["id"])["state"] == "active"
    assert _cli(peer, "schedule", "runs", made["id"]) == []
    table = CliRunner().invoke(cli, ["schedule", "list", "--key-dir", str(peer.home / "keys")])
    assert "every 3600 s" in table.output and made["id"] in table.output
    bad = CliRunner().invoke(
        cli, ["schedule", "add", "--channel", "lobby", "--cron", "nope", "x",
              "--key-dir", str(peer.home / "keys")]
    )
    assert bad.exit_code == 1 and "invalid: invalid cron expression" in bad.stderr
    assert _cli(peer, "schedule", "delete", made["id"]) == {"deleted": made["id"]}


def test_fleet_surfaces(peer: PeerProcess) -> None:
    with Client(key_dir=peer.home / "keys") as mesh:
        fleet = mesh.fleet()
        assert fleet["self"]["peer_id"] == peer.peer_id and fleet["peers"] == []
        sent = mesh.send("lobby", "audited")
        deadline = time.monotonic() + 10
        while not (found := mesh.audit(kind="channel", direction="out", limit=1000)) or (
            found[-1]["id"] != sent.id
        ):
            assert time.monotonic() < deadline, found
            time.sleep(0.05)
        assert found[-1]["text"] == "audited" and found[-1]["sender"] == peer.peer_id
    as_json = _cli(peer, "fleet")
    assert as_json["self"]["version"] == "0.1.0"
    table = CliRunner().invoke(cli, ["fleet", "--once", "--key-dir", str(peer.home / "keys")])
    assert table.exit_code == 0, table.output
    assert "PEER" in table.output and peer.peer_id[:16] in table.output
    assert "0 peers heard" in table.output


def _data(result: CallToolResult) -> Any:
    assert not result.is_error, result.content
    if result.structured_content is not None:
        return result.structured_content
    first = result.content[0]
    assert isinstance(first, TextContent)
    return json.loads(first.text)


async def test_mcp_schedule_tools(peer: PeerProcess) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "peer", "mcp", "--key-dir", str(peer.home / "keys")],
        env=env, cwd=str(REPO),
    )
    with trio.fail_after(60):
        async with McpClient(params) as m:
            made = _data(await m.call_tool(
                "schedule_message", {"text": "daily", "channel": "lobby", "cron": "0 9 * * *"}
            ))["schedule"]
            listed = _data(await m.call_tool("list_schedules", {}))["schedules"]
            assert made["id"] in {s["id"] for s in listed}
            paused = _data(await m.call_tool(
                "manage_schedule", {"schedule_id": made["id"], "action": "pause"}
            ))
            assert paused["schedule"]["state"] == "paused"
            assert _data(await m.call_tool("schedule_history", {"schedule_id": made["id"]})) == {
                "runs": []
            }
            gone = _data(await m.call_tool(
                "manage_schedule", {"schedule_id": made["id"], "action": "delete"}
            ))
            assert gone == {"deleted": made["id"]}
            bad = await m.call_tool("schedule_message", {"text": "x", "channel": "lobby"})
            assert bad.is_error
            fleet = _data(await m.call_tool("fleet_status", {}))
            assert fleet["self"]["peer_id"] == peer.peer_id


