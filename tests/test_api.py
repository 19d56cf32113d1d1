"""The local HTTP API in process: two peers on a memory link, driven through ASGI."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
import trio
import trio.testing

from peer import Identity, Peer, PeerOptions, memory_link_pair
from peer.api._api import LocalApi

TOKEN = "test-token-0123456789"


@dataclass
class Pair:
    a: Peer
    b: Peer
    api_a: httpx.AsyncClient
    api_b: httpx.AsyncClient


def _client(peer: Peer) -> httpx.AsyncClient:
    app = LocalApi(peer, TOKEN).app
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://127.0.0.1",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )


@pytest.fixture
async def pair(nursery: trio.Nursery) -> AsyncIterator[Pair]:
    async with running_pair(nursery) as p:
        yield p


@asynccontextmanager
async def running_pair(nursery: trio.Nursery) -> AsyncIterator[Pair]:
    """Two linked peers in ``nursery``, each with an API client."""
    a = Peer(Identity.generate(), PeerOptions(channels=("lobby",), seed=1))
    b = Peer(Identity.generate(), PeerOptions(channels=("lobby",), seed=2))
    await nursery.start(a.run)
    await nursery.start(b.run)
    ta, tb = memory_link_pair()
    a.start_link(ta, initiator=True)
    b.start_link(tb, initiator=False)
    with trio.fail_after(10):
        while not (
            a.links
            and b.links
            and b.directory.get(a.peer_id)
            and a.directory.get(b.peer_id)
            and a.router.reachable("lobby")
        ):
            await a.wait_changed()
    async with _client(a) as api_a, _client(b) as api_b:
        yield Pair(a, b, api_a, api_b)


async def test_status_is_open_and_the_rest_wants_the_token(pair: Pair) -> None:
    bare = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=LocalApi(pair.a, TOKEN).app), base_url="http://127.0.0.1"
    )
    async with bare:
        status = await bare.get("/status")
        assert status.status_code == 200
        assert status.json()["peer_id"] == pair.a.identity.peer_id_hex
        assert status.json()["peer_count"] == 1
        for path in ("/peers", "/messages", "/channels"):
            r = await bare.get(path)
            assert r.status_code == 401
            assert r.json()["error"]["code"] == "unauthorised"
        wrong = await bare.get("/peers", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401


async def test_channel_message_with_payload_round_trip(pair: Pair) -> None:
    blob = bytes(range(256))
    sent = await pair.api_a.post(
        "/send",
        json={
            "channel": "#lobby",
            "body": "hi",
            "payload": {
                "image": {"$b64": base64.b64encode(blob).decode()},
                "n": [1, 2.5, None, True],
            },
        },
    )
    assert sent.status_code == 200, sent.text
    msg_id = sent.json()["id"]
    got = await pair.api_b.get("/messages", params={"unread": "true", "wait": "5"})
    assert got.status_code == 200
    [message] = got.json()
    assert message["id"] == msg_id
    assert message["channel"] == "lobby"
    assert message["from"] == pair.a.identity.peer_id_hex
    assert base64.b64decode(message["payload"]["image"]["$b64"]) == blob
    assert message["payload"]["n"] == [1, 2.5, None, True]
    # unread=true marked it read; peek leaves unread ones alone
    assert (await pair.api_b.get("/messages", params={"unread": "true"})).json() == []
    everything = (await pair.api_b.get("/messages")).json()
    assert [m["id"] for m in everything] == [msg_id]
    assert everything[0]["read"] is True


async def test_reply_threading_and_cursor(pair: Pair) -> None:
    first = (await pair.api_a.post("/send", json={"channel": "lobby", "body": "q"})).json()["id"]
    second = await pair.api_a.post(
        "/send", json={"channel": "lobby", "body": "a", "reply_to": first, "thread": first}
    )
    assert second.status_code == 200
    got = await pair.api_b.get("/messages", params={"wait": "5", "peek": "true"})
    items = got.json()
    while len(items) < 2:
        after = items[-1]["cursor"] if items else 0
        more = await pair.api_b.get("/messages", params={"after": str(after), "wait": "5"})
        items += more.json()
    assert [m["body"] for m in items] == ["q", "a"]
    assert items[1]["reply_to"] == first and items[1]["thread"] == first
    cursor = items[0]["cursor"]
    after = (await pair.api_b.get("/messages", params={"after": str(cursor)})).json()
    assert [m["body"] for m in after] == ["a"]
    ack = await pair.api_b.post("/ack", json={"through": cursor})
    assert ack.json()["marked"] == 1
    unread = (await pair.api_b.get("/messages", params={"unread": "true"})).json()
    assert [m["body"] for m in unread] == ["a"]


async def test_dm_and_its_errors(pair: Pair) -> None:
    b_id = pair.b.identity.peer_id_hex
    sent = await pair.api_a.post("/send", json={"to": b_id, "content": "psst"})
    assert sent.status_code == 200, sent.text
    got = (
        await pair.api_b.get("/messages", params={"peer": pair.a.identity.peer_id_hex, "wait": "5"})
    ).json()
    assert [(m["kind"], m["body"]) for m in got] == [("dm", "psst")]
    unknown = await pair.api_a.post("/send", json={"to": "cd" * 32, "content": "?"})
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (400, "unknown-peer")
    for bad in (
        {"to": "zz"},
        {"body": "nowhere"},
        {"channel": "no/slash"},
        {"channel": 5},
        {"channel": "lobby", "body": 7},
        {"channel": "lobby", "payload": 2**70},
        {"channel": "lobby", "reply_to": "xyz"},
    ):
        r = await pair.api_a.post("/send", json=bad)
        assert r.status_code == 400, bad
        assert set(r.json()["error"]) == {"code", "message"}
    notjson = await pair.api_a.post("/send", content=b"{nope")
    assert notjson.status_code == 400


async def test_oversize_is_413(pair: Pair) -> None:
    big_body = await pair.api_a.post("/send", json={"channel": "lobby", "body": "x" * 70_000})
    assert big_body.status_code == 413
    big_payload = await pair.api_a.post(
        "/send",
        json={"channel": "lobby", "payload": {"$b64": base64.b64encode(b"\0" * 300_000).decode()}},
    )
    assert big_payload.status_code == 413
    huge = await pair.api_a.post("/send", content=b"[" + b"0," * 600_000 + b"0]")
    assert huge.status_code == 413


async def test_subscribe_peers_and_long_poll(pair: Pair) -> None:
    sub = await pair.api_b.post("/subscribe", json={"channel": "news"})
    assert sub.json()["channels"] == ["lobby", "news"]
    assert (await pair.api_b.get("/channels")).json() == ["lobby", "news"]
    peers = (await pair.api_a.get("/peers", params={"online": "true"})).json()
    assert [p["peer_id"] for p in peers] == [pair.b.identity.peer_id_hex]
    assert peers[0]["linked"] is True
    assert (await pair.api_a.get("/peers", params={"online": "false"})).json() == []
    with trio.fail_after(10):
        while not pair.a.router.reachable("news"):
            await pair.a.wait_changed()

    async def publish_later() -> None:
        # publish once the long-poll below is parked waiting for the inbox
        await trio.testing.wait_all_tasks_blocked()
        await pair.api_a.post("/send", json={"channel": "news", "body": "late"})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(publish_later)
        got = await pair.api_b.get("/messages", params={"channel": "news", "wait": "10"})
    assert [m["body"] for m in got.json()] == ["late"]
    bad_wait = await pair.api_b.get("/messages", params={"wait": "999"})
    assert bad_wait.status_code == 400
    missing = await pair.api_b.get("/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not-found"
