"""The audit trail: written from real traffic between two peers (in, out, DM
states), filtered exactly, exported as JSON lines and CSV, and a 100,000-record
export streamed over real HTTP in bounded memory (peak RSS measured)."""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from peer import Identity, Peer, PeerOptions, memory_link_pair
from peer.api import _audit
from peer.api._api import LocalApi
from peer.api._audit import (
    BATCH,
    CSV_COLUMNS,
    LINGER,
    PREFIX,
    YIELD_EVERY,
    AuditTrail,
    record_key,
)
from peer.api._auditfast import relayed_json
from peer.api._serve import serve_api
from peer.wire._envelope import Content, seal_message
from store import MessageStore, StoreError, _journal

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _client(api: LocalApi) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api.app), base_url="http://127.0.0.1", headers=AUTH
    )


async def _wait(api: httpx.AsyncClient, n: int, **params: str) -> list[dict[str, Any]]:
    with trio.fail_after(30):  # generous: the audit follows the inbox in its own task
        while True:
            rows: list[dict[str, Any]] = (await api.get("/audit", params=params)).json()
            if len(rows) >= n:
                return rows
            await trio.sleep(0.05)


async def _seed_trail(nursery: trio.Nursery, tmp_path: Path) -> tuple[Peer, AuditTrail]:
    """A running relay-only seed with a store, and its audit trail (not started)."""
    seed = Peer(Identity.generate(), PeerOptions(relay_only=True, seed=9, dht=False,
                                                 store_path=str(tmp_path / "seed")))
    await nursery.start(seed.run)
    return seed, LocalApi(seed, TOKEN).ops.audit


async def test_traffic_is_audited(nursery: trio.Nursery, tmp_path: Path) -> None:
    a = Peer(Identity.generate(), PeerOptions(channels=("lobby",), seed=1, dht=False,
                                              store_path=str(tmp_path / "a")))
    b = Peer(Identity.generate(), PeerOptions(channels=("lobby",), seed=2, dht=False,
                                              store_path=str(tmp_path / "b")))
    for p in (a, b):
        await nursery.start(p.run)
    ta, tb = memory_link_pair()
    a.start_link(ta, initiator=True)
    b.start_link(tb, initiator=False)
    with trio.fail_after(10):
        while not (a.links and b.links and b.directory.get(a.peer_id) and
                   a.directory.get(b.peer_id) and a.router.reachable("lobby")):
            await a.wait_changed()
    api_a, api_b = LocalApi(a, TOKEN), LocalApi(b, TOKEN)
    await nursery.start(api_a.ops.run)
    await nursery.start(api_b.ops.run)
    root = await a.send_message("lobby", Content(body="hello all"))
    await a.send_message("lobby", Content(body="a reply", thread=root.id))
    dm = await a.send_direct(b.peer_id, Content(body="secret"))
    async with _client(api_a) as ca, _client(api_b) as cb:
        out = await _wait(ca, 4)  # 2 posts, 1 DM, and the DM's state once receipted
        got = await _wait(cb, 3)
        mine = {(r["direction"], r["kind"], r["text"]) for r in out if r["kind"] != "state"}
        assert mine == {("out", "channel", "hello all"), ("out", "channel", "a reply"),
                        ("out", "dm", "secret")}
        states = [r for r in out if r["kind"] == "state"]
        assert [(r["id"], r["state"], r["recipients"]) for r in states] == [
            (dm.id.hex(), "delivered", [b.identity.peer_id_hex])
        ]
        theirs = {(r["direction"], r["kind"], r["sender"]) for r in got}
        assert theirs == {("in", "channel", a.identity.peer_id_hex),
                          ("in", "dm", a.identity.peer_id_hex)}
        dm_in = next(r for r in got if r["kind"] == "dm")
        assert dm_in["recipients"] == [b.identity.peer_id_hex] and dm_in["text"] == "secret"
        assert dm_in["size"] == len(b"secret")
        thread = (await ca.get("/audit", params={"conversation": root.id.hex()})).json()
        assert [r["text"] for r in thread] == ["a reply"]
        assert len((await cb.get("/audit", params={"kind": "dm"})).json()) == 1
        assert (await cb.get("/audit", params={"kind": "nope"})).status_code == 400
        lines = (await cb.get("/audit/export")).text.splitlines()
        assert {json.loads(x)["id"] for x in lines} == {r["id"] for r in got}


