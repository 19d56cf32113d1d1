"""Moving blob chunks between peers, sans-IO (protocol-spec/blobs.md).

Two state machines, each driven by the Trio shell (``peer.node._blobhost``)
with ``now`` as an input, deciding what to send and never sending it:

* :class:`Fetch`: getting a blob's manifest or chunks, in order, at most
  ``window`` wants in flight, each over one of its ``routes`` (a linked peer,
  and how many hops the want may travel beyond it); an answer that does not
  verify, a ``blob-none`` or a timeout moves that item to the next route; an
  item every route failed ``rounds`` times fails the fetch. What arrived is
  handed out in order by :meth:`Fetch.ready`, so the reader streams it.
* :class:`Forwarder`: a peer without the data forwards a want to peers that
  may have it and routes their first answer back (the relay case). Bounded:
  ``max_pending`` wants at once, ``per_link`` per asking peer; each expires
  after ``timeout`` with a ``blob-none`` ``timeout`` to the asker.

Rules kept here: no I/O, no clock but the ``now`` given, request ids from
the caller's ``next_rid``; every table bounded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from peer.wire._blobframes import (
    HASH_SIZE,
    BlobAnswer,
    BlobChunk,
    BlobHave,
    BlobNone,
    BlobWant,
    check_manifest,
    chunk_hash,
    chunk_length,
)
from peer.wire._errors import ProtocolError

FETCH_WINDOW = 8  # wants in flight per fetch: 2 MiB of chunks
WANT_TIMEOUT = 10.0  # seconds a want waits for its answer
FORWARD_PENDING = 256  # wants a peer forwards for others at once
FORWARD_PER_LINK = 32  # ... for one asking peer
FORWARD_FANOUT = 3  # peers one want is forwarded to


@dataclass(frozen=True, slots=True)
class Route:
    """A way to reach the data: ask ``peer``, letting the want go ``hops`` further,
    towards ``src`` if given."""

    peer: bytes
    hops: int = 0
    src: bytes | None = None


@dataclass(frozen=True, slots=True)
class Ask:
    """Send ``frame`` (a ``blob-want``) to ``peer``."""

    peer: bytes
    frame: BlobWant


@dataclass(slots=True)
class _Pending:
    item: int | None
    route: int
    deadline: float


@dataclass
class Fetch:
    """Fetch the manifest (item None) or chunks of ``blob``; see the module header.

    ``size`` and ``hashes`` are the manifest once known (chunk items need it).
    """

    blob: bytes
    items: list[int | None]
    routes: list[Route]
    next_rid: Callable[[], int]
    size: int = 0
    hashes: bytes = b""
    window: int = FETCH_WINDOW
    timeout: float = WANT_TIMEOUT
    rounds: int = 2
    failed: str | None = None
    _next: int = 0  # items[:_next] have been asked at least once
    _pending: dict[int, _Pending] = field(default_factory=dict)  # rid -> want
    # (item, attempts so far, route to try next)
    _retry: list[tuple[int | None, int, int]] = field(default_factory=list)
    _attempts: dict[int | None, int] = field(default_factory=dict)
    _got: dict[int | None, bytes] = field(default_factory=dict)  # arrived, not handed out
    _out: int = 0  # items[:_out] have been handed out
    _preferred: int = 0  # the route new wants go to first
    bytes_in: int = 0

    def asks(self, now: float) -> list[Ask]:
        """The wants to send now: retries first, then new items, up to the window."""
        if self.failed is not None or not self.routes:
            if self.failed is None:
                self.failed = "no peer to ask"
            return []
        out: list[Ask] = []
        while len(self._pending) < self.window and (self._retry or self._next < len(self.items)):
            if self._retry:
                item, attempt, route = self._retry.pop(0)
            else:
                item, attempt, route = self.items[self._next], 0, self._preferred
                self._next += 1
            out.append(self._ask(item, attempt, route, now))
        return out

    def _ask(self, item: int | None, attempt: int, route_index: int, now: float) -> Ask:
        rid = self.next_rid()
        route = self.routes[route_index]
        self._attempts[item] = attempt
        self._pending[rid] = _Pending(item, route_index, now + self.timeout)
        return Ask(route.peer, BlobWant(rid, self.blob, item, route.hops, route.src))

    def owns(self, rid: int) -> bool:
        return rid in self._pending

    def on_answer(self, peer: bytes, answer: BlobAnswer, now: float) -> bool:
        """An answer to one of our wants (``owns(answer.r)``); False if it was not
        taken (not ours, or from a peer we did not ask: the want stays pending)."""
        pending = self._pending.get(answer.r)
        if pending is None or self.routes[pending.route].peer != peer:
            return False
        del self._pending[answer.r]
        if not self._accept(pending.item, answer):
            self._failed_once(pending)
        return True

    def _accept(self, item: int | None, answer: BlobAnswer) -> bool:
        if item is None:
            if not isinstance(answer, BlobHave):
                return False
            try:
                check_manifest(self.blob, answer.size, answer.hashes)
            except ProtocolError:
                return False
            self.size, self.hashes = answer.size, answer.hashes
            self._got[None] = answer.hashes
            return True
        if not isinstance(answer, BlobChunk):
            return False
        expected = self.hashes[item * HASH_SIZE : (item + 1) * HASH_SIZE]
        if len(answer.data) != chunk_length(self.size, item) or chunk_hash(answer.data) != expected:
            return False
        self._got[item] = answer.data
        self.bytes_in += len(answer.data)
        return True

    def _failed_once(self, pending: _Pending) -> None:
        attempt = self._attempts.get(pending.item, 0) + 1
        if attempt >= self.rounds * len(self.routes):
            self.failed = f"no peer gave {'the manifest' if pending.item is None else 'a chunk'}"
            self._pending.clear()
            return
        following = (pending.route + 1) % len(self.routes)
        if pending.route == self._preferred:  # this route failed: others go first from now
            self._preferred = following
        self._retry.append((pending.item, attempt, following))

    def ready(self) -> list[tuple[int | None, bytes]]:
        """Arrived items in ``items`` order, each handed out once."""
        out = []
        while self._out < len(self.items) and self.items[self._out] in self._got:
            item = self.items[self._out]
            out.append((item, self._got.pop(item)))
            self._out += 1
        return out

    @property
    def done(self) -> bool:
        return self._out == len(self.items)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def next_deadline(self) -> float | None:
        return min((p.deadline for p in self._pending.values()), default=None)

    def handle_timer(self, now: float) -> None:
        for rid, pending in list(self._pending.items()):
            if pending.deadline <= now and self.failed is None:
                del self._pending[rid]
                self._failed_once(pending)


@dataclass(slots=True)
class _Forward:
    asker: bytes
    asker_rid: int
    waiting: set[bytes]
    deadline: float
    err: str = "unknown"


@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``frame`` to ``peer`` (an answer, ours or routed back)."""

    peer: bytes
    frame: BlobWant | BlobHave | BlobChunk | BlobNone


