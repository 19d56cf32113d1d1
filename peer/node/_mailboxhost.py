"""Mailboxes in the peer's Trio shell: performing what ``Mailbox`` and ``Depositor`` decide.

``MailboxService`` is owned by the ``DeliveryService`` (``delivery.mailbox``).
The decisions (which deposits we take, quotas, expiry; when our undelivered
DMs and receipts go to which mailboxes; when we look for our own) are the
sans-IO behaviours ``peer.protocols._mailbox.Mailbox`` and
``peer.protocols._deposits.Depositor``; this module feeds them events and
performs their commands. Rules kept here:

* One task, ``run``, owns both timers: it sleeps until the earlier of their
  ``next_deadline()`` (wall-clock ms) or until an event wakes it. Before it
  has read the ledger from the store, deposits are answered ``busy``.
* Work that waits (store writes, DHT lookups, dialling, waiting for an
  answer) goes through one bounded channel to tasks of this service, at
  most ``PARALLEL`` at a time; a full channel refuses (a deposit: ``busy``;
  our own work: its next check retries).
* A kept deposit is appended to ``inbox/<recipient>`` and its ledger entry
  (state key ``mbox/<id hex>``) written in one commit; only then is it
  answered as taken. Expired entries leave the ledger, and the log of
  ``inbox/<recipient>`` is trimmed by age in the same step.
* Our deposits are answered or given up after ``DEPOSIT_TIMEOUT``; an answer
  that matches no deposit of ours on that link is counted and ignored.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

import trio

from dht import Contact, distance
from peer.protocols._deposits import MAILBOX_CAP, DepositAt, Depositor, FindMailboxes, LinkTo
from peer.protocols._mailbox import BUSY, Answer, CloseLink, Forget, Held, Keep, Mailbox
from peer.wire import _cbor
from peer.wire._envelope import Envelope, inbox_topic
from peer.wire._errors import ErrorCode
from peer.wire._frametypes import Deposit, Deposited
from store import AppendItem, MessageStore, StoreError, StoreService

from ._host import StoragePeer

LEDGER_PREFIX = "mbox/"
WORK_QUEUE = 1024
PARALLEL = 16
LOOKUP_TIMEOUT = 30.0
DEPOSIT_TIMEOUT = 20.0
MAX_CONTACTS = 4096
MAX_REQUEST_ID = 2**32 - 1

Work = Keep | Forget | FindMailboxes | DepositAt | LinkTo


def _ledger_value(held: Held) -> bytes:
    return _cbor.encode([held.recipient, held.sender, held.size, held.received_ms])


def _ledger_entries(items: dict[str, bytes]) -> list[Held]:
    """The ledger from the store's state (entries that do not parse are skipped)."""
    out: list[Held] = []
    for key, raw in items.items():
        try:
            msg_id = bytes.fromhex(key[len(LEDGER_PREFIX) :])
            recipient, sender, size, received_ms = _cbor.decode(raw)
            out.append(Held(msg_id, recipient, sender, size, received_ms))
        except (ValueError, TypeError):
            continue
    out.sort(key=lambda h: h.received_ms)
    return out


class _Waiter:
    __slots__ = ("done", "err")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.err: str | None = "no-answer"


