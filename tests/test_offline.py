"""Offline delivery in process: peers with stores on memory links, stopped and restarted.

Each peer runs in a cancel scope of its own, so a test can stop it (as a
clean stop) and start a new ``Peer`` on the same identity and store
directory, the way a restarted process would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from peer import Identity, Peer, PeerOptions, memory_link_pair
from peer.wire._envelope import Content
from peer.wire._errors import ErrorCode
from store import StoreError


def _options(tmp: Path, name: str, **extra: object) -> PeerOptions:
    return PeerOptions(
        store_path=str(tmp / name), dht=False, outbox_retry_initial=0.2, **extra  # type: ignore[arg-type]
    )


@asynccontextmanager
async def running(identity: Identity, options: PeerOptions) -> AsyncIterator[Peer]:
    peer = Peer(identity, options)
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.run)
        try:
            yield peer
        finally:
            nursery.cancel_scope.cancel()


def link(a: Peer, b: Peer) -> None:
    ta, tb = memory_link_pair()
    a.start_link(ta, initiator=True)
    b.start_link(tb, initiator=False)


async def until(peer: Peer, condition: Callable[[], bool]) -> None:
    with trio.fail_after(15):
        while not condition():
            with trio.move_on_after(0.5):  # some conditions change inside the store thread
                await peer.wait_changed()


async def linked(a: Peer, b: Peer) -> None:
    link(a, b)
    await until(a, lambda: b.peer_id in a.links and a.peer_id in b.links)


def bodies(peer: Peer, **query: object) -> list[str]:
    return [m.body for m in peer.inbox.query(limit=100_000, **query) if not m.outgoing]  # type: ignore[arg-type]


async def test_dm_is_receipted_and_the_outbox_empties(tmp_path: Path) -> None:
    ia, ib = Identity.generate(), Identity.generate()
    async with running(ia, _options(tmp_path, "a")) as a, running(ib, _options(tmp_path, "b")) as b:
        await linked(a, b)
        await until(a, lambda: a.router.reachable(f"inbox/{ib.peer_id_hex}"))
        env = await a.send_direct(b.peer_id, Content(body="hello"))
        await until(b, lambda: bodies(b) == ["hello"])
        sent = a.inbox.get(env.id)
        assert sent is not None
        await until(a, lambda: sent.status == "delivered")
        assert a.storage is not None and b.storage is not None
        assert a.storage.counters.receipts_received == 1
        assert await a.storage.service.read(lambda s: s.outbox()) == []


async def test_a_full_outbox_refuses_more_dms(tmp_path: Path) -> None:
    """The outbox is bounded: a DM that finds it full is not stored, not sent."""
    ia, ib = Identity.generate(), Identity.generate()
    async with running(ia, _options(tmp_path, "a")) as a:
        a.directory.see(ib.peer_id, ib.public_key, 0)
        assert a.storage is not None
        a.storage.delivery.core.max_entries = 2
        sent = [await a.send_direct(ib.peer_id, Content(body=f"d{i}")) for i in range(2)]
        with pytest.raises(StoreError, match="outbox full"):
            await a.send_direct(ib.peer_id, Content(body="d2"))
        entries = await a.storage.service.read(lambda s: s.outbox())
        assert sorted(e.msg_id for e in entries) == sorted(e.id for e in sent)
        assert a.storage.statistics()["outbox"] == 2
        assert [m.body for m in a.inbox.query(limit=10)] == ["d0", "d1"]


async def test_own_envelopes_chain_across_a_restart(tmp_path: Path) -> None:
    """Each of our envelopes names the one before in its log topic, and the
    chain goes on from the store after a restart (catchup.md section 3)."""
    ia, ib = Identity.generate(), Identity.generate()
    async with running(ia, _options(tmp_path, "a", channels=("lobby",))) as a:
        a.directory.see(ib.peer_id, ib.public_key, 0)
        first = [await a.send_message("lobby", Content(body=f"m{i}")) for i in range(3)]
        dms = [await a.send_direct(ib.peer_id, Content(body=f"d{i}")) for i in range(2)]
    assert [e.seq for e in first] == [1, 2, 3] and first[0].prev is None
    assert [e.prev for e in first[1:]] == [e.id for e in first[:-1]]
    assert dms[0].seq == 1 and dms[0].prev is None and dms[1].prev == dms[0].id
    async with running(ia, _options(tmp_path, "a")) as a2:
        a2.directory.see(ib.peer_id, ib.public_key, 0)
        again = await a2.send_message("lobby", Content(body="after"))
        dm = await a2.send_direct(ib.peer_id, Content(body="d2"))
    assert (again.seq, again.prev) == (4, first[-1].id)
    assert (dm.seq, dm.prev) == (3, dms[-1].id)


async def test_a_restarted_peer_catches_up_channels_and_dms(tmp_path: Path) -> None:
    ia, ib = Identity.generate(), Identity.generate()
    opts_a = _options(tmp_path, "a", channels=("lobby",))
    async with running(ia, opts_a) as a:
        async with running(ib, _options(tmp_path, "b", channels=("lobby",))) as b:
            await linked(a, b)
            await until(a, lambda: a.router.reachable("lobby"))
            await a.send_message("lobby", Content(body="before"))
            await until(b, lambda: bodies(b) == ["before"])
            assert await b.mark_read([m.id for m in b.inbox.query()]) == 1
        # b is offline: messages and DMs pile up at a
        for i in range(300):
            await a.send_message("lobby", Content(body=f"m{i}"))
        dms = [await a.send_direct(ib.peer_id, Content(body=f"dm{i}")) for i in range(5)]
        assert all(a.inbox.get(d.id).status == "pending" for d in dms)  # type: ignore[union-attr]
        async with running(ib, _options(tmp_path, "b")) as b2:
            assert b2.channels == {"lobby"}  # the subscription survived
            assert bodies(b2) == ["before"] and b2.inbox.unread() == 0  # so did read state
            await linked(a, b2)
            want = ["before", *(f"m{i}" for i in range(300))]
            await until(b2, lambda: bodies(b2, topic="lobby") == want)
            await until(b2, lambda: len(bodies(b2)) == 306)
            assert [b for b in bodies(b2) if b.startswith("dm")] == [f"dm{i}" for i in range(5)]
            await until(a, lambda: all(a.inbox.get(d.id).status == "delivered" for d in dms))  # type: ignore[union-attr]
            assert a.storage is not None
            assert a.storage.counters.receipts_received == 5


async def test_two_carriers_missing_different_parts_give_the_union(tmp_path: Path) -> None:
    """Carrier 1 lacks the middle of a sender's run, carrier 2 has only that middle."""
    publisher = Identity.generate()
    from peer.wire._envelope import seal_message

    async with running(Identity.generate(), _options(tmp_path, "c1", channels=("lobby",))) as c1:
        start = c1.wall_ms()
        envs = [
            seal_message(publisher, topic="lobby", content=Content(body=f"m{i}"), seq=i, ts=start)
            for i in range(1, 101)
        ]
        assert c1.storage is not None
        await c1.storage.accept_many(envs[:30] + envs[60:])
        opts_c2 = _options(tmp_path, "c2", channels=("lobby",))
        async with running(Identity.generate(), opts_c2) as c2:
            assert c2.storage is not None
            await c2.storage.accept_many(envs[30:60])
            opts = _options(tmp_path, "r", channels=("lobby",))
            async with running(Identity.generate(), opts) as r:
                await linked(c2, r)  # c2 first: its walk may finish before c1's
                await linked(c1, r)
                await until(r, lambda: len(bodies(r, topic="lobby")) == 100)
                assert sorted(bodies(r, topic="lobby")) == sorted(f"m{i}" for i in range(1, 101))
                assert r.storage is not None
                ranges = await r.storage.service.read(
                    lambda s: s.sender_ranges(publisher.peer_id, "lobby")
                )
                assert ranges == [(1, 100)]
                # a count made while 31..60 were still on their way is made again
                await until(r, lambda: r.storage.catchup["lobby"].missed == {})  # type: ignore[union-attr]


