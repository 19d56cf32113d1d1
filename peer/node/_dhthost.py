"""What the DHT needs from a peer (``dht.DhtCarrier``), and what the peer asks of it.

Rules kept here:

* The DHT reaches other peers only through our links: ``send_dht`` queues a
  ``dht`` frame on an existing link, ``connect`` dials one (one attempt per
  peer at a time, and never past ``max_links``).
* A DHT client (no listen address) keeps its record naming its linked relays.
* Subscribing to a channel links to a few of its carriers found in the DHT;
  resolving a peer learns its key even if the link never comes.
* Callers bound every wait here in time; nothing here raises for a peer that
  cannot be reached.

``DhtBridge`` is a part of ``peer.node._node.Peer``, which it reaches only
through the ``DhtPeer`` protocol (checked by mypy where the peer makes it).
"""

from __future__ import annotations

import random
from typing import Protocol

import trio

from dht import Contact, DhtNode, DhtService, Mode, Relay
from peer.wire._frametypes import Dht

from ._host import PeerCore
from ._inbox import PeerInfo
from ._linkhost import LinkManager


class DhtPeer(PeerCore, Protocol):
    """What the DHT bridge needs from its peer, besides ``PeerCore``."""

    @property
    def link_manager(self) -> LinkManager: ...
    @property
    def listen_urls(self) -> list[str]: ...
    @property
    def serving_dht(self) -> bool: ...
    @property
    def caps(self) -> tuple[str, ...]: ...
    def notify_changed(self) -> None: ...
    async def connect(self, contact: Contact) -> bool: ...


class DhtBridge:
    """The peer's side of the DHT: ``dht.DhtCarrier`` over the peer's links."""

    def __init__(self, peer: DhtPeer) -> None:
        self.peer = peer
        self.peer_id = peer.identity.peer_id
        self.links = peer.link_manager.links
        self.directory = peer.directory
        self.options = peer.options
        self.service = self._make_dht()

    def _make_dht(self) -> DhtService:
        node = DhtNode(
            self.peer.identity,
            rng=random.Random(self.peer.rng.random()),
            now=self.wall_time(),
            config=self.options.dht_config,
            mode=Mode.SERVER if self.peer.serving_dht else Mode.CLIENT,
            addrs=self.peer.listen_urls[:4],
            caps=self.peer.caps,
        )
        service = DhtService(node, self, self.peer.log)
        service.on_contact = self._on_dht_contact
        return service

    # -- events from the peer ------------------------------------------------------

    def link_up(self, peer_id: bytes) -> None:
        contact = self.contact_of(peer_id)
        if contact is not None:
            self.service.link_up(contact)
        self.update_relays()

    def link_down(self, peer_id: bytes) -> None:
        self.service.link_down(peer_id)
        self.update_relays()

    def on_message(self, peer_id: bytes, payload: bytes) -> None:
        """A ``dht`` frame's message; raises ProtocolError if it is malformed."""
        self.service.on_message(peer_id, payload)

    def update_relays(self) -> None:
        """A DHT client is reached through its linked relays; keep its record saying so."""
        if self.peer.serving_dht:
            return
        relays = [
            Relay(link.peer_id, link.result.listen[0])
            for link in self.links.values()
            if link.relay and link.result.listen
        ][:4]
        if tuple(relays) != self.service.node.relays:
            self.service.node.set_relays(relays, self.wall_time())

    def _on_dht_contact(self, contact: Contact) -> None:
        if contact.id == self.peer_id:
            return
        info = self.directory.see(contact.id, contact.public_key, self.peer.wall_ms())
        if not info.linked and contact.addrs:
            info.listen, info.caps = contact.addrs, contact.caps
        self.peer.notify_changed()

    # -- what the DHT needs from us (dht.DhtCarrier) -------------------------------

    def wall_time(self) -> float:
        return self.peer.wall_time()

    def contact_of(self, peer_id: bytes) -> Contact | None:
        link = self.links.get(peer_id)
        if link is None:
            return None
        r = link.result
        return Contact(r.peer_id, r.public_key, r.listen[:4], r.caps[:8])

    def send_dht(self, peer_id: bytes, payload: bytes) -> bool:
        link = self.links.get(peer_id)
        return link is not None and link.enqueue(Dht(payload).encode())

    async def connect(self, contact: Contact) -> bool:
        """Link to ``contact`` unless linked (the peer's dialler does it)."""
        return await self.peer.connect(contact)

    async def resolve_peer(self, peer_id: bytes) -> PeerInfo | None:
        """Find a peer's record in the DHT, learn its key, and link to it if we can.

        Callers bound it in time; the key is learnt even if the link never comes.
        """
        info = self.directory.get(peer_id)
        if info is not None:
            return info
        record = await self.service.find_peer(peer_id)
        if record is None:
            return None
        info = self.directory.see(record.id, record.public_key, self.peer.wall_ms())
        info.listen, info.caps = record.addrs, record.caps
        contact = record.contact()
        if not contact.addrs and record.relays:  # a DHT client: reach it through its relay
            contact = Contact(record.id, record.public_key, tuple(r.addr for r in record.relays))
        with trio.move_on_after(5.0):
            await self.connect(contact)
        return info

    async def link_to_carriers(self, channel: str) -> None:
        """Find who carries ``channel`` in the DHT and link to a few of them."""
        await self.service.wait_joined()
        providers = await self.service.find_providers(channel)
        wanted = [p for p in providers if p.id != self.peer_id and p.id not in self.links]

        async def link(contact: Contact) -> None:
            with trio.move_on_after(5.0):
                await self.connect(contact)

        async with trio.open_nursery() as nursery:
            for record in wanted[: self.options.providers_to_link]:
                nursery.start_soon(link, Contact(record.id, record.public_key, record.addrs))