class MailboxService:
    """Feeds the mailbox behaviours and performs their commands."""

    def __init__(self, peer: StoragePeer, service: StoreService, log: Any) -> None:
        self.peer = peer
        self.service = service
        self.log = log
        options = peer.options
        self.holder = Mailbox(
            peer.peer_id, options.mailbox_quota, enabled=False, verify=peer.verify
        )
        self.depositor = Depositor(
            peer.peer_id,
            random.Random(peer.rng.random()),
            delay_ms=int(options.mailbox_delay * 1000),
        )
        self._wake = trio.Event()
        self._send, self._recv = trio.open_memory_channel[Work](WORK_QUEUE)
        self._pending: dict[tuple[bytes, int], _Waiter] = {}
        self._next_r = 0
        self._contacts: dict[bytes, Contact] = {}
        self._loaded = False
        self.unmatched = 0
        self.work_dropped = 0

    @property
    def ready(self) -> bool:
        """The ledger is read: deposits are decided (before, they are answered ``busy``)."""
        return self._loaded

    # -- events from delivery and the swarm ------------------------------------------------

    def track(
        self, env_id: bytes, recipient: bytes, wire: bytes, kind: str, until_ms: int | None = None
    ) -> None:
        """Our DM (until its deadline) or receipt was stored: mailboxes may need it."""
        self.depositor.track(env_id, recipient, wire, kind, self.peer.wall_ms(), until_ms=until_ms)
        self._wake.set()

    def track_receipt(self, env: Envelope) -> None:
        if env.recipient is not None and env.recipient not in self.peer.links:
            self.track(env.id, env.recipient, env.wire, "receipt")

    def settle(self, ids: Sequence[bytes]) -> None:
        self.depositor.settle(ids)

    def on_deposit(self, link_peer: bytes, frame: Deposit) -> None:
        self.holder.enabled = MAILBOX_CAP in self.peer.caps  # (known once we listen)
        if not self._loaded:
            self.holder.refused[BUSY] = self.holder.refused.get(BUSY, 0) + 1
            self._answer(Answer(link_peer, frame.r, BUSY))
            return
        self._perform(
            self.holder.on_deposit(
                link_peer, frame.r, frame.envelope, closer=self._closer, now_ms=self.peer.wall_ms()
            )
        )

    def on_deposited(self, link_peer: bytes, frame: Deposited) -> None:
        waiter = self._pending.get((link_peer, frame.r))
        if waiter is None:
            self.unmatched += 1  # late, or never asked: ignored
            return
        waiter.err = frame.err
        waiter.done.set()

    def _closer(self, recipient: bytes) -> int:
        """How many peers our DHT table holds that are closer to ``recipient`` than us."""
        dht = self.peer.dht
        if dht is None:
            return 0
        mine = distance(self.peer.peer_id, recipient)
        closest = dht.node.table.closest(recipient, self.holder.quota.close_k + 1)
        return sum(1 for c in closest if c.id != recipient and distance(c.id, recipient) < mine)

    # -- performing commands -----------------------------------------------------------

    def _perform(self, commands: Iterable[Answer | CloseLink | Work]) -> None:
        for command in commands:
            if isinstance(command, Answer):
                self._answer(command)
            elif isinstance(command, CloseLink):
                self.peer.counters.refuse(command.code)
                link = self.peer.links.get(command.peer)
                if link is not None:
                    link.close(command.code, command.reason)
            else:
                self._queue(command)

    def _queue(self, work: Work) -> None:
        try:
            self._send.send_nowait(work)
        except trio.WouldBlock:
            self.work_dropped += 1
            if isinstance(work, Keep):
                self._perform(self.holder.keep_failed(work))
            elif isinstance(work, FindMailboxes):
                self.depositor.on_mailboxes(work.recipient, [])  # its next check retries

    def _answer(self, answer: Answer) -> None:
        link = self.peer.links.get(answer.peer)
        if link is not None and not link.enqueue(Deposited(answer.r, answer.err).encode()):
            self.peer.counters.refuse(ErrorCode.SLOW)
            link.close(ErrorCode.SLOW, "not reading deposit answers")

    # -- the task ----------------------------------------------------------------------

    async def run(self) -> None:
        await self._load()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._work_loop, nursery)
            while True:
                await self._sleep_until(self._next_deadline())
                try:
                    self._step()
                except Exception as exc:  # a bug: log and count it, keep going
                    self.peer.counters.task_errors += 1
                    self.log.error("mailbox step crashed", error=repr(exc), exc_info=exc)
                    await trio.sleep(1)

    async def _load(self) -> None:
        try:
            items = await self.service.read(lambda s: s.state_items(LEDGER_PREFIX))
        except StoreError as exc:
            self.log.error("mailbox ledger not read", error=str(exc))
            items = {}
        self.holder.load(_ledger_entries(items))
        if self.peer.dht is not None and not self.peer.options.relay_only:
            self.depositor.start(self.peer.wall_ms())
        self._loaded = True

    def _next_deadline(self) -> int | None:
        times = [t for t in (self.holder.next_deadline(), self.depositor.next_deadline()) if t]
        return min(times, default=None)

    async def _sleep_until(self, deadline_ms: int | None) -> None:
        if deadline_ms is None:
            await self._wake.wait()
        else:
            with trio.move_on_after(max(0.0, (deadline_ms - self.peer.wall_ms()) / 1000)):
                await self._wake.wait()
        self._wake = trio.Event()

    def _step(self) -> None:
        now_ms = self.peer.wall_ms()
        self._perform(self.holder.handle_timer(now_ms))
        links = self.peer.links
        seed = any(
            "relay-only" in link.result.caps and "store" in link.result.caps
            for link in links.values()
        )
        self._perform(self.depositor.handle_timer(now_ms, linked=links.keys(), seed_linked=seed))

    async def _work_loop(self, nursery: trio.Nursery) -> None:
        running = trio.Semaphore(PARALLEL)
        async for work in self._recv:
            await running.acquire()
            nursery.start_soon(self._contained, work, running)

    async def _contained(self, work: Work, running: trio.Semaphore) -> None:
        try:
            match work:
                case Keep():
                    await self._keep(work)
                case Forget():
                    await self._forget(work)
                case FindMailboxes():
                    await self._find(work.recipient)
                case DepositAt():
                    await self._deposit(work)
                case LinkTo():
                    await self._link_to(work.peer)
        except Exception as exc:  # a bug: log and count it, the service goes on
            self.peer.counters.task_errors += 1
            self.log.error("mailbox work crashed", work=type(work).__name__, error=repr(exc),
                           exc_info=exc)
        finally:
            running.release()

    # -- holding -----------------------------------------------------------------------

    async def _keep(self, keep: Keep) -> None:
        env, held = keep.envelope, keep.held
        item = AppendItem.from_envelope(env, received_ms=held.received_ms, topic=env.log_topic)
        key, value = LEDGER_PREFIX + held.msg_id.hex(), _ledger_value(held)

        def write(s: MessageStore) -> bool:
            duplicate = s.append_batch([item])[0].duplicate
            if not duplicate:
                s.put_state(key, value)
            return duplicate

        try:
            duplicate = await self.service.write(lambda s: s.atomically(write))
        except (StoreError, ValueError) as exc:
            self.log.warning("deposit not stored", error=str(exc))
            self._perform(self.holder.keep_failed(keep))
            return
        self._perform(self.holder.kept(keep, duplicate=duplicate))
        self._wake.set()  # its expiry may be the next deadline

    async def _forget(self, forget: Forget) -> None:
        topic, now_ms = inbox_topic(forget.recipient), self.peer.wall_ms()
        keys = [LEDGER_PREFIX + msg_id.hex() for msg_id in forget.ids]

        def write(s: MessageStore) -> None:
            for key in keys:
                s.delete_state(key)

        # retention drops records *older* than its age; an entry is due at exactly its
        # age, so the cut is one millisecond younger
        max_age_ms = max(0, forget.max_age_ms - 1)
        try:
            await self.service.write(lambda s: s.atomically(write))
            for _ in range(64):  # bounded steps of at most 256 records each
                result = await self.service.write(
                    lambda s: s.apply_retention(topic, now_ms=now_ms, max_age_ms=max_age_ms)
                )
                if result.done:
                    break
        except (StoreError, ValueError) as exc:
            self.log.warning("expired mailbox entries not dropped", error=str(exc))

    # -- depositing --------------------------------------------------------------------

    async def _find(self, recipient: bytes) -> None:
        """The peers closest to ``recipient`` that answered a DHT lookup, nearest first."""
        candidates: list[tuple[bytes, tuple[str, ...]]] = []
        dht = self.peer.dht
        try:
            if dht is not None:
                with trio.move_on_after(LOOKUP_TIMEOUT):
                    await dht.wait_joined()
                    lookup = dht.node.lookup_node(recipient, self.peer.wall_time())
                    found = (await dht.run_lookup(lookup)).result()
                    for contact in found:
                        self._remember(contact)
                    candidates = [(c.id, c.caps) for c in found]
        finally:
            self._perform(self.depositor.on_mailboxes(recipient, candidates))

    def _remember(self, contact: Contact) -> None:
        if len(self._contacts) >= MAX_CONTACTS:
            del self._contacts[next(iter(self._contacts))]
        self._contacts[contact.id] = contact

    async def _link(self, peer_id: bytes) -> bool:
        if peer_id in self.peer.links:
            return True
        contact = self._contacts.get(peer_id)
        if contact is None:
            return False
        return await self.peer.connect(contact)

    async def _link_to(self, peer_id: bytes) -> None:
        with trio.move_on_after(DEPOSIT_TIMEOUT):
            await self._link(peer_id)

    async def _deposit(self, work: DepositAt) -> None:
        waiter = _Waiter()
        key: tuple[bytes, int] | None = None
        try:
            with trio.move_on_after(DEPOSIT_TIMEOUT):
                if not await self._link(work.peer):
                    waiter.err = "no-link"
                    return
                link = self.peer.links.get(work.peer)
                if link is None or MAILBOX_CAP not in link.result.caps:
                    waiter.err = "no-link" if link is None else "no-mailbox"
                    return
                self._next_r = (self._next_r + 1) % (MAX_REQUEST_ID + 1)
                key = (work.peer, self._next_r)
                self._pending[key] = waiter
                if not link.enqueue(Deposit(self._next_r, work.wire).encode()):
                    return
                closed = link.closed
                async with trio.open_nursery() as nursery:

                    async def link_gone() -> None:
                        await closed.wait()
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(link_gone)
                    await waiter.done.wait()
                    nursery.cancel_scope.cancel()
        finally:
            if key is not None:
                self._pending.pop(key, None)
            self.depositor.on_answer(work.peer, work.msg_id, waiter.err)
            if waiter.err is not None and waiter.err != "no-answer":
                self.log.info("deposit refused", peer=work.peer.hex()[:16], reason=waiter.err)

    def statistics(self) -> dict[str, object]:
        self.holder.enabled = MAILBOX_CAP in self.peer.caps
        return {
            **self.holder.statistics(),
            "deposits": {
                **self.depositor.statistics(),
                "unmatched_answers": self.unmatched,
                "work_dropped": self.work_dropped,
            },
        }


__all__ = ["LEDGER_PREFIX", "MailboxService"]
