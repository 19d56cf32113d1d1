"""Per-sender order in front of the inbox (peer/protocols/_order.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from peer.protocols._order import Gap, SenderOrder

A = ("storm", b"a" * 32)
B = ("storm", b"b" * 32)


def test_in_order_goes_straight_on() -> None:
    order: SenderOrder[int] = SenderOrder()
    order.start(A, 0)
    assert [order.offer(A, s, s, 0.0).items for s in (1, 2, 3)] == [[1], [2], [3]]
    assert order.held == 0 and order.next_deadline() is None


def test_a_message_waits_for_the_one_before_it() -> None:
    order: SenderOrder[int] = SenderOrder(hold=10.0)
    order.start(A, 0)
    assert order.offer(A, 1, 1, 0.0).items == [1]
    held = order.offer(A, 3, 3, 1.0)
    assert held.items == [] and held.opened == [Gap(A, 2, 2)]
    assert order.offer(A, 4, 4, 1.5).opened == []  # the same gap: no second fetch
    assert order.gaps() == [Gap(A, 2, 2)]
    assert order.next_deadline() == 11.0
    assert order.offer(A, 2, 2, 2.0).items == [2, 3, 4]
    assert order.held == 0 and order.skipped == 0 and order.next_deadline() is None


def test_a_lower_gap_opened_later_is_reported_too() -> None:
    order: SenderOrder[int] = SenderOrder()
    order.start(A, 0)
    assert order.offer(A, 5, 5, 0.0).opened == [Gap(A, 1, 4)]
    assert order.offer(A, 3, 3, 0.0).opened == [Gap(A, 1, 2)]


def test_a_gap_nobody_fills_is_given_up_after_the_hold_and_reported() -> None:
    order: SenderOrder[int] = SenderOrder(hold=10.0)
    order.start(A, 1)
    order.offer(A, 3, 3, 0.0)
    order.offer(A, 6, 6, 5.0)
    assert order.expire(9.9).items == []
    gone = order.expire(10.0)
    assert gone.items == [3] and gone.skipped == [Gap(A, 2, 2)]
    assert order.next_deadline() == 15.0
    gone = order.expire(15.0)
    assert gone.items == [6] and gone.skipped == [Gap(A, 4, 5)]
    assert order.skipped == 3
    assert order.offer(A, 2, 2, 16.0).items == [2]  # late, but never dropped
    assert order.late == 1


def test_a_message_waits_no_longer_than_the_hold_behind_a_later_gap() -> None:
    order: SenderOrder[int] = SenderOrder(hold=10.0)
    order.start(A, 0)
    order.offer(A, 10, 10, 0.0)
    order.offer(A, 5, 5, 8.0)  # a lower gap, opened later
    gone = order.expire(10.0)  # 10 waited its 10 s: every gap below it goes
    assert gone.items == [5, 10]
    assert gone.skipped == [Gap(A, 1, 4), Gap(A, 6, 9)]


def test_duplicates_while_held_are_dropped() -> None:
    order: SenderOrder[str] = SenderOrder()
    order.start(A, 0)
    order.offer(A, 2, "first", 0.0)
    assert order.offer(A, 2, "again", 0.0).items == []
    assert order.duplicates == 1
    assert order.offer(A, 1, "one", 0.0).items == ["one", "first"]


def test_lanes_are_independent() -> None:
    order: SenderOrder[str] = SenderOrder()
    order.start(A, 0)
    order.start(B, 7)
    order.offer(A, 2, "a2", 0.0)
    assert order.offer(B, 8, "b8", 0.0).items == ["b8"]


def test_a_new_sender_starts_at_its_first_message() -> None:
    order: SenderOrder[int] = SenderOrder()
    assert order.offer(A, 40, 40, 0.0).items == [40]
    assert order.offer(A, 42, 42, 0.0).opened == [Gap(A, 41, 41)]


def test_holding_is_bounded_and_the_longest_wait_gives_way() -> None:
    order: SenderOrder[int] = SenderOrder(max_held=3)
    order.start(A, 0)
    order.start(B, 0)
    order.offer(A, 2, 102, 0.0)
    order.offer(B, 2, 202, 1.0)
    order.offer(B, 3, 203, 2.0)
    out = order.offer(B, 5, 205, 3.0)
    assert out.items == [102] and out.skipped == [Gap(A, 1, 1)]
    assert order.held == 3


def test_idle_lanes_are_forgotten_past_the_bound_but_not_waiting_ones() -> None:
    order: SenderOrder[int] = SenderOrder(max_lanes=2)
    order.start(A, 0)
    order.offer(A, 3, 3, 0.0)  # waits
    order.start(B, 0)
    order.start(("other", b"c" * 32), 0)
    assert order.known(A) and not order.known(B)


@settings(max_examples=300, deadline=None)
@given(
    st.permutations(list(range(1, 30))),
    st.lists(st.integers(1, 29), max_size=10),
    st.sets(st.integers(1, 29), max_size=5),
)
def test_every_message_goes_on_once_and_each_sender_in_order_unless_a_gap_was_given_up(
    arrival: list[int], again: list[int], never: set[int]
) -> None:
    order: SenderOrder[int] = SenderOrder(hold=5.0)
    order.start(A, 0)
    out: list[int] = []
    skipped: list[Gap] = []
    now = 0.0
    for seq in [s for s in arrival if s not in never] + [s for s in again if s not in never]:
        now += 1.0
        got = order.offer(A, seq, seq, now)
        gone = order.expire(now)
        out += got.items + gone.items
        skipped += got.skipped + gone.skipped
    gone = order.expire(now + 100.0)
    out += gone.items
    skipped += gone.skipped
    # (a copy of one already handed on goes on too: the store drops it)
    firsts = [s for i, s in enumerate(out) if s not in out[:i]]
    assert sorted(firsts) == sorted(set(range(1, 30)) - never)  # nothing lost
    assert order.held == 0
    if not skipped:  # nothing given up: exactly in order
        assert firsts == sorted(set(range(1, 30)) - never)
    skipped_seqs = {s for g in skipped for s in range(g.first, g.last + 1)}
    below = {s for s in never if s < max(firsts, default=0)}
    assert below <= skipped_seqs  # a gap that never filled is reported


def test_a_huge_jump_is_not_waited_for_nor_counted() -> None:
    order: SenderOrder[int] = SenderOrder()
    order.start(A, 5)
    order.offer(A, 7, 7, 0.0)  # waits for 6
    out = order.offer(A, 10**12, 1, 0.0)  # a forged or broken seq
    assert out.items == [7, 1] and out.jumped == [Gap(A, 8, 10**12 - 1)]
    assert order.skipped == 1  # only the plausible gap (6) was given up
    assert order.held == 0 and order.top(A) == 10**12


def test_held_bytes_are_bounded_too() -> None:
    order: SenderOrder[int] = SenderOrder(max_bytes=1000)
    order.start(A, 0)
    order.start(B, 0)
    order.offer(A, 2, 2, 0.0, size=600)
    out = order.offer(B, 2, 2, 1.0, size=600)  # 1,200 bytes: the longest wait gives way
    assert out.items == [2] and out.skipped == [Gap(A, 1, 1)]
    assert order.held == 1 and order.held_bytes == 600


def test_many_new_lanes_forget_the_idle_ones_first_in_constant_time() -> None:
    order: SenderOrder[int] = SenderOrder(max_lanes=100)
    order.start(A, 0)
    order.offer(A, 3, 3, 0.0)  # A waits: never forgotten
    for i in range(50_000):  # would take minutes if each new lane scanned them all
        order.start(("t", i.to_bytes(32, "big")), 0)
    assert order.known(A) and order.held == 1
    assert not order.known(("t", (0).to_bytes(32, "big")))
    assert order.known(("t", (49_999).to_bytes(32, "big")))
