"""The scheduler core in virtual time: occurrences, missed policies, pause,
limits, cron in a time zone. No clock but the ``now_ms`` passed in."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from peer.protocols._schedule import (
    Firing,
    Schedule,
    ScheduleError,
    Scheduler,
    new_schedule,
)

T0 = 1_800_000_000_000  # a Unix time in ms
MSG = {"channel": "lobby", "body": "tick"}


def _run(core: Scheduler, start: int, end: int, step: int) -> list[Firing]:
    out: list[Firing] = []
    for now in range(start, end + 1, step):
        out += core.poll(now)
    return out


def _covered(firings: list[Firing], every_ms: int) -> list[int]:
    """Every occurrence each history entry stands for, in order."""
    out: list[int] = []
    for f in firings:
        out += [f.first_ms + i * every_ms for i in range(f.count)] if f.count > 1 else [
            f.occurrence_ms
        ]
    return sorted(out)


def test_interval_fires_each_occurrence_once_while_up() -> None:
    core = Scheduler()
    core.add(new_schedule("a", MSG, T0, every=2))
    firings = _run(core, T0, T0 + 20_000, 100)
    assert [f.occurrence_ms for f in firings] == [T0 + 2000 * k for k in range(1, 11)]
    assert all(f.send and f.count == 1 for f in firings)
    assert [f.run for f in firings] == list(range(1, 11))


def test_missed_fire_coalesces_into_one_firing() -> None:
    core = Scheduler()
    core.add(new_schedule("a", MSG, T0, every=2, missed="fire"))
    before = _run(core, T0, T0 + 5_000, 100)  # fires 2 s, 4 s
    down_until = T0 + 13_500  # occurrences 6, 8, 10, 12 came while down
    after = core.poll(down_until)
    assert len(after) == 1 and after[0].send
    assert (after[0].first_ms, after[0].occurrence_ms, after[0].count) == (
        T0 + 6000, T0 + 12_000, 4
    )
    later = _run(core, down_until, T0 + 16_000, 100)
    every = [T0 + 2000 * k for k in range(1, 9)]
    assert _covered(before + after + later, 2000) == every  # each exactly once


def test_missed_skip_records_skips_and_fires_within_grace() -> None:
    core = Scheduler()
    core.add(new_schedule("a", MSG, T0, every=2, missed="skip", grace=1))
    _run(core, T0, T0 + 2_000, 100)
    late = core.poll(T0 + 10_500)  # 4, 6, 8 missed; 10 is 0.5 s late: within grace
    skipped = [f for f in late if not f.send]
    fired = [f for f in late if f.send]
    assert len(skipped) == 1 and skipped[0].count == 3
    assert (skipped[0].first_ms, skipped[0].occurrence_ms) == (T0 + 4000, T0 + 8000)
    assert [f.occurrence_ms for f in fired] == [T0 + 10_000]
    very_late = core.poll(T0 + 15_000)  # 12 and 14: 14 is 1 s late, equal to grace: fires
    assert [(f.send, f.count) for f in very_late] == [(False, 1), (True, 1)]
    too_late = core.poll(T0 + 21_500)  # 16, 18, 20: 20 is 1.5 s late
    assert [(f.send, f.count) for f in too_late] == [(False, 3)]


def test_one_off_fires_once_even_if_late() -> None:
    core = Scheduler()
    core.add(new_schedule("once", MSG, T0, at_ms=T0 + 5000))
    assert core.poll(T0 + 4999) == []
    assert core.next_deadline() == T0 + 5000
    fired = core.poll(T0 + 60_000)
    assert [(f.send, f.occurrence_ms) for f in fired] == [(True, T0 + 5000)]
    assert core.poll(T0 + 120_000) == []
    assert core.schedules["once"].next_ms is None
    assert core.next_deadline() is None


def test_one_off_skipped_when_too_late_under_skip() -> None:
    core = Scheduler()
    core.add(new_schedule("once", MSG, T0, at_ms=T0 + 5000, missed="skip", grace=10))
    assert [(f.send, f.count) for f in core.poll(T0 + 30_000)] == [(False, 1)]


def test_pause_resume_and_limit() -> None:
    core = Scheduler()
    core.add(new_schedule("a", MSG, T0, every=1, limit=3))
    core.pause("a")
    assert core.poll(T0 + 10_000) == [] and core.next_deadline() is None
    core.resume("a", T0 + 10_000)  # paused occurrences are not owed
    fired = _run(core, T0 + 10_000, T0 + 20_000, 100)
    assert [f.occurrence_ms for f in fired] == [T0 + 10_000, T0 + 11_000, T0 + 12_000]
    assert core.schedules["a"].next_ms is None


def test_cron_in_a_time_zone() -> None:
    paris = ZoneInfo("Europe/Paris")
    start = int(datetime(2026, 3, 28, 12, 0, tzinfo=paris).timestamp() * 1000)
    core = Scheduler()
    core.add(new_schedule("c", MSG, start, cron="30 9 * * *", tz="Europe/Paris"))
    fired = _run(core, start, start + 3 * 86_400_000, 60_000)
    local = [datetime.fromtimestamp(f.occurrence_ms / 1000, paris) for f in fired]
    assert [(d.day, d.hour, d.minute) for d in local] == [(29, 9, 30), (30, 9, 30), (31, 9, 30)]
    # the clocks went forward early on the 29th: 9:30 in Paris is now 7:30 UTC (was 8:30)
    utc = ZoneInfo("UTC")
    assert {datetime.fromtimestamp(f.occurrence_ms / 1000, utc).hour for f in fired} == {7}
    assert datetime.fromtimestamp(start / 1000, paris).utcoffset() != local[0].utcoffset()


def test_round_trip_and_refusals() -> None:
    s = new_schedule("a", MSG, T0, cron="*/5 * * * * */2", tz="UTC", name="x")
    assert Schedule.from_json(s.to_json()) == s
    for bad in (
        {"every": 0.5},
        {"every": 2, "cron": "* * * * *"},
        {},
        {"cron": "not a cron"},
        {"cron": "* * *"},
        {"every": 2, "tz": "Mars/Olympus"},
        {"every": 2, "missed": "later"},
        {"every": float("nan")},
        {"every": 2, "limit": 0},
    ):
        with pytest.raises(ScheduleError):
            new_schedule("b", MSG, T0, **bad)


def test_schedules_are_bounded() -> None:
    core = Scheduler()
    for i in range(1000):
        core.add(new_schedule(f"s{i}", MSG, T0, every=60))
    with pytest.raises(ScheduleError):
        core.add(new_schedule("one-more", MSG, T0, every=60))


def test_a_cron_that_never_fires_is_refused() -> None:
    with pytest.raises(ScheduleError, match="never fires"):
        new_schedule("b", MSG, T0, cron="0 0 30 2 *")


def test_a_day_of_missed_seconds_is_caught_up_at_once() -> None:
    import time
    core = Scheduler()
    core.add(new_schedule("s", MSG, T0, cron="* * * * * *"))
    later = T0 + 86_400_000 + 500
    started = time.perf_counter()
    [firing] = core.poll(later)
    assert time.perf_counter() - started < 1.0  # was 13 s: every second walked
    assert firing.send and later - 1000 < firing.occurrence_ms <= later
    assert abs(firing.count - 86_400) <= 864  # exact up to the scan cap, then estimated
    assert core.schedules["s"].next_ms is not None and core.schedules["s"].next_ms > later
    assert core.poll(later) == []  # nothing scanned again


def test_missed_cron_minutes_are_counted_exactly_under_skip() -> None:
    core = Scheduler()
    core.add(new_schedule("m", MSG, T0, cron="* * * * *", missed="skip", grace=3600))
    first = core.schedules["m"].next_ms
    assert first is not None
    [skipped, fired] = core.poll(first + 10 * 60_000 + 1)
    assert (skipped.send, skipped.count, fired.send, fired.count) == (False, 10, True, 1)
    assert skipped.occurrence_ms == first + 9 * 60_000 == fired.occurrence_ms - 60_000
