"""The OCM gateway's shell in one process: an OCM link that misbehaves (a binary
frame after JSON, a flood, a wrong version) is refused, counted and closed, and the
mesh link beside it keeps serving; an OCM peer reaches agents through it."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable

import pytest
import trio
import trio_websocket

from peer.wire._envelope import Content
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


async def _until(done: Callable[[], bool]) -> None:
    """Poll ``done`` with a deadline: frames are read by another task, with no event."""
    with trio.fail_after(DEADLINE):
        for _ in itertools.count():
            if done():
                return
            await trio.sleep(0.01)


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


async def test_a_sync_answer_is_queued_once_and_queued_bytes_are_bounded() -> None:
    # review item 2: tiny sync_requests queued ~1 MiB each for a peer that never reads
    from peer.node._ocmhost import QUEUE_BYTES, OcmLink
    from peer.protocols._ocmsession import KnownKeys, OcmSession

    async with serving() as pair:
        gateway = pair.a.ocm
        assert gateway is not None
        for i in range(3):
            await pair.a.send_message(CHANNEL, Content(body=f"m{i}" + "x" * 1000))
        session = OcmSession("ab" * 32, b"\x01" * 32, initiator=False, store=True,
                             keys=KnownKeys(), counters=gateway.counters, now=0.0)
        session.receive(json.dumps({"type": "handshake", "version": 1, "peer_id": "reader"}),
                        0.0)
        link = OcmLink(session, None, "test")  # type: ignore[arg-type]  # no writer runs
        gateway._answer_sync(link, CHANNEL, None, 100)
        first = link.queued
        assert first > 3000 and link.sync_text is not None
        gateway._answer_sync(link, CHANNEL, None, 100)  # not read yet: refused
        assert gateway.counters.refused == {"sync-busy": 1}
        assert link.queued < 2 * first  # only the small error frame was added
        big = {"type": "ping", "pad": "x" * (QUEUE_BYTES // 4)}
        for _ in range(4):
            gateway._send(link, big)
        assert session.closed and gateway.counters.refused["slow"] == 1
        assert link.queued <= QUEUE_BYTES


async def test_gateway_channels_are_not_the_agents_and_are_left_with_the_last_link(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # review item 3: OCM peers subscribed the agent itself, for good, up to 1,024 channels
    from peer.node import _ocmhost
    from peer.node._ocmhost import MAX_LINK_CHANNELS, agent_channels

    monkeypatch.setattr(_ocmhost, "LINGER", 2.0)  # 900 s: an OCM peer back soon catches up
    async with serving() as pair, raw_client(pair.port) as client:
        gateway = pair.a.ocm
        assert gateway is not None
        p = OcmTestPeer()
        await p.handshake(client.ws)
        for i in range(MAX_LINK_CHANNELS + 1):
            await p.send({"type": "subscribe", "channel_id": f"gw{i}"})
        await p.send({"type": "subscribe", "channel_id": CHANNEL})  # the agent's own
        await _until(lambda: gateway.counters.refused.get("too-many") == 1)
        assert {"gw0", f"gw{MAX_LINK_CHANNELS - 1}"} <= pair.a.channels
        assert f"gw{MAX_LINK_CHANNELS}" not in pair.a.channels
        assert agent_channels(pair.a.channels, gateway) == [CHANNEL]
        await p.send({"type": "unsubscribe", "channel_id": "gw1"})
        await client.ws.aclose()
        await _until(lambda: not gateway.statistics()["links"])
        assert "gw2" in pair.a.channels and "gw2" in gateway.lingering  # for LINGER seconds
        await _until(lambda: not gateway.held)
        assert pair.a.channels == {CHANNEL} and not gateway.lingering


async def test_the_agent_adopts_or_leaves_a_channel_the_gateway_holds() -> None:
    import httpx

    from peer.api._api import LocalApi
    from tests.test_api import TOKEN

    async with serving() as pair, raw_client(pair.port) as client:
        gateway = pair.a.ocm
        assert gateway is not None
        p = OcmTestPeer()
        await p.handshake(client.ws)
        await p.send({"type": "subscribe", "channel_id": "shared"})
        await _until(lambda: "shared" in gateway.held)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=LocalApi(pair.a, TOKEN).app),
            base_url="http://127.0.0.1", headers={"Authorization": f"Bearer {TOKEN}"},
        ) as api:
            assert (await api.get("/channels")).json() == [CHANNEL]
            r = await api.post("/subscribe", json={"channel": "shared"})
            assert r.status_code == 200 and "shared" in r.json()["channels"]
            assert "shared" not in gateway.held  # the agent's now: never left by the gateway
            r = await api.post("/unsubscribe", json={"channel": "shared"})
            assert r.status_code == 200 and r.json()["channels"] == [CHANNEL]
            assert "shared" in pair.a.channels and "shared" in gateway.held  # the link uses it
