"""Our sequence numbers never repeat: every publishing path continues one chain
per log topic, across restarts (catchup.md section 3 relies on it).

Paths with a store: ``send_message`` (stored first), ``send_direct`` (a DM
through the outbox), and the receipts a peer signs for DMs it receives. The
sync ``publish`` and ``send_dm`` send without storing: a peer with a store
refuses them (they would give up the sequence on a crash), and without a
store their chain lives as long as the process.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from peer import Identity, Peer, PeerOptions, memory_link_pair
from peer.wire._envelope import Content, Envelope, inbox_topic
from store import StoreError


def _options(tmp: Path, name: str, **extra: object) -> PeerOptions:
    return PeerOptions(store_path=str(tmp / name), dht=False, **extra)  # type: ignore[arg-type]


@asynccontextmanager
async def running(identity: Identity, options: PeerOptions) -> AsyncIterator[Peer]:
    peer = Peer(identity, options)
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.run)
        try:
            yield peer
        finally:
            nursery.cancel_scope.cancel()


async def until(peer: Peer, condition: Callable[[], bool]) -> None:
    with trio.fail_after(15):
        while not condition():
            with trio.move_on_after(0.5):  # some conditions change inside the store thread
                await peer.wait_changed()


def chained(envelopes: list[Envelope]) -> bool:
    """Sequences 1, 2, ... and each envelope names the one before."""
    return [e.seq for e in envelopes] == list(range(1, len(envelopes) + 1)) and all(
        e.prev == before.id for before, e in itertools.pairwise(envelopes)
    )


async def test_channel_messages_continue_the_chain_after_restarts(tmp_path: Path) -> None:
    me = Identity.generate()
    sent: list[Envelope] = []
    for round_ in range(3):
        async with running(me, _options(tmp_path, "a", channels=("lobby",))) as a:
            sent += [await a.send_message("lobby", Content(body=f"{round_}{i}")) for i in range(2)]
    assert chained(sent), [(e.seq, e.prev) for e in sent]


async def test_dms_continue_the_chain_after_restarts(tmp_path: Path) -> None:
    me, them = Identity.generate(), Identity.generate()
    sent: list[Envelope] = []
    for round_ in range(3):
        async with running(me, _options(tmp_path, "a")) as a:
            a.directory.see(them.peer_id, them.public_key, 0)
            sent += [
                await a.send_direct(them.peer_id, Content(body=f"{round_}{i}")) for i in range(2)
            ]
    assert chained(sent), [(e.seq, e.prev) for e in sent]
    assert {e.topic for e in sent} == {sent[0].topic}


async def test_a_peer_with_a_store_refuses_the_unstored_paths(tmp_path: Path) -> None:
    """Before, ``publish`` after a restart returned seq 1 again: it sealed from a
    chain of its own that the store never saw."""
    me, them = Identity.generate(), Identity.generate()
    async with running(me, _options(tmp_path, "a", channels=("lobby",))) as a:
        await a.send_message("lobby", Content(body="1"))
        a.directory.see(them.peer_id, them.public_key, 0)
        with pytest.raises(RuntimeError, match="send_message"):
            a.publish("lobby", Content(body="2"))
        with pytest.raises(RuntimeError, match="send_direct"):
            a.send_dm(them.peer_id, Content(body="2"))
        assert (await a.send_message("lobby", Content(body="3"))).seq == 2


async def test_without_a_store_sync_and_async_paths_share_one_chain() -> None:
    me, them = Identity.generate(), Identity.generate()
    async with running(me, PeerOptions(dht=False, channels=("lobby",))) as a:
        a.directory.see(them.peer_id, them.public_key, 0)
        channel = [
            a.publish("lobby", Content(body="1")),
            await a.send_message("lobby", Content(body="2")),
            a.publish("lobby", Content(body="3")),
        ]
        dms = [
            a.send_dm(them.peer_id, Content(body="1")),
            await a.send_direct(them.peer_id, Content(body="2")),
        ]
    assert chained(channel) and chained(dms)


def delivered(peer: Peer, dm: Envelope) -> bool:
    message = peer.inbox.get(dm.id)
    return message is not None and message.status == "delivered"


async def test_receipts_continue_the_chain_after_a_restart(tmp_path: Path) -> None:
    """The receipts a recipient signs share its log topic toward the sender
    with its DMs to that sender, and go on after a restart."""
    ia, ib = Identity.generate(), Identity.generate()
    signed: list[Envelope] = []
    async with running(ia, _options(tmp_path, "a")) as a:
        for round_ in range(2):
            async with running(ib, _options(tmp_path, "b")) as b:
                ta, tb = memory_link_pair()
                a.start_link(ta, initiator=True)
                b.start_link(tb, initiator=False)
                await until(a, lambda: a.router.reachable(inbox_topic(ib.peer_id)))
                dm = await a.send_direct(ib.peer_id, Content(body=f"hi {round_}"))
                await until(a, functools.partial(delivered, a, dm))
                b.directory.see(ia.peer_id, ia.public_key, 0)
                signed.append(await b.send_direct(ia.peer_id, Content(body=f"back {round_}")))
            await until(a, lambda: ib.peer_id not in a.links)
    # b signed: receipt 1, DM 2 (first run), receipt 3, DM 4 (after the restart)
    assert [e.seq for e in signed] == [2, 4], [(e.seq, e.prev) for e in signed]


async def test_a_message_the_store_refused_leaves_no_hole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    me = Identity.generate()
    async with running(me, _options(tmp_path, "a", channels=("lobby",))) as a:
        first = await a.send_message("lobby", Content(body="1"))
        assert a.storage is not None

        async def refuse(*args: object) -> None:
            raise StoreError("disk full")

        with monkeypatch.context() as patch:
            patch.setattr(a.storage, "store_own", refuse)
            with pytest.raises(StoreError):
                await a.send_message("lobby", Content(body="lost"))
        after = await a.send_message("lobby", Content(body="2"))
    assert (after.seq, after.prev) == (2, first.id)
