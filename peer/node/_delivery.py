"""DM delivery in the peer's Trio shell: receipts, the outbox and pushes.

``DeliveryHost`` is a part of ``peer.node._storage.Storage``. Rules kept here:

* A DM we send waits in the outbox until the recipient's signed receipt
  arrives. Whenever the recipient is linked (or comes back: a link, a
  presence) everything waiting for it is pushed, in its sequence order;
  otherwise it is retried with backoff, and after its deadline it is a dead
  letter.
* A DM to us is receipted only after it is stored, and receipted again when
  its sender pushes it again (our receipt was lost).
* A push is taken only if it is a DM or receipt addressed to us.
"""

from __future__ import annotations

import functools
import random
from typing import TYPE_CHECKING, Any

import trio

from peer.wire._envelope import MAX_RECEIPT_IDS, Envelope, inbox_topic, open_envelope, seal_receipt
from peer.wire._errors import ErrorCode, ProtocolError
from peer.wire._frametypes import Push
from store import MAX_PAGE, Backoff, MessageStore, StoreError

if TYPE_CHECKING:
    from store import StoreService

    from ._inbox import InboxMessage
    from ._node import Peer
    from ._options import PeerOptions
    from ._storage import StorageCounters

RECEIPT_DELAY = 0.05
OUTBOX_TICK = 1.0


