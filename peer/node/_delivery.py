"""DM delivery in the peer's Trio shell: it performs what ``Delivery`` decides.

``DeliveryService`` is owned by ``peer.node._storage.Storage``
(``storage.delivery``). The decisions (what is pushed when, retries,
deadlines, receipts owed and settled, which pushes we take) are the sans-IO
behaviour ``peer.protocols._delivery.Delivery``; this module feeds it events
and performs its commands with the ``store.StoreService`` and the peer.
Rules kept here:

* One task, ``run``, owns the timer: it sleeps until the behaviour's
  ``next_deadline()`` (wall-clock ms) or until an event wakes it, then calls
  ``handle_timer``. Store writes (reschedules, dead letters) are batched
  into one write per step.
* Commands that need no ``await`` (pushes, taking or refusing a push,
  queueing a reach) are performed at once, from the event that caused them.
* Reaching a recipient (dialling it, or asking the DHT) is queued (bounded,
  once per recipient at a time) to a task of this service, which runs at
  most ``REACH_PARALLEL`` of them, each bounded by ``REACH_TIMEOUT``.
* The link state the behaviour knows is checked against the peer's links
  before each timer step, so a link that went down is reached, not pushed to.
* Mailboxes (``self.mailbox``, ``peer.node._mailboxhost``): every DM of ours
  is tracked there until its receipt or deadline, and every receipt we send
  while its DM sender is not linked, so they can be deposited with the
  recipient's mailbox peers; the same service holds what others deposit.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, NamedTuple, Protocol

import trio

from dht import Contact
from peer.protocols._breaker import CircuitBreakers
from peer.protocols._delivery import (
    Command,
    Delivery,
    Expire,
    Pending,
    PushDm,
    Reach,
    Refuse,
    Reschedule,
    SealReceipt,
    Settle,
    Take,
)
from peer.wire._envelope import Envelope, inbox_topic, open_envelope, seal_receipt
from peer.wire._errors import ErrorCode, ProtocolError
from peer.wire._frametypes import Push
from store import Backoff, DeadLetter, MessageStore, OutboxEntry, StoreError, StoreService

from ._host import StorageCounters, StoragePeer
from ._inbox import InboxMessage
from ._link import Link
from ._mailboxhost import MailboxService

REACH_QUEUE = 256
REACH_PARALLEL = 8
REACH_TIMEOUT = 10.0
RETRY_CAP_MS = 300_000

StoreOwn = Callable[[Envelope, InboxMessage | None, bytes | None], Awaitable[None]]


class Retried(NamedTuple):
    """What ``retry_dead`` did: the ids back in the outbox, and those left dead
    because their ``ttl`` has passed."""

    revived: list[bytes]
    expired: list[bytes]


class ReceiptObserver(Protocol):
    """The coordination layer (``peer.node._coordhost``), as delivery sees it."""

    def deadline_for(self, msg_id: bytes) -> int | None: ...
    def on_stored_receipt(self, sender: bytes, ids: Sequence[bytes], wire: bytes) -> None: ...


class Accept(Protocol):
    """``Storage.accept``: queue a verified envelope for the log."""

    def __call__(self, env: Envelope, *, member: bool = True, pushed: bool = False) -> None: ...


def _seq_of(wire: bytes) -> int:
    try:
        return open_envelope(wire, verify=False).seq
    except ProtocolError:
        return 0


class DeliveryService:
    """Feeds the ``Delivery`` behaviour and performs its commands."""

    def __init__(
        self,
        peer: StoragePeer,
        service: StoreService,
        counters: StorageCounters,
        log: Any,
        *,
        store_own: StoreOwn,
        accept: Accept,
    ) -> None:
        self.peer = peer
        self.service = service
        self.counters = counters
        self.log = log
        self._store_own = store_own
        self._accept = accept
        options = peer.options
        first = int(options.outbox_retry_initial * 1000)
        self.core = Delivery(
            peer.peer_id,
            Backoff(base_ms=first, cap_ms=max(first, RETRY_CAP_MS)),
            random.Random(peer.rng.random()),
            deadline_ms=int(options.dm_deadline * 1000),
            verify=peer.verify,
        )
        self._wake = trio.Event()
        self._reach_send, self._reach_recv = trio.open_memory_channel[bytes](REACH_QUEUE)
        self._reaching: set[bytes] = set()
        self._replay_send, self._replay_recv = trio.open_memory_channel[bytes](REACH_QUEUE)
        self._replaying: set[bytes] = set()
        # mailboxes (catchup.md 9.6): ours for others, and others' for what we send
        self.mailbox = MailboxService(peer, service, log)
        self.observer: ReceiptObserver | None = None
        self.breakers = CircuitBreakers()  # per peer: stop dialling a peer that keeps failing
        self.replayed = 0

    def observe(self, observer: ReceiptObserver) -> None:
        """``observer`` hears of every stored receipt and gives expiring DMs their deadline."""
        self.observer = observer

    # -- events ------------------------------------------------------------------------

    def load(self, outbox: Sequence[OutboxEntry], dead: Sequence[DeadLetter]) -> None:
        """What the store's outbox and dead letters hold at start."""
        self.core.load(
            (
                Pending(
                    e.msg_id,
                    e.recipient,
                    _seq_of(e.wire),
                    e.wire,
                    e.attempts,
                    e.next_try_ms,
                    e.deadline_ms,
                )
                for e in outbox
            ),
            ((d.msg_id, d.recipient) for d in dead),
        )
        for e in outbox:  # still undelivered: mailboxes may take them while we are on
            self.mailbox.track(e.msg_id, e.recipient, e.wire, "dm", until_ms=e.deadline_ms)

    def wake(self, peer_id: bytes) -> None:
        """``peer_id`` is back (a link came up, or its presence): push what waits for it,
        and replay its dead letters."""
        if peer_id not in self.peer.links:
            self.core.on_link_down(peer_id)
            return
        self.breakers.on_success(peer_id)
        if peer_id not in self._replaying and self.core.has_dead(peer_id):
            try:
                self._replay_send.send_nowait(peer_id)
            except trio.WouldBlock:
                return  # its next presence asks again
            self._replaying.add(peer_id)
        if peer_id in self.core.linked:
            pushes = self.core.on_seen(peer_id)
        else:
            pushes = self.core.on_link_up(peer_id)
        self._perform_now(pushes)

    def on_link_down(self, peer_id: bytes) -> None:
        self.core.on_link_down(peer_id)

    def on_push(self, link_peer: bytes, wire: bytes) -> None:
        """A DM or receipt handed to us directly by its sender."""
        self._perform_now(self.core.on_push(link_peer, wire))

    def plan_dm(self, env: Envelope, now_ms: int, planned: int = 0) -> Pending | None:
        """The outbox entry of a DM of ours about to be stored (``planned`` more are in
        the same commit); None if the outbox is full."""
        if env.recipient is None or not self.core.has_room(planned + 1):
            return None
        entry = self.core.plan_dm(env.id, env.recipient, env.seq, env.wire, now_ms)
        expires = None if self.observer is None else self.observer.deadline_for(env.id)
        if expires is not None and expires < entry.deadline_ms:  # never retried past it
            entry = replace(entry, deadline_ms=max(now_ms, expires))
        return entry

    def on_own_dm_stored(self, entry: Pending) -> None:
        self.core.on_own_dm_stored(entry)
        self.mailbox.track(
            entry.msg_id, entry.recipient, entry.wire, "dm", until_ms=entry.deadline_ms
        )
        self._wake.set()

    def on_dm_stored(self, env: Envelope, *, pushed: bool, duplicate: bool) -> None:
        self.core.on_dm_stored(
            env.sender,
            env.recipient,
            env.id,
            pushed=pushed,
            duplicate=duplicate,
            now_ms=self.peer.wall_ms(),
        )
        self._wake.set()

    async def on_receipt(self, sender: bytes, ids: Sequence[bytes], wire: bytes = b"") -> None:
        """A receipt addressed to us was stored: settle what it names."""
        if self.observer is not None and wire:
            self.observer.on_stored_receipt(sender, ids, wire)
        await self._perform(self.core.on_receipt(sender, ids))

    def waiting(self) -> int:
        """DMs waiting for a receipt."""
        return len(self.core)

    # -- the timer task ----------------------------------------------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reach_loop, nursery)
            nursery.start_soon(self._replay_loop)
            nursery.start_soon(self.mailbox.run)
            while True:
                await self._sleep_until(self.core.next_deadline())
                for gone in [p for p in self.core.linked if p not in self.peer.links]:
                    self.core.on_link_down(gone)
                try:
                    await self._perform(self.core.handle_timer(self.peer.wall_ms()))
                except StoreError as exc:
                    self.log.error("outbox step failed", error=str(exc))
                except Exception as exc:  # a bug: log and count it, keep delivering
                    self.peer.counters.task_errors += 1
                    self.log.error("outbox step crashed", error=repr(exc), exc_info=exc)
                    await trio.sleep(1)  # not a hot loop if it keeps failing

    async def _sleep_until(self, deadline_ms: int | None) -> None:
        if deadline_ms is None:
            await self._wake.wait()
        else:
            with trio.move_on_after(max(0.0, (deadline_ms - self.peer.wall_ms()) / 1000)):
                await self._wake.wait()
        self._wake = trio.Event()

    # -- performing commands -----------------------------------------------------------

    def _perform_now(self, commands: Sequence[Command]) -> list[Command]:
        """Perform what needs no ``await``; return the rest."""
        rest: list[Command] = []
        for command in commands:
            if isinstance(command, PushDm):
                self._push(command)
            elif isinstance(command, Reach):
                self._queue_reach(command.recipient)
            elif isinstance(command, Take):
                self._take(command.envelope)
            elif isinstance(command, Refuse):
                self._refuse(command)
            else:
                rest.append(command)
        return rest

    async def _perform(self, commands: Sequence[Command]) -> None:
        rest = self._perform_now(commands)
        expired = [c for c in rest if isinstance(c, Expire)]
        retries = [c for c in rest if isinstance(c, Reschedule)]
        if expired:
            await self._expire(expired)
        if retries:
            await self._reschedule(retries)
        for command in rest:
            if isinstance(command, Settle):
                await self._settle(command)
            elif isinstance(command, SealReceipt):
                await self._send_receipt(command.sender, list(command.ids))

    def _push(self, command: PushDm) -> None:
        link = self.peer.links.get(command.recipient)
        if link is None:
            self.core.on_link_down(command.recipient)
        elif self._enqueue(link, Push(command.wire).encode()):
            self.counters.pushes_sent += 1

    def _enqueue(self, link: Link, frame: bytes) -> bool:
        """Queue ``frame``; a link too far behind is closed as SLOW (its DMs wait)."""
        if link.enqueue(frame):
            return True
        self.peer.counters.refuse(ErrorCode.SLOW)
        self.log.warning("link too slow for pushes", link=link.peer_id.hex()[:16])
        link.close(ErrorCode.SLOW, "not reading fast enough")
        return False

    def _take(self, env: Envelope) -> None:
        peer = self.peer
        peer.router.note_seen(env.id, peer.now())
        peer.directory.see(env.sender, env.sender_key, peer.wall_ms())
        self._accept(env, pushed=True)

    def _refuse(self, command: Refuse) -> None:
        self.peer.counters.refuse(command.code)
        link = self.peer.links.get(command.link_peer)
        if command.close and link is not None:
            link.close(command.code, command.reason)

    async def _expire(self, letters: list[Expire]) -> None:
        now_ms = self.peer.wall_ms()

        def bury(s: MessageStore) -> None:
            for letter in letters:
                s.outbox_fail(letter.msg_id, "expired", now_ms)

        await self.service.write(lambda s: s.atomically(bury))
        self.mailbox.settle([letter.msg_id for letter in letters])
        for letter in letters:
            self.counters.dead_letters += 1
            self.peer.inbox.set_status(letter.msg_id, "undeliverable")
            self.log.warning(
                "DM undeliverable",
                id=letter.msg_id.hex()[:16],
                peer=letter.recipient.hex()[:16],
                attempts=letter.attempts,
            )
        self.peer.notify_inbox()

    async def _reschedule(self, retries: list[Reschedule]) -> None:
        def retry(s: MessageStore) -> None:
            for r in retries:
                s.outbox_retry(r.msg_id, r.next_try_ms)

        await self.service.write(lambda s: s.atomically(retry))

    async def _settle(self, settle: Settle) -> None:
        def done(s: MessageStore) -> None:
            for msg_id in settle.ids:
                s.outbox_done(msg_id)  # the outbox entry, or the dead letter

        try:
            await self.service.write(lambda s: s.atomically(done))
        except StoreError as exc:
            self.log.error("receipt not recorded", error=str(exc))
            return
        self.mailbox.settle(settle.ids)
        for msg_id in settle.ids:
            self.counters.receipts_received += 1
            self.peer.inbox.set_status(msg_id, "delivered")
        self.log.info("DMs receipted", peer=settle.sender.hex()[:16], count=len(settle.ids))
        self.peer.notify_inbox()

    async def _send_receipt(self, sender: bytes, ids: list[bytes]) -> None:
        peer = self.peer
        env = peer.seal(
            inbox_topic(sender),
            lambda seq, prev: seal_receipt(
                peer.identity, recipient=sender, ids=ids, seq=seq, ts=peer.wall_ms(), prev=prev
            ),
        )
        try:
            await self._store_own(env, None, None)
        except StoreError as exc:
            # not stored, not sent: its sequence is free again, and the sender's
            # retry of its DMs asks for a receipt once more
            peer.unseal(env)
            self.log.error("receipt not stored", error=str(exc))
            return
        link = peer.links.get(sender)
        if link is not None:
            self._enqueue(link, Push(env.wire).encode())
        else:
            self.mailbox.track_receipt(env)  # the DM sender is away: its mailboxes may take it
        self.counters.receipts_sent += 1

    # -- reaching recipients -----------------------------------------------------------

    def _queue_reach(self, recipient: bytes) -> None:
        if recipient in self._reaching:
            return
        if not self.breakers.allow(recipient, self.peer.wall_ms()):
            return  # open: the DMs wait in the outbox; a link or a presence wakes them
        try:
            self._reach_send.send_nowait(recipient)
        except trio.WouldBlock:
            return  # its next try asks again
        self._reaching.add(recipient)

    async def _reach_loop(self, nursery: trio.Nursery) -> None:
        running = trio.Semaphore(REACH_PARALLEL)
        async for recipient in self._reach_recv:
            await running.acquire()
            nursery.start_soon(self._reach, recipient, running)

    async def _reach(self, recipient: bytes, running: trio.Semaphore) -> None:
        """Try to link to a recipient we hold DMs for (its address, or the DHT)."""
        peer = self.peer
        try:
            with trio.move_on_after(REACH_TIMEOUT):
                info = peer.directory.get(recipient)
                if info is not None and info.listen and peer.is_online(info):
                    await peer.connect(Contact(recipient, info.public_key, info.listen[:4]))
                elif peer.dht is not None:
                    await peer.resolve_peer(recipient)
        finally:
            self._reaching.discard(recipient)
            running.release()
        if recipient in peer.links:
            self.wake(recipient)
        elif self.breakers.on_failure(recipient, peer.wall_ms()):
            self.log.warning("circuit open", peer=recipient.hex()[:16],
                             cooldown_s=self.breakers.cooldown_ms / 1000)

    # -- dead letters --------------------------------------------------------------------

    def _expiries(self, ids: Iterable[bytes]) -> dict[bytes, int]:
        """When those of our DMs ``ids`` that carry a ``ttl`` expire (wall ms)."""
        out = {}
        for msg_id in ids:
            message = self.peer.inbox.get(msg_id)
            meta = None if message is None else message.meta
            if meta is not None and meta.expires_ms is not None:
                out[msg_id] = meta.expires_ms
        return out

    async def retry_dead(self, ids: Sequence[bytes] | None = None) -> Retried:
        """Put dead letters (``ids``, or all of them) back into the outbox with a fresh
        deadline (never past their expiry); those whose ``ttl`` passed stay dead."""
        now_ms = self.peer.wall_ms()
        wanted = None if ids is None else set(ids)
        expiries = self._expiries(self.core.dead_ids() if ids is None else ids)
        expired = {i for i, at in expiries.items() if at <= now_ms}

        def deadline(msg_id: bytes) -> int:
            return min(now_ms + self.core.deadline_ms, expiries.get(msg_id, 2**63))

        def revive(s: MessageStore) -> list[DeadLetter]:
            out = []
            for letter in s.dead_letters(limit=10_000):
                if wanted is not None and letter.msg_id not in wanted:
                    continue
                if letter.msg_id in expired:
                    continue
                s.dead_letter_remove(letter.msg_id)
                if s.outbox_add(letter.msg_id, letter.recipient, letter.wire, now_ms,
                                deadline(letter.msg_id)):
                    out.append(letter)
            return out

        letters = await self.service.write(lambda s: s.atomically(revive))
        for letter in letters:
            entry = Pending(letter.msg_id, letter.recipient, _seq_of(letter.wire), letter.wire,
                            0, now_ms, deadline(letter.msg_id))
            self.core.revive(entry)
            self.mailbox.track(entry.msg_id, entry.recipient, entry.wire, "dm",
                               until_ms=entry.deadline_ms)
            self.peer.inbox.set_status(letter.msg_id, "pending")
        if letters:
            self.peer.notify_inbox()
            self._wake.set()
        return Retried([letter.msg_id for letter in letters], sorted(expired))

    async def _replay_loop(self) -> None:
        """A peer with dead letters is back: they go into the outbox again."""
        async for peer_id in self._replay_recv:
            try:
                revived = (await self.retry_dead(self.core.dead_to(peer_id))).revived
                self.replayed += len(revived)
                if revived:
                    self.log.info("dead letters replayed", peer=peer_id.hex()[:16],
                                  count=len(revived))
                    self.wake(peer_id)
            except StoreError as exc:
                self.log.error("dead letters not replayed", error=str(exc))
            finally:
                self._replaying.discard(peer_id)
