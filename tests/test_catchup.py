"""Catch-up (peer/_catchup.py), sans-IO: what a carrier answers and what a requester accepts.

The carrier side runs on ``LogSource``, a small in-memory stand-in for the
store's reads (written from the ``PageSource`` contract, independent of
``store/``). The envelopes are real ones, signed with fixed identities, so
``check_page`` verifies them as it would on the wire. The rules tested are
those of protocol-spec/catchup.md: log order, cursors, the page bounds,
``since``/``after``, sender ranges, refusals, heads on the last page only,
what a requester refuses, and gap detection.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.protocols._catchup import (
    BUSY,
    ERRORS,
    FORBIDDEN,
    NOT_CARRIED,
    Page,
    PageRequest,
    authenticate,
    build_page,
    check_page,
    may_serve,
    missing_ranges,
    refusal,
)
from peer.wire._cbor import encode
from peer.wire._envelope import (
    Content,
    Envelope,
    inbox_topic,
    open_envelope,
    seal_dm,
    seal_message,
    seal_presence,
    seal_receipt,
    split_wire,
)
from peer.wire._errors import ErrorCode, ProtocolError
from peer.wire._frames import decode_frame, encode_frame
from peer.wire._identity import Identity
from peer.wire._limits import MAX_ENVELOPE, MAX_PAGE_BYTES, MAX_PAGE_HEADS, MAX_PAGE_MESSAGES

ALICE = Identity.from_seed(b"\x21" * 32)
BOB = Identity.from_seed(b"\x22" * 32)
CAROL = Identity.from_seed(b"\x23" * 32)
TS = 1_767_225_600_000


# -- an in-memory carrier log ------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    seq: int  # position in the carrier's log of this topic
    sender: bytes
    sender_seq: int
    received_ms: int  # the carrier's clock when it stored the envelope
    wire: bytes


@dataclass(frozen=True)
class Head:
    next_seq: int
    count: int


@dataclass
class LogSource:
    """The store reads ``build_page`` uses, over plain lists (see catchup.md section 2)."""

    logs: dict[str, list[Record]] = field(default_factory=dict)
    next_seqs: dict[str, int] = field(default_factory=dict)
    heads: dict[str, dict[bytes, int]] = field(default_factory=dict)
    ids: set[bytes] = field(default_factory=set)

    def append(self, env: Envelope, received_ms: int) -> Record | None:
        """File ``env`` under its log topic; None for a duplicate (same message id)."""
        if env.id in self.ids:
            return None
        self.ids.add(env.id)
        topic = env.log_topic
        seq = self.next_seqs.get(topic, 1)
        self.next_seqs[topic] = seq + 1
        record = Record(seq, env.sender, env.seq, received_ms, env.wire)
        self.logs.setdefault(topic, []).append(record)
        senders = self.heads.setdefault(topic, {})
        senders[env.sender] = max(senders.get(env.sender, 0), env.seq)
        return record

    def drop_oldest(self, topic: str, count: int) -> None:
        """Retention: remove the oldest records (log numbers and heads stay)."""
        del self.logs[topic][:count]

    def head(self, topic: str) -> Head:
        return Head(self.next_seqs.get(topic, 1), len(self.logs.get(topic, [])))

    def seq_at(self, topic: str, received_ms: int) -> int:
        log = self.logs.get(topic, [])
        if not log:
            return self.next_seqs.get(topic, 1) - 1
        s = log[0].seq - 1
        for record in log:
            if record.received_ms >= received_ms:
                break
            s = record.seq
        return s

    def read(self, topic: str, after: int = 0, limit: int = 100) -> list[Record]:
        log = self.logs.get(topic, [])
        start = bisect.bisect_right([r.seq for r in log], after)
        return log[start : start + limit]

    def read_sender(
        self, topic: str, sender: bytes, first: int, last: int, limit: int = 100
    ) -> list[Record]:
        mine = [
            r
            for r in self.logs.get(topic, [])
            if r.sender == sender and first <= r.sender_seq <= last
        ]
        return sorted(mine, key=lambda r: r.sender_seq)[:limit]

    def sender_heads(self, topic: str, limit: int = 256) -> list[tuple[bytes, int]]:
        return sorted(self.heads.get(topic, {}).items())[:limit]


def msg(who: Identity, seq: int, body: str = "", *, topic: str = "general",
        payload: bytes | None = None) -> Envelope:
    content = Content(body=body or f"{who.peer_id_hex[:4]} #{seq}", payload=payload)
    return seal_message(who, topic=topic, content=content, seq=seq, ts=TS + seq)


def dm(sender: Identity, recipient: Identity, seq: int) -> Envelope:
    return seal_dm(sender, recipient_key=recipient.public_key,
                   content=Content(body=f"dm {seq}"), seq=seq, ts=TS + seq,
                   nonce=bytes([seq]) * 24)


def over_the_wire(request: PageRequest, page: Page) -> tuple[PageRequest, Page]:
    """Both through encode_frame/decode_frame, as a link would carry them."""
    req = decode_frame(encode_frame("cureq", **request.fields()))
    got = decode_frame(encode_frame("cupage", **page.fields()))
    assert isinstance(req, PageRequest) and isinstance(got, Page)
    return req, got


def walk(source: LogSource, request: PageRequest, requester: bytes) -> Iterator[Page]:
    """Every page of a log walk, the requester moving its cursor to ``next``."""
    while True:
        page = build_page(source, request, requester)
        request, page = over_the_wire(request, page)
        check_page(request, page)
        yield page
        if not page.more:
            return
        request = PageRequest(request.r + 1, request.topic, page.next, 0, request.limit)


@pytest.fixture(scope="module")
def busy_channel() -> tuple[LogSource, list[Envelope]]:
    """A channel log of 40 messages from three senders, one of them bigger than a page."""
    source = LogSource()
    stored: list[Envelope] = []
    seqs = {ALICE.peer_id: 0, BOB.peer_id: 0, CAROL.peer_id: 0}
    for i in range(40):
        who = (ALICE, BOB, CAROL)[i % 3]
        seqs[who.peer_id] += 1
        payload = None
        if i == 17:  # one envelope over the page byte bound: it must go alone
            payload = encode(bytes(200_000))
            env = msg(who, seqs[who.peer_id], "x" * 65_536, payload=payload)
            assert MAX_PAGE_BYTES < len(env.wire) <= MAX_ENVELOPE
        elif i % 5 == 0:
            env = msg(who, seqs[who.peer_id], "y" * 60_000)  # a few fill pages up
        else:
            env = msg(who, seqs[who.peer_id])
        assert source.append(env, received_ms=1_000 * (i + 1)) is not None
        stored.append(env)
    return source, stored


# -- the carrier: log walks ---------------------------------------------------------------


@pytest.mark.parametrize("limit", [MAX_PAGE_MESSAGES, 7, 1])
def test_a_log_walk_gives_every_record_once_in_log_order(
    busy_channel: tuple[LogSource, list[Envelope]], limit: int
) -> None:
    source, stored = busy_channel
    pages = list(walk(source, PageRequest(1, "general", 0, 0, limit), CAROL.peer_id))
    got = [open_envelope(w).id for p in pages for w in p.messages]
    assert got == [e.id for e in stored]
    for page in pages:
        assert 1 <= len(page.messages) <= limit
        size = sum(len(w) for w in page.messages)
        assert size <= MAX_PAGE_BYTES or len(page.messages) == 1
        assert page.err is None
    # the oversize envelope travels alone, and the walk goes on past it
    huge = [p for p in pages if sum(len(w) for w in p.messages) > MAX_PAGE_BYTES]
    assert len(huge) == 1 and huge[0].messages == (stored[17].wire,)
    # cursors are the log numbers of each page's last record
    assert [p.next for p in pages] == sorted({p.next for p in pages})
    assert pages[-1].next == 40
    # heads only on the last page: every sender's highest sequence number
    assert all(p.heads == () for p in pages[:-1])
    assert list(pages[-1].heads) == sorted(
        [(ALICE.peer_id, 14), (BOB.peer_id, 13), (CAROL.peer_id, 13)]
    )


def test_a_walk_resumes_from_the_cursor_after_a_broken_link(
    busy_channel: tuple[LogSource, list[Envelope]],
) -> None:
    source, stored = busy_channel
    first = build_page(source, PageRequest(1, "general", 0, 0, 5), BOB.peer_id)
    assert first.more and first.next == 5
    # the link breaks here; later the requester asks again from its cursor
    rest = list(walk(source, PageRequest(2, "general", first.next, 0, 512), BOB.peer_id))
    got = [*first.messages, *(w for p in rest for w in p.messages)]
    assert got == [e.wire for e in stored]


def test_an_empty_page_at_the_end_of_the_log(
    busy_channel: tuple[LogSource, list[Envelope]],
) -> None:
    source, _ = busy_channel
    page = build_page(source, PageRequest(3, "general", 40, 0, 512), ALICE.peer_id)
    assert (page.messages, page.next, page.more, page.err) == ((), 40, False, None)
    assert len(page.heads) == 3
    # a cursor beyond the carrier's log (it lost its store, say) comes back unchanged
    page = build_page(source, PageRequest(4, "general", 99, 0, 512), ALICE.peer_id)
    assert (page.messages, page.next, page.more) == ((), 99, False)


def test_since_and_after_the_later_start_wins(
    busy_channel: tuple[LogSource, list[Envelope]],
) -> None:
    source, stored = busy_channel  # record n was received at n * 1000 ms

    def first_seq(after: int, since: int) -> int:
        page = build_page(source, PageRequest(5, "general", after, since, 1), ALICE.peer_id)
        assert len(page.messages) == 1
        return [e.id for e in stored].index(open_envelope(page.messages[0]).id) + 1

    assert first_seq(0, 0) == 1
    assert first_seq(0, 10_500) == 11  # received at 11000, the first not before 10500
    assert first_seq(0, 11_000) == 11  # received exactly at since: included
    assert first_seq(3, 10_500) == 11  # since is later than the cursor
    assert first_seq(25, 10_500) == 26  # the cursor is later than since
    page = build_page(source, PageRequest(6, "general", 0, 10**9, 512), ALICE.peer_id)
    assert (page.messages, page.next, page.more) == ((), 40, False)
    assert page.heads  # nothing to send, but the walk is over: heads come with it


def test_retention_gaps_are_skipped_and_heads_remember() -> None:
    source = LogSource()
    for seq in range(1, 11):
        source.append(msg(ALICE, seq), received_ms=seq)
    source.drop_oldest("general", 6)
    pages = list(walk(source, PageRequest(1, "general", 0, 0, 3), BOB.peer_id))
    assert [open_envelope(w).seq for p in pages for w in p.messages] == [7, 8, 9, 10]
    assert pages[-1].heads == ((ALICE.peer_id, 10),)
    # since before the oldest stored record: the walk starts at that record
    page = build_page(source, PageRequest(2, "general", 0, 2, 512), BOB.peer_id)
    assert [open_envelope(w).seq for w in page.messages] == [7, 8, 9, 10]


# -- the carrier: sender ranges ------------------------------------------------------------


def test_sender_range_pages(busy_channel: tuple[LogSource, list[Envelope]]) -> None:
    source, _ = busy_channel
    want = list(range(3, 10))
    got: list[int] = []
    first, r = 3, 10
    while True:
        request = PageRequest(r, "general", 0, 0, 2, BOB.peer_id, first, 9)
        page = build_page(source, request, CAROL.peer_id)
        request, page = over_the_wire(request, page)
        envs = check_page(request, page)
        assert all(e.sender == BOB.peer_id for e in envs)
        assert page.heads == ()
        got += [e.seq for e in envs]
        if not page.more:
            break
        assert page.next == envs[-1].seq
        first, r = page.next + 1, r + 1
    assert got == want
    # nothing held in the range: an empty page whose next is the range's end
    page = build_page(source, PageRequest(20, "general", 0, 0, 512, BOB.peer_id, 50, 60),
                      CAROL.peer_id)
    assert (page.messages, page.next, page.more, page.heads) == ((), 60, False, ())


def test_sender_range_cut_by_the_byte_bound_says_more() -> None:
    source = LogSource()
    for seq in (1, 2, 3):
        source.append(msg(ALICE, seq, "z" * 65_000, payload=encode(bytes(40_000))), seq)
    request = PageRequest(1, "general", 0, 0, 512, ALICE.peer_id, 1, 3)
    page = build_page(source, request, BOB.peer_id)
    assert len(page.messages) == 2 and page.next == 2
    assert page.more


# -- the carrier: refusals ------------------------------------------------------------------


def test_an_inbox_is_served_to_its_owner_only() -> None:
    source = LogSource()
    notes = [dm(ALICE, BOB, 1), dm(CAROL, BOB, 1), dm(ALICE, BOB, 2)]
    receipt = seal_receipt(BOB, recipient=ALICE.peer_id, ids=[notes[0].id], seq=1, ts=TS)
    for i, env in enumerate(notes, 1):
        source.append(env, received_ms=i)
    source.append(receipt, received_ms=9)  # filed under inbox/<alice>
    bob_inbox = inbox_topic(BOB.peer_id)
    refused = build_page(source, PageRequest(1, bob_inbox, 2, 0, 512), CAROL.peer_id)
    assert refused == Page(1, bob_inbox, [], 2, False, [], FORBIDDEN)
    assert check_page(PageRequest(1, bob_inbox, 2, 0, 512), refused) == []
    pages = list(walk(source, PageRequest(2, bob_inbox, 0, 0, 512), BOB.peer_id))
    assert [w for p in pages for w in p.messages] == [e.wire for e in notes]
    # the receipt bob sent is in alice's inbox log, for alice
    alice_inbox = inbox_topic(ALICE.peer_id)
    assert build_page(source, PageRequest(3, alice_inbox, 0, 0, 9), BOB.peer_id).err == FORBIDDEN
    page = build_page(source, PageRequest(4, alice_inbox, 0, 0, 9), ALICE.peer_id)
    envs = check_page(PageRequest(4, alice_inbox, 0, 0, 9), page)
    assert [e.kind for e in envs] == ["receipt"] and envs[0].fields["ids"] == [notes[0].id]


def test_system_topics_are_never_served() -> None:
    source = LogSource()
    presence = seal_presence(ALICE, payload=encode({}), seq=TS, ts=TS)
    source.append(presence, received_ms=1)  # even if something had filed one
    page = build_page(source, PageRequest(1, "sys/presence", 0, 0, 512), ALICE.peer_id)
    assert page.err == FORBIDDEN and page.messages == ()
    assert not may_serve("sys/presence", ALICE.peer_id)
    assert may_serve("general", ALICE.peer_id)


def test_a_topic_never_stored_is_not_carried() -> None:
    source = LogSource()
    source.append(msg(ALICE, 1), received_ms=1)
    for topic in ("random", "dm/" + "ab" * 32, inbox_topic(BOB.peer_id)):
        page = build_page(source, PageRequest(7, topic, 12, 0, 512), BOB.peer_id)
        assert page == Page(7, topic, [], 12, False, [], NOT_CARRIED)
    page = build_page(source, PageRequest(8, "random", 0, 0, 9, ALICE.peer_id, 1, 2),
                      BOB.peer_id)
    assert page.err == NOT_CARRIED


def test_refusals_have_one_shape() -> None:
    assert sorted(ERRORS) == ["busy", "forbidden", "not-carried"]
    request = PageRequest(9, "general", 33, 5, 10)
    page = refusal(request, BUSY)
    assert page.fields() == {"r": 9, "topic": "general", "m": [], "next": 33, "more": False,
                             "heads": [], "err": "busy"}
    assert check_page(request, page) == []


# -- the requester: checking a page -------------------------------------------------------------


def page_of(request: PageRequest, envs: list[Envelope], *, next_: int = 1, more: bool = False,
            r: int | None = None, topic: str | None = None) -> Page:
    return Page(request.r if r is None else r, topic or request.topic,
                [e.wire for e in envs], next_, more, [])


def refused_with(request: PageRequest, page: Page) -> ErrorCode:
    with pytest.raises(ProtocolError) as info:
        check_page(request, page)
    return info.value.code


def test_check_page_accepts_a_good_page_in_sender_order() -> None:
    request = PageRequest(1, "general", 0, 0, 512)
    # a carrier may have received a sender's messages out of order; the page is
    # handed on by (sender, seq), each sender's messages in their own order
    envs = [msg(CAROL, 2), msg(ALICE, 2), msg(BOB, 1), msg(ALICE, 1), msg(CAROL, 1)]
    got = check_page(request, page_of(request, envs, next_=5))
    assert [(e.sender, e.seq) for e in got] == sorted((e.sender, e.seq) for e in envs)


def test_check_page_skips_what_the_requester_holds() -> None:
    request = PageRequest(1, "general", 0, 0, 512)
    held, new = msg(ALICE, 1), msg(ALICE, 2)
    forged = bytearray(held.wire)
    forged[-1] ^= 0x01  # same signed bytes, so the same id: a copy we already hold
    page = Page(1, "general", [bytes(forged), new.wire], 2, False, [])
    got = check_page(request, page, known=lambda ids: {held.id} & set(ids))
    assert [e.id for e in got] == [new.id]
    # a message it does not hold is verified as always
    assert refused_with(request, page) is ErrorCode.BAD_SIGNATURE
    # the wire form is still checked before the id is looked up
    page = Page(1, "general", [b"\xa0", new.wire], 2, False, [])
    with pytest.raises(ProtocolError) as info:
        check_page(request, page, known=set)
    assert info.value.code is ErrorCode.MALFORMED


def test_check_page_refuses_an_envelope_of_another_topic() -> None:
    request = PageRequest(1, "general", 0, 0, 512)
    other = msg(ALICE, 2, topic="random")
    assert refused_with(request, page_of(request, [msg(ALICE, 1), other], next_=2)) is (
        ErrorCode.MALFORMED
    )
    presence = seal_presence(ALICE, payload=b"\xa0", seq=TS, ts=TS)
    assert refused_with(request, page_of(request, [presence])) is ErrorCode.MALFORMED
    # a DM belongs to its recipient's inbox, not to a channel nor to its dm/ topic
    note = dm(ALICE, BOB, 1)
    assert refused_with(request, page_of(request, [note])) is ErrorCode.MALFORMED
    carol_inbox = PageRequest(2, inbox_topic(CAROL.peer_id), 0, 0, 512)
    assert refused_with(carol_inbox, page_of(carol_inbox, [note])) is ErrorCode.MALFORMED
    dm_request = PageRequest(3, note.topic, 0, 0, 512)
    assert refused_with(dm_request, page_of(dm_request, [note])) is ErrorCode.MALFORMED
    bob_inbox = PageRequest(4, inbox_topic(BOB.peer_id), 0, 0, 512)
    assert check_page(bob_inbox, page_of(bob_inbox, [note])) == [note]


def test_check_page_refuses_a_forged_signature() -> None:
    request = PageRequest(1, "general", 0, 0, 512)
    good = msg(ALICE, 1)
    wire = bytearray(good.wire)
    wire[-1] ^= 0x01  # the last byte of the signature
    page = Page(1, "general", [good.wire, bytes(wire)], 2, False, [])
    assert refused_with(request, page) is ErrorCode.BAD_SIGNATURE
    page = Page(1, "general", [b"\xa0"], 1, False, [])
    assert refused_with(request, page) is ErrorCode.MALFORMED


def chain(ident: Identity, count: int, topic: str = "general", first: int = 1) -> list[Envelope]:
    """``ident``'s messages ``first..`` in ``topic``, each naming the one before (prev)."""
    out: list[Envelope] = []
    prev = None
    for seq in range(first, first + count):
        env = seal_message(ident, topic=topic, content=Content(body=f"m{seq}"), seq=seq,
                           ts=TS + seq, prev=prev)
        out.append(env)
        prev = env.id
    return out


