"""Offline delivery in process: peers with stores on memory links, stopped and restarted.

Each peer runs in a cancel scope of its own, so a test can stop it (as a
clean stop) and start a new ``Peer`` on the same identity and store
directory, the way a restarted process would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from peer import Identity, Peer, PeerOptions, memory_link_pair
from peer._envelope import Content


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


async def until(peer: Peer, condition: Callable[[], bool], timeout: float = 15) -> None:
    with trio.fail_after(timeout):
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
