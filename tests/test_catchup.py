"""Catch-up (peer/protocols/_catchup.py), sans-IO: what a carrier answers.

The carrier side runs on ``tests._catchup_log.LogSource``. The rules tested
are those of protocol-spec/catchup.md: log order, cursors, the page bounds,
``since``/``after``, sender ranges and refusals. What a requester accepts is
in test_catchup_check.py.
"""

from __future__ import annotations

import pytest

from peer.protocols._catchup import (
    BUSY,
    ERRORS,
    FORBIDDEN,
    NOT_CARRIED,
    Page,
    PageRequest,
    build_page,
    check_page,
    may_serve,
    refusal,
)
from peer.wire._cbor import encode
from peer.wire._envelope import (
    Envelope,
    inbox_topic,
    open_envelope,
    seal_presence,
    seal_receipt,
)
from peer.wire._limits import MAX_ENVELOPE, MAX_PAGE_BYTES, MAX_PAGE_MESSAGES
from tests._catchup_log import (
    ALICE,
    BOB,
    CAROL,
    TS,
    LogSource,
    dm,
    msg,
    over_the_wire,
    walk,
)


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