def unsigned(env: Envelope) -> bytes:
    """``env`` on the wire with 64 zero bytes for a signature."""
    signed, _ = split_wire(env.wire)
    return encode([signed, bytes(64)])


def opened(wires: list[bytes]) -> list[tuple[Envelope, bytes, bytes]]:
    out = []
    for wire in wires:
        signed, sig = split_wire(wire)
        out.append((open_envelope(wire, verify=False), signed, sig))
    return out


def test_a_run_of_one_author_costs_one_signature() -> None:
    alice, carol = chain(ALICE, 50), chain(CAROL, 20)
    mixed = [e.wire for pair in zip(alice, carol, strict=False) for e in pair] + [
        e.wire for e in alice[20:]
    ]
    assert authenticate(opened(mixed)) == 2  # the newest of each author
    # a hole in a run breaks the chain: the part below it is verified on its own
    holed = [e.wire for e in alice[:10] + alice[11:]]
    assert authenticate(opened(holed)) == 2


def test_vouched_envelopes_need_no_signature_of_their_own() -> None:
    run = chain(ALICE, 3)
    request = PageRequest(1, "general", 0, 0, 512)
    page = Page(1, "general", [unsigned(run[0]), unsigned(run[1]), run[2].wire], 3, False, [])
    assert [e.id for e in check_page(request, page)] == [e.id for e in run]
    # ... but the newest has nobody to vouch for it
    page = Page(1, "general", [run[0].wire, run[1].wire, unsigned(run[2])], 3, False, [])
    assert refused_with(request, page) is ErrorCode.BAD_SIGNATURE


