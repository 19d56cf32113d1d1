"""What the DHT needs from a peer (``dht.LinkHost``), and what the peer asks of it.

Rules kept here:

* The DHT reaches other peers only through our links: ``send_dht`` queues a
  ``dht`` frame on an existing link, ``connect`` dials one (one attempt per
  peer at a time, and never past ``max_links``).
* A DHT client (no listen address) keeps its record naming its linked relays.
* Subscribing to a channel links to a few of its carriers found in the DHT;
  resolving a peer learns its key even if the link never comes.
* Callers bound every wait here in time; nothing here raises for a peer that
  cannot be reached.

``DhtHost`` is a mixin of ``peer.node._node.Peer``; what it needs from the peer is
declared under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from dht import Contact, DhtNode, DhtService, Mode, Relay
from peer.wire._frametypes import Dht

from ._bootstrap import BootstrapError, parse_peer_address
from ._inbox import PeerInfo

if TYPE_CHECKING:
    from peer.wire._identity import Identity

    from ._inbox import Directory
    from ._link import Link
    from ._options import PeerOptions


class DhtHost:
    """The DHT-facing half of a ``Peer``."""

    if TYPE_CHECKING:
        identity: Identity
        options: PeerOptions
        peer_id: bytes
        log: Any
        directory: Directory
        links: dict[bytes, Link]
        listen_urls: list[str]
        dht: DhtService | None
        rng: random.Random
        _epoch: float
        _dialing: dict[bytes, trio.Event]

        @property
        def serving_dht(self) -> bool: ...
        @property
        def caps(self) -> tuple[str, ...]: ...
        @property
        def nursery(self) -> trio.Nursery: ...
        def wall_ms(self) -> int: ...
        def _notify_links(self) -> None: ...
        def _notify_changed(self) -> None: ...
        async def wait_links_changed(self) -> None: ...
        async def dial_once(
            self, url: str, expect: bytes | None = None, on_up: Callable[[], None] | None = None
        ) -> bytes | None: ...

    def _make_dht(self) -> DhtService:
        node = DhtNode(
            self.identity,
            rng=random.Random(self.rng.random()),
            now=self.wall_time(),
            config=self.options.dht_config,
            mode=Mode.SERVER if self.serving_dht else Mode.CLIENT,
            addrs=self.listen_urls[:4],
            caps=self.caps,
        )
        service = DhtService(node, self, self.log)
        service.on_contact = self._on_dht_contact
        return service

    def _update_relays(self) -> None:
        """A DHT client is reached through its linked relays; keep its record saying so."""
        if self.dht is None or self.serving_dht:
            return
        relays = [
            Relay(link.peer_id, link.result.listen[0])
            for link in self.links.values()
            if link.relay and link.result.listen
        ][:4]
        if tuple(relays) != self.dht.node.relays:
            self.dht.node.set_relays(relays, self.wall_time())

    def _on_dht_contact(self, contact: Contact) -> None:
        if contact.id == self.peer_id:
            return
        info = self.directory.see(contact.id, contact.public_key, self.wall_ms())
        if not info.linked and contact.addrs:
            info.listen, info.caps = contact.addrs, contact.caps
        self._notify_changed()

    # -- what the DHT needs from us (dht.LinkHost) -------------------------------

    def wall_time(self) -> float:
        return self._epoch + trio.current_time()

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
        """Link to ``contact`` (dialling its addresses) unless linked; True once linked.

        Waits for the dial to succeed or fail; callers bound it with a cancel scope.
        """
        if contact.id in self.links:
            return True
        if contact.id == self.peer_id or not contact.addrs:
            return False
        if len(self.links) >= self.options.max_links:
            return False  # no room: the DHT and gossip reach it through others
        attempt = self._dialing.get(contact.id)
        if attempt is None:
            attempt = self._dialing[contact.id] = trio.Event()
            self.nursery.start_soon(self._dial_contact, contact, attempt)
        while contact.id not in self.links and not attempt.is_set():
            await self.wait_links_changed()
        return contact.id in self.links

    async def _dial_contact(self, contact: Contact, attempt: trio.Event) -> None:
        try:
            for addr in contact.addrs[:2]:
                if await self._dial_and_serve(addr, contact.id, attempt):
                    return
        finally:
            attempt.set()
            self._dialing.pop(contact.id, None)
            self._notify_links()

    async def _dial_and_serve(self, addr: str, expect: bytes, attempt: trio.Event) -> bool:
        """Dial ``addr``; True if a link came up (it is served until it ends)."""
        try:
            parse_peer_address(addr)
        except BootstrapError:
            return False
        linked = await self.dial_once(addr, expect, on_up=attempt.set)
        return linked is not None

    async def resolve_peer(self, peer_id: bytes) -> PeerInfo | None:
        """Find a peer's record in the DHT, learn its key, and link to it if we can.

        Callers bound it in time; the key is learnt even if the link never comes.
        """
        info = self.directory.get(peer_id)
        if info is not None or self.dht is None:
            return info
        record = await self.dht.find_peer(peer_id)
        if record is None:
            return None
        info = self.directory.see(record.id, record.public_key, self.wall_ms())
        info.listen, info.caps = record.addrs, record.caps
        contact = record.contact()
        if not contact.addrs and record.relays:  # a DHT client: reach it through its relay
            contact = Contact(record.id, record.public_key, tuple(r.addr for r in record.relays))
        with trio.move_on_after(5.0):
            await self.connect(contact)
        return info

    async def _link_to_carriers(self, channel: str) -> None:
        """Find who carries ``channel`` in the DHT and link to a few of them."""
        if self.dht is None:
            return
        await self.dht.wait_joined()
        providers = await self.dht.find_providers(channel)
        wanted = [p for p in providers if p.id != self.peer_id and p.id not in self.links]

        async def link(contact: Contact) -> None:
            with trio.move_on_after(5.0):
                await self.connect(contact)

        async with trio.open_nursery() as nursery:
            for record in wanted[: self.options.providers_to_link]:
                nursery.start_soon(link, Contact(record.id, record.public_key, record.addrs))