class DeliveryHost:
    """The DM-delivery half of ``Storage``."""

    if TYPE_CHECKING:
        peer: Peer
        service: StoreService
        options: PeerOptions
        log: Any
        counters: StorageCounters

        async def store_own(
            self, env: Envelope, message: InboxMessage | None, payload: bytes | None
        ) -> None: ...
        def accept(self, env: Envelope, *, member: bool = True, pushed: bool = False) -> None: ...

    def _init_delivery(self) -> None:
        self._rng = random.Random(self.peer.rng.random())
        self._receipts: dict[bytes, list[bytes]] = {}
        self._receipts_wanted = trio.Event()
        self._pending_to: dict[bytes, int] = {}  # recipient -> DMs in the outbox
        self._outbox_wake = trio.Event()
        first = int(self.options.outbox_retry_initial * 1000)
        self.backoff = Backoff(base_ms=first, cap_ms=max(first, 300_000))

    # -- receipts ------------------------------------------------------------------------

    def _want_receipt(self, env: Envelope) -> None:
        self._receipts.setdefault(env.sender, []).append(env.id)
        self._receipts_wanted.set()

    async def _receipt_loop(self) -> None:
        while True:
            await self._receipts_wanted.wait()
            await trio.sleep(RECEIPT_DELAY)  # gather the DMs of one burst into few receipts
            self._receipts_wanted = trio.Event()
            wanted, self._receipts = self._receipts, {}
            for sender, ids in wanted.items():
                for i in range(0, len(ids), MAX_RECEIPT_IDS):
                    await self._send_receipt(sender, ids[i : i + MAX_RECEIPT_IDS])

    async def _send_receipt(self, sender: bytes, ids: list[bytes]) -> None:
        peer = self.peer
        topic = inbox_topic(sender)
        env = await peer.seal_own(
            topic,
            lambda seq, prev: seal_receipt(
                peer.identity, recipient=sender, ids=ids, seq=seq, ts=peer.wall_ms(), prev=prev
            ),
        )
        try:
            await self.store_own(env, None, None)
        except StoreError as exc:
            self.log.error("receipt not stored", error=str(exc))
        link = peer.links.get(sender)
        if link is not None:
            link.enqueue(Push(env.wire).encode())
        self.counters.receipts_sent += 1

    async def _on_receipt(self, env: Envelope) -> None:
        sender = env.sender
        ids: list[bytes] = list(env.fields["ids"])

        def settle(s: MessageStore) -> tuple[list[bytes], list[bytes]]:
            done, late = [], []
            dead: dict[bytes, bytes] | None = None
            for msg_id in ids:
                entry = s.outbox_get(msg_id)
                if entry is not None:
                    if entry.recipient == sender and s.outbox_done(msg_id):
                        done.append(msg_id)
                    continue
                if dead is None:
                    dead = {d.msg_id: d.recipient for d in s.dead_letters(limit=MAX_PAGE)}
                if dead.get(msg_id) == sender:
                    s.dead_letter_remove(msg_id)  # it made it after all
                    late.append(msg_id)
            return done, late

        try:
            done, late = await self.service.write(settle)
        except StoreError as exc:
            self.log.error("receipt not recorded", error=str(exc))
            return
        self._pending_to[sender] = max(0, self._pending_to.get(sender, 0) - len(done))
        done += late
        for msg_id in done:
            self.counters.receipts_received += 1
            message = self.peer.inbox.get(msg_id)
            if message is not None:
                message.status = "delivered"
        if done:
            self.log.info("DMs receipted", peer=sender.hex()[:16], count=len(done))
            self.peer.notify_inbox()

    # -- outbox --------------------------------------------------------------------------

    def wake_outbox(self, peer_id: bytes) -> None:
        """``peer_id`` is back (a link, a presence): push what waits for it now."""
        if self._pending_to.get(peer_id):
            self._outbox_wake.set()

    async def _outbox_loop(self) -> None:
        while True:
            with trio.move_on_after(OUTBOX_TICK):
                await self._outbox_wake.wait()
            woken = self._outbox_wake.is_set()
            self._outbox_wake = trio.Event()
            try:
                await self._outbox_step(woken)
            except StoreError as exc:
                self.log.error("outbox step failed", error=str(exc))

    async def _outbox_step(self, woken: bool) -> None:
        peer = self.peer
        now_ms = peer.wall_ms()
        for letter in await self.service.write(lambda s: s.outbox_expire(now_ms)):
            self.counters.dead_letters += 1
            self._pending_to[letter.recipient] = max(
                0, self._pending_to.get(letter.recipient, 0) - 1
            )
            message = peer.inbox.get(letter.msg_id)
            if message is not None:
                message.status = "undeliverable"
            self.log.warning(
                "DM undeliverable",
                id=letter.msg_id.hex()[:16],
                peer=letter.recipient.hex()[:16],
                attempts=letter.attempts,
            )
            peer.notify_inbox()
        due = await self.service.read(lambda s: s.outbox_due(now_ms, 256))
        push_to = {e.recipient for e in due if e.recipient in peer.links}
        if woken:
            push_to |= {p for p, n in self._pending_to.items() if n and p in peer.links}
        if push_to:  # everything waiting for them, in their sequence order
            entries = await self.service.read(lambda s: s.outbox(limit=MAX_PAGE))
            waiting = [e for e in entries if e.recipient in push_to]
            waiting.sort(key=lambda e: (e.recipient, open_envelope(e.wire, verify=False).seq))
            for entry in waiting:
                self._push(entry.recipient, entry.wire)
        reach = {e.recipient for e in due} - push_to
        for recipient in reach:
            peer.nursery.start_soon(self._reach, recipient)
        for entry in due:
            next_try = self.backoff.next_try_ms(now_ms, entry.attempts, self._rng)
            await self.service.write(
                functools.partial(
                    MessageStore.outbox_retry, msg_id=entry.msg_id, next_try_ms=next_try
                )
            )

    def _push(self, recipient: bytes, wire: bytes) -> None:
        link = self.peer.links.get(recipient)
        if link is not None and link.enqueue(Push(wire).encode()):
            self.counters.pushes_sent += 1

    async def _reach(self, recipient: bytes) -> None:
        """Try to link to a recipient we hold DMs for (its address, or the DHT)."""
        peer = self.peer
        with trio.move_on_after(10):
            info = peer.directory.get(recipient)
            if info is not None and info.listen and peer.is_online(info):
                from dht import Contact

                await peer.connect(Contact(recipient, info.public_key, info.listen[:4]))
            elif peer.dht is not None:
                await peer.resolve_peer(recipient)
        if recipient in peer.links:
            self.wake_outbox(recipient)

    # -- pushes ------------------------------------------------------------------------

    def on_push(self, link_peer: bytes, wire: bytes) -> None:
        """A DM or receipt handed to us directly by its sender."""
        try:
            env = open_envelope(wire, verify=not self.options.bench_no_verify)
        except ProtocolError as exc:
            link = self.peer.links.get(link_peer)
            self.peer.counters.refuse(exc.code)
            if link is not None:
                link.close(exc.code, exc.message)
            return
        if env.kind not in ("dm", "receipt") or env.recipient != self.peer.peer_id:
            self.peer.counters.refuse(ErrorCode.UNEXPECTED)
            return  # not ours to take
        self.peer.router.note_seen(env.id, self.peer.now())
        self.peer.directory.see(env.sender, env.sender_key, self.peer.wall_ms())
        self.accept(env, pushed=True)
