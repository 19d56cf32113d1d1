"""``python -m peer mcp`` driven by the MCP SDK's own stdio client, against two real peers.

The model's view: the tools are listed with descriptions, a channel post and
a DM go through, new messages are read (and waiting is bounded), channels
are joined and left, and API refusals come back as tool errors carrying the
API's code and message while the peer keeps running.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp_types import CallToolResult, TextContent

from tests._mesh_pair import Pair, pair_fixture
from tests._procs import REPO, PeerProcess

TOOLS = {
    "mesh_status", "send_to_channel", "send_dm", "read_messages", "wait_for_messages",
    "list_peers", "list_channels", "join_channel", "leave_channel",
    "send_with_semantics", "get_receipts", "ask_peer", "start_rally", "get_rally",
    "start_conversation", "post_to_conversation", "get_conversation", "search_conversations",
    "set_conversation_verdict", "submit_task", "get_task", "update_task", "cancel_task",
    "send_alert", "retry_dead_letters",
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    yield from pair_fixture(tmp_path_factory.mktemp("mcp"))


def _server(p: PeerProcess) -> StdioServerParameters:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "peer", "mcp", "--key-dir", str(p.home / "keys")],
        env=env,
        cwd=str(REPO),
    )


def _data(result: CallToolResult) -> Any:
    assert not result.is_error, result.content
    if result.structured_content is not None:
        return result.structured_content
    first = result.content[0]
    assert isinstance(first, TextContent)
    return json.loads(first.text)


def _error_text(result: CallToolResult) -> str:
    assert result.is_error
    first = result.content[0]
    assert isinstance(first, TextContent)
    return first.text


async def test_the_mcp_tools_reach_the_mesh(pair: Pair) -> None:
    with trio.fail_after(90):
        async with Client(_server(pair.a)) as a, Client(_server(pair.b)) as b:
            listed = await a.list_tools()
            assert {t.name for t in listed.tools} == TOOLS
            assert all(t.description and len(t.description) > 30 for t in listed.tools)

            status = _data(await a.call_tool("mesh_status", {}))
            assert status["peer_id"] == pair.a.peer_id and "lobby" in status["channels"]
            await b.call_tool("read_messages", {"limit": 100})  # start from nothing unread

            sent = _data(await a.call_tool("send_to_channel", {"channel": "lobby", "text": "hi"}))
            got = _data(await b.call_tool("wait_for_messages", {"timeout_seconds": 20}))
            assert [(m["id"], m["text"], m["channel"]) for m in got["messages"]] == [
                (sent["id"], "hi", "lobby")
            ]
            assert got["messages"][0]["from"] == pair.a.peer_id

            dm = _data(await b.call_tool(
                "send_dm", {"peer_id": pair.a.peer_id, "text": "psst", "reply_to": sent["id"]}
            ))
            got = _data(await a.call_tool(
                "wait_for_messages", {"timeout_seconds": 20, "peer_id": pair.b.peer_id}
            ))
            assert [(m["id"], m["text"], m["dm_with"], m["reply_to"]) for m in got["messages"]] == [
                (dm["id"], "psst", pair.b.peer_id, sent["id"])
            ]

            with trio.fail_after(10):  # bounded: nothing new comes, it returns empty
                quiet = _data(await a.call_tool("wait_for_messages", {"timeout_seconds": 1}))
            assert quiet["messages"] == [] and quiet["unread_left"] == 0

            peers = _data(await a.call_tool("list_peers", {}))
            assert [p["peer_id"] for p in peers["peers"]] == [pair.b.peer_id]
            assert "research" in _data(await a.call_tool("join_channel", {"channel": "research"}))[
                "channels"
            ]
            assert "research" in _data(await a.call_tool("list_channels", {}))["channels"]
            left = _data(await a.call_tool("leave_channel", {"channel": "research"}))
            assert "research" not in left["channels"]


async def test_refusals_are_tool_errors_with_the_api_message(pair: Pair) -> None:
    with trio.fail_after(60):
        async with Client(_server(pair.a)) as a:
            unknown = await a.call_tool("send_dm", {"peer_id": "ab" * 32, "text": "hello?"})
            assert "unknown-peer: " in _error_text(unknown)
            assert "no key known for " in _error_text(unknown)
            big = await a.call_tool("send_to_channel", {"channel": "lobby", "text": "x" * 70000})
            assert "too-large: body over" in _error_text(big)
            bad = await a.call_tool("join_channel", {"channel": "two words"})
            assert "not a channel name" in _error_text(bad)
            missing = await a.call_tool("send_to_channel", {"channel": "lobby"})
            assert missing.is_error  # the SDK's own argument check
            still = _data(await a.call_tool("mesh_status", {}))
            assert still["peer_id"] == pair.a.peer_id


async def test_a_wrong_key_directory_says_so(pair: Pair, tmp_path: Any) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "api-token").write_text("a-token-this-peer-never-made\n")
    (keys / "api-url").write_text(pair.a.api + "\n")
    params = _server(pair.a)
    params.args = ["-m", "peer", "mcp", "--key-dir", str(keys)]
    with trio.fail_after(60):
        async with Client(params) as a:
            refused = await a.call_tool("list_channels", {})
    text = _error_text(refused)
    assert "unauthorised:" in text and "--key-dir" in text
