"""Live streams in process: two linked peers, the API served on a real port
(httpx's ASGI transport buffers whole answers, so streams need a socket)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from peer import Identity, Peer, PeerOptions, memory_link_pair
from peer.api import _api as api_module
from peer.api import _streams as streams_module
from peer.api._serve import serve_api
from peer.wire._envelope import Content

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@asynccontextmanager
async def served_pair(
    nursery: trio.Nursery,
) -> AsyncIterator[tuple[Peer, Peer, str, httpx.AsyncClient]]:
    """Two linked peers; b's API on a real port, and a client of it with the token."""
    a = Peer(Identity.generate(), PeerOptions(channels=("lobby", "other"), seed=1))
    b = Peer(Identity.generate(), PeerOptions(channels=("lobby", "other"), seed=2))
    await nursery.start(a.run)
    await nursery.start(b.run)
    ta, tb = memory_link_pair()
    a.start_link(ta, initiator=True)
    b.start_link(tb, initiator=False)
    with trio.fail_after(10):
        while not (a.links and b.directory.get(a.peer_id) and a.router.reachable("lobby")):
            await a.wait_changed()
    url = await serve_api(b, "127.0.0.1", 0, TOKEN, nursery)
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=10) as client:
        yield a, b, url, client


_LINES: dict[int, AsyncIterator[str]] = {}


async def read_events(
    response: httpx.Response, count: int, kinds: tuple[str, ...] = ("message",)
) -> list[dict[str, Any]]:
    """Parse SSE events off ``response`` until ``count`` of ``kinds`` came."""
    lines = _LINES.setdefault(id(response), response.aiter_lines())
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    async for line in lines:
        if line == "":
            if current.get("event") in kinds:
                events.append(current)
                if len(events) == count:
                    return events
            current = {}
        elif line.startswith(":"):
            current.setdefault("comments", []).append(line)
        else:
            key, _, value = line.partition(": ")
            current[key] = json.loads(value) if key == "data" else value
    return events