def test_a_vouch_counts_only_within_one_author() -> None:
    """carol signs a message naming the id of bytes that claim to be alice's:
    the id fits, but only alice's own chain may vouch for alice's envelopes."""
    alice_1 = chain(ALICE, 1)[0]
    carols = seal_message(CAROL, topic="general", content=Content(body="trust me"), seq=2,
                          ts=TS, prev=alice_1.id)
    request = PageRequest(1, "general", 0, 0, 512)
    page = Page(1, "general", [unsigned(alice_1), carols.wire], 2, False, [])
    assert refused_with(request, page) is ErrorCode.BAD_SIGNATURE


def test_prev_is_refused_where_it_cannot_be() -> None:
    with pytest.raises(ValueError):
        seal_message(ALICE, topic="general", content=Content(body="x"), seq=1, ts=TS,
                     prev=bytes(32))
    with pytest.raises(ValueError):
        seal_message(ALICE, topic="general", content=Content(body="x"), seq=2, ts=TS,
                     prev=bytes(31))
    run = chain(ALICE, 2)
    assert open_envelope(run[0].wire).prev is None
    assert open_envelope(run[1].wire).prev == run[0].id


def test_check_page_refuses_what_is_outside_the_sender_range() -> None:
    request = PageRequest(1, "general", 0, 0, 512, ALICE.peer_id, 3, 5)
    inside = [msg(ALICE, 3), msg(ALICE, 5)]
    assert check_page(request, page_of(request, inside, next_=5)) == inside
    for stray in (msg(ALICE, 6), msg(ALICE, 2), msg(BOB, 4)):
        page = page_of(request, [*inside, stray], next_=6)
        assert refused_with(request, page) is ErrorCode.MALFORMED