class Forwarder:
    """Wants forwarded on behalf of other peers; see the module header."""

    def __init__(
        self,
        next_rid: Callable[[], int],
        *,
        max_pending: int = FORWARD_PENDING,
        per_link: int = FORWARD_PER_LINK,
        fanout: int = FORWARD_FANOUT,
        timeout: float = WANT_TIMEOUT,
    ) -> None:
        self.next_rid = next_rid
        self.max_pending = max_pending
        self.per_link = per_link
        self.fanout = fanout
        self.timeout = timeout
        self._pending: dict[int, _Forward] = {}
        self._per_link: dict[bytes, int] = {}
        self.forwarded = 0
        self.refused = 0
        self.stray = 0

    def want(self, asker: bytes, want: BlobWant, linked: list[bytes], now: float) -> list[Reply]:
        """A want we cannot answer from our own store: forward it, or say why not.
        ``linked``: the peers that speak blobs, in order of preference."""
        if want.hops == 0:
            return [Reply(asker, BlobNone(want.r, "unknown"))]
        if len(self._pending) >= self.max_pending or self._per_link.get(asker, 0) >= self.per_link:
            self.refused += 1
            return [Reply(asker, BlobNone(want.r, "busy"))]
        others = [p for p in linked if p != asker]
        if want.src is not None and want.src in others:
            targets = [want.src]  # the holder itself is linked: ask it alone
        else:
            targets = others[: self.fanout]
        if not targets:
            return [Reply(asker, BlobNone(want.r, "unknown"))]
        rid = self.next_rid()
        self._pending[rid] = _Forward(asker, want.r, set(targets), now + self.timeout)
        self._per_link[asker] = self._per_link.get(asker, 0) + 1
        self.forwarded += 1
        onward = BlobWant(rid, want.blob, want.index, want.hops - 1, want.src)
        return [Reply(t, onward) for t in targets]

    def owns(self, rid: int) -> bool:
        return rid in self._pending

    def answer(self, peer: bytes, answer: BlobAnswer) -> list[Reply]:
        """An answer to a forwarded want: the first with data goes back to the asker."""
        entry = self._pending.get(answer.r)
        if entry is None or peer not in entry.waiting:
            self.stray += 1
            return []
        if isinstance(answer, BlobNone):
            entry.waiting.discard(peer)
            if answer.err in ("busy", "timeout"):
                entry.err = answer.err
            if entry.waiting:
                return []
            self._drop(answer.r)
            return [Reply(entry.asker, BlobNone(entry.asker_rid, entry.err))]
        self._drop(answer.r)
        if isinstance(answer, BlobHave):
            back: BlobHave | BlobChunk = BlobHave(entry.asker_rid, answer.size, answer.hashes)
        else:
            back = BlobChunk(entry.asker_rid, answer.data)
        return [Reply(entry.asker, back)]

    def _drop(self, rid: int) -> None:
        entry = self._pending.pop(rid)
        left = self._per_link.get(entry.asker, 1) - 1
        if left > 0:
            self._per_link[entry.asker] = left
        else:
            self._per_link.pop(entry.asker, None)

    def link_down(self, peer: bytes) -> list[Reply]:
        """``peer`` is gone: its own wants are dropped, and it answers nothing more."""
        out: list[Reply] = []
        for rid, entry in list(self._pending.items()):
            if entry.asker == peer:
                self._drop(rid)
            elif peer in entry.waiting:
                out += self.answer(peer, BlobNone(rid, "unknown"))
        return out

    def next_deadline(self) -> float | None:
        return min((e.deadline for e in self._pending.values()), default=None)

    def handle_timer(self, now: float) -> list[Reply]:
        out = []
        for rid, entry in list(self._pending.items()):
            if entry.deadline <= now:
                self._drop(rid)
                out.append(Reply(entry.asker, BlobNone(entry.asker_rid, "timeout")))
        return out

    @property
    def pending(self) -> int:
        return len(self._pending)
