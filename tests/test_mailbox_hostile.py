"""Hostile deposits in process: a mailbox peer on a memory link refuses, answers and
counts what it must not take (a flooding sender, an oversize envelope, a
recipient it is not close to, someone else's envelope), keeps what it may, and
goes on running: the same link still carries a DM to it afterwards.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from dht import Contact, distance
from peer import Identity, Peer, PeerOptions, memory_link_pair
from peer.protocols._mailbox import MailboxQuota
from peer.wire._envelope import Content, Envelope, seal_dm
from peer.wire._frametypes import Deposit


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
            with trio.move_on_after(0.1):
                await peer.wait_changed()


def mailbox(peer: Peer) -> dict[str, Any]:
    assert peer.storage is not None
    return peer.storage.delivery.mailbox.statistics()


def answered(peer: Peer) -> int:
    stats = mailbox(peer)
    refused: dict[str, int] = stats["refused"]
    return int(stats["taken"]) + sum(refused.values())


async def test_hostile_deposits_are_refused_counted_and_the_peer_goes_on(tmp_path: Path) -> None:
    holder_id, sender_id, near_id = (Identity.generate() for _ in range(3))
    def nearer(r: Identity) -> bool:  # does the holder know a peer closer to r than itself?
        return distance(near_id.peer_id, r.peer_id) < distance(holder_id.peer_id, r.peer_id)

    pool = [Identity.generate() for _ in range(64)]
    far = next(r for r in pool if nearer(r))  # a recipient it is not close to
    recipient = next(r for r in pool if not nearer(r))
    quota = MailboxQuota(sender_entries=3, max_entry_bytes=4096, close_k=1)
    holder_opts = PeerOptions(
        store_path=str(tmp_path / "holder"),
        listen_urls=("ws://127.0.0.1:9/",),  # serves the DHT: mailbox duty is on
        mailbox_quota=quota,
    )
    sender_opts = PeerOptions(store_path=str(tmp_path / "sender"), dht=False)
    async with running(holder_id, holder_opts) as holder, running(
        sender_id, sender_opts
    ) as sender:
        assert "mailbox" in holder.caps and "mailbox" not in sender.caps
        ta, tb = memory_link_pair()
        sender.start_link(ta, initiator=True)
        holder.start_link(tb, initiator=False)
        await until(sender, lambda: holder.peer_id in sender.links)
        assert holder.dht is not None
        holder.dht.node.add_contact(
            Contact.of_key(near_id.public_key, ("ws://127.0.0.1:9/",), ("dht",)), 0.0
        )
        link = sender.links[holder.peer_id]
        assert holder.storage is not None and sender.storage is not None
        box = holder.storage.delivery.mailbox
        await until(holder, lambda: box.ready)  # its ledger read: before, deposits get "busy"
        r = 0

        async def deposit(env: Envelope | bytes) -> None:
            nonlocal r
            r += 1
            before = answered(holder)
            wire = env if isinstance(env, bytes) else env.wire
            assert link.enqueue(Deposit(r, wire).encode())
            await until(holder, lambda: answered(holder) > before)

        def dm(to: Identity, seq: int, body: str = "hi", by: Identity = sender_id) -> Envelope:
            return seal_dm(by, recipient_key=to.public_key, content=Content(body), seq=seq,
                           ts=holder.wall_ms())

        for seq in range(1, 7):  # a flood: 3 taken, 3 over the sender's quota
            await deposit(dm(recipient, seq))
        await deposit(dm(recipient, 7, body="x" * 5000))  # oversize
        await deposit(dm(far, 1))  # a peer we know is closer to it
        await deposit(dm(recipient, 1, by=near_id))  # not the link's own envelope

        stats = mailbox(holder)
        assert stats["taken"] == stats["held"] == 3
        assert stats["refused"] == {
            "quota-sender": 3, "too-large": 1, "not-close": 1, "not-author": 1,
        }, stats
        # every deposit was answered; the sender matched none (it sent them by hand)
        mine = sender.storage.delivery.mailbox
        await until(sender, lambda: mine.unmatched == r)
        # the peer goes on: the same link still carries a DM to the holder
        holder.directory.see(sender_id.peer_id, sender_id.public_key, holder.wall_ms())
        sender.directory.see(holder_id.peer_id, holder_id.public_key, sender.wall_ms())
        sent = await sender.send_direct(holder.peer_id, Content("still here?"))
        await until(holder, lambda: holder.inbox.get(sent.id) is not None)
        assert holder.peer_id in sender.links


async def test_held_entries_survive_a_restart_and_expire_from_the_log(tmp_path: Path) -> None:
    holder_id, sender_id = Identity.generate(), Identity.generate()
    recipient = Identity.generate()
    topic = "inbox/" + recipient.peer_id.hex()
    holder_opts = PeerOptions(
        store_path=str(tmp_path / "holder"),
        listen_urls=("ws://127.0.0.1:9/",),
        mailbox_quota=MailboxQuota(ttl_ms=6_000),
    )
    sender_opts = PeerOptions(store_path=str(tmp_path / "sender"), dht=False)
    async with running(holder_id, holder_opts) as holder, running(
        sender_id, sender_opts
    ) as sender:
        ta, tb = memory_link_pair()
        sender.start_link(ta, initiator=True)
        holder.start_link(tb, initiator=False)
        await until(sender, lambda: holder.peer_id in sender.links)
        assert holder.storage is not None
        box = holder.storage.delivery.mailbox
        await until(holder, lambda: box.ready)
        link = sender.links[holder.peer_id]
        for seq in (1, 2):
            env = seal_dm(sender_id, recipient_key=recipient.public_key, content=Content("x"),
                          seq=seq, ts=holder.wall_ms())
            assert link.enqueue(Deposit(seq, env.wire).encode())
        await until(holder, lambda: mailbox(holder)["taken"] == 2)
        head = await holder.storage.service.head(topic)
        assert head.count == 2
    # the ledger is read again at start; the entries then expire, log records included
    async with running(holder_id, holder_opts) as holder:
        assert holder.storage is not None
        service = holder.storage.service
        box = holder.storage.delivery.mailbox
        await until(holder, lambda: box.ready)
        assert mailbox(holder)["held"] == 2
        await until(holder, lambda: mailbox(holder)["held"] == 0)
        with trio.fail_after(10):
            while (await service.head(topic)).count:  # trimmed just after the ledger
                with trio.move_on_after(0.05):
                    await holder.wait_changed()
        assert await service.read(lambda s: s.state_items("mbox/")) == {}