async def test_what_no_carrier_has_is_reported_missed(tmp_path: Path) -> None:
    publisher = Identity.generate()
    from peer.wire._envelope import seal_message

    # a gap nobody can fill holds the later messages back for the order hold, then
    # they go on and the gap stays reported (shortened here from 10 s)
    hold = {"channels": ("lobby",), "order_hold": 0.5}
    async with running(Identity.generate(), _options(tmp_path, "c", **hold)) as c:
        now = c.wall_ms()
        envs = [
            seal_message(publisher, topic="lobby", content=Content(body=f"m{i}"), seq=i, ts=now)
            for i in range(1, 21)
        ]
        assert c.storage is not None
        await c.storage.accept_many(envs[:5] + envs[12:])  # 6..12 were never stored anywhere
        async with running(Identity.generate(), _options(tmp_path, "r", **hold)) as r:
            await linked(c, r)
            assert r.storage is not None
            await until(r, lambda: len(bodies(r, topic="lobby")) == 13)
            gap = {publisher.peer_id_hex: 7}
            await until(r, lambda: r.storage.catchup["lobby"].missed == gap)  # type: ignore[union-attr]
            assert bodies(r, topic="lobby") == [f"m{i}" for i in (*range(1, 6), *range(13, 21))]
            assert r.storage.order.order.skipped == 7