async def test_sse_replays_then_goes_live_with_cursor_ids(nursery: trio.Nursery) -> None:
    async with served_pair(nursery) as (a, b, _url, client):
        for i in range(3):
            a.publish("lobby", Content(body=f"old {i}"))
        with trio.fail_after(10):
            while b.inbox.last_cursor < 3:
                await b.wait_inbox_changed()
        async with client.stream("GET", "/events", params={"after": 0}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            with trio.fail_after(10):
                old = await read_events(r, 3)
                for i in range(3, 6):
                    a.publish("lobby", Content(body=f"new {i}"))
                new = await read_events(r, 3)
        got = old + new
        assert [e["data"]["body"] for e in got] == [
            "old 0", "old 1", "old 2", "new 3", "new 4", "new 5"
        ]
        ids = [int(e["id"]) for e in got]
        assert ids == sorted(ids) and len(set(ids)) == 6
        assert [e["data"]["cursor"] for e in got] == ids


async def test_last_event_id_resumes_without_gap_or_repeat(nursery: trio.Nursery) -> None:
    async with served_pair(nursery) as (a, b, _url, client):
        for i in range(10):
            a.publish("lobby", Content(body=str(i)))
        with trio.fail_after(10):
            while b.inbox.last_cursor < 10:
                await b.wait_inbox_changed()
        async with client.stream("GET", "/events", params={"after": 0}) as r:
            first = await read_events(r, 4)
        last = first[-1]["id"]
        # Last-Event-ID wins over after
        headers = {"Last-Event-ID": last}
        async with client.stream("GET", "/events?after=0", headers=headers) as r:
            rest = await read_events(r, 6)
        bodies = [e["data"]["body"] for e in first + rest]
        assert bodies == [str(i) for i in range(10)]


async def test_filters_by_channel_peer_and_thread(nursery: trio.Nursery) -> None:
    async with (
        served_pair(nursery) as (a, b, _url, client),
        client.stream("GET", "/events", params={"channel": "other"}) as by_channel,
        client.stream("GET", "/events", params={"peer": a.peer_id.hex()}) as by_peer,
    ):
        root = a.publish("lobby", Content(body="root"))
        async with client.stream("GET", "/events", params={"thread": root.id.hex()}) as th:
            a.publish("lobby", Content(body="reply", thread=root.id))
            a.publish("lobby", Content(body="elsewhere"))
            a.publish("other", Content(body="in other"))
            a.send_dm(b.peer_id, Content(body="private"))
            with trio.fail_after(10):
                assert [e["data"]["body"] for e in await read_events(th, 1)] == ["reply"]
                got = await read_events(by_channel, 1)
                assert [e["data"]["body"] for e in got] == ["in other"]
                got = await read_events(by_peer, 1)
                assert [e["data"]["body"] for e in got] == ["private"]


async def test_status_events_carry_no_id(nursery: trio.Nursery) -> None:
    async with served_pair(nursery) as (a, b, _url, client):
        env = b.send_dm(a.peer_id, Content(body="to a"))
        async with client.stream("GET", "/events") as r:
            b.inbox.set_status(env.id, "delivered")
            b.notify_inbox()
            with trio.fail_after(10):
                (event,) = await read_events(r, 1, kinds=("status",))
        assert "id" not in event
        assert event["data"]["id"] == env.id.hex()
        assert event["data"]["status"] == "delivered"
        assert event["data"]["peer"] == a.peer_id.hex()


async def test_bad_stream_requests_get_json_errors(nursery: trio.Nursery) -> None:
    async with served_pair(nursery) as (_a, _b, _url, client):
        r = await client.get("/events", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorised"
        for params, code in (
            ({"after": "x"}, "invalid"),
            ({"peer": "zz"}, "invalid"),
            ({"channel": "a", "peer": "00" * 32}, "invalid"),
            ({"since": "1"}, "unknown-param"),
        ):
            r = await client.get("/events", params=params)
            assert r.status_code == 400, params
            assert r.json()["error"]["code"] == code
        r = await client.get("/events", headers={"Last-Event-ID": "-1"})
        assert r.status_code == 400 and "Last-Event-ID" in r.json()["error"]["message"]


async def test_streams_have_their_own_cap(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_module, "MAX_STREAMS", 1)
    async with served_pair(nursery) as (_a, _b, _url, client):
        async with client.stream("GET", "/events") as first:
            assert first.status_code == 200
            second = await client.get("/events")
            assert second.status_code == 503
            assert second.json()["error"]["code"] == "busy"
            # plain requests are not held back by open streams
            assert (await client.get("/channels")).status_code == 200
        with trio.fail_after(10):  # the slot comes back when the client goes
            while True:
                async with client.stream("GET", "/events") as again:
                    if again.status_code == 200:
                        break
                await trio.sleep(0.05)


async def test_websocket_carries_the_same_events(nursery: trio.Nursery) -> None:
    async with served_pair(nursery) as (a, b, url, _client):
        a.publish("lobby", Content(body="before"))
        with trio.fail_after(10):
            while b.inbox.last_cursor < 1:
                await b.wait_inbox_changed()
        ws_url = url.replace("http://", "ws://") + "/ws?after=0"
        headers = [(b"Authorization", f"Bearer {TOKEN}".encode())]
        async with open_websocket_url(ws_url, extra_headers=headers) as ws:
            first = json.loads(await ws.get_message())
            a.publish("lobby", Content(body="after"))
            with trio.fail_after(10):
                second = json.loads(await ws.get_message())
        assert (first["event"], first["id"], first["data"]["body"]) == ("message", 1, "before")
        assert (second["event"], second["id"], second["data"]["body"]) == ("message", 2, "after")


async def _ws_handshake(url: str, target: str, auth: bool) -> tuple[int, dict[str, Any]]:
    """A WebSocket upgrade by hand: the status and JSON body of a refusal."""
    port = int(url.rsplit(":", 1)[1])
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    if auth:
        lines.append(f"Authorization: Bearer {TOKEN}")
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        with trio.fail_after(10):
            while b"}}" not in data:
                chunk = await stream.receive_some()
                if not chunk:
                    break
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    if b"chunked" in head.lower():
        body = body.split(b"\r\n", 1)[1]
    return status, json.loads(body[: body.rindex(b"}") + 1])


async def test_websocket_refusals_are_json(nursery: trio.Nursery) -> None:
    async with served_pair(nursery) as (_a, _b, url, _client):
        status, body = await _ws_handshake(url, "/ws", auth=False)
        assert (status, body["error"]["code"]) == (401, "unauthorised")
        status, body = await _ws_handshake(url, "/ws?bogus=1", auth=True)
        assert (status, body["error"]["code"]) == (400, "unknown-param")


async def test_a_client_too_slow_to_read_is_dropped_with_a_reason(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streams_module, "SLOW_AFTER", 0.3)
    async with served_pair(nursery) as (a, b, _url, client):
        for i in range(200):  # 12 MB: more than the sockets buffer
            a.publish("lobby", Content(body=f"{i:03d}" + "x" * 60_000))
        with trio.fail_after(20):
            while b.inbox.last_cursor < 200:
                await b.wait_inbox_changed()
        async with client.stream("GET", "/events", params={"after": 0}) as r:
            await trio.sleep(1.0)  # not reading: the peer's write blocks
            with trio.fail_after(20):
                events = await read_events(r, 1000, kinds=("message", "error"))
    assert events[-1]["event"] == "error"
    assert events[-1]["data"]["error"]["code"] == "slow"
    received = [int(e["id"]) for e in events[:-1]]
    assert received == list(range(1, len(received) + 1))  # what came is in order, then it ends


async def test_a_receipted_dm_streams_its_status(nursery: trio.Nursery, tmp_path: Path) -> None:
    """With stores (receipts), a DM's status change reaches its sender's stream."""
    a = Peer(Identity.generate(), PeerOptions(seed=1, store_path=str(tmp_path / "a")))
    b = Peer(Identity.generate(), PeerOptions(seed=2, store_path=str(tmp_path / "b")))
    await nursery.start(a.run)
    await nursery.start(b.run)
    ta, tb = memory_link_pair()
    a.start_link(ta, initiator=True)
    b.start_link(tb, initiator=False)
    with trio.fail_after(10):
        while not (a.links and a.directory.get(b.peer_id)):
            await a.wait_changed()
    url = await serve_api(a, "127.0.0.1", 0, TOKEN, nursery)
    async with (
        httpx.AsyncClient(base_url=url, headers=AUTH, timeout=10) as client,
        client.stream("GET", "/events", params={"peer": b.peer_id.hex()}) as r,
    ):
        env = await a.send_direct(b.peer_id, Content(body="receipt me"))
        with trio.fail_after(20):
            events = await read_events(r, 2, kinds=("message", "status"))
    assert [e["event"] for e in events] == ["message", "status"]
    # the message as it was when the stream read it: pending (the receipt came later)
    assert events[0]["data"]["status"] in ("pending", "delivered")
    assert events[0]["data"]["outgoing"] is True
    assert events[1]["data"] == {
        "id": env.id.hex(), "peer": b.peer_id.hex(), "status": "delivered",
        "cursor": events[0]["data"]["cursor"],
    }
