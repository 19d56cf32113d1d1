"""Catch-up (peer/protocols/_catchup.py), sans-IO: what a requester accepts.

What a requester refuses in a page (protocol-spec/catchup.md section 6.3),
authorship by signature or by a later envelope's ``prev``, heads on the last
page only, a gap found at one carrier filled at another, and gap detection.
The carrier side is in test_catchup.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.protocols._catchup import (
    BUSY,
    NOT_CARRIED,
    Page,
    PageRequest,
    authenticate,
    build_page,
    check_page,
    missing_ranges,
)
from peer.wire._cbor import encode
from peer.wire._envelope import (
    Content,
    Envelope,
    inbox_topic,
    open_envelope,
    seal_message,
    seal_presence,
    split_wire,
)
from peer.wire._errors import ErrorCode, ProtocolError
from peer.wire._frames import decode_frame, encode_frame
from peer.wire._identity import Identity
from peer.wire._limits import MAX_PAGE_HEADS
from tests._catchup_log import (
    ALICE,
    BOB,
    CAROL,
    TS,
    LogSource,
    dm,
    msg,
    walk,
)

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
