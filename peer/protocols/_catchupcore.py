"""Catch-up as a sans-IO behaviour: when to serve, walk, ask, check and store.

``CatchUpCore`` takes link-up, link-down, frame and timer events (with
``now``, monotonic seconds) and the outcomes of the work it asked for, and
returns typed commands; the Trio shell (``peer.node._catchuphost``) performs
them. protocol-spec/catchup.md is the contract; the pages themselves are
``peer.protocols._catchup``'s. Rules kept here:

* Serving: per link, at most one ``cureq`` is read from the log at a time
  (``ReadPage``) and ``SERVE_QUEUE`` wait; more get ``busy``. A link that
  goes drops its queue, and a read that finishes after it is not sent.
* Walking: a walk is one (carrier, topic). Walks run one per topic and one
  per carrier at a time, in the order asked for; a walk asked for while the
  same one runs runs again once it ends. A walk reads its cursor
  (``ReadCursor``), asks for page after page (``SendRequest``), at most
  ``PAGES_AHEAD`` pages received and not yet stored, and has each checked
  and stored with its cursor move in one commit (``CheckAndStore``), in
  order. Pages that arrive while one is being stored are announced
  (``Received``: the shell may check them meanwhile) and then stored
  together, all of them in one commit with the last one's cursor. The last
  page's heads go to ``FillGaps``; when that is done the topic's held live
  messages are released (``Release``).
* A request not answered within ``PAGE_TIMEOUT``, or whose link goes, ends
  the walk once what it already received is stored; a later walk resumes
  from the cursor. Replies are matched by ``peer.wire._requests``; a reply
  from the wrong peer or to nothing outstanding is refused (``Unmatched``).
* No trio, no store: the kept topics come from a callable of the shell.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from peer.wire._limits import MAX_PAGE_MESSAGES
from peer.wire._requests import RequestMatcher

from ._catchup import BUSY, Page, PageRequest, refusal

STORE_CAP = "store"
PAGE_TIMEOUT = 20.0
PAGES_AHEAD = 4  # pages of a walk received and not yet stored before the next is asked for
SERVE_QUEUE = 4  # requests per link waiting to be read; beyond: busy
MAX_OUTSTANDING = 1024  # requests in flight, all carriers together
MAX_QUEUED_WALKS = 4096


@dataclass
class TopicCatchUp:
    """What catching up on one topic has found, for ``/status``."""

    received: int = 0
    duplicates: int = 0
    pages: int = 0
    carriers: set[str] = field(default_factory=set)
    missed: dict[str, int] = field(default_factory=dict)  # sender hex -> messages no one had
    last_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "duplicates": self.duplicates,
            "pages": self.pages,
            "carriers": sorted(self.carriers),
            "missed": dict(self.missed),
            "last": self.last_ms,
        }


# -- commands --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendPage:
    """Send ``page`` as a ``cupage`` on the link to ``peer``."""

    peer: bytes
    page: Page


@dataclass(frozen=True, slots=True)
class SendRequest:
    """Send ``request`` as a ``cureq`` on the link to ``peer``; if it cannot be
    queued, tell ``request_failed``."""

    peer: bytes
    request: PageRequest


@dataclass(frozen=True, slots=True)
class ReadPage:
    """Build the answer to ``request`` from the log; feed it to ``page_read``."""

    peer: bytes
    request: PageRequest
    serial: int


@dataclass(frozen=True, slots=True)
class ReadCursor:
    """Read the (carrier, topic) cursor and compute ``since``; feed ``walk_ready``."""

    walk: int
    carrier: bytes
    topic: str


@dataclass(frozen=True, slots=True)
class CheckAndStore:
    """Check ``page`` against ``request`` (and each of ``more``, the walk's next
    pages, in order); store all their envelopes and move the cursor to ``cursor``
    in one commit; feed ``page_stored`` (or ``page_failed``)."""

    walk: int
    carrier: bytes
    topic: str
    request: PageRequest
    page: Page
    cursor: int
    more: tuple[tuple[PageRequest, Page], ...] = ()

    @property
    def pages(self) -> tuple[tuple[PageRequest, Page], ...]:
        return ((self.request, self.page), *self.more)


@dataclass(frozen=True, slots=True)
class Received:
    """A page of a walk came while an earlier one is being stored: the shell may
    check it now; it comes again in a later ``CheckAndStore``."""

    walk: int
    carrier: bytes
    request: PageRequest
    page: Page


@dataclass(frozen=True, slots=True)
class FillGaps:
    """Fetch what ``heads`` show we lack from any carrier; then feed ``gaps_done``."""

    walk: int
    carrier: bytes
    topic: str
    heads: tuple[tuple[bytes, int], ...]


@dataclass(frozen=True, slots=True)
class Release:
    """A walk of ``topic`` reached a carrier's end: live messages held may follow."""

    topic: str


