"""The OCM gateway's shell in one process: an OCM link that misbehaves (a binary
frame after JSON, a flood, a wrong version) is refused, counted and closed, and the
mesh link beside it keeps serving; an OCM peer reaches agents through it."""

from __future__ import annotations

import json

import trio
import trio_websocket

from tests._ocm_peer import OcmTestPeer
from tests._refusals_harness import (
    CHANNEL,
    DEADLINE,
    assert_still_serving,
    raw_client,
    serving,
)


async def closed(ws: trio_websocket.WebSocketConnection) -> None:
    """Read (and drop) what comes until the gateway closes the connection."""
    with trio.fail_after(DEADLINE):
        try:
            while True:
                await ws.get_message()
        except trio_websocket.ConnectionClosed:
            return


async def test_binary_after_json_closes_the_ocm_link_only() -> None:
    async with serving() as pair, raw_client(pair.port) as client:
        p = OcmTestPeer()
        await p.handshake(client.ws)
        assert pair.a.ocm is not None and pair.a.ocm.statistics()["links"] == 1
        await client.ws.send_message(b"\x00\x01")
        await closed(client.ws)
        assert pair.a.ocm.statistics()["links"] == 0
        assert pair.a.ocm.counters.refused == {"binary": 1}
        await assert_still_serving(pair)


async def test_an_ocm_flood_is_refused_then_closed() -> None:
    async with serving() as pair, raw_client(pair.port) as client:
        p = OcmTestPeer()
        await p.handshake(client.ws)
        ping = json.dumps({"type": "ping"})
        for _ in range(400):  # the burst is 200 frames
            await client.ws.send_message(ping)
        await closed(client.ws)
        assert pair.a.ocm is not None and pair.a.ocm.statistics()["links"] == 0
        assert pair.a.ocm.counters.refused["rate"] == 20
        await assert_still_serving(pair)


async def test_a_wrong_version_is_answered_and_closed() -> None:
    async with serving() as pair, raw_client(pair.port) as client:
        await client.ws.send_message(json.dumps(
            {"type": "handshake", "version": 2, "peer_id": "someone"}))
        with trio.fail_after(DEADLINE):
            error = json.loads(await client.ws.get_message())
        assert error == {"type": "error", "code": "unsupported_version",
                         "message": "protocol version 2; speak 1"}
        await closed(client.ws)
        await assert_still_serving(pair)


async def test_an_ocm_message_reaches_both_mesh_agents() -> None:
    async with serving() as pair, raw_client(pair.port) as client:
        p = OcmTestPeer("plain-peer", signed=False)
        await p.handshake(client.ws)
        await p.send({"type": "subscribe", "channel_id": CHANNEL})
        await p.send(p.message(CHANNEL, "from ocm"))
        with trio.fail_after(DEADLINE):
            while not [m for m in pair.b.inbox if m.body == "from ocm"]:
                await pair.b.wait_inbox_changed()
        [got] = [m for m in pair.b.inbox if m.body == "from ocm"]
        assert got.sender == pair.a.peer_id
        assert got.payload["ocm"]["sender_id"] == "plain-peer"
        assert got.payload["ocm"]["verified"] is False
        assert pair.a.ocm is not None and pair.a.ocm.counters.unverified_in == 1
