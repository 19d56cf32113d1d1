"""The peer's persistent side: its log, inbox, outbox, receipts and catch-up.

``Storage`` is owned by a ``Peer`` that runs with a data directory. It
performs, with a ``store.StoreService``, what the protocol modules decide:

* Accepting: every new envelope the peer keeps (its channels, its inbox, and
  on a relay-only seed whatever it relays) is appended to the topic's log;
  messages for the local agent go, in the same commit, to the ``~inbox`` log,
  whose positions are the API's cursors. The agent sees a message, and a DM's
  sender gets our receipt, only after that commit.
* Own messages are stored before they are published, so the API answers
  ``/send`` after a durable commit, sequence numbers per (sender, topic)
  survive restarts, and the sender carries its own messages.
* DM delivery (outbox, receipts, pushes) is ``self.delivery``, a
  ``peer.node._delivery.DeliveryService``; it learns here which DMs and
  receipts were committed. Catch-up (carrying and walking) is
  ``self.catchup_service``, a ``peer.node._catchuphost.CatchUpService``.
* A commit is planned as one small record per message (what to append, its
  inbox entry, its outbox entry), written in one transaction, and then each
  record gets its result: no lists matched by position.
* Until the first catch-up walk of a kept topic ends, its live messages wait
  in memory, so a sender's older messages come before its newer ones.
* After that, a message that would overtake an earlier one of its sender waits
  for it (bounded) in ``self.order`` (``peer.node._ordering``).

Transactions stay inside the store's functions; nothing here holds one across
an ``await``.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import trio

from peer.protocols._delivery import Pending
from peer.wire import _cbor
from peer.wire._envelope import (
    PRESENCE_TOPIC,
    Envelope,
    open_dm,
)
from peer.wire._errors import ProtocolError
from peer.wire._frametypes import CuPage, CuReq, Heads
from peer.wire._stats import Statistics, snapshot
from store import (
    MAX_PAGE,
    AppendItem,
    AppendResult,
    MessageStore,
    StoreError,
    StoreService,
)

from ._catchuphost import STORE_CAP, CatchUpService, TopicCatchUp
from ._delivery import DeliveryService
from ._host import StorageCounters, StoragePeer
from ._inbox import AdmitDm, Admitted, InboxMessage, PeerInfo, admit_plain, channel_entry
from ._inboxlog import INBOX_LOG, chain_heads, inbox_item_of, mark_read, read_inbox, sweep_rules
from ._ocmhost import agent_channels
from ._ordering import InboxOrder

CHANNELS_KEY = "channels"
PEER_KEY_PREFIX = "peer/"
ACCEPT_QUEUE = 65_536
ACCEPT_BATCH = 2_048
MAX_HELD = 200_000  # live messages held per topic while its first walk runs
HOLD_AT_MOST = 10.0  # seconds after start, when no carrier's log was read to its end
RETENTION_INTERVAL = 60.0


@dataclass
class _Accept:
    """Work for the accept loop, which alone appends to the log (``~inbox`` in order)."""

    envelopes: list[tuple[Envelope, bool, bool]]  # (envelope, member, pushed)
    done: trio.Event | None = None
    own: list[tuple[Envelope, InboxMessage | None, bytes | None]] = field(default_factory=list)
    then: Callable[[MessageStore], None] | None = None  # a write in the same commit
    new: int = 0
    error: Exception | None = None


@dataclass(slots=True)
class _Planned:
    """One message of a commit: what is appended for it, and what came of it."""

    request: _Accept
    env: Envelope
    item: AppendItem
    own: bool = False  # signed by us: published after the commit
    pushed: bool = False
    message: InboxMessage | None = None  # its inbox entry, if the agent sees it
    inbox: AppendItem | None = None  # the ``~inbox`` record of ``message``
    outbox: Pending | None = None  # a DM of ours: its outbox entry
    result: AppendResult | None = None
    inbox_result: AppendResult | None = None

    def items(self) -> list[AppendItem]:
        return [self.item] if self.inbox is None else [self.item, self.inbox]

    def take(self, results: Iterator[AppendResult]) -> None:
        """Its results, from those of the whole commit (in ``items()`` order)."""
        self.result = next(results)
        if self.inbox is not None:
            self.inbox_result = next(results)


class Storage:
    """The persistent half of a ``Peer``; see the module docstring."""

    def __init__(self, peer: StoragePeer, service: StoreService) -> None:
        self.peer = peer
        self.service = service
        self.options = peer.options
        self.log = peer.log.bind(part="store")
        self.counters = StorageCounters()
        self._accept_send, self._accept_recv = trio.open_memory_channel[_Accept](ACCEPT_QUEUE)
        self._pinned: set[str] = set()
        self._new_peers: dict[bytes, bytes] = {}
        self._new_peers_wanted = trio.Event()
        self._held: dict[str, list[tuple[Envelope, bool]]] = {}  # topic -> live, waiting
        self.admit_dm: AdmitDm = admit_plain  # the coordination layer puts its own here
        self.delivery = DeliveryService(
            peer, service, self.counters, self.log, store_own=self.store_own, accept=self.accept
        )
        self.catchup_service = CatchUpService(
            peer,
            service,
            log=self.log,
            counters=self.counters,
            accept_many=self.accept_many,
            release=self.release,
            keeps=self.keeps,
            pinned=lambda: self._pinned,
            pin=self._pin,
        )
        self.order = InboxOrder.beside(self.catchup_service, peer, service, self.log)

    @property
    def store(self) -> MessageStore:
        return self.service.store

    # -- start ---------------------------------------------------------------------

    async def load(self) -> list[str]:
        """Read the inbox and outbox state; returns the channels we subscribed to."""
        peer = self.peer
        outbox = await self.service.read(lambda s: s.outbox(limit=MAX_PAGE))
        dead = await self.service.read(lambda s: s.dead_letters(limit=MAX_PAGE))
        self.delivery.load(outbox, dead)
        pending_ids = {e.msg_id for e in outbox}
        dead_ids = {d.msg_id for d in dead}
        messages = await read_inbox(self.service, self.options.inbox_capacity, peer, self.counters)
        for message in messages:
            if message.outgoing and message.kind == "dm":
                message.status = (
                    "pending"
                    if message.id in pending_ids
                    else "undeliverable"
                    if message.id in dead_ids
                    else "delivered"
                )
            peer.inbox.add(message)
        keys = await self.service.read(lambda s: s.state_items(PEER_KEY_PREFIX))
        for name, public_key in keys.items():
            peer_id = bytes.fromhex(name[len(PEER_KEY_PREFIX) :])
            if peer_id != peer.peer_id and len(public_key) == 32:
                peer.directory.see(peer_id, public_key, 0)
        peer.directory.on_new = self._note_peer
        await self.catchup_service.load()
        raw = await self.service.read(lambda s: s.get_state(CHANNELS_KEY))
        channels = [] if raw is None else [c for c in _cbor.decode(raw) if isinstance(c, str)]
        self.log.info(
            "store opened",
            inbox=len(messages),
            unread=peer.inbox.unread(),
            outbox=len(outbox),
            dead_letters=len(dead),
            channels=len(channels),
        )
        return channels

    def _note_peer(self, info: PeerInfo) -> None:
        """Remember a new peer's key, so DMs to it work after a restart."""
        self._new_peers[info.peer_id] = info.public_key
        self._new_peers_wanted.set()

    async def _peer_key_loop(self) -> None:
        while True:
            await self._new_peers_wanted.wait()
            self._new_peers_wanted = trio.Event()
            batch, self._new_peers = self._new_peers, {}

            def write(s: MessageStore, batch: dict[bytes, bytes] = batch) -> None:
                for peer_id, key in batch.items():
                    s.put_state(PEER_KEY_PREFIX + peer_id.hex(), key)

            try:
                await self.service.write(write)
            except StoreError as exc:
                self.log.error("peer keys not stored", error=str(exc))

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            if self._held:
                nursery.start_soon(self._release_all_after, HOLD_AT_MOST)
            nursery.start_soon(self._peer_key_loop)
            nursery.start_soon(self.catchup_service.run)
            nursery.start_soon(self._accept_loop)
            nursery.start_soon(self.delivery.run)
            nursery.start_soon(self._retention_loop)

    # -- delivery events from the peer --------------------------------------------------

    def wake_outbox(self, peer_id: bytes) -> None:
        """``peer_id`` is back (a link, a presence): push what waits for it now."""
        self.delivery.wake(peer_id)

    def on_push(self, link_peer: bytes, wire: bytes) -> None:
        """A DM or receipt handed to us directly by its sender."""
        self.delivery.on_push(link_peer, wire)

    # -- what we keep ------------------------------------------------------------------

    def keeps(self, topic: str) -> bool:
        return topic != PRESENCE_TOPIC and self.options.rules.keeps(topic)

    async def save_channels(self) -> None:
        value = _cbor.encode(agent_channels(self.peer.channels, getattr(self.peer, "ocm", None)))
        await self.service.write(lambda s: s.put_state(CHANNELS_KEY, value))

    def _pin(self, topic: str) -> None:
        """A relay-only seed keeps receiving a topic it stores, subscriber or not."""
        if topic in self._pinned or len(self._pinned) >= self.options.max_kept_topics:
            return
        self._pinned.add(topic)
        peer = self.peer
        peer.perform(peer.router.subscribe(topic))
        if peer.dht is not None and topic not in peer.dht.node.providing:
            with contextlib.suppress(ValueError):  # providing as many as the DHT lets us
                peer.dht.node.start_providing(topic, peer.wall_time())

    # -- accepting ---------------------------------------------------------------------

    def accept(self, env: Envelope, *, member: bool = True, pushed: bool = False) -> None:
        """Queue a verified envelope for the log (never blocks; see ``dropped``).

        Until the first catch-up walk of a kept topic ends, its live messages
        wait in memory (bounded; a carrier has them too), so a sender's older
        messages from the walk come before its newer live ones.
        """
        held = self._held.get(env.log_topic)
        if held is not None and member and len(held) < MAX_HELD:
            held.append((env, pushed))
            return
        try:
            self._accept_send.send_nowait(_Accept([(env, member, pushed)]))
        except trio.WouldBlock:
            self.counters.dropped += 1
            if self.counters.dropped in (1, 10, 100) or self.counters.dropped % 10_000 == 0:
                self.log.warning(
                    "store queue full: left to catch-up", dropped=self.counters.dropped
                )

    @property
    def returning(self) -> bool:
        """This store has run before: there may be something to catch up."""
        return self.catchup_service.returning

    @property
    def catchup(self) -> dict[str, TopicCatchUp]:
        return self.catchup_service.catchup

    def on_request(self, link_peer: bytes, request: CuReq) -> None:
        self.catchup_service.on_request(link_peer, request)

    def on_page(self, link_peer: bytes, page: CuPage) -> None:
        self.catchup_service.on_page(link_peer, page)

    def on_heads(self, link_peer: bytes, frame: Heads) -> None:
        self.catchup_service.on_heads(link_peer, frame)

    def on_link_up(self, peer_id: bytes, caps: tuple[str, ...]) -> None:
        self.wake_outbox(peer_id)
        self.catchup_service.on_link_up(peer_id, caps)

    def on_link_down(self, peer_id: bytes) -> None:
        self.delivery.on_link_down(peer_id)
        self.catchup_service.on_link_down(peer_id)

    async def note_subscribed(self, topic: str) -> None:
        await self.catchup_service.note_subscribed(topic)

    def catch_up_all(self, topics: list[str]) -> None:
        self.catchup_service.catch_up_all(topics)

    def hold_live(self, topics: Iterable[str]) -> None:
        for topic in topics:
            self._held.setdefault(topic, [])

    def release(self, topic: str) -> None:
        """A walk of ``topic`` reached a carrier's end (or we stop waiting for one):
        accept what waited, in arrival order."""
        held = self._held.pop(topic, None)
        if held:
            with contextlib.suppress(trio.WouldBlock):
                self._accept_send.send_nowait(_Accept([(e, True, pushed) for e, pushed in held]))

    async def _release_all_after(self, seconds: float) -> None:
        await trio.sleep(seconds)  # no carrier answered in time: stop holding
        for topic in list(self._held):
            self.release(topic)

    async def accept_many(
        self, envelopes: Iterable[Envelope], then: Callable[[MessageStore], None] | None = None
    ) -> int:
        """Store envelopes (from catch-up); returns after their commit, with the number
        of new ones. ``then`` (moving a catch-up cursor) is written in the same commit."""
        request = _Accept([(e, True, False) for e in envelopes], trio.Event(), then=then)
        await self._accept_send.send(request)
        assert request.done is not None
        await request.done.wait()
        return request.new

    async def _accept_loop(self) -> None:
        linger = self.options.relay_commit_delay if self.options.relay_only else 0.0
        while True:
            due = self.order.next_deadline()
            batch = [_Accept([])]  # unless something comes before a held message's wait ends
            with trio.move_on_at(math.inf if due is None else due):
                batch = [await self._accept_recv.receive()]
            size = len(batch[0].envelopes) + len(batch[0].own)
            waited_for = batch[0].done is not None  # someone waits for this commit
            until = trio.current_time() + linger
            while size < ACCEPT_BATCH:
                try:
                    more = self._accept_recv.receive_nowait()
                except trio.WouldBlock:
                    if waited_for or not linger:
                        break
                    with trio.move_on_at(until) as waited:
                        more = await self._accept_recv.receive()
                    if waited.cancelled_caught:
                        break
                batch.append(more)
                size += len(more.envelopes) + len(more.own)
                waited_for = waited_for or more.done is not None
            try:
                await self._commit(batch)
            except Exception as exc:  # a bug here must not end the peer: log, count, go on
                self.counters.errors += 1
                self.log.exception("accepting messages failed", error=repr(exc))
                for request in batch:
                    request.error = request.error or exc
            finally:
                for request in batch:
                    if request.done is not None:
                        request.done.set()

    # -- one commit: plan, write, apply ---------------------------------------------------

    async def _commit(self, batch: list[_Accept]) -> None:
        walks = [request.then is not None for request in batch]
        moves = await self.order.arrange([r.envelopes for r in batch], self.peer.now(), walks)
        for request, move in zip(batch, moves, strict=True):  # not past what waits unstored
            request.then = request.then if move else None
        plans = self._plan(batch, self.peer.wall_ms())
        thens = [request.then for request in batch if request.then is not None]
        if not plans and not thens:
            return
        try:
            await self._write(plans, thens)
        except (StoreError, ValueError) as exc:
            self._failed(plans, exc)
            return
        self.counters.commits += 1
        self._publish_own(plans)
        added = 0
        try:
            for planned in plans:
                added += await self._apply(planned)
        finally:
            if added:
                self.peer.notify_inbox()  # once per commit: a page is 512 messages
        if self.catchup_service.filler.counted:  # something was missed: did this fill it?
            self.catchup_service.stored({(p.env.log_topic, p.env.sender) for p in plans})

    def _plan(self, batch: list[_Accept], now_ms: int) -> list[_Planned]:
        plans: list[_Planned] = []
        dms = 0  # DMs of ours in this commit: each takes a place in the outbox
        for request in batch:
            for env, message, payload in request.own:
                planned = self._plan_own(request, env, message, payload, now_ms, dms)
                if planned is not None:
                    plans.append(planned)
                    dms += planned.outbox is not None
            for env, member, pushed in request.envelopes:
                planned = self._plan_received(request, env, member, pushed, now_ms)
                if planned is not None:
                    plans.append(planned)
        return plans

    def _plan_own(
        self,
        request: _Accept,
        env: Envelope,
        message: InboxMessage | None,
        payload: bytes | None,
        now_ms: int,
        dms: int,
    ) -> _Planned | None:
        outbox = None
        if env.kind == "dm" and env.recipient is not None:
            outbox = self.delivery.plan_dm(env, now_ms, dms)
            if outbox is None:
                request.error = StoreError("outbox full: too many DMs wait for receipts")
                return None
        return _Planned(
            request,
            env,
            AppendItem.from_envelope(env, received_ms=now_ms, topic=env.log_topic),
            own=True,
            message=message,
            inbox=None if message is None else inbox_item_of(env.kind, message, payload),
            outbox=outbox,
        )

    def _plan_received(
        self, request: _Accept, env: Envelope, member: bool, pushed: bool, now_ms: int
    ) -> _Planned | None:
        topic = env.log_topic
        if not member:
            if not self.keeps(topic):
                return None
            self._pin(topic)
        message = payload = None
        if member and not self.options.relay_only and env.kind in ("msg", "dm"):
            built = self._inbox_entry(env, now_ms)
            if built is None:
                return None
            message, payload = built
        return _Planned(
            request,
            env,
            AppendItem.from_envelope(env, received_ms=now_ms, topic=topic),
            pushed=pushed,
            message=message,
            inbox=None if message is None else inbox_item_of(env.kind, message, payload),
        )

    async def _write(
        self, plans: list[_Planned], thens: list[Callable[[MessageStore], None]]
    ) -> None:
        """One commit: the messages, their inbox records, our DMs' outbox entries, cursors."""
        items = [item for planned in plans for item in planned.items()]
        outbox = [planned.outbox for planned in plans if planned.outbox is not None]

        def write_all(s: MessageStore) -> list[AppendResult]:
            results = s.append_batch(items)
            for e in outbox:
                s.outbox_add(e.msg_id, e.recipient, e.wire, e.next_try_ms, e.deadline_ms)
            for then in thens:
                then(s)
            return results

        results = iter(await self.service.write(lambda s: s.atomically(write_all)))
        for planned in plans:
            planned.take(results)

    def _failed(self, plans: list[_Planned], exc: Exception) -> None:
        self.counters.errors += 1
        self.log.error("store append failed", error=str(exc), messages=len(plans))
        for planned in plans:
            if planned.request.own:
                planned.request.error = exc  # not stored: the API says so, nothing is sent
        # What others sent is not in the inbox either: it has no cursor without its
        # commit (a stream would skip or repeat one), and no receipt went out, so its
        # carriers still hold it for catch-up once the store takes writes again.

    def _publish_own(self, plans: list[_Planned]) -> None:
        """Our DMs wait for receipts; what we signed is published in commit order,
        which is seq order."""
        peer = self.peer
        now = peer.now()
        for planned in plans:
            if planned.outbox is not None:
                self.delivery.on_own_dm_stored(planned.outbox)
        for planned in plans:
            if planned.own:
                peer.publish_own(planned.env, now)

    async def _apply(self, planned: _Planned) -> int:
        """Count a committed message, give the agent its inbox entry and tell delivery
        about DMs and receipts for us; returns 1 if the inbox got a new message."""
        env, result = planned.env, planned.result
        if result is None:
            return 0
        if result.duplicate:
            self.counters.duplicates += 1
            if env.kind == "dm":  # pushed again: our receipt was lost
                self.delivery.on_dm_stored(env, pushed=planned.pushed, duplicate=True)
            return 0
        self.counters.stored += 1
        planned.request.new += 1
        added = 0
        if planned.message is not None and planned.inbox_result is not None:
            planned.message.cursor = planned.inbox_result.seq
            added = int(self.peer.inbox.add(planned.message) is not None)
        me = self.peer.peer_id
        if env.kind == "dm":
            self.delivery.on_dm_stored(env, pushed=planned.pushed, duplicate=False)
        elif env.kind == "receipt" and env.recipient == me and env.sender != me:
            await self.delivery.on_receipt(env.sender, list(env.fields["ids"]), env.wire)
        return added

    def _inbox_entry(self, env: Envelope, now_ms: int) -> Admitted:
        peer = self.peer
        outgoing = env.sender == peer.peer_id
        if env.kind == "dm":
            if outgoing:
                return None  # our own DMs enter the inbox when we send them
            try:
                content = open_dm(peer.identity, env)
            except ProtocolError as exc:
                peer.counters.dm_undecryptable += 1
                self.log.warning(
                    "DM does not open", sender=env.sender.hex()[:16], reason=exc.message
                )
                return None
            return self.admit_dm(env, content, now_ms)
        return channel_entry(env, outgoing, now_ms)  # inbox_entry, from env.fields

    # -- own messages ------------------------------------------------------------------

    async def own_chains(self) -> dict[str, tuple[int, bytes | None]]:
        """Our last ``seq`` in every log topic we signed in, and that envelope's id
        (None if the store no longer has it): where each chain of ours goes on."""
        return await self.service.read(functools.partial(chain_heads, me=self.peer.peer_id))

    async def store_own(
        self, env: Envelope, message: InboxMessage | None, payload: bytes | None
    ) -> None:
        """Keep a message we signed (and, for a DM, its outbox entry), then publish it.

        Returns after the commit; raises StoreError (nothing published) when it
        could not be stored.
        """
        request = _Accept([], trio.Event(), own=[(env, message, payload)])
        await self._accept_send.send(request)
        assert request.done is not None
        await request.done.wait()
        if isinstance(request.error, StoreError):
            raise request.error
        if request.error is not None:
            raise StoreError(f"not stored: {request.error!r}")

    # -- read state ----------------------------------------------------------------------

    async def mark_read(self, cursors: list[int]) -> None:
        for i in range(0, len(cursors), MAX_PAGE):
            chunk = cursors[i : i + MAX_PAGE]
            await self.service.write(functools.partial(mark_read, seqs=chunk))

    async def mark_read_through(self, cursor: int) -> None:
        await self.service.write(lambda s: s.mark_read_through(INBOX_LOG, cursor))

    # -- retention ---------------------------------------------------------------------

    async def _retention_loop(self) -> None:
        rules, pins = sweep_rules(self.options.rules, self.options.inbox_capacity)
        while True:
            await trio.sleep(RETENTION_INTERVAL)
            try:
                await self.service.retention_sweep(rules, now_ms=self.peer.wall_ms(), pinned=pins)
            except StoreError as exc:
                self.log.error("retention failed", error=str(exc))

    def statistics(self) -> Statistics:
        return snapshot(
            self.counters,
            receipts_not_owed=self.delivery.core.owed_dropped,
            catchup_commands_lost=self.catchup_service.lost_commands,
            repairs_deferred=self.catchup_service.filler.deferred,
            outbox=self.delivery.waiting(),
            pinned_topics=len(self._pinned),
            order=self.order.statistics(),
            mailbox=self.delivery.mailbox.statistics(),
            catchup={t: s.to_json() for t, s in sorted(self.catchup.items())},
        )


__all__ = ["INBOX_LOG", "STORE_CAP", "Storage"]
