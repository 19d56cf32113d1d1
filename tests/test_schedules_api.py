"""The schedule endpoints in process, in virtual time: made, refused, listed,
paused, resumed, deleted; ``send_at`` on ``/send``; the job history."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from peer import Identity, Peer, PeerOptions
from peer.api._api import LocalApi
from store import MessageStore, _journal

TOKEN = "test-token-0123456789"


@pytest.fixture
async def api(nursery: trio.Nursery) -> AsyncIterator[httpx.AsyncClient]:
    peer = Peer(Identity.generate(), PeerOptions(channels=("lobby",), seed=1, dht=False))
    await nursery.start(peer.run)
    local = LocalApi(peer, TOKEN)
    await nursery.start(local.ops.run)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=local.app),
        base_url="http://127.0.0.1",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as client:
        yield client


async def _runs(api: httpx.AsyncClient, sid: str, n: int) -> list[dict[str, Any]]:
    with trio.fail_after(120):  # virtual seconds
        while True:
            rows = (await api.get("/schedules/runs", params={"id": sid})).json()
            done = [r for r in rows if r["outcome"] != "firing"]
            if len(done) >= n:
                return done
            await trio.sleep(0.5)


async def test_refusals_are_clear(api: httpx.AsyncClient) -> None:
    msg = {"channel": "lobby", "body": "x"}
    for body, code in (
        ({"every": 5}, "invalid"),  # no message
        ({"message": msg}, "invalid"),  # no when
        ({"message": msg, "every": 5, "cron": "* * * * *"}, "invalid"),
        ({"message": msg, "cron": "61 * * * *"}, "invalid"),
        ({"message": msg, "cron": "0 0 30 2 *"}, "invalid"),  # never fires: was a 500
        ({"message": msg, "cron": "0 9 * * *", "tz": "Nowhere/Else"}, "invalid"),
        ({"message": msg, "every": 0.1}, "invalid"),
        ({"message": {**msg, "time_to_live": 5}, "every": 5}, "unknown-field"),
        ({"message": {"body": "x"}, "every": 5}, "invalid"),
        ({"message": {"channel": "lobby", "to": "ab" * 32}, "every": 5}, "invalid"),
        ({"message": msg, "at": "yesterday"}, "invalid"),
        ({"message": msg, "every": 5, "when": 1}, "unknown-field"),
        ({"message": {"channel": "lobby", "body": "x" * 70_000}, "every": 5}, "too-large"),
    ):
        r = await api.post("/schedules", json=body)
        assert r.status_code in (400, 413), (body, r.text)
        assert r.json()["error"]["code"] == code, (body, r.text)
    for path in ("/schedules/pause", "/schedules/resume"):
        r = await api.post(path, json={"id": "nope"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not-found"
    r = await api.delete("/schedules", params={"id": "nope"})
    assert r.status_code == 404


async def test_lifecycle_in_virtual_time(
    api: httpx.AsyncClient, autojump_clock: trio.testing.MockClock
) -> None:
    r = await api.post(
        "/schedules",
        json={"message": {"channel": "lobby", "body": "beat"}, "every": 10, "name": "heartbeat"},
    )
    assert r.status_code == 201, r.text
    s = r.json()
    assert (s["kind"], s["state"], s["name"], s["every"]) == ("interval", "active", "heartbeat", 10)
    rows = await _runs(api, s["id"], 3)
    assert [r["outcome"] for r in rows] == ["sent"] * 3
    assert [r["run"] for r in rows] == [1, 2, 3]
    inbox = (await api.get("/messages", params={"channel": "lobby", "peek": "true"})).json()
    assert {m["id"] for m in inbox if m["body"] == "beat"} >= {r["message_id"] for r in rows}

    paused = (await api.post("/schedules/pause", json={"id": s["id"]})).json()
    assert paused["state"] == "paused" and paused["next"] is None
    before = len((await api.get("/schedules/runs", params={"id": s["id"]})).json())
    await trio.sleep(60)
    assert len((await api.get("/schedules/runs", params={"id": s["id"]})).json()) == before
    resumed = (await api.post("/schedules/resume", json={"id": s["id"]})).json()
    assert resumed["state"] == "active"
    await _runs(api, s["id"], before + 1)

    newest = (await api.get("/schedules/runs", params={"id": s["id"], "newest": "true",
                                                         "limit": 1})).json()
    assert newest[0]["run"] == max(r["run"] for r in await _runs(api, s["id"], 1))
    listed = (await api.get("/schedules")).json()
    assert [x["id"] for x in listed] == [s["id"]]
    gone = await api.delete("/schedules", params={"id": s["id"]})
    assert gone.json() == {"deleted": s["id"]}
    assert (await api.get("/schedules")).json() == []
    assert (await api.get("/schedules/runs", params={"id": s["id"]})).status_code == 404


async def test_send_at_is_a_one_off(
    api: httpx.AsyncClient, autojump_clock: trio.testing.MockClock
) -> None:
    status = (await api.get("/status")).json()
    assert status["peer_id"]
    r = await api.post("/send", json={"channel": "lobby", "body": "later",
                                      "send_at": "2999-01-01T00:00:00Z"})
    assert r.status_code == 202, r.text
    far = r.json()["scheduled"]
    assert far["kind"] == "once" and far["next"].startswith("2999-01-01")
    now = (await api.get("/schedules")).json()[0]["created"]
    r = await api.post("/send", json={"channel": "lobby", "body": "soon", "send_at": now})
    one = r.json()["scheduled"]
    rows = await _runs(api, one["id"], 1)
    assert rows[0]["outcome"] == "sent"
    plain = await api.post("/send", json={"channel": "lobby", "body": "now"})
    assert plain.status_code == 200 and "id" in plain.json()
    r = await api.post("/send", json={"channel": "lobby", "body": "x", "send_at": "soon"})
    assert r.status_code == 400
    # long past: refused, never sent at once as if it were now
    r = await api.post("/send", json={"channel": "lobby", "body": "x",
                                      "send_at": "2020-01-01T00:00:00Z"})
    assert r.status_code == 400 and "in the past" in r.json()["error"]["message"], r.text
    assert len((await api.get("/schedules")).json()) == 2


def test_journal_pages(tmp_path: Path) -> None:
    store = MessageStore(tmp_path / "s")
    try:
        _journal.put(store, {f"p/{i:04d}": str(i).encode() for i in range(50)})
        _journal.put(store, {"o/1": b"other", "q/1": b"other"})
        first = _journal.page(store, "p/", None, 20)
        assert [k for k, _ in first] == [f"p/{i:04d}" for i in range(20)]
        rest = _journal.page(store, "p/", first[-1][0], 100)
        assert [k for k, _ in rest] == [f"p/{i:04d}" for i in range(20, 50)]
        back = _journal.page(store, "p/", None, 3, reverse=True)
        assert [k for k, _ in back] == ["p/0049", "p/0048", "p/0047"]
        back2 = _journal.page(store, "p/", "p/0002", 10, reverse=True)
        assert [k for k, _ in back2] == ["p/0001", "p/0000"]
        assert _journal.delete_before(store, "p/", "p/0010", budget=4) == 4
        assert _journal.delete_before(store, "p/", "p/0010") == 6
        assert _journal.count(store, "p/") == 40
        assert _journal.page(store, "o/", None, 5) == [("o/1", b"other")]
    finally:
        store.close()
