"""Local API behaviours a user found wrong, in process: two peers with stores on a
memory link, driven through ASGI (dead letters, audit of coordination
conversations, agent cards, and the smaller refusals)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from peer import Identity, Peer, PeerOptions, memory_link_pair
from peer.api._agents import has_feature
from peer.api._api import LocalApi
from peer.cli._cardfile import agent_card
from peer.node._inbox import PeerInfo

from .test_api import TOKEN


@dataclass
class Stored:
    a: Peer
    b: Peer
    api_a: LocalApi
    ca: httpx.AsyncClient
    cb: httpx.AsyncClient
    stop_b: trio.CancelScope


def _client(api: LocalApi) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=api.app),
                             base_url="http://127.0.0.1",
                             headers={"Authorization": f"Bearer {TOKEN}"})


async def _run_until_cancelled(peer: Peer, scope: trio.CancelScope,
                               task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    with scope:
        async with trio.open_nursery() as inner:
            await inner.start(peer.run)
            task_status.started()
            await trio.sleep_forever()


@pytest.fixture
async def stored(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Stored]:
    def opts(name: str, seed: int) -> PeerOptions:
        return PeerOptions(channels=("lobby",), seed=seed, dht=False, dm_deadline=1.0,
                           outbox_retry_initial=0.1, store_path=str(tmp_path / name))

    a = Peer(Identity.generate(), opts("a", 1))
    b = Peer(Identity.generate(), opts("b", 2))
    stop_b = trio.CancelScope()
    await nursery.start(a.run)
    await nursery.start(_run_until_cancelled, b, stop_b)
    ta, tb = memory_link_pair()
    a.start_link(ta, initiator=True)
    b.start_link(tb, initiator=False)
    with trio.fail_after(10):
        while not (a.links and b.links and b.directory.get(a.peer_id)
                   and a.directory.get(b.peer_id) and a.router.reachable("lobby")):
            await a.wait_changed()
    api_a, api_b = LocalApi(a, TOKEN), LocalApi(b, TOKEN)
    await nursery.start(api_a.ops.run)
    await nursery.start(api_b.ops.run)
    async with _client(api_a) as ca, _client(api_b) as cb:
        yield Stored(a, b, api_a, ca, cb, stop_b)


async def _poll(api: httpx.AsyncClient, path: str, ok: Any, **params: str) -> Any:
    with trio.fail_after(20):
        while True:
            got = (await api.get(path, params=params)).json()
            if ok(got):
                return got
            await trio.sleep(0.05)


async def test_an_expired_dead_letter_is_not_retried(stored: Stored) -> None:
    stored.stop_b.cancel()  # b is gone: DMs to it die at their deadline
    with trio.fail_after(10):
        while stored.a.links:
            await stored.a.wait_changed()
    to = stored.b.peer_id.hex()
    short = (await stored.ca.post("/send", json={"to": to, "body": "soon stale", "ttl": 0.2}))
    plain = (await stored.ca.post("/send", json={"to": to, "body": "any time"}))
    assert short.status_code == plain.status_code == 200, (short.text, plain.text)
    short_id, plain_id = short.json()["id"], plain.json()["id"]
    await _poll(stored.ca, "/dead-letters", lambda d: len(d) == 2)
    one = await stored.ca.post(f"/dead-letters/{short_id}/retry", json={})
    assert one.status_code == 409 and one.json()["error"]["code"] == "expired", one.text
    every = await stored.ca.post("/dead-letters/retry", json={})
    assert every.status_code == 200, every.text
    assert every.json()["retried"] == [plain_id]
    assert every.json()["skipped"] == [{"id": short_id, "reason": "expired"}]
    outbox = {e["id"] for e in (await stored.ca.get("/outbox")).json()}
    assert short_id not in outbox and plain_id in outbox
    dead = {d["id"] for d in (await stored.ca.get("/dead-letters")).json()}
    assert short_id in dead


async def test_the_audit_finds_coordination_conversations(stored: Stored) -> None:
    to = stored.b.peer_id.hex()
    conv = await stored.ca.post("/conversations", json={"type": "opinion", "to": [to],
                                                         "body": "tabs or spaces?"})
    asked = await stored.ca.post("/request", json={"to": to, "body": "what time is it?"})
    assert conv.status_code == 200 and asked.status_code == 200, (conv.text, asked.text)
    plain = await stored.ca.post("/send", json={"channel": "lobby", "body": "root"})
    reply = await stored.ca.post("/send", json={"channel": "lobby", "body": "in thread",
                                                "thread": plain.json()["id"]})
    assert reply.status_code == 200
    for cid, text in ((conv.json()["id"], "tabs or spaces?"),
                      (asked.json()["id"], "what time is it?")):
        for api in (stored.ca, stored.cb):  # the sender's record and the recipient's
            rows = await _poll(api, "/audit", lambda r: r, conversation=cid)
            assert text in {r["text"] for r in rows} and {r["conversation"] for r in rows} == {
                cid}, rows
        export = await stored.ca.get("/audit/export", params={"conversation": cid})
        assert text in {json.loads(x)["text"] for x in export.text.splitlines()}
    # a plain thread is still found by its root
    rows = await _poll(stored.ca, "/audit", lambda r: r, conversation=plain.json()["id"])
    assert [r["text"] for r in rows] == ["in thread"]
    bad = await stored.ca.get("/audit", params={"conversation": "xyz"})
    assert bad.status_code == 400


async def test_skill_descriptions_and_the_card_after_put(nursery: trio.Nursery) -> None:
    flags = (("translate", "Translates text between languages"),)
    card = agent_card(None, flags, "polyglot")
    assert card is not None and card["skills"] == [
        {"id": "translate", "name": "translate",
         "description": "Translates text between languages"}]
    a = Peer(Identity.generate(), PeerOptions(channels=("lobby",), seed=1, dht=False,
                                              card=card, skills=flags))
    b = Peer(Identity.generate(), PeerOptions(channels=("lobby",), seed=2, dht=False))
    await nursery.start(a.run)
    await nursery.start(b.run)
    ta, tb = memory_link_pair()
    a.start_link(ta, initiator=True)
    b.start_link(tb, initiator=False)

    def announced() -> Any:
        info = b.directory.get(a.peer_id)
        return None if info is None else info.extra.get("skills")

    with trio.fail_after(10):
        while announced() != flags:
            await b.wait_changed()
    async with _client(LocalApi(a, TOKEN)) as ca:
        [me] = (await ca.get("/agents", params={"skill": "translate"})).json()
        assert me["card"]["skills"][0]["description"] == "Translates text between languages"
        # skill ids are lower case: a query in other cases is matched lower-cased
        upper = (await ca.get("/agents", params={"skill": "Translate"})).json()
        assert [x["peer_id"] for x in upper] == [me["peer_id"]]
        assert has_feature(a, PeerInfo(a.peer_id, a.identity.public_key, 0), "Translate")
        assert not has_feature(a, PeerInfo(a.peer_id, a.identity.public_key, 0), "Summarize")
        bad = await ca.get("/agents", params={"skill": "Trans late"})
        assert bad.status_code == 400 and "a-z" in bad.json()["error"]["message"]
        a2a = (await ca.get("/.well-known/agent-card.json")).json()
        assert [(s["id"], s["description"]) for s in a2a["skills"]] == list(flags)
        # a new card: the A2A card and presence follow it, not the --skill list
        put = await ca.put("/card", json={"name": "polyglot", "skills": [
            {"id": "summarize", "name": "Summaries", "description": "Short\nsummaries"}]})
        assert put.status_code == 200, put.text
        want = (("summarize", "Short summaries"),)
        a2a = (await ca.get("/.well-known/agent-card.json")).json()
        assert [(s["id"], s["description"]) for s in a2a["skills"]] == list(want)
        with trio.fail_after(10):
            while announced() != want:
                await b.wait_changed()
        assert (await ca.get("/agents", params={"skill": "translate"})).json() == []