@dataclass(frozen=True, slots=True)
class Answer:
    """The reply to a request the shell asked for with ``ask`` (None: no reply)."""

    token: object
    request: PageRequest
    page: Page | None


@dataclass(frozen=True, slots=True)
class Unmatched:
    """A ``cupage`` that answers nothing outstanding on that link: ignored, counted."""

    peer: bytes
    r: int


Command = (
    SendPage | SendRequest | ReadPage | ReadCursor | CheckAndStore | FillGaps | Release
    | Answer | Unmatched | Received
)


# -- state -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Serving:
    serial: int
    reading: bool = False
    queue: deque[PageRequest] = field(default_factory=deque)


@dataclass(slots=True)
class _Walk:
    id: int
    carrier: bytes
    topic: str
    phase: str = "loading"  # loading, paging, gaps
    since: int = 0
    asking: PageRequest | None = None
    next_after: int | None = None  # the next page to ask for, held back by PAGES_AHEAD
    fetched: bool = False  # no more pages will come (last, refused, no answer)
    received: deque[tuple[PageRequest, Page]] = field(default_factory=deque)
    storing: Page | None = None  # the (last) page the shell is checking and storing
    storing_pages: int = 0  # how many pages that store holds
    again: bool = False


@dataclass(slots=True)
class _Ask:
    token: object
    request: PageRequest