def _records(n: int, rng: random.Random, t0: int) -> list[tuple[str, dict[str, Any]]]:
    agents = [f"{i:02x}" * 32 for i in range(5)]
    out = []
    for i in range(n):
        sender, other = rng.sample(agents, 2)
        kind = rng.choice(["channel", "dm", "state"])
        topic = rng.choice(["lobby", "ops", "dev"]) if kind == "channel" else f"dm/{i % 7}"
        t = t0 + i * 10
        record = {
            "time": str(t), "time_ms": t, "direction": rng.choice(["in", "out"]), "kind": kind,
            "id": f"{i:064x}", "sender": sender,
            "recipients": [f"#{topic}"] if kind == "channel" else [other],
            "topic": topic, "conversation": rng.choice([None, "ab" * 32, "cd" * 32]),
            "size": rng.randrange(1, 4000), "state": "sent", "sent": str(t), "seq": i,
            "text": "x, \"quoted\"\nline" if i % 1000 == 0 else f"message {i}",
        }
        out.append((record_key(t, f"m{i:012d}"), record))
    return out


def _fill(path: Path, records: list[tuple[str, dict[str, Any]]]) -> None:
    _fill_raw(path, [(k, json.dumps(r).encode()) for k, r in records])


def _fill_raw(path: Path, items: list[tuple[str, bytes]]) -> None:
    store = MessageStore(path)
    try:
        for i in range(0, len(items), 20_000):
            _journal.put(store, dict(items[i : i + 20_000]))
    finally:
        store.close()


def _bulk(n: int, t0: int) -> list[tuple[str, bytes]]:
    """``n`` records as stored bytes, made fast: a template, a few varying fields."""
    kinds = ("channel", "dm", "state")
    template = (
        '{"time":"%d","time_ms":%d,"direction":"in","kind":"%s","id":"%064x",'
        '"sender":"%s","recipients":["#lobby"],"topic":"lobby","conversation":null,'
        '"size":%d,"state":"received","sent":"%d","seq":%d,"text":"%s"}'
    )
    sender = "ab" * 32
    out = []
    for i in range(n):
        t = t0 + i * 10
        text = 'x, \\"quoted\\"\\nline' if i % 1000 == 0 else f"message {i}"
        raw = template % (t, t, kinds[i % 3], i, sender, 10 + i % 500, t, i, text)
        out.append((record_key(t, f"m{i:012d}"), raw.encode()))
    return out


@asynccontextmanager
async def _served(nursery: trio.Nursery, path: Path) -> AsyncIterator[tuple[Peer, str]]:
    peer = Peer(Identity.generate(), PeerOptions(dht=False, store_path=str(path)))
    await nursery.start(peer.run)
    url = await serve_api(peer, "127.0.0.1", 0, TOKEN, nursery)
    yield peer, url


