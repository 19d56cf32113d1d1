"""Requests and rallies as sans-IO state machines (peer.protocols._rally),
stepped in virtual time: quorum, deadline, late answers, rounds, records."""

from __future__ import annotations

import cbor2
import pytest

from peer.protocols._rally import (
    CANCELED,
    COMPLETE,
    OPEN,
    TIMED_OUT,
    Rallies,
    Rally,
    new_rally,
)

P = [bytes([i]) * 32 for i in range(1, 6)]
RID = b"\x42" * 16


def _rally(quorum: int = 3, deadline: int = 10_000) -> Rally:
    return new_rally(RID, kind="rally", targets=tuple(P), channel=None, question="ship it?",
                     payload={"build": 7}, quorum=quorum, deadline_ms=deadline, now_ms=0)


def _answer(rally: Rally, i: int, now: int, rnd: int = 1) -> list[str]:
    return [c.what for c in rally.on_answer(P[i], rnd, bytes([i]) * 32, f"a{i}", None, now)]


def test_quorum_completes_before_the_deadline_and_late_answers_are_kept() -> None:
    rally = _rally()
    assert _answer(rally, 0, 100) == ["answer"]
    assert _answer(rally, 0, 150) == []  # one answer per agent and round
    assert rally.duplicates == 1
    assert _answer(rally, 1, 200) == ["answer"]
    assert rally.state == OPEN and rally.next_deadline() == 10_000
    assert _answer(rally, 2, 300) == ["answer", "complete"]
    assert rally.state == COMPLETE and rally.current.ended_ms == 300
    assert rally.next_deadline() is None and rally.handle_timer(20_000) == []
    assert _answer(rally, 3, 50_000) == ["late"]
    assert [a.late for a in rally.current.answers.values()] == [False, False, False, True]


def test_deadline_times_out_and_strangers_do_not_count() -> None:
    rally = _rally(quorum=2, deadline=1000)
    assert rally.on_answer(b"\x99" * 32, 1, b"\x00" * 32, "x", None, 10) == []
    assert rally.on_answer(P[0], 7, b"\x00" * 32, "x", None, 10) == []  # no such round
    _answer(rally, 0, 500)
    assert rally.handle_timer(999) == []
    assert [c.what for c in rally.handle_timer(1000)] == [TIMED_OUT]
    assert rally.state == TIMED_OUT
    assert _answer(rally, 1, 1500) == ["late"]  # never completes after its deadline


def test_a_follow_up_round_reopens_and_carries_the_answers() -> None:
    rally = _rally(quorum=1)
    _answer(rally, 0, 100)
    _answer(rally, 1, 200)
    assert [c["body"] for c in rally.context()] == ["a0", "a1"]
    assert [c.what for c in rally.next_round("really?", None, 2, 5000, 300)] == ["round"]
    assert rally.state == OPEN and rally.current.number == 2
    assert _answer(rally, 2, 400, rnd=2) == ["answer"]
    assert _answer(rally, 3, 500, rnd=1) == ["late"]  # round 1 ended: late there
    assert _answer(rally, 3, 600, rnd=2) == ["answer", "complete"]
    assert [c.what for c in rally.cancel(700)] == []  # not open any more


def test_cancel_and_shape_checks() -> None:
    rally = _rally()
    assert [c.what for c in rally.cancel(5)] == [CANCELED]
    with pytest.raises(ValueError):
        new_rally(RID, kind="rally", targets=(), channel=None, question="?", payload=None,
                  quorum=1, deadline_ms=10, now_ms=0)
    with pytest.raises(ValueError):
        new_rally(RID, kind="rally", targets=(P[0], P[0]), channel=None, question="?",
                  payload=None, quorum=1, deadline_ms=10, now_ms=0)
    with pytest.raises(ValueError):
        new_rally(RID, kind="rally", targets=(P[0],), channel=None, question="?",
                  payload=None, quorum=2, deadline_ms=10, now_ms=0)
    with pytest.raises(ValueError):
        new_rally(RID, kind="rally", targets=(P[0],), channel=None, question="?",
                  payload=None, quorum=1, deadline_ms=0, now_ms=0)
    on_channel = new_rally(RID, kind="rally", targets=(), channel="ops", question="?",
                           payload=None, quorum=2, deadline_ms=10, now_ms=0)
    assert on_channel.on_answer(b"\x77" * 32, 1, b"\x01" * 32, "me", None, 1)  # anyone


def test_a_rally_resumes_from_its_record_after_a_crash() -> None:
    rally = _rally(deadline=1000)
    rally.current.sent = {p: bytes([9]) * 32 for p in P}
    _answer(rally, 0, 100)
    again = Rally.from_record(cbor2.loads(cbor2.dumps(rally.to_record())))
    assert again.to_record() == rally.to_record()
    rallies = Rallies()
    rallies.add(again)
    assert rallies.next_deadline() == 1000
    # the deadline passed while the initiator was down: it times out at its first step
    assert [c.what for c in rallies.handle_timer(5000)] == [TIMED_OUT]