class CatchUpCore:
    """Serving and walking decisions of one peer; see the module docstring."""

    def __init__(self, kept_topics: Callable[[], Sequence[str]]) -> None:
        self.kept_topics = kept_topics
        self.requests: RequestMatcher[int | _Ask] = RequestMatcher(
            PAGE_TIMEOUT, capacity=MAX_OUTSTANDING
        )
        self.stats: defaultdict[str, TopicCatchUp] = defaultdict(TopicCatchUp)
        self.carriers: set[bytes] = set()  # linked peers with the store cap
        self._serving: dict[bytes, _Serving] = {}
        self._serial = 0
        self._walks: dict[int, _Walk] = {}  # running, by id
        self._running: dict[tuple[bytes, str], _Walk] = {}
        self._queued: list[tuple[bytes, str]] = []  # asked for, in order
        self._next_walk = 1

    # -- events ------------------------------------------------------------------------

    def on_link_up(self, peer: bytes, caps: Sequence[str], now: float) -> list[Command]:
        out: list[Command] = []
        if peer in self.carriers or peer in self._serving:
            out += self.on_link_down(peer, now)  # a new link replaced the old one
        if STORE_CAP not in caps:
            return out
        self.carriers.add(peer)
        return out + self.catch_up([peer], self.kept_topics(), now)

    def on_link_down(self, peer: bytes, now: float) -> list[Command]:
        self._serving.pop(peer, None)
        self.carriers.discard(peer)
        self._queued = [key for key in self._queued if key[0] != peer]
        out: list[Command] = []
        for walk in [w for w in self._walks.values() if w.carrier == peer]:
            if walk.phase == "loading":
                out += self._end(walk, now)
            elif walk.phase == "paging":  # what was received is still stored
                if walk.asking is not None:
                    self.requests.cancel(walk.asking.r)
                out += self._no_answer(walk.id, now)
        for _, token in self.requests.drop_peer(peer):  # the shell's asks
            out += self._no_answer(token, now)
        return out

    def on_frame(self, peer: bytes, frame: PageRequest | Page, now: float) -> list[Command]:
        """A ``cureq`` or ``cupage`` frame from ``peer``."""
        if isinstance(frame, PageRequest):
            return self.on_request(peer, frame)
        return self.on_page(peer, frame, now)

    def next_deadline(self) -> float | None:
        return self.requests.next_deadline()

    def handle_timer(self, now: float) -> list[Command]:
        out: list[Command] = []
        for _, token in self.requests.expired(now):
            out += self._no_answer(token, now)
        return out

    # -- serving -----------------------------------------------------------------------

    def on_request(self, peer: bytes, request: PageRequest) -> list[Command]:
        serving = self._serving.get(peer)
        if serving is None:
            self._serial += 1
            serving = self._serving[peer] = _Serving(self._serial)
        if not serving.reading:
            serving.reading = True
            return [ReadPage(peer, request, serving.serial)]
        if len(serving.queue) < SERVE_QUEUE:
            serving.queue.append(request)
            return []
        return [SendPage(peer, refusal(request, BUSY))]

    def page_read(self, read: ReadPage, page: Page) -> list[Command]:
        """The shell built the answer to ``read``: send it, read the next one."""
        serving = self._serving.get(read.peer)
        if serving is None or serving.serial != read.serial:
            return []  # the link went meanwhile
        out: list[Command] = [SendPage(read.peer, page)]
        if serving.queue:
            out.append(ReadPage(read.peer, serving.queue.popleft(), serving.serial))
        else:
            serving.reading = False
        return out

    def serving(self, peer: bytes) -> tuple[bool, int]:
        """(a read is under way, requests waiting) for the link to ``peer``."""
        s = self._serving.get(peer)
        return (False, 0) if s is None else (s.reading, len(s.queue))

    # -- walks -------------------------------------------------------------------------

    def catch_up(
        self, carriers: Sequence[bytes], topics: Sequence[str], now: float
    ) -> list[Command]:
        """Walk ``topics`` at each of ``carriers`` (linked ones with the store cap)."""
        for carrier in carriers:
            if carrier not in self.carriers:
                continue
            for topic in topics:
                key = (carrier, topic)
                running = self._running.get(key)
                if running is not None:
                    running.again = True  # walk again when the running one ends
                elif key not in self._queued and len(self._queued) < MAX_QUEUED_WALKS:
                    self._queued.append(key)
        return self._schedule()

    def walking(self) -> list[tuple[bytes, str]]:
        return list(self._running)

    def queued(self) -> list[tuple[bytes, str]]:
        return list(self._queued)

    def _schedule(self) -> list[Command]:
        busy_carriers = {carrier for carrier, _ in self._running}
        busy_topics = {topic for _, topic in self._running}
        out: list[Command] = []
        for key in list(self._queued):
            carrier, topic = key
            if carrier in busy_carriers or topic in busy_topics:
                continue
            self._queued.remove(key)
            walk = _Walk(self._next_walk, carrier, topic)
            self._next_walk += 1
            self._walks[walk.id] = walk
            self._running[key] = walk
            busy_carriers.add(carrier)
            busy_topics.add(topic)
            out.append(ReadCursor(walk.id, carrier, topic))
        return out

    def walk_ready(self, walk_id: int, after: int, since: int, now: float) -> list[Command]:
        """The shell read the walk's cursor (``after``) and ``since``."""
        walk = self._walks.get(walk_id)
        if walk is None or walk.phase != "loading":
            return []
        walk.phase = "paging"
        walk.since = since
        self.stats[walk.topic]  # a topic being caught up shows in /status at once
        return self._ask_next(walk, after, now)

    def _ask_next(self, walk: _Walk, after: int, now: float) -> list[Command]:
        if len(walk.received) + (walk.storing is not None) >= PAGES_AHEAD:
            walk.next_after = after  # asked for once a page is stored
            return []
        walk.next_after = None
        linked = walk.carrier in self.carriers
        rid = self.requests.start(walk.carrier, now, walk.id) if linked else None
        if rid is None:
            walk.fetched = True
            return self._settle(walk, now)
        request = PageRequest(rid, walk.topic, after, walk.since, MAX_PAGE_MESSAGES)
        walk.asking = request
        return [SendRequest(walk.carrier, request)]

    def on_page(self, peer: bytes, page: Page, now: float) -> list[Command]:
        token = self.requests.resolve(peer, page.r)
        if token is None:
            return [Unmatched(peer, page.r)]
        if isinstance(token, _Ask):
            return [Answer(token.token, token.request, page)]
        walk = self._walks.get(token)
        if walk is None or walk.asking is None or walk.asking.r != page.r:
            return []
        request, walk.asking = walk.asking, None
        out: list[Command] = []
        if page.err is not None:
            walk.fetched = True  # refused: other carriers may have it
        else:
            walk.received.append((request, page))
            if walk.storing is not None:
                out.append(Received(walk.id, walk.carrier, request, page))
            if page.more:
                out += self._ask_next(walk, page.next, now)
            else:
                walk.fetched = True
        return out + self._settle(walk, now)

    def request_failed(self, peer: bytes, rid: int, now: float) -> list[Command]:
        """A ``SendRequest`` could not be queued on its link: as if unanswered."""
        if self.requests.peer_of(rid) != peer:
            return []
        token = self.requests.cancel(rid)
        return [] if token is None else self._no_answer(token, now)

    def _no_answer(self, token: int | _Ask, now: float) -> list[Command]:
        if isinstance(token, _Ask):
            return [Answer(token.token, token.request, None)]
        walk = self._walks.get(token)
        if walk is None:
            return []
        walk.asking = None
        walk.next_after = None
        walk.fetched = True
        return self._settle(walk, now)

    def _settle(self, walk: _Walk, now: float) -> list[Command]:
        """Store the next page received, or end a walk that has nothing left to do."""
        if walk.storing is not None or walk.phase != "paging":
            return []
        if walk.received:
            request, page = walk.received.popleft()
            more = tuple(walk.received)  # at most PAGES_AHEAD: all in one commit
            walk.received.clear()
            last = more[-1][1] if more else page
            walk.storing, walk.storing_pages = last, 1 + len(more)
            return [
                CheckAndStore(walk.id, walk.carrier, walk.topic, request, page, last.next, more)
            ]
        if walk.fetched and walk.asking is None:
            return self._end(walk, now)
        return []

    def page_stored(
        self, walk_id: int, received: int, new: int, wall_ms: int, now: float
    ) -> list[Command]:
        """The shell stored the page (or pages) of a ``CheckAndStore``: ``received``
        envelopes, ``new`` of them new, with the cursor move."""
        walk = self._walks.get(walk_id)
        if walk is None or walk.storing is None:
            return []
        page, walk.storing = walk.storing, None
        stats = self.stats[walk.topic]
        stats.carriers.add(walk.carrier.hex())
        stats.pages += walk.storing_pages
        stats.received += new
        stats.duplicates += received - new
        stats.last_ms = wall_ms
        if not page.more:  # the carrier's log was read to its end
            walk.phase = "gaps"
            return [FillGaps(walk.id, walk.carrier, walk.topic, tuple(page.heads))]
        out: list[Command] = []
        if walk.next_after is not None:
            out += self._ask_next(walk, walk.next_after, now)
        return out + self._settle(walk, now)

    def page_failed(self, walk_id: int, now: float) -> list[Command]:
        """A page failed its check or could not be stored: the walk stops here."""
        walk = self._walks.get(walk_id)
        if walk is None:
            return []
        if walk.asking is not None:
            self.requests.cancel(walk.asking.r)
        return self._end(walk, now)

    def gaps_done(self, walk_id: int, now: float) -> list[Command]:
        """The shell filled the gaps of a complete walk."""
        walk = self._walks.get(walk_id)
        if walk is None or walk.phase != "gaps":
            return []
        return [Release(walk.topic), *self._end(walk, now)]

    def _end(self, walk: _Walk, now: float) -> list[Command]:
        del self._walks[walk.id]
        del self._running[(walk.carrier, walk.topic)]
        if walk.again and walk.carrier in self.carriers:
            self._queued.insert(0, (walk.carrier, walk.topic))
        return self._schedule()

    # -- requests of the shell (gap filling) ---------------------------------------------

    def ask(
        self,
        carrier: bytes,
        topic: str,
        sender: bytes,
        first: int,
        last: int,
        token: object,
        now: float,
    ) -> list[Command]:
        """Ask ``carrier`` for sender's ``first..last`` of ``topic``; the reply (or
        None) comes back as ``Answer(token, ...)``."""
        ask = _Ask(token, PageRequest(0, topic, 0, 0, MAX_PAGE_MESSAGES, sender, first, last))
        rid = self.requests.start(carrier, now, ask) if carrier in self.carriers else None
        if rid is None:
            return [Answer(token, ask.request, None)]
        ask.request = PageRequest(rid, topic, 0, 0, MAX_PAGE_MESSAGES, sender, first, last)
        return [SendRequest(carrier, ask.request)]