async def test_dead_letter_for_the_absent_and_one_receipt_for_the_returning(
    tmp_path: Path,
) -> None:
    ia, ib, ic = Identity.generate(), Identity.generate(), Identity.generate()
    async with (
        running(ib, _options(tmp_path, "b")) as b,
        running(ic, _options(tmp_path, "c")) as c,
        running(ia, _options(tmp_path, "a", dm_deadline=1.5)) as a,
    ):
        await linked(a, b)
        await linked(a, c)
        await until(a, lambda: None not in (a.directory.get(i.peer_id) for i in (ib, ic)))
        for link in (a.links[ib.peer_id], a.links[ic.peer_id]):
            link.close(ErrorCode.SHUTDOWN, "going offline")
        await until(a, lambda: not a.links)
        to_b = await a.send_direct(ib.peer_id, Content(body="for b, who stays away"))
        to_c = await a.send_direct(ic.peer_id, Content(body="for c, who returns"))
        await linked(a, c)  # c returns within the deadline
        assert a.storage is not None
        await until(a, lambda: a.inbox.get(to_c.id).status == "delivered")  # type: ignore[union-attr]
        await until(a, lambda: a.inbox.get(to_b.id).status == "undeliverable")  # type: ignore[union-attr]
        letters = await a.storage.service.read(lambda s: s.dead_letters())
        assert [d.msg_id for d in letters] == [to_b.id]
        assert await a.storage.service.read(lambda s: s.outbox()) == []
        # c links again and a pushes nothing twice; c holds the DM once
        a.links[ic.peer_id].close(ErrorCode.SHUTDOWN, "again")
        await until(a, lambda: ic.peer_id not in a.links)
        await linked(a, c)
        assert c.storage is not None
        await until(c, lambda: c.storage.catchup[f"inbox/{ic.peer_id_hex}"].pages >= 2)  # type: ignore[union-attr]
        assert bodies(c) == ["for c, who returns"]
        assert a.storage.counters.receipts_received == 1
        assert bodies(b) == []


async def test_a_seed_keeps_dms_for_an_offline_recipient(tmp_path: Path) -> None:
    """A relay-only seed with a store carries the DM topic; the sender may go away too."""
    ia, ib, iseed = Identity.generate(), Identity.generate(), Identity.generate()
    async with running(iseed, _options(tmp_path, "seed", relay_only=True)) as seed:
        async with running(ib, _options(tmp_path, "b")) as b:
            await linked(seed, b)
            await until(seed, lambda: seed.router.reachable(f"inbox/{ib.peer_id_hex}"))
            async with running(ia, _options(tmp_path, "a")) as a:
                await linked(a, seed)
                await until(a, lambda: a.router.reachable(f"inbox/{ib.peer_id_hex}"))
                await until(a, lambda: a.directory.get(ib.peer_id) is not None)  # b's presence
                first = await a.send_direct(ib.peer_id, Content(body="one"))
                await until(b, lambda: bodies(b) == ["one"])
                await until(a, lambda: a.inbox.get(first.id).status == "delivered")  # type: ignore[union-attr]
        # b is gone: the seed still wants b's inbox (it pinned it), so the DM reaches it
        async with running(ia, _options(tmp_path, "a")) as a:
            await linked(a, seed)
            await until(a, lambda: a.router.reachable(f"inbox/{ib.peer_id_hex}"))
            await a.send_direct(ib.peer_id, Content(body="two"))
            assert seed.storage is not None
            await until(seed, lambda: seed.storage.counters.stored == 3)  # type: ignore[union-attr]
        async with running(ib, _options(tmp_path, "b")) as b:  # a is offline now
            await linked(seed, b)
            await until(b, lambda: bodies(b) == ["one", "two"])


async def test_a_relay_only_seed_shares_one_commit_among_live_messages(tmp_path: Path) -> None:
    """What a seed relays waits up to ``relay_commit_delay`` for company: one
    commit, nothing lost. (A member peer commits at once: its agent is waiting.)"""
    ia, ib, iseed = Identity.generate(), Identity.generate(), Identity.generate()
    seed_options = _options(tmp_path, "seed", relay_only=True, relay_commit_delay=3.0)
    async with running(iseed, seed_options) as seed, running(
        ia, _options(tmp_path, "a", channels=("general",))
    ) as a, running(ib, _options(tmp_path, "b", channels=("general",))) as b:
        await linked(seed, b)
        await linked(a, seed)
        await until(a, lambda: a.router.reachable("general"))
        assert seed.storage is not None and b.storage is not None
        for i in range(5):
            env = await a.send_message("general", Content(body=f"m{i}"))
            await until(b, lambda env=env: b.inbox.get(env.id) is not None)  # type: ignore[misc]
        assert seed.storage.counters.stored == 0  # relayed at once, stored later, together
        await until(seed, lambda: seed.storage.counters.stored == 5)  # type: ignore[union-attr]
        assert seed.storage.counters.commits == 1
        assert b.storage.counters.stored == 5 and b.storage.counters.commits >= 1