def test_check_page_refuses_a_page_for_another_request() -> None:
    request = PageRequest(41, "general", 0, 0, 512)
    envs = [msg(ALICE, 1)]
    assert refused_with(request, page_of(request, envs, r=42)) is ErrorCode.UNEXPECTED
    assert refused_with(request, page_of(request, envs, topic="random")) is ErrorCode.UNEXPECTED


def test_check_page_refuses_broken_page_fields() -> None:
    request = PageRequest(1, "general", 10, 0, 2)
    envs = [msg(ALICE, 1), msg(ALICE, 2), msg(ALICE, 3)]
    assert refused_with(request, page_of(request, envs, next_=13)) is ErrorCode.TOO_LARGE
    assert refused_with(request, page_of(request, envs[:1], next_=10)) is ErrorCode.MALFORMED
    assert check_page(request, page_of(request, [], next_=10)) == []
    bad_refusal = Page(1, "general", [envs[0].wire], 10, False, [], NOT_CARRIED)
    assert refused_with(request, bad_refusal) is ErrorCode.MALFORMED
    assert refused_with(request, Page(1, "general", [], 10, True, [], BUSY)) is (
        ErrorCode.MALFORMED
    )


# -- several carriers ------------------------------------------------------------------------


def test_a_gap_found_at_one_carrier_is_filled_by_another() -> None:
    """Alice's 1..6 on "general": carrier A lacks 4 and 5, carrier B has only those."""
    envs = {seq: msg(ALICE, seq) for seq in range(1, 7)}
    a, b = LogSource(), LogSource()
    for seq in (1, 2, 3, 6):
        a.append(envs[seq], received_ms=seq)
    for seq in (4, 5, 6):
        b.append(envs[seq], received_ms=seq)
    held: dict[bytes, Envelope] = {}  # the requester's store: one copy per message id
    pages = list(walk(a, PageRequest(1, "general", 0, 0, 512), BOB.peer_id))
    for wire in (w for p in pages for w in p.messages):
        env = open_envelope(wire)
        held.setdefault(env.id, env)
    have = sorted(e.seq for e in held.values() if e.sender == ALICE.peer_id)
    ranges = [(s, s) for s in have]
    [(sender, head)] = pages[-1].heads
    assert (sender, head) == (ALICE.peer_id, 6)
    gaps = missing_ranges(ranges, head)
    assert gaps == [(4, 5)]
    for first, last in gaps:
        request = PageRequest(9, "general", 0, 0, 512, sender, first, last)
        for env in check_page(request, build_page(b, request, BOB.peer_id)):
            held.setdefault(env.id, env)
    # B's whole log again: 6 is a duplicate and is kept once
    for page in walk(b, PageRequest(10, "general", 0, 0, 512), BOB.peer_id):
        for wire in page.messages:
            env = open_envelope(wire)
            held.setdefault(env.id, env)
    assert sorted(e.seq for e in held.values()) == [1, 2, 3, 4, 5, 6]


