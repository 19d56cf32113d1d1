"""The Trio side of blobs: the chunk store, answering and forwarding wants, and
fetching what a reader asks for over the mesh (protocol-spec/blobs.md).

``BlobHost`` owns the peer's ``BlobStore`` (``store._blobs``; None without a
store, when blobs are only routed), the ``Forwarder`` and the running
``Fetch``es (``peer.protocols._blobs``), and performs their decisions. Rules
kept here:

* Frame handlers are sync: a want is answered from the store at once, or
  forwarded; an answer wakes the fetch or forwarded want that owns its
  request id, and only if it came from the peer that was asked (request ids
  are random, so a linked peer cannot guess them either). An answer nobody
  asked for is charged to its link's budget and dropped.
* A want is refused ``busy`` while the asker's link already has
  ``SERVE_QUEUE`` frames waiting to be written: what a peer can make us queue
  is bounded by that, not by how fast it asks.
* At most ``MAX_FETCHES`` fetches run at once (others wait their turn); each
  has ``FETCH_WINDOW`` wants in flight, so chunk bytes held in memory are
  bounded by ``MAX_FETCHES * FETCH_WINDOW * CHUNK_SIZE``.
* Disk writes run in a worker thread; chunks fetched for a reader are
  stored without fsync (every read checks a chunk's hash, so a torn one is
  fetched again).
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import AsyncGenerator
from functools import partial
from pathlib import Path
from typing import Protocol

import trio

from peer.protocols._blobs import Fetch, Forwarder, Reply, Route
from peer.protocols._gossip import Action, GossipRouter
from peer.wire._blobframes import (
    BLOBS_CAP,
    MAX_WANT_HOPS,
    Attachment,
    BlobAnswer,
    BlobChunk,
    BlobHave,
    BlobNone,
    BlobWant,
)
from peer.wire._errors import ErrorCode
from store._blobs import BlobStore, Manifest

from ._inbox import Inbox
from ._link import Link
from ._options import PeerCounters

SERVE_QUEUE = 16  # frames waiting on a link beyond which its wants get "busy"
MAX_FETCHES = 4
MAX_ROUTES = 6
MANIFESTS_CACHED = 16
UPLOAD_TTL = 7 * 24 * 3600.0  # seconds an unfinished resumable upload is kept
_RID_LIMIT = 2**32 - 1
_RIDS = random.SystemRandom()  # request ids: not guessable by a linked peer


class BlobPeer(Protocol):
    """What the blob host needs from its peer."""

    links: dict[bytes, Link]
    inbox: Inbox
    counters: PeerCounters
    router: GossipRouter

    def now(self) -> float: ...
    def perform(self, actions: list[Action]) -> None: ...


def blob_dir(store_path: str) -> Path:
    """Where the blobs of the store at ``store_path`` live: ``<data>/blobs`` beside
    ``<data>/store``, else ``<store>.blobs`` (stores named otherwise may share a folder)."""
    store = Path(store_path)
    if store.name == "store":
        return store.parent / "blobs"
    return store.with_name(store.name + ".blobs")


class BlobUnavailable(Exception):
    """No peer we could ask gave the blob (or the part of it wanted)."""


class _Running:
    """One fetch being driven: its core and what wakes its driver."""

    def __init__(self, core: Fetch) -> None:
        self.core = core
        self.wake = trio.Event()


class BlobHost:
    """Blobs for one peer; see the module header."""

    def __init__(self, peer: BlobPeer) -> None:
        self.peer = peer
        self.store: BlobStore | None = None
        self.forwarder = Forwarder(self._next_rid)
        self._fetching: dict[int, _Running] = {}  # request id -> fetch that sent it
        self._slots = trio.CapacityLimiter(MAX_FETCHES)
        self._timer_changed = trio.Event()
        self._manifests: dict[bytes, Manifest] = {}  # recently served, oldest first
        self.served = 0
        self.busy = 0
        self.stray = 0

    def open(self, path: str | Path, quota: int, now: float) -> None:
        """Open the store at ``path``; uploads older than ``UPLOAD_TTL`` go, and chunks
        nothing names any more (``now``: wall time)."""
        self.store = BlobStore(path, quota)
        self.store.expire_uploads(now - UPLOAD_TTL)
        self.store.collect(now)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def _next_rid(self) -> int:
        """A fresh request id, unpredictable (a linked peer must not guess ours)."""
        while True:
            rid = _RIDS.randrange(1, _RID_LIMIT + 1)
            if rid not in self._fetching and not self.forwarder.owns(rid):
                return rid

    # -- frames -------------------------------------------------------------------------

    def on_frame(self, link: Link, frame: BlobWant | BlobAnswer, raw: bytes) -> None:
        if isinstance(frame, BlobWant):
            self._on_want(link, frame, raw)
            return
        running = self._fetching.get(frame.r)
        if running is not None and running.core.on_answer(link.peer_id, frame, self.peer.now()):
            del self._fetching[frame.r]  # only the asked peer's answer ends the want
            running.wake.set()
        elif self.forwarder.owns(frame.r):
            self._perform(self.forwarder.answer(link.peer_id, frame))
        else:  # nobody asked: charged to the link like any frame, then dropped
            self.stray += 1
            self.peer.perform(self.peer.router.admit(link.peer_id, len(raw), self.peer.now()))

    def _on_want(self, link: Link, want: BlobWant, raw: bytes) -> None:
        if len(link.queue) >= SERVE_QUEUE:
            self.busy += 1
            link.enqueue(BlobNone(want.r, "busy").encode())
            return
        answer = self._answer_from_store(want)
        if answer is not None:
            self.served += 1
            link.enqueue(answer.encode())
            return
        before = self.forwarder.next_deadline()
        self._perform(self.forwarder.want(link.peer_id, want, self._blob_links(), self.peer.now()))
        if self.forwarder.next_deadline() != before:
            self._timer_changed.set()

    def _answer_from_store(self, want: BlobWant) -> BlobHave | BlobChunk | None:
        if self.store is None:
            return None
        manifest = self._manifests.get(want.blob) or self.store.manifest(want.blob)
        if manifest is None:
            return None
        self._manifests[want.blob] = manifest  # the last few, for the wants that follow
        while len(self._manifests) > MANIFESTS_CACHED:
            del self._manifests[next(iter(self._manifests))]
        if want.index is None:
            return BlobHave(want.r, manifest.size, manifest.hashes)
        if want.index >= manifest.chunks:
            return None
        data = self.store.read_chunk(manifest.hash_of(want.index))
        return None if data is None else BlobChunk(want.r, data)

    def _blob_links(self, first: bytes | None = None) -> list[bytes]:
        """Linked peers that speak blobs; ``first`` (if among them) first."""
        out = [pid for pid, link in self.peer.links.items() if BLOBS_CAP in link.result.caps]
        if first is not None and first in out:
            out.remove(first)
            out.insert(0, first)
        return out

    def _perform(self, replies: list[Reply]) -> None:
        for reply in replies:
            link = self.peer.links.get(reply.peer)
            if link is not None and not link.enqueue(reply.frame.encode()):
                self.peer.counters.refuse(ErrorCode.SLOW)
                link.close(ErrorCode.SLOW, "not reading fast enough")

    def link_down(self, peer_id: bytes) -> None:
        self._perform(self.forwarder.link_down(peer_id))

    async def run(self) -> None:
        """Expire forwarded wants at their deadlines."""
        while True:
            deadline = self.forwarder.next_deadline()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._timer_changed.wait()
            self._timer_changed = trio.Event()
            self._perform(self.forwarder.handle_timer(self.peer.now()))

    # -- what the API asks ------------------------------------------------------------------

    def find_attachment(self, blob: bytes) -> tuple[Attachment, bytes] | None:
        """A message in the inbox that refers to ``blob``: the attachment and its sender."""
        for message in reversed(list(self.peer.inbox)):
            for att in message.attachments:
                if att.id == blob:
                    return att, message.sender
        return None

    def routes(self, src: bytes | None) -> list[Route]:
        """Whom to ask for a blob ``src`` holds: ``src`` itself if linked, then the
        other linked peers, which forward towards it."""
        routes = []
        for pid in self._blob_links(src)[:MAX_ROUTES]:
            if pid == src:
                routes.append(Route(pid, 0))
            else:
                routes.append(Route(pid, MAX_WANT_HOPS - 1, src))
        return routes

    async def manifest(self, blob: bytes) -> Manifest:
        """The blob's manifest: ours, or fetched (and kept) from the mesh."""
        store = self._need_store()
        found = store.manifest(blob)
        if found is not None:
            return found
        known = self.find_attachment(blob)
        src = None if known is None else known[1]
        core = Fetch(blob, [None], self.routes(src), self._next_rid)
        async with contextlib.aclosing(self._drive(core)) as items:
            async for _ in items:
                pass
        att = None if known is None else known[0]
        manifest = Manifest(
            blob,
            core.size,
            core.hashes,
            att.type if att is not None and att.type else "application/octet-stream",
            att.name if att is not None else "",
        )
        await trio.to_thread.run_sync(store.put_manifest, manifest)
        return store.manifest(blob) or manifest

    async def chunks(
        self, manifest: Manifest, first: int, last: int
    ) -> AsyncGenerator[bytes, None]:
        """Chunks ``first..last`` in order: ours, and the missing ones fetched
        (``FETCH_WINDOW`` ahead of the reader) and stored as they arrive."""
        store = self._need_store()
        missing = [i for i in range(first, last + 1) if not store.has_chunk(manifest.hash_of(i))]
        known = self.find_attachment(manifest.id) if missing else None
        core = Fetch(
            manifest.id,
            list(missing),
            self.routes(None if known is None else known[1]),
            self._next_rid,
            size=manifest.size,
            hashes=manifest.hashes,
        )
        wanted = set(missing)
        async with contextlib.aclosing(self._drive(core)) as fetched:
            for index in range(first, last + 1):
                if index in wanted:
                    _, data = await anext(fetched)
                    # no fsync, but in a thread all the same: a page-cache write can
                    # block when the kernel throttles dirty pages
                    digest = manifest.hash_of(index)
                    await trio.to_thread.run_sync(
                        partial(store.write_chunk, data, sync=False, digest=digest)
                    )
                else:
                    got = store.read_chunk(manifest.hash_of(index))
                    if got is None:
                        raise BlobUnavailable("a chunk went missing from the store")
                    data = got
                yield data

    async def _drive(self, core: Fetch) -> AsyncGenerator[tuple[int | None, bytes], None]:
        """Run ``core`` until done, giving its items in order; BlobUnavailable if it fails."""
        if core.done:  # nothing to fetch
            return
        async with self._slots:
            running = _Running(core)
            try:
                while not core.done:
                    self._send_asks(running)
                    for item in core.ready():
                        yield item
                    if core.failed is not None:
                        raise BlobUnavailable(core.failed)
                    if core.done:
                        break
                    if core.in_flight == 0:
                        continue  # refused at once: ask the next route now
                    deadline = core.next_deadline()
                    with trio.move_on_at(math.inf if deadline is None else deadline):
                        await running.wake.wait()
                    running.wake = trio.Event()
                    core.handle_timer(self.peer.now())
            finally:
                for rid in [r for r, f in self._fetching.items() if f is running]:
                    del self._fetching[rid]

    def _send_asks(self, running: _Running) -> None:
        core = running.core
        for ask in core.asks(self.peer.now()):
            link = self.peer.links.get(ask.peer)
            if link is not None and link.enqueue(ask.frame.encode()):
                self._fetching[ask.frame.r] = running
            else:  # gone or full: a refusal now, so the item moves on to the next route
                self._fetching[ask.frame.r] = running
                core.on_answer(ask.peer, BlobNone(ask.frame.r, "busy"), self.peer.now())
                self._fetching.pop(ask.frame.r, None)

    def _need_store(self) -> BlobStore:
        if self.store is None:
            raise BlobUnavailable("this peer has no store, so no blobs")
        return self.store

    def statistics(self) -> dict[str, object]:
        out: dict[str, object] = {
            "served": self.served,
            "busy": self.busy,
            "stray": self.stray,
            "forwarding": self.forwarder.pending,
            "forwarded": self.forwarder.forwarded,
            "fetching": len({id(f) for f in self._fetching.values()}),
        }
        if self.store is not None:
            out.update(self.store.statistics())
        return out
