"""Catch-up as a sans-IO behaviour (peer/protocols/_catchupcore.py) and the
request/reply matcher (peer/wire/_requests.py), driven without trio.

A requester's ``CatchUpCore`` and a carrier's run against each other through
``Net``, a fake link that carries ``cureq``/``cupage`` frames (and can drop
them), a carrier log (``tests._catchup_log.LogSource`` read by
``build_page``) and a requester "store" (ids, cursors). Time is ``now``,
stepped by the tests. The rules are protocol-spec/catchup.md's sections 5
and 6: pages in order from a cursor, at most ``PAGES_AHEAD`` received and
not stored, timeouts and broken links ending a walk that a later one
resumes, ``busy`` beyond the serving queue, replies matched to their link.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from peer.protocols._catchup import BUSY, Page, PageRequest, build_page, check_page
from peer.protocols._catchupcore import (
    PAGE_TIMEOUT,
    PAGES_AHEAD,
    SERVE_QUEUE,
    Answer,
    CatchUpCore,
    CheckAndStore,
    Command,
    FillGaps,
    ReadCursor,
    ReadPage,
    Received,
    Release,
    SendPage,
    SendRequest,
    Unmatched,
)
from peer.wire._envelope import Envelope
from peer.wire._frames import decode_frame, encode_frame
from peer.wire._limits import MAX_REQUEST_ID
from peer.wire._requests import RequestMatcher
from tests._catchup_log import ALICE, BOB, CAROL, LogSource, msg

ME = b"\x01" * 32  # the requester
CARRIER = b"\x02" * 32
OTHER = b"\x03" * 32  # another carrier, or an intruder
STORE = ("store",)


def carrier_log(count: int = 12) -> tuple[LogSource, list[Envelope]]:
    """``count`` messages of three senders, big enough that a page holds four."""
    source = LogSource()
    envs = []
    seqs = {ALICE.peer_id: 0, BOB.peer_id: 0, CAROL.peer_id: 0}
    for i in range(count):
        who = (ALICE, BOB, CAROL)[i % 3]
        seqs[who.peer_id] += 1
        env = msg(who, seqs[who.peer_id], "z" * 60_000)
        assert source.append(env, received_ms=i + 1) is not None
        envs.append(env)
    return source, envs


def wire(kind: str, fields: dict[str, object]) -> PageRequest | Page:
    """The frame as the other side decodes it from the wire."""
    frame = decode_frame(encode_frame(kind, **fields))
    assert isinstance(frame, PageRequest | Page) and kind == frame.TYPE
    return frame


@dataclass
class Net:
    """A requester core and a carrier core joined by a link that may drop frames."""

    source: LogSource
    now: float = 1000.0
    drop: Callable[[str, int], bool] = lambda kind, n: False  # (frame kind, its number)
    hold_stores: bool = False  # leave CheckAndStore in ``held`` instead of performing it
    requester: CatchUpCore = field(default_factory=lambda: CatchUpCore(lambda: ["general"]))
    carrier: CatchUpCore = field(default_factory=lambda: CatchUpCore(lambda: []))
    stored: list[Envelope] = field(default_factory=list)  # the requester's store, in order
    cursors: dict[tuple[bytes, str], int] = field(default_factory=dict)
    held: list[CheckAndStore] = field(default_factory=list)
    sent: list[tuple[str, int]] = field(default_factory=list)  # frames put on the link
    dropped: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    seen: list[Command] = field(default_factory=list)  # every requester command
    linked: bool = True

    def __post_init__(self) -> None:
        self._todo: deque[tuple[str, Command]] = deque()

    def requester_does(self, commands: list[Command]) -> None:
        self._todo.extend(("requester", c) for c in commands)
        self._run()

    def carrier_does(self, commands: list[Command]) -> None:
        self._todo.extend(("carrier", c) for c in commands)
        self._run()

    def _run(self) -> None:
        while self._todo:
            side, command = self._todo.popleft()
            if side == "requester":
                self.seen.append(command)
                self._requester(command)
            else:
                self._carrier(command)

    def _frame(self, kind: str, fields: dict[str, object]) -> PageRequest | Page | None:
        number = sum(1 for k, _ in self.sent if k == kind) + 1
        self.sent.append((kind, number))
        if not self.linked or self.drop(kind, number):
            self.dropped.append((kind, fields))
            return None
        return wire(kind, fields)

    def _requester(self, command: Command) -> None:
        r = self.requester
        match command:
            case SendRequest(peer, request):
                assert peer == CARRIER
                got = self._frame("cureq", request.fields())
                if got is not None:
                    self.carrier_does(self.carrier.on_frame(ME, got, self.now))
            case ReadCursor(walk, carrier, topic):
                after = self.cursors.get((carrier, topic), 0)
                self._todo.extend(
                    ("requester", c) for c in r.walk_ready(walk, after, 0 if after else 1, self.now)
                )
            case CheckAndStore() if self.hold_stores:
                self.held.append(command)
            case CheckAndStore():
                self.store(command)
            case FillGaps(walk):
                self._todo.extend(("requester", c) for c in r.gaps_done(walk, self.now))

    def store(self, command: CheckAndStore) -> None:
        ids = {e.id for e in self.stored}
        envs = [
            env
            for request, page in command.pages
            for env in check_page(request, page, known=lambda i: ids & set(i))
        ]
        self.stored.extend(envs)
        self.cursors[(command.carrier, command.topic)] = command.cursor
        out = self.requester.page_stored(command.walk, len(envs), len(envs), 7, self.now)
        self._todo.extend(("requester", c) for c in out)

    def _carrier(self, command: Command) -> None:
        match command:
            case ReadPage(peer, request):
                page = build_page(self.source, request, peer)
                self._todo.extend(("carrier", c) for c in self.carrier.page_read(command, page))
            case SendPage(peer, page):
                assert peer == ME
                got = self._frame("cupage", page.fields())
                if got is not None:
                    out = self.requester.on_frame(CARRIER, got, self.now)
                    self._todo.extend(("requester", c) for c in out)

    def link_up(self) -> None:
        self.linked = True
        self.carrier_does(self.carrier.on_link_up(ME, (), self.now))
        self.requester_does(self.requester.on_link_up(CARRIER, STORE, self.now))

    def link_down(self) -> None:
        self.linked = False
        self.carrier_does(self.carrier.on_link_down(ME, self.now))
        self.requester_does(self.requester.on_link_down(CARRIER, self.now))

    def requests(self) -> list[PageRequest]:
        return [c.request for c in self.seen if isinstance(c, SendRequest)]

    def releases(self) -> list[str]:
        return [c.topic for c in self.seen if isinstance(c, Release)]


def in_sender_order(stored: list[Envelope]) -> bool:
    last: dict[bytes, int] = {}
    for env in stored:
        if env.seq != last.get(env.sender, 0) + 1:
            return False
        last[env.sender] = env.seq
    return True


# -- walks ------------------------------------------------------------------------------------


def test_a_walk_completes_in_order_across_several_pages() -> None:
    source, envs = carrier_log(12)
    net = Net(source)
    net.link_up()
    requests = net.requests()
    assert [q.after for q in requests] == [0, 4, 8]  # three pages of four, from each cursor
    assert requests[0].since == 1 and all(q.since == 1 for q in requests)
    assert sorted(e.id for e in net.stored) == sorted(e.id for e in envs)
    assert in_sender_order(net.stored)
    assert net.cursors[(CARRIER, "general")] == 12
    assert net.releases() == ["general"]
    [gaps] = [c for c in net.seen if isinstance(c, FillGaps)]
    assert dict(gaps.heads) == {ALICE.peer_id: 4, BOB.peer_id: 4, CAROL.peer_id: 4}
    stats = net.requester.stats["general"]
    assert stats.pages == len(requests) and stats.received == 12
    assert stats.carriers == {CARRIER.hex()} and stats.last_ms == 7
    assert net.requester.walking() == [] and len(net.requester.requests) == 0
    assert net.requester.next_deadline() is None


def test_pages_are_asked_ahead_while_one_is_stored() -> None:
    source, _ = carrier_log(48)  # 12 pages of 4
    net = Net(source, hold_stores=True)
    net.link_up()
    # page 1 is being stored, the next ones wait: PAGES_AHEAD pages held, no request more
    assert len(net.held) == 1 and len(net.requests()) == PAGES_AHEAD
    assert len(net.requester.requests) == 0
    # each page that came while another was stored was announced, for an early check
    early = [c for c in net.seen if isinstance(c, Received)]
    assert [(c.request, c.page.r) for c in early] == [(r, r.r) for r in net.requests()[1:]]
    net.store(net.held.pop(0))
    net.requester_does([])
    # those that waited are stored together (one commit, the last one's cursor), and
    # asking goes on while they are
    [together] = net.held
    assert [p.r for _, p in together.pages] == [r.r for r in net.requests()[1:PAGES_AHEAD]]
    assert together.cursor == together.pages[-1][1].next
    assert len(net.requests()) == 2 * PAGES_AHEAD - 1
    stores = 2
    while net.held:
        net.store(net.held.pop(0))
        net.requester_does([])
        stores += bool(net.held)
    assert len(net.stored) == 48 and in_sender_order(net.stored)
    assert net.cursors[(CARRIER, "general")] == 48
    assert stores < 12  # fewer commits than pages
    assert net.requester.stats["general"].pages == 12
    assert net.releases() == ["general"]


def test_a_dropped_page_times_out_and_the_walk_resumes_from_the_cursor() -> None:
    source, envs = carrier_log(12)
    net = Net(source, drop=lambda kind, n: kind == "cupage" and n == 2)
    net.link_up()
    assert len(net.requests()) == 2 and len(net.stored) == 4  # page 2 lost
    cursor = net.cursors[(CARRIER, "general")]
    deadline = net.requester.next_deadline()
    assert deadline == net.now + PAGE_TIMEOUT
    net.requester_does(net.requester.handle_timer(deadline - 0.001))
    assert net.requester.walking() == [(CARRIER, "general")]  # still waiting
    net.requester_does(net.requester.handle_timer(deadline))
    assert net.requester.walking() == [] and net.releases() == []
    assert net.requester.next_deadline() is None
    # the lost page arrives late: ignored, counted
    _, late = net.dropped[0]
    assert net.requester.on_frame(CARRIER, wire("cupage", late), deadline) == [
        Unmatched(CARRIER, late["r"])  # type: ignore[arg-type]
    ]
    net.now = deadline + 1
    net.requester_does(net.requester.catch_up([CARRIER], ["general"], net.now))
    resumed = net.requests()[2]
    assert resumed.after == cursor and resumed.since == 0  # a cursor is exact
    assert sorted(e.id for e in net.stored) == sorted(e.id for e in envs)
    assert net.releases() == ["general"]


def test_a_link_down_ends_the_walk_and_a_later_link_up_resumes_it() -> None:
    source, envs = carrier_log(12)
    net = Net(source, drop=lambda kind, n: kind == "cupage" and n == 2)
    net.link_up()
    cursor = net.cursors[(CARRIER, "general")]
    assert net.requester.walking() == [(CARRIER, "general")]
    net.link_down()
    assert net.requester.walking() == [] and len(net.requester.requests) == 0
    assert net.requester.next_deadline() is None and net.releases() == []
    assert net.requester.catch_up([CARRIER], ["general"], net.now) == []  # not a carrier now
    net.drop = lambda kind, n: False
    net.link_up()
    assert net.requests()[2].after == cursor
    assert sorted(e.id for e in net.stored) == sorted(e.id for e in envs)
    assert in_sender_order(net.stored) and net.releases() == ["general"]


def test_pages_received_before_the_link_went_are_still_stored() -> None:
    source, _ = carrier_log(48)
    net = Net(source, hold_stores=True)
    net.link_up()
    net.link_down()
    assert net.requester.walking() == [(CARRIER, "general")]  # a page is being stored
    while net.held:
        net.store(net.held.pop(0))
        net.requester_does([])
    got = 4 * PAGES_AHEAD  # the pages asked ahead, four messages each
    assert len(net.stored) == got and net.requester.walking() == []
    assert net.cursors[(CARRIER, "general")] == got and net.releases() == []


def test_walks_of_one_topic_run_one_at_a_time_and_again_when_asked() -> None:
    core = CatchUpCore(lambda: ["general", "other"])
    first = core.on_link_up(CARRIER, STORE, 0.0)
    assert first == [ReadCursor(1, CARRIER, "general")]  # one walk per carrier at a time
    assert core.on_link_up(OTHER, STORE, 0.0) == [ReadCursor(2, OTHER, "other")]
    assert core.catch_up([CARRIER], ["general"], 0.0) == []  # running: again later
    assert core.queued() == [(CARRIER, "other"), (OTHER, "general")]
    assert core.on_link_up(b"\x09" * 32, ("relay",), 0.0) == []  # not a carrier
    [send] = core.walk_ready(1, 0, 5, 0.0)
    assert isinstance(send, SendRequest)
    page = Page(send.request.r, "general", [], 0, False, [(ALICE.peer_id, 3)])
    [store] = core.on_frame(CARRIER, wire("cupage", page.fields()), 1.0)
    assert isinstance(store, CheckAndStore)
    [gaps] = core.page_stored(1, 0, 0, 0, 1.0)
    assert gaps == FillGaps(1, CARRIER, "general", ((ALICE.peer_id, 3),))
    out = core.gaps_done(1, 1.0)
    # released; the walk asked for again runs again before the queued ones that wait
    assert out == [Release("general"), ReadCursor(3, CARRIER, "general")]
    assert core.gaps_done(1, 1.0) == []  # a stale outcome changes nothing


def test_a_refusal_ends_the_walk_without_release() -> None:
    core = CatchUpCore(lambda: ["general"])
    core.on_link_up(CARRIER, STORE, 0.0)
    assert "general" not in core.stats
    [send] = core.walk_ready(1, 0, 5, 0.0)
    assert "general" in core.stats  # shows in /status from the walk's start
    assert isinstance(send, SendRequest)
    busy = Page(send.request.r, "general", [], 0, False, [], BUSY)
    assert core.on_frame(CARRIER, wire("cupage", busy.fields()), 1.0) == []
    assert core.walking() == []


# -- serving ----------------------------------------------------------------------------------


def test_busy_beyond_the_serving_queue_and_a_link_down_drops_it() -> None:
    core = CatchUpCore(lambda: [])
    requests = [PageRequest(r, "general") for r in range(1, SERVE_QUEUE + 4)]
    out: list[Command] = []
    for request in requests:
        out += core.on_frame(OTHER, wire("cureq", request.fields()), 0.0)
    [read, *busy] = out
    assert read == ReadPage(OTHER, requests[0], read.serial)  # type: ignore[union-attr]
    assert busy == [SendPage(OTHER, Page(q.r, "general", [], 0, False, [], BUSY))
                    for q in requests[SERVE_QUEUE + 1 :]]
    assert core.serving(OTHER) == (True, SERVE_QUEUE)
    assert isinstance(read, ReadPage)
    answer = Page(1, "general", [], 0, False, [])
    assert core.page_read(read, answer) == [
        SendPage(OTHER, answer),
        ReadPage(OTHER, requests[1], read.serial),  # one read at a time, in order
    ]
    core.on_link_down(OTHER, 1.0)
    assert core.serving(OTHER) == (False, 0)
    assert core.page_read(read, answer) == []  # the link went: nothing is sent
    [again] = core.on_frame(OTHER, wire("cureq", requests[0].fields()), 2.0)
    assert isinstance(again, ReadPage) and again.serial != read.serial
    assert core.page_read(read, answer) == []  # a read of the old link is not sent on the new


# -- matching replies -------------------------------------------------------------------------


def test_a_reply_from_the_wrong_peer_is_refused() -> None:
    core = CatchUpCore(lambda: ["general"])
    core.on_link_up(CARRIER, STORE, 0.0)
    core.on_link_up(OTHER, ("relay",), 0.0)
    [send] = core.walk_ready(1, 0, 5, 0.0)
    assert isinstance(send, SendRequest)
    page = Page(send.request.r, "general", [], 0, False, [])
    fields = wire("cupage", page.fields())
    assert core.on_frame(OTHER, fields, 1.0) == [Unmatched(OTHER, send.request.r)]
    assert core.requests.refused == 1 and send.request.r in core.requests
    [store] = core.on_frame(CARRIER, fields, 1.0)
    assert isinstance(store, CheckAndStore) and store.page == page
    assert core.on_frame(CARRIER, fields, 1.0) == [Unmatched(CARRIER, page.r)]


def test_asks_of_the_shell_are_answered_or_fail_with_the_link() -> None:
    core = CatchUpCore(lambda: [])
    core.on_link_up(CARRIER, STORE, 0.0)
    token = object()
    [send] = core.ask(CARRIER, "general", ALICE.peer_id, 4, 5, token, 0.0)
    assert isinstance(send, SendRequest)
    assert (send.request.sender, send.request.first, send.request.last) == (ALICE.peer_id, 4, 5)
    page = Page(send.request.r, "general", [], 5, False, [])
    fields = wire("cupage", page.fields())
    assert core.on_frame(CARRIER, fields, 1.0) == [Answer(token, send.request, page)]
    [send] = core.ask(CARRIER, "general", ALICE.peer_id, 4, 5, token, 2.0)
    assert isinstance(send, SendRequest)
    assert core.on_link_down(CARRIER, 3.0) == [Answer(token, send.request, None)]
    [failed] = core.ask(CARRIER, "general", ALICE.peer_id, 4, 5, token, 4.0)
    assert isinstance(failed, Answer) and failed.page is None  # no link: no request


def test_matcher_ids_wrap_and_skip_those_still_out() -> None:
    m: RequestMatcher[str] = RequestMatcher(1.0, max_id=3)
    assert [m.start(ME, 0.0, t) for t in "abc"] == [1, 2, 3]
    assert m.start(ME, 0.0, "d") is None  # every id is out
    assert m.resolve(ME, 2) == "b"
    assert m.start(ME, 0.5, "e") == 2  # wrapped past 3, skipping 1 (still out)
    assert m.resolve(OTHER, 1) is None and m.refused == 1  # another peer's reply
    assert m.resolve(ME, 7) is None and m.refused == 2
    wide: RequestMatcher[str] = RequestMatcher(1.0, first=MAX_REQUEST_ID)
    assert [wide.start(ME, 0.0, "x"), wide.start(ME, 0.0, "y")] == [MAX_REQUEST_ID, 1]


def test_matcher_deadlines_and_dropped_links() -> None:
    m: RequestMatcher[str] = RequestMatcher(10.0, capacity=3)
    assert m.next_deadline() is None
    a = m.start(ME, 0.0, "a")
    b = m.start(OTHER, 1.0, "b")
    c = m.start(ME, 2.0, "c")
    assert m.start(ME, 3.0, "d") is None and len(m) == 3  # bounded
    assert m.next_deadline() == 10.0
    assert m.expired(9.9) == []
    assert m.expired(11.0) == [(a, "a"), (b, "b")]
    assert m.next_deadline() == 12.0
    assert m.drop_peer(ME) == [(c, "c")] and len(m) == 0
    assert c is not None
    assert m.resolve(ME, c) is None  # gone with its link
    with pytest.raises(ValueError):
        RequestMatcher(0.0)