def test_heads_are_bounded() -> None:
    source = LogSource()
    for i in range(MAX_PAGE_HEADS + 5):
        source.heads.setdefault("general", {})[i.to_bytes(32, "big")] = 1
    source.append(msg(ALICE, 1), received_ms=1)
    page = build_page(source, PageRequest(1, "general", 0, 0, 512), BOB.peer_id)
    assert len(page.heads) == MAX_PAGE_HEADS
    assert list(page.heads) == sorted(page.heads)
    decode_frame(encode_frame("cupage", **page.fields()))


# -- gap detection ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("have", "head", "missing"),
    [
        ([], 10, []),  # never followed the sender: nothing counts as missing
        ([(1, 5)], 5, []),
        ([(1, 5)], 3, []),
        ([(1, 5)], 8, [(6, 8)]),
        ([(4, 5)], 8, [(6, 8)]),  # nothing before the first range we hold
        ([(1, 3), (6, 8)], 10, [(4, 5), (9, 10)]),
        ([(1, 3), (8, 9)], 5, [(4, 5)]),  # the head falls inside a gap
        ([(1, 3), (8, 9)], 2, []),
        ([(1, 3), (5, 5), (7, 7)], 7, [(4, 4), (6, 6)]),
        ([(1, 4), (3, 6)], 9, [(7, 9)]),  # overlapping ranges
        ([(1, 2), (3, 4)], 4, []),  # adjacent ranges
    ],
)
def test_missing_ranges(have: list[tuple[int, int]], head: int,
                        missing: list[tuple[int, int]]) -> None:
    assert missing_ranges(have, head) == missing


def _ranges(seqs: set[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s in sorted(seqs):
        if out and out[-1][1] == s - 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


@settings(max_examples=300, deadline=None)
@given(st.sets(st.integers(1, 60), max_size=40), st.integers(0, 70))
def test_missing_ranges_match_a_brute_force_answer(have: set[int], head: int) -> None:
    got = {s for a, b in missing_ranges(_ranges(have), head) for s in range(a, b + 1)}
    want = {s for s in range(min(have, default=head) + 1, head + 1) if s not in have}
    assert got == want
    ranges = missing_ranges(_ranges(have), head)
    assert ranges == _ranges(got)  # sorted, disjoint, not adjacent
