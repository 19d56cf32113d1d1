"""Scheduled and recurring messages: when each schedule is due, and what to do
about occurrences that were missed. Sans-IO: times are Unix milliseconds
passed in (``now_ms``); nothing here sleeps, sends or stores.

A schedule fires a message (the body ``POST /send`` takes) at one time
(``at``), every ``every`` seconds, or on a cron expression in a time zone
(``cron`` and ``tz``; five fields, or six with seconds last). ``poll(now)``
returns the firings due: at most one send per schedule per poll, however
many occurrences came due since the last one. Those extra ones were missed
(the peer was down, or the clock jumped) and the schedule's ``missed``
policy says what happens to them:

* ``fire`` (the default): they are covered by the one firing, which says how
  many occurrences it stands for (``count``, ``first_ms``);
* ``skip``: they are recorded as skipped; the latest still fires if it is no
  more than ``grace`` seconds late, else it is skipped too.

So every occurrence appears exactly once in the job history, as fired or as
skipped. A cron's latest missed occurrence is found directly (croniter's
``get_prev``), never by walking: the missed ones are counted one by one up to
``MAX_CATCHUP_SCAN`` per schedule and ``POLL_SCAN_BUDGET`` per poll, and
estimated from the average gap beyond (a per-second cron down for a day
costs milliseconds, not seconds). A cron that never fires (``0 0 30 2 *``)
is refused. The shell records a firing durably before it sends (see
``peer/api/_schedules.py``); this module only says what is due.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

MIN_EVERY_S = 1.0  # an interval shorter than this is refused
MAX_EVERY_S = 366 * 86400.0
MAX_SCHEDULES = 1000  # per peer
MAX_NAME = 200
DEFAULT_GRACE_S = 60.0
MAX_GRACE_S = 86400.0
MAX_CATCHUP_SCAN = 256  # cron occurrences counted one by one per schedule, then estimated
POLL_SCAN_BUDGET = 1000  # cron occurrences counted one by one per poll, all schedules together
MISSED_POLICIES = ("fire", "skip")


class ScheduleError(ValueError):
    """A schedule that cannot be accepted; the message says why."""


@dataclasses.dataclass(slots=True)
class Schedule:
    """One schedule and where it stands. ``to_json``/``from_json`` round-trip it."""

    id: str
    message: dict[str, Any]  # the /send body it sends
    created_ms: int
    at_ms: int | None = None
    every_s: float | None = None
    cron: str | None = None
    tz: str = "UTC"
    anchor_ms: int = 0  # an interval's occurrences are anchor + k * every
    missed: str = "fire"
    grace_s: float = DEFAULT_GRACE_S
    limit: int | None = None  # at most this many firings, then it is finished
    name: str = ""
    paused: bool = False
    next_ms: int | None = None  # the next occurrence; None: finished
    runs: int = 0  # history entries written (firings and skips)
    fired: int = 0  # firings that sent (or tried to)
    skipped: int = 0  # occurrences skipped
    pending: int | None = None  # a firing recorded whose outcome is not yet

    @property
    def kind(self) -> str:
        return "once" if self.at_ms is not None else "cron" if self.cron else "interval"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Schedule:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclasses.dataclass(frozen=True, slots=True)
class Firing:
    """What ``poll`` decided for one schedule: send (``send``) for the
    occurrence ``occurrence_ms`` standing for ``count`` occurrences from
    ``first_ms``, or record them as skipped (``send`` False)."""

    schedule_id: str
    run: int  # the history entry's number (1, 2, ...)
    send: bool
    occurrence_ms: int
    first_ms: int
    count: int
    late_ms: int


# -- validation -------------------------------------------------------------------------


def _zone(tz: Any) -> ZoneInfo:
    if not isinstance(tz, str) or not tz or len(tz) > 64:
        raise ScheduleError("tz must be an IANA time zone name such as Europe/Paris")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"unknown time zone {tz!r}") from None


def _number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ScheduleError(f"{name} must be a number")
    if not low <= value <= high:
        raise ScheduleError(f"{name} must be between {low:g} and {high:g}")
    return float(value)


def check_cron(expr: Any) -> str:
    if not isinstance(expr, str) or not expr.strip() or len(expr) > 200:
        raise ScheduleError("cron must be a cron expression such as '0 9 * * mon-fri'")
    fields = expr.split()
    text = " ".join(fields)
    if len(fields) not in (5, 6) or not croniter.is_valid(text):
        raise ScheduleError(f"invalid cron expression {text!r} (5 fields, or 6 with seconds last)")
    try:  # valid fields can still never match (Feb 30): croniter says so only when asked
        croniter(text, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
    except (CroniterError, ValueError, OverflowError):
        raise ScheduleError(f"cron expression {text!r} never fires") from None
    return text


def new_schedule(
    schedule_id: str,
    message: dict[str, Any],
    now_ms: int,
    *,
    at_ms: int | None = None,
    every: Any = None,
    cron: Any = None,
    tz: Any = "UTC",
    start_ms: int | None = None,
    missed: Any = "fire",
    grace: Any = DEFAULT_GRACE_S,
    limit: Any = None,
    name: Any = "",
) -> Schedule:
    """A validated schedule, its first occurrence computed; ScheduleError if not."""
    given = [x is not None for x in (at_ms, every, cron)]
    if sum(given) != 1:
        raise ScheduleError('give exactly one of "at" (one-off), "every" (seconds) or "cron"')
    if missed not in MISSED_POLICIES:
        raise ScheduleError(f'missed must be one of {", ".join(MISSED_POLICIES)}')
    if not isinstance(name, str) or len(name) > MAX_NAME:
        raise ScheduleError(f"name must be a string of at most {MAX_NAME} characters")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ScheduleError("limit must be a positive integer (the most firings)")
    s = Schedule(
        id=schedule_id,
        message=message,
        created_ms=now_ms,
        at_ms=at_ms,
        tz=_zone(tz).key,
        missed=missed,
        grace_s=_number(grace, "grace", 0, MAX_GRACE_S),
        limit=limit,
        name=name,
    )
    if every is not None:
        s.every_s = _number(every, "every", MIN_EVERY_S, MAX_EVERY_S)
        s.anchor_ms = now_ms if start_ms is None else start_ms
        s.next_ms = s.anchor_ms if start_ms is not None and start_ms >= now_ms else None
        if s.next_ms is None:
            s.next_ms = _interval_after(s, now_ms)
    elif cron is not None:
        s.cron = check_cron(cron)
        s.next_ms = next_after(s, max(now_ms, start_ms or 0) - 1)
        if s.next_ms is None:
            raise ScheduleError(f"cron expression {s.cron!r} never fires after its start")
    else:
        s.next_ms = at_ms
    return s


# -- occurrences ------------------------------------------------------------------------


def _interval_after(s: Schedule, after_ms: int) -> int:
    """The first occurrence strictly after ``after_ms``."""
    assert s.every_s is not None
    step = round(s.every_s * 1000)
    if after_ms < s.anchor_ms:
        return s.anchor_ms
    k = (after_ms - s.anchor_ms) // step + 1
    return s.anchor_ms + k * step


def _cron_after(s: Schedule, after_ms: int) -> int:
    assert s.cron is not None
    start = datetime.fromtimestamp(after_ms / 1000, tz=UTC).astimezone(ZoneInfo(s.tz))
    nxt: datetime = croniter(s.cron, start).get_next(datetime)
    return int(nxt.timestamp() * 1000)


def _cron_before(s: Schedule, before_ms: int) -> int:
    """The last occurrence strictly before ``before_ms``."""
    assert s.cron is not None
    start = datetime.fromtimestamp(before_ms / 1000, tz=UTC).astimezone(ZoneInfo(s.tz))
    prev: datetime = croniter(s.cron, start).get_prev(datetime)
    return int(prev.timestamp() * 1000)


def next_after(s: Schedule, after_ms: int) -> int | None:
    """The schedule's first occurrence strictly after ``after_ms`` (None: no more)."""
    if s.at_ms is not None:
        return s.at_ms if s.at_ms > after_ms else None
    if s.every_s is not None:
        return _interval_after(s, after_ms)
    try:
        return _cron_after(s, after_ms)
    except (CroniterError, ValueError, OverflowError):
        return None  # no occurrence croniter can find: the schedule is finished