async def test_filters_return_exactly_the_matching_rows(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    t0 = 1_800_000_000_000
    records = _records(3000, random.Random(7), t0)
    _fill(tmp_path / "s", records)
    async with _served(nursery, tmp_path / "s") as (_peer, url), httpx.AsyncClient(
        base_url=url, headers=AUTH, timeout=30
    ) as api:
        plain = [r for _, r in records]
        agent = "01" * 32
        cases: list[tuple[dict[str, str], list[dict[str, Any]]]] = [
            ({"agent": agent},
             [r for r in plain if r["sender"] == agent or agent in r["recipients"]]),
            ({"kind": "dm"}, [r for r in plain if r["kind"] == "dm"]),
            ({"topic": "ops"}, [r for r in plain if r["topic"] == "ops"]),
            ({"conversation": "ab" * 32}, [r for r in plain if r["conversation"] == "ab" * 32]),
            ({"since": str(t0 + 5000), "until": str(t0 + 9000)},
             [r for r in plain if t0 + 5000 <= r["time_ms"] < t0 + 9000]),
            ({"kind": "channel", "direction": "in", "topic": "dev", "since": str(t0 + 10_000)},
             [r for r in plain if r["kind"] == "channel" and r["direction"] == "in"
              and r["topic"] == "dev" and r["time_ms"] >= t0 + 10_000]),
        ]
        for params, expected in cases:
            assert expected, params
            got: list[dict[str, Any]] = []
            after = None
            while True:  # paged with X-Clawmesh-Next
                page = await api.get("/audit", params={**params, "limit": "700",
                                                       **({"after": after} if after else {})})
                assert page.status_code == 200, page.text
                got += page.json()
                if page.headers["X-Clawmesh-More"] != "true":
                    break
                after = page.headers["X-Clawmesh-Next"]
            assert [r["id"] for r in got] == [r["id"] for r in expected], params
            export = await api.get("/audit/export", params={**params, "format": "csv"})
            rows = list(csv.DictReader(io.StringIO(export.text)))
            assert [r["id"] for r in rows] == [r["id"] for r in expected], params
        assert (await api.get("/audit", params={"since": "not a time"})).status_code == 400
        assert (await api.get("/audit", params={"after": "elsewhere"})).status_code == 400


def _rss_anon_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon")


async def test_export_of_100k_streams_in_bounded_memory(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    n = 100_000
    _fill_raw(tmp_path / "s", _bulk(n, 1_800_000_000_000))
    async with _served(nursery, tmp_path / "s") as (_peer, url), httpx.AsyncClient(
        base_url=url, headers=AUTH, timeout=60
    ) as api:
        # heap growth (anonymous memory; the store's pages are file-backed and shared),
        # sampled at every chunk while the whole export streams through this process
        base = peak = _rss_anon_kb()
        size = 0
        out = tmp_path / "export.csv"
        with out.open("wb") as sink:  # streamed to a file: neither side holds the export
            async with api.stream("GET", "/audit/export", params={"format": "csv"}) as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/csv")
                async for data in r.aiter_bytes():
                    size += len(data)
                    sink.write(data)
                    peak = max(peak, _rss_anon_kb())
        growth = peak - base
        print(f"\naudit export: {n} records, {size / 1e6:.1f} MB of CSV, "
              f"peak anonymous RSS growth {growth / 1024:.1f} MiB (bench/audit_export.py "
              "measures the server alone)")
        assert growth < 32 * 1024, f"export grew the heap by {growth} KiB"
        with out.open(newline="") as f:
            rows = csv.reader(f)
            assert next(rows) == list(CSV_COLUMNS)
            count = 0
            for row in rows:
                count += 1
                if count == 1001:
                    assert row[-1] == 'x, "quoted"\nline'
        assert count == n
        dm = await api.get("/audit/export", params={"kind": "dm", "since": "1800000900000"})
        assert len(dm.text.splitlines()) == len(range(90_000, n)) // 3
        assert PREFIX == "ops/audit/"


async def test_a_seed_audits_what_it_carries_without_dm_text(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    seed = Peer(Identity.generate(), PeerOptions(relay_only=True, seed=9, dht=False,
                                                 store_path=str(tmp_path / "seed")))
    a = Peer(Identity.generate(), PeerOptions(channels=("lobby",), seed=1, dht=False))
    b = Peer(Identity.generate(), PeerOptions(channels=("lobby",), seed=2, dht=False))
    for p in (seed, a, b):
        await nursery.start(p.run)
    for p in (a, b):
        ts, tp = memory_link_pair()
        seed.start_link(ts, initiator=False)
        p.start_link(tp, initiator=True)
    with trio.fail_after(10):
        while not (a.directory.get(b.peer_id) and b.directory.get(a.peer_id)
                   and a.router.reachable("lobby")):
            await a.wait_changed()
    api = LocalApi(seed, TOKEN)
    await nursery.start(api.ops.run)
    post = await a.send_message("lobby", Content(body="public words"))
    dm = await a.send_direct(b.peer_id, Content(body="private words"))
    async with _client(api) as client:
        rows = await _wait(client, 1, direction="relayed", kind="channel")
        rows += await _wait(client, 1, direction="relayed", kind="dm")
    by_id = {r["id"]: r for r in rows}
    assert by_id[post.id.hex()]["text"] == "public words"
    assert by_id[post.id.hex()]["recipients"] == ["#lobby"]
    sealed = by_id[dm.id.hex()]
    assert sealed["text"] is None and sealed["recipients"] == [b.identity.peer_id_hex]
    assert sealed["sender"] == a.identity.peer_id_hex and sealed["size"] > 0


async def test_a_big_step_lets_the_event_loop_carry_messages_meanwhile(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: Any
) -> None:
    """A seed's step of 256 carried envelopes built every record in one go (~2-3 ms of
    the event loop), so a message it carried meanwhile waited: the tail of the relay's
    latency. It now yields every ``YIELD_EVERY`` records, and loses none of them."""
    _seed, trail = await _seed_trail(nursery, tmp_path)
    author = Identity.generate()
    envs = [seal_message(author, topic="t", content=Content(f"m{n}"), seq=n + 1, ts=1000)
            for n in range(BATCH)]
    trail.relayed.extend((e, 2000 + n) for n, e in enumerate(envs))
    rounds, at_put, put = 0, -1, trail.book.put

    async def ticker() -> None:
        nonlocal rounds
        while True:
            await trio.lowlevel.checkpoint()
            rounds += 1

    async def counting_put(items: dict[str, bytes | None], **kw: Any) -> None:
        nonlocal at_put
        at_put = rounds  # how often the loop ran other tasks while the records were built
        await put(items, **kw)

    monkeypatch.setattr(trail.book, "put", counting_put)
    nursery.start_soon(ticker)
    assert await trail.step() == BATCH
    assert at_put >= BATCH // YIELD_EVERY // 2  # one step in one go: 0 or 1
    assert not trail.relayed and trail.statistics()["written"] == BATCH


async def test_a_seed_commits_its_records_once_per_linger_not_once_per_commit(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: Any
) -> None:
    """A seed carrying a steady stream stepped again as soon as a step's commit
    returned, so each commit held what came during the last one (a few ms): dozens
    of commits a second, each with its fsync. It now waits ``LINGER`` after a step
    that did not fill a batch, and every record is still written, once."""
    seed, trail = await _seed_trail(nursery, tmp_path)
    puts, put, all_put = [], trail.book.put, trio.Event()
    spans: list[tuple[float, float]] = []  # each put's start and end
    total = 400

    async def counting_put(items: dict[str, bytes | None], **kw: Any) -> None:
        puts.append(len(items) - 1)  # records, besides the cursor
        start = trio.current_time()
        await put(items, **kw)
        spans.append((start, trio.current_time()))
        if sum(puts) >= total:
            all_put.set()

    monkeypatch.setattr(trail.book, "put", counting_put)
    await nursery.start(trail.run)
    author = Identity.generate()
    envs = [seal_message(author, topic="t", content=Content(f"m{n}"), seq=n + 1, ts=1000)
            for n in range(total)]
    start = trio.current_time()
    for n, env in enumerate(envs):  # a steady stream, as a seed carries them
        trail._carried(env, True)
        if n % 2:
            await trio.sleep(0.001)  # pacing the stream, not waiting for an event
    elapsed = trio.current_time() - start
    with trio.fail_after(10):
        await all_put.wait()
    assert sum(puts) == total and trail.statistics()["written"] == total
    # about one commit per LINGER, plus a few at the edges; before: one per commit
    assert len(puts) <= elapsed / LINGER + 4, (puts, elapsed)
    for n in range(len(puts) - 1):  # after a step short of a batch: LINGER before the next
        if puts[n] < BATCH:
            assert spans[n + 1][0] - spans[n][1] >= LINGER * 0.9, (n, puts, spans)
    assert seed.storage is not None  # every record under its own key, none twice
    count = await seed.storage.service.read(lambda s: _journal.count(s, PREFIX))
    assert count == total


async def test_a_record_that_cannot_be_built_is_lost_counted_not_blocking_the_trail(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: Any
) -> None:
    """A bug in one record's building put the whole batch back and failed again every
    second: nothing more was ever written. Now that record is counted lost."""
    _seed, trail = await _seed_trail(nursery, tmp_path)
    author = Identity.generate()
    envs = [seal_message(author, topic="t", content=Content(f"m{n}"), seq=n + 1, ts=1000)
            for n in range(50)]
    bad = envs[7].id

    def failing(env: Any, carried_ms: int, max_text: int) -> bytes | None:
        if env.id == bad:
            raise TypeError("a bug")
        return relayed_json(env, carried_ms, max_text)

    monkeypatch.setattr(_audit, "relayed_json", failing)
    monkeypatch.setattr(_audit, "relayed_record", lambda env, ms: 1 / 0)  # no way around it
    put, failures = trail.book.put, [2]

    async def full_disk_twice(items: dict[str, bytes | None], **kw: Any) -> None:
        if failures[0]:
            failures[0] -= 1
            raise StoreError("disk full")
        await put(items, **kw)

    monkeypatch.setattr(trail.book, "put", full_disk_twice)
    trail.relayed.extend((e, 2000 + n) for n, e in enumerate(envs))
    for _ in range(2):  # the store refuses: the batch waits, the bad record is not retried
        with pytest.raises(StoreError):
            await trail.step()
    assert await trail.step() == 49
    assert trail.statistics()["lost"] == 1 and not trail.relayed  # lost once, not per try


async def test_what_a_seed_queued_is_written_when_it_stops(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A seed holds up to LINGER of what it carried before a step writes it: a stop
    writes it (or counts it lost), it does not vanish."""
    seed, trail = await _seed_trail(nursery, tmp_path)
    author = Identity.generate()
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as inner:
            await inner.start(trail.run)
            for n in range(50):
                trail._carried(seal_message(author, topic="t", content=Content(f"m{n}"),
                                            seq=n + 1, ts=1000), True)  # fmt: skip
            scope.cancel()  # before LINGER has passed
    stats = trail.statistics()
    assert stats["written"] == 50 and stats["lost"] == 0 and not trail.relayed
    assert seed.storage is not None
    count = await seed.storage.service.read(lambda s: _journal.count(s, PREFIX))
    assert count == 50


async def test_a_stop_while_a_step_waits_for_its_commit_writes_nothing_twice(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: Any
) -> None:
    """Once a step's batch is with the store's writer it commits whatever happens: a
    stop arriving then must not put the batch back for the last step to write again."""
    seed, trail = await _seed_trail(nursery, tmp_path)
    assert seed.storage is not None
    service = seed.storage.service
    handed = service._send
    author = Identity.generate()
    with trio.CancelScope() as scope:

        class StopOnceHanded:  # the writer has the batch, then the stop comes
            async def send(self, request: Any) -> None:
                await handed.send(request)
                scope.cancel()

            def statistics(self) -> Any:
                return handed.statistics()

        async with trio.open_nursery() as inner:
            await inner.start(trail.run)
            monkeypatch.setattr(service, "_send", StopOnceHanded())
            for n in range(20):
                trail._carried(seal_message(author, topic="t", content=Content(f"m{n}"),
                                            seq=n + 1, ts=1000), True)  # fmt: skip
            await trio.sleep_forever()
    monkeypatch.setattr(service, "_send", handed)
    count = await service.read(lambda s: _journal.count(s, PREFIX))
    stats = trail.statistics()
    assert count == 20 and stats["written"] == 20 and stats["lost"] == 0
    trail._carried(seal_message(author, topic="t", content=Content("late"), seq=99, ts=1000),
                   True)  # fmt: skip
    assert trail.statistics()["lost"] == 1 and not trail.relayed  # after the stop: counted
