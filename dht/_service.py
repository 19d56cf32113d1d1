"""The Trio shell of the DHT: RPCs over the peer's links, lookups, upkeep.

``DhtService`` performs what :class:`DhtNode` decides. Requests travel in the
peer's ``dht`` frames over links that are already authenticated and
encrypted, matched to their replies by request id and link (a
``peer.wire._requests.RequestMatcher``, whose ids replace the node's), so
many RPCs share one link; a lookup that needs a node we have no link to
asks the host to dial it once (the link then stays up for gossip too,
within the peer's link limit).

The host (the peer) is reached only through :class:`DhtCarrier`, so this module
knows nothing of WebSockets. Time: trio's clock for timeouts; for records the
host's wall clock (``host.wall_time()``), which the peer derives from trio's
clock so that ``MockClock`` drives both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol, TypeGuard

import trio

from peer.wire._histogram import LatencyHistogram
from peer.wire._requests import RequestMatcher
from peer.wire._stats import Statistics, snapshot

from ._card import CardRecord
from ._cards import MAX_PAGES, CardLookup, CardPage
from ._config import MAX_REQUEST_ID
from ._contact import Contact
from ._lookup import Lookup, PeerLookup, ProviderLookup
from ._node import DhtNode, PingContact, Publication, Publish, Refresh
from ._records import PeerRecord, ProviderRecord, topic_key
from ._rpc import (
    AddProvider,
    Cards,
    ErrorReply,
    FindNode,
    FindPeer,
    GetCards,
    GetProviders,
    Message,
    Op,
    Ping,
    PutCard,
    PutPeer,
    Request,
    Response,
    decode_message,
    encode_message,
)

MAX_PENDING = 1024  # requests in flight at once, all links together
DIAL_TIMEOUT = 5.0


_REQUESTS = (Ping, FindNode, FindPeer, PutPeer, AddProvider, GetProviders, PutCard, GetCards)


def answers_any(msg: Message) -> TypeGuard[Response]:
    return not isinstance(msg, _REQUESTS)


class DhtCarrier(Protocol):
    """What the DHT needs from the peer that carries it."""

    def contact_of(self, peer_id: bytes) -> Contact | None: ...

    def send_dht(self, peer_id: bytes, payload: bytes) -> bool: ...

    async def connect(self, contact: Contact) -> bool:
        """Link to ``contact`` unless linked; True once linked. Callers bound it in time."""
        ...

    def wall_time(self) -> float: ...


class _Slot:
    """Where a request's reply lands; the waiting ``request`` call wakes on ``done``."""

    __slots__ = ("done", "response")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.response: Response | None = None