def _due(s: Schedule, now_ms: int, budget: list[int] | None = None) -> tuple[int, int, int]:
    """(first, latest, count) of the occurrences due at ``now_ms`` (``next_ms`` <= now).
    A cron's latest is found directly; its count is exact while ``budget[0]`` (steps
    left this poll, at most ``MAX_CATCHUP_SCAN``) lasts, then estimated from the
    average gap walked."""
    assert s.next_ms is not None
    first = s.next_ms
    if s.at_ms is not None:
        return first, first, 1
    if s.every_s is not None:
        step = round(s.every_s * 1000)
        count = (now_ms - first) // step + 1
        return first, first + (count - 1) * step, count
    latest = max(first, _cron_before(s, now_ms + 1))
    budget = budget if budget is not None else [MAX_CATCHUP_SCAN]
    at, count = first, 1
    for _ in range(max(1, min(MAX_CATCHUP_SCAN, budget[0]))):
        if at >= latest:
            return first, latest, count
        budget[0] -= 1
        at, count = _cron_after(s, at), count + 1
    if at >= latest:
        return first, latest, count
    gap = max(1, (at - first) // (count - 1))
    return first, latest, count + max(1, (latest - at) // gap)


# -- the scheduler ----------------------------------------------------------------------


class Scheduler:
    """Every schedule of one peer; ``poll(now_ms)`` says which fire."""

    def __init__(self) -> None:
        self.schedules: dict[str, Schedule] = {}

    def __iter__(self) -> Iterator[Schedule]:
        return iter(sorted(self.schedules.values(), key=lambda s: (s.created_ms, s.id)))

    def add(self, s: Schedule) -> None:
        if s.id not in self.schedules and len(self.schedules) >= MAX_SCHEDULES:
            raise ScheduleError(f"at most {MAX_SCHEDULES} schedules; delete some first")
        self.schedules[s.id] = s

    def remove(self, schedule_id: str) -> Schedule | None:
        return self.schedules.pop(schedule_id, None)

    def pause(self, schedule_id: str) -> Schedule:
        s = self.schedules[schedule_id]
        s.paused = True
        return s

    def resume(self, schedule_id: str, now_ms: int) -> Schedule:
        """Paused occurrences are not owed: the schedule goes on from ``now_ms``."""
        s = self.schedules[schedule_id]
        if s.paused:
            s.paused = False
            if s.next_ms is not None and s.next_ms < now_ms and s.at_ms is None:
                s.next_ms = next_after(s, now_ms - 1)
        return s

    def next_deadline(self) -> int | None:
        """When ``poll`` next has something to do (None: never, until a change)."""
        due = [s.next_ms for s in self.schedules.values() if not s.paused and s.next_ms is not None]
        return min(due, default=None)

    def poll(self, now_ms: int) -> list[Firing]:
        """The firings and skips due at ``now_ms``; each schedule moves past them."""
        out: list[Firing] = []
        budget = [POLL_SCAN_BUDGET]
        for s in self:
            if s.paused or s.next_ms is None or s.next_ms > now_ms:
                continue
            out.extend(self._decide(s, now_ms, budget))
        return out

    def _decide(self, s: Schedule, now_ms: int, budget: list[int]) -> list[Firing]:
        first, latest, count = _due(s, now_ms, budget)
        late = now_ms - latest
        s.next_ms = next_after(s, latest)
        out: list[Firing] = []
        fire = s.missed == "fire" or late <= s.grace_s * 1000
        if s.missed == "skip":
            skipped = count - 1 if fire else count
            if skipped:
                s.runs += 1
                s.skipped += skipped
                last_skipped = latest if not fire else _before(s, latest, first)
                out.append(Firing(s.id, s.runs, False, last_skipped, first, skipped, late))
            first, count = latest, 1
        if fire:
            s.runs += 1
            s.fired += 1
            out.append(Firing(s.id, s.runs, True, latest, first, count, late))
        if s.limit is not None and s.fired >= s.limit:
            s.next_ms = None
        return out


def _before(s: Schedule, occurrence_ms: int, first_ms: int) -> int:
    """The occurrence just before ``occurrence_ms`` (at least ``first_ms``)."""
    if s.every_s is not None:
        return max(first_ms, occurrence_ms - round(s.every_s * 1000))
    return max(first_ms, _cron_before(s, occurrence_ms))


__all__ = [
    "MAX_SCHEDULES",
    "MISSED_POLICIES",
    "Firing",
    "Schedule",
    "ScheduleError",
    "Scheduler",
    "check_cron",
    "new_schedule",
    "next_after",
]
