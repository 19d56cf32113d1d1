"""What the storage parts of a peer (``Storage``, ``DeliveryService``,
``CatchUpService``) need from the peer that owns them, and what they count.

``StoragePeer`` is a protocol, not a base class: mypy checks that ``Peer``
provides every name where the peer makes its ``Storage``, so renaming one
on ``Peer`` fails type checking instead of failing at run time. The storage
modules import this module, never ``_node``, so no import cycle hides here.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from dht import Contact, DhtService
from peer.protocols._gossip import Action, GossipRouter
from peer.wire._envelope import Envelope
from peer.wire._identity import Identity

from ._inbox import Directory, Inbox, PeerInfo
from ._link import Link
from ._options import PeerCounters, PeerOptions


@dataclass
class StorageCounters:
    stored: int = 0
    commits: int = 0  # store transactions that appended messages
    duplicates: int = 0
    dropped: int = 0  # accept queue full: left to catch-up
    errors: int = 0  # appends that failed
    receipts_sent: int = 0
    receipts_received: int = 0
    pushes_sent: int = 0
    dead_letters: int = 0
    pages_served: int = 0
    pages_refused: int = 0
    bad_pages: int = 0
    inbox_gone: int = 0  # inbox references whose channel record was gone at start


class PeerCore(Protocol):
    """What every part of a peer sees of it (``StoragePeer``, ``SwarmPeer`` and
    ``DhtPeer`` add what each needs besides)."""

    @property
    def identity(self) -> Identity: ...
    @property
    def options(self) -> PeerOptions: ...
    @property
    def peer_id(self) -> bytes: ...
    @property
    def log(self) -> Any: ...
    @property
    def counters(self) -> PeerCounters: ...
    @property
    def directory(self) -> Directory: ...
    @property
    def links(self) -> dict[bytes, Link]: ...
    @property
    def router(self) -> GossipRouter: ...
    @property
    def rng(self) -> random.Random: ...
    @property
    def verify(self) -> bool: ...
    def now(self) -> float: ...
    def wall_ms(self) -> int: ...
    def wall_time(self) -> float: ...


class StoragePeer(PeerCore, Protocol):
    """The peer, as its storage parts see it."""

    @property
    def inbox(self) -> Inbox: ...
    @property
    def dht(self) -> DhtService | None: ...
    @property
    def channels(self) -> set[str]: ...
    @property
    def caps(self) -> tuple[str, ...]: ...
    def perform(self, actions: list[Action]) -> None: ...
    def publish_own(self, env: Envelope, now: float) -> None: ...
    def notify_inbox(self) -> None: ...
    def unseal(self, env: Envelope) -> None: ...
    def seal(self, log_topic: str, seal: Callable[[int, bytes | None], Envelope]) -> Envelope: ...
    async def connect(self, contact: Contact) -> bool: ...
    async def resolve_peer(self, peer_id: bytes) -> PeerInfo | None: ...
    def is_online(self, info: PeerInfo, now_ms: int | None = None) -> bool: ...