class DhtService:
    def __init__(self, node: DhtNode, host: DhtCarrier, log: Any) -> None:
        self.node = node
        self.host = host
        self.log = log
        # Replies are matched by rid and by the link they came on; ids are the
        # matcher's (from a random start, as the node's were), timeouts its deadlines.
        self._pending: RequestMatcher[_Slot] = RequestMatcher(
            node.config.rpc_timeout,
            capacity=MAX_PENDING,
            max_id=MAX_REQUEST_ID,
            first=node.next_rid(),
        )
        self._joined = trio.Event()
        self._contacts_changed = trio.Event()
        self._upkeep_wanted = trio.Event()
        self.lookups_run = 0
        self.lookup_latency = LatencyHistogram()  # seconds from start to end of each lookup
        self.on_contact: Callable[[Contact], None] | None = None

    # -- events from the peer ----------------------------------------------------------

    def link_up(self, contact: Contact) -> None:
        """A link came up; a peer that serves the DHT becomes a contact."""
        if "dht" in contact.caps:
            self._observe(contact)

    def link_down(self, peer_id: bytes) -> None:
        for _, slot in self._pending.drop_peer(peer_id):
            slot.done.set()

    def on_message(self, peer_id: bytes, payload: bytes) -> None:
        """A ``dht`` frame from a link. ProtocolError propagates: the caller closes the link."""
        msg = decode_message(payload)
        if isinstance(msg, _REQUESTS):
            sender = self.host.contact_of(peer_id)
            if sender is None:
                return
            before = len(self.node.table)
            response = self.node.handle_request(sender, msg, self.host.wall_time())
            if len(self.node.table) != before:
                self._changed(sender)
            self.host.send_dht(peer_id, encode_message(response))
            return
        slot = self._pending.resolve(peer_id, msg.rid)
        if slot is not None and answers_any(msg):
            slot.response = msg
            slot.done.set()

    def _observe(self, contact: Contact) -> None:
        self.node.add_contact(contact, self.host.wall_time())
        self._changed(contact)

    def _changed(self, contact: Contact) -> None:
        if self.on_contact is not None:
            self.on_contact(contact)
        self._contacts_changed.set()
        self._contacts_changed = trio.Event()
        self._upkeep_wanted.set()  # the table may have queued a ping

    # -- requests --------------------------------------------------------------------

    async def request(self, contact: Contact, req: Request) -> Response | None:
        """Send ``req`` to ``contact`` (dialling it if needed); None on no reply."""
        if len(self._pending) >= MAX_PENDING:
            return None
        if self.host.contact_of(contact.id) is None:
            linked = False
            with trio.move_on_after(DIAL_TIMEOUT):
                linked = await self.host.connect(contact)
            if not linked:
                return None
        slot = _Slot()
        rid = self._pending.start(contact.id, trio.current_time(), slot)
        if rid is None:
            return None
        try:
            wire = encode_message(dataclasses.replace(req, rid=rid))
            if not self.host.send_dht(contact.id, wire):
                return None
            deadline = self._pending.deadline(rid)
            assert deadline is not None
            with trio.move_on_at(deadline):
                await slot.done.wait()
            return slot.response
        finally:
            self._pending.cancel(rid)

    async def run_lookup(self, lookup: Lookup) -> Lookup:
        """Drive ``lookup`` to its end: alpha requests in flight, replies fed back."""
        self.lookups_run += 1
        started = trio.current_time()
        wake = trio.Event()

        async def query(contact: Contact) -> None:
            nonlocal wake
            response = await self.request(contact, self.node.request_for(lookup))
            now = self.host.wall_time()
            if response is None:
                if not lookup.done:
                    self.node.on_no_reply(lookup, contact.id, now)
            elif not lookup.done:
                self.node.on_reply(lookup, contact, response, now)
            wake.set()
            wake = trio.Event()

        async with trio.open_nursery() as nursery:
            while True:
                for contact in self.node.step(lookup, self.host.wall_time()):
                    nursery.start_soon(query, contact)
                if lookup.done:
                    break
                deadline = lookup.next_deadline()
                wait = 0.5 if deadline is None else max(0.01, deadline - self.host.wall_time())
                with trio.move_on_after(wait):
                    await wake.wait()
            nursery.cancel_scope.cancel()
        self.lookup_latency.observe(trio.current_time() - started)
        for contact in lookup.result():
            self._changed(contact)
        return lookup

    async def join(self) -> None:
        """Fill the table: look up our own id through whoever we know."""
        await self.run_lookup(self.node.lookup_node(self.node.id, self.host.wall_time()))
        self._joined.set()

    async def find_peer(self, peer_id: bytes) -> PeerRecord | None:
        lookup = await self.run_lookup(self.node.lookup_peer(peer_id, self.host.wall_time()))
        assert isinstance(lookup, PeerLookup)
        return lookup.record

    async def find_providers(self, topic: str, max_providers: int = 20) -> list[ProviderRecord]:
        lookup = await self.run_lookup(
            self.node.lookup_providers(
                topic_key(topic), self.host.wall_time(), max_providers=max_providers
            )
        )
        assert isinstance(lookup, ProviderLookup)
        return lookup.providers()

    async def find_cards(self, key: bytes) -> list[CardRecord]:
        """The valid cards filed under a skill or tag key, one per agent, ascending id:
        a card lookup, then the further pages of storers that had more."""
        lookup = await self.run_lookup(self.node.lookup_cards(key, self.host.wall_time()))
        assert isinstance(lookup, CardLookup)
        for _ in range(MAX_PAGES):
            wanted = lookup.pages_wanted()
            if not wanted:
                break
            for contact, cursor in wanted:
                req = GetCards(self.node.next_rid(), key, cursor, self.node.serving)
                resp = await self.request(contact, req)
                if isinstance(resp, Cards):
                    page = CardPage(resp.cards, resp.more)
                    lookup.on_cards(contact.id, page, self.host.wall_time())
                else:
                    lookup.more_from.pop(contact.id, None)
        return lookup.cards()

    async def publish(self, pub: Publication) -> int:
        """Store a record at the k closest nodes to its key; returns how many took it."""
        now = self.host.wall_time()
        if pub.op is Op.PUT_CARD:  # only card-serving nodes take cards
            lookup = await self.run_lookup(self.node.lookup_card_nodes(pub.key, now))
        else:
            lookup = await self.run_lookup(self.node.lookup_node(pub.key, now))
        stored = 0

        async def put(contact: Contact) -> None:
            nonlocal stored
            response = await self.request(contact, self.node.publish_request(pub))
            if response is not None and not isinstance(response, ErrorReply):
                stored += 1

        async with trio.open_nursery() as nursery:
            for contact in lookup.result():
                nursery.start_soon(put, contact)
        return stored

    async def _ping(self, contact: Contact) -> None:
        response = await self.request(contact, self.node.ping_request())
        self.node.ping_result(contact.id, response is not None, self.host.wall_time())
        self._upkeep_wanted.set()  # a failed ping may queue a retry

    # -- upkeep ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join once a contact is known, then publish, ping, refresh and expire forever."""
        task_status.started()
        while not len(self.node.table):
            await self._contacts_changed.wait()
        await self.join()
        self.log.info("dht joined", contacts=len(self.node.table))
        async with trio.open_nursery() as nursery:
            while True:
                for command in self.node.handle_timer(self.host.wall_time()):
                    match command:
                        case Publish(pub):
                            nursery.start_soon(self.publish, pub)
                        case PingContact(contact):
                            nursery.start_soon(self._ping, contact)
                        case Refresh(target):
                            lookup = self.node.lookup_node(target, self.host.wall_time())
                            nursery.start_soon(self.run_lookup, lookup)
                wait = self.node.next_deadline() - self.host.wall_time()
                with trio.move_on_after(max(0.0, wait)):
                    await self._upkeep_wanted.wait()  # a contact to ping was queued
                self._upkeep_wanted = trio.Event()

    def wake_upkeep(self) -> None:
        """Something is due at once (our card changed): run the timer now."""
        self._upkeep_wanted.set()

    async def wait_joined(self) -> None:
        await self._joined.wait()

    def statistics(self) -> Statistics:
        return snapshot(
            **self.node.statistics(),
            pending_requests=len(self._pending),
            replies_refused=self._pending.refused,
            lookups_run=self.lookups_run,
            lookup_latency=self.lookup_latency.statistics(),
            joined=self._joined.is_set(),
        )
