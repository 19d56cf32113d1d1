"""Acceptance (OCM gateway) with real ``python -m peer`` processes: an OpenClaw
Messaging peer (tests/_ocm_peer.py, JSON text frames) joins through a clawmesh seed,
exchanges channel messages and DMs with a clawmesh agent both ways, gets a correct
sync_response after an offline spell, and its forged or malformed frames are
refused and counted in /status."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
import trio_websocket

from tests._ocm_peer import OcmTestPeer, pem
from tests._procs import PeerProcess, running, start_peer, wait_ready


async def poll(check: Callable[[], Any]) -> Any:
    """``check()`` (polling the API) until it returns something true, within 20 s."""
    with trio.fail_after(20):
        while True:
            found = await trio.to_thread.run_sync(check)
            if found:
                return found
            await trio.sleep(0.1)


def find(p: PeerProcess, wanted: Callable[[dict[str, Any]], bool], **params: Any) -> Callable[
    [], list[dict[str, Any]]
]:
    def check() -> list[dict[str, Any]]:
        r = p.get("/messages", **params)
        assert r.status_code == 200, r.text
        return [m for m in r.json() if wanted(m)]

    return check


def ocm_of(m: dict[str, Any]) -> dict[str, Any]:
    payload = m.get("payload")
    return payload.get("ocm", {}) if isinstance(payload, dict) else {}


async def scenario(seed: PeerProcess, a: PeerProcess) -> None:
    p = OcmTestPeer()
    async with trio_websocket.open_websocket_url(seed.ws_url) as ws:
        hello = await p.handshake(ws)
        assert hello["peer_id"] == seed.peer_id and hello["version"] == 1
        assert "BEGIN PUBLIC KEY" in hello["public_key"]
        dm = p.dm(a.peer_id)
        await p.send({"type": "subscribe", "channel_id": "lobby"})
        await p.send({"type": "subscribe", "channel_id": dm})
        await p.expect(lambda f: f == {"type": "subscribe", "channel_id": "lobby"})

        # OCM -> mesh: a signed channel message reaches the clawmesh agent, verified
        out = p.message("lobby", "hello mesh", payload={"kind": "greeting", "n": 1})
        await p.send(out)
        got = (await poll(find(a, lambda m: m["body"] == "hello mesh", channel="lobby")))[0]
        meta = ocm_of(got)
        assert got["from"] == seed.peer_id
        assert meta["sender_id"] == p.peer_id and meta["verified"] is True
        assert meta["message_id"] == out["message_id"] and meta["payload"] == {
            "kind": "greeting", "n": 1}

        # mesh -> OCM: the agent's channel message reaches the OCM peer
        r = a.post("/send", {"channel": "lobby", "body": "hello ocm"})
        assert r.status_code == 200, r.text
        frame = await p.expect(lambda f: f.get("body") == "hello ocm")
        assert frame["type"] == "message" and frame["channel_id"] == "lobby"
        assert frame["sender_id"] == a.peer_id

        # DMs both ways
        await p.send(p.message(dm, "psst, agent"))
        got = (await poll(find(a, lambda m: m["body"] == "psst, agent")))[0]
        assert got["kind"] == "dm" and got["peer"] == seed.peer_id
        assert ocm_of(got)["from"] == p.peer_id and ocm_of(got)["verified"] is True
        r = a.post("/send", {"to": seed.peer_id, "body": "psst, ocm",
                             "payload": {"ocm": {"to": p.peer_id}}})
        assert r.status_code == 200, r.text
        frame = await p.expect(lambda f: f.get("body") == "psst, ocm")
        assert frame["channel_id"] == dm and frame["sender_id"] == a.peer_id
        last_dm = frame["message_id"]

        # refused: a forged sender_id, a malformed frame, a bad signature
        await p.send(p.message("lobby", "forged", sender_id="somebody-else", sign=False))
        err = await p.expect(lambda f: f["type"] == "error")
        assert err["code"] == "unauthorized"
        await p.send_raw("{not json")
        err = await p.expect(lambda f: f["type"] == "error")
        assert err["code"] == "invalid_message"
        bad = p.message("lobby", "tampered")
        bad["body"] = "tampered!"
        await p.send(bad)
        err = await p.expect(lambda f: f["type"] == "error")
        assert err["code"] == "invalid_message"
        await p.send({"type": "subscribe", "channel_id": "dm:x:y"})  # not its DM
        err = await p.expect(lambda f: f["type"] == "error")
        assert err["code"] == "unauthorized"
        # the link is still up: a ping gets its pong
        await p.send({"type": "ping"})
        await p.expect(lambda f: f["type"] == "pong")

    # offline spell: the agent writes while the OCM peer is away
    for i in range(3):
        assert a.post("/send", {"channel": "lobby", "body": f"while away {i}"}).status_code == 200
    r = a.post("/send", {"to": seed.peer_id, "body": "dm while away",
                         "payload": {"ocm": {"to": p.peer_id}}})
    assert r.status_code == 200
    held = find(seed, lambda m: m["body"] in ("while away 2", "dm while away"))
    await poll(lambda: len(held()) == 2)

    async with trio_websocket.open_websocket_url(seed.ws_url) as ws:
        p.frames.clear()
        await p.handshake(ws)
        lobby = [m for m in a.get("/messages", channel="lobby").json()
                 if m["body"] == "hello ocm"]
        assert lobby
        await p.send({"type": "sync_request", "channel_id": "lobby",
                      "after_message_id": _uuid(lobby[0]["id"]), "limit": 500})
        resp = await p.expect(lambda f: f["type"] == "sync_response")
        assert resp["channel_id"] == "lobby"
        assert [m["body"] for m in resp["messages"]] == [f"while away {i}" for i in range(3)]
        assert resp["has_more"] is False
        # with no id: the newest, not the oldest
        await p.send({"type": "sync_request", "channel_id": "lobby",
                      "after_message_id": None, "limit": 2})
        resp = await p.expect(lambda f: f["type"] == "sync_response")
        assert [m["body"] for m in resp["messages"]] == ["while away 1", "while away 2"]
        await p.send({"type": "sync_request", "channel_id": p.dm(a.peer_id),
                      "after_message_id": last_dm, "limit": 100})
        resp = await p.expect(lambda f: f["type"] == "sync_response")
        assert [m["body"] for m in resp["messages"]] == ["dm while away"]

    status = seed.get("/status").json()["ocm"]
    assert status["refused"].get("forged-sender", 0) >= 1
    assert status["refused"].get("malformed", 0) >= 1
    assert status["refused"].get("bad-signature", 0) >= 1
    assert status["refused"].get("not-a-member", 0) >= 1
    assert status["relayed_in"] >= 2 and status["relayed_out"] >= 2
    assert status["sync_answered"] >= 3


def _uuid(hex_id: str) -> str:
    import uuid

    return str(uuid.UUID(bytes=bytes.fromhex(hex_id)[:16]))


def test_ocm_peer_through_a_seed(tmp_path: Path) -> None:
    seed = start_peer(tmp_path, "seed")
    wait_ready(seed)
    a = start_peer(tmp_path, "a", "--channel", "lobby", bootstrap=seed.ws_url)
    with running(seed, a):
        wait_ready(a)
        trio.run(scenario, seed, a)


async def ocm_server_scenario(tmp_path: Path) -> None:
    """An OCM peer that listens; a clawmesh peer finds it in a bootstrap.json and dials it."""
    p = OcmTestPeer()
    got: dict[str, Any] = {}
    linked = trio.Event()

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        p.ws = ws
        first = await p.receive()
        got["hello"] = first
        await p.send({"type": "handshake", "version": 1, "peer_id": p.peer_id,
                      "public_key": _pem(p), "capabilities": {"relay": True, "store": True}})
        got["sub"] = await p.expect(lambda f: f["type"] == "subscribe")
        got["sync"] = await p.expect(lambda f: f["type"] == "sync_request")
        await p.send({"type": "sync_response", "channel_id": "lobby",
                      "messages": [p.message("lobby", "from the ocm store")]})
        await p.send(p.message("lobby", "live from ocm"))
        linked.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
        port = server.port
        listing = tmp_path / "bootstrap.json"
        listing.write_text(json.dumps({"version": 1, "updated_at": "2026-01-01T00:00:00Z",
                                       "peers": [{"peer_id": p.peer_id,
                                                  "ws_url": f"ws://127.0.0.1:{port}",
                                                  "capabilities": {"relay": True}}]}))
        a = start_peer(tmp_path, "dialler", "--channel", "lobby", bootstrap=str(listing))
        with running(a):
            await trio.to_thread.run_sync(wait_ready, a)
            with trio.fail_after(20):
                await linked.wait()
            assert got["hello"]["type"] == "handshake" and got["hello"]["peer_id"] == a.peer_id
            assert got["sub"]["channel_id"] == "lobby" and got["sync"]["channel_id"] == "lobby"
            bodies = {"from the ocm store", "live from ocm"}
            found = await poll(lambda: {m["body"] for m in a.get("/messages", channel="lobby")
                                        .json()} >= bodies and a.get("/messages").json())
            verified = [ocm_of(m)["verified"] for m in found if m["body"] in bodies]
            assert verified == [True, True]
        nursery.cancel_scope.cancel()


def _pem(p: OcmTestPeer) -> str:
    assert p.key is not None
    return pem(bytes(p.key.verify_key))


def test_a_peer_dials_ocm_peers_from_a_bootstrap_json(tmp_path: Path) -> None:
    trio.run(ocm_server_scenario, tmp_path)
