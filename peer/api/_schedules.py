"""The Trio shell of scheduled messages: keeps the schedules and their job
history in the peer's store, and fires what ``peer.protocols._schedule``
says is due.

Rules this module keeps:

* A firing is recorded before it sends: one commit moves the schedule past
  the occurrence and writes a history entry ``firing`` (``pending`` on the
  schedule); then the message is sent exactly as ``POST /send`` would; then
  a second commit writes the outcome (``sent`` with the message id, or
  ``failed`` with the error). A peer killed between the two finds the entry
  still ``firing`` at start and marks it ``interrupted`` (the message may or
  may not have gone): it never sends an occurrence twice, and never silently.
* A peer killed before the first commit has not moved the schedule: the
  occurrence is due again at start, and the ``missed`` policy applies.
* Records are keyed ``ops/sched/<id>`` and ``ops/run/<id>/<run>`` (run
  numbers zero-padded, so key order is run order); the newest
  ``MAX_RUNS_KEPT`` entries of each schedule are kept.
* ``run`` lives in the API's nursery; time is ``peer.wall_ms()``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import structlog
import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from peer.node._node import Peer
from peer.protocols._schedule import MAX_SCHEDULES, Firing, Schedule, Scheduler
from store import StoreError

from ._book import Book
from ._metrics import Metric, labelled
from ._values import ApiError, iso

SCHED_PREFIX = "ops/sched/"
RUN_PREFIX = "ops/run/"
MAX_RUNS_KEPT = 1000
MAX_SLEEP = 5.0  # seconds between looks at the clock (a wall clock that jumps is noticed)

SendFn = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def _run_key(schedule_id: str, run: int) -> str:
    return f"{RUN_PREFIX}{schedule_id}/{run:012d}"


def _dump(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def schedule_json(s: Schedule) -> dict[str, Any]:
    """A schedule as the API shows it."""
    out = s.to_json()
    out.pop("anchor_ms")
    out["kind"] = s.kind
    out["state"] = "paused" if s.paused else "finished" if s.next_ms is None else "active"
    out["next"] = None if s.next_ms is None or s.paused else iso(s.next_ms)
    out["at"] = None if s.at_ms is None else iso(s.at_ms)
    out["every"] = out.pop("every_s")
    out["grace"] = out.pop("grace_s")
    out["created"] = iso(s.created_ms)
    return out


class ScheduleService:
    """The schedules of one peer: created, listed, paused, fired."""

    def __init__(self, peer: Peer, book: Book, send: SendFn) -> None:
        self.peer = peer
        self.book = book
        self._send = send
        self.core = Scheduler()
        self.loaded = trio.Event()
        self._wake = trio.Event()
        self._lock = trio.Lock()  # one change of a schedule's records at a time
        self.counters = {"sent": 0, "failed": 0, "skipped": 0, "interrupted": 0}
        self.log = structlog.get_logger("clawmesh.schedules")

    # -- lifecycle -----------------------------------------------------------------------

    async def load(self) -> None:
        """Read the schedules back; resolve firings a crash left ``pending``."""
        for _key, raw in await self.book.page(SCHED_PREFIX, limit=MAX_SCHEDULES + 1):
            s = Schedule.from_json(json.loads(raw))
            if s.pending is not None:
                await self._interrupted(s, s.pending)
            self.core.add(s)
        self.loaded.set()

    async def _interrupted(self, s: Schedule, run: int) -> None:
        raw = await self.book.page(RUN_PREFIX + s.id + "/", _run_key(s.id, run - 1), limit=1)
        entry: dict[str, Any] = json.loads(raw[0][1]) if raw else {"run": run}
        entry.update(
            outcome="interrupted",
            error="the peer stopped between recording this firing and its outcome: "
            "the message may or may not have been sent (it is not sent again)",
        )
        s.pending = None
        self.counters["interrupted"] += 1
        await self._save(s, entry)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.load()
        task_status.started()
        while True:
            for firing in self.core.poll(self.peer.wall_ms()):
                try:
                    await self._perform(firing)
                except StoreError as exc:
                    self.log.error("schedule not recorded", schedule=firing.schedule_id,
                                   error=str(exc))
            deadline = self.core.next_deadline()
            wait = MAX_SLEEP
            if deadline is not None:
                wait = min(MAX_SLEEP, max(0.0, (deadline - self.peer.wall_ms()) / 1000))
            with trio.move_on_after(wait):
                await self._wake.wait()
            self._wake = trio.Event()

    def _changed(self) -> None:
        self._wake.set()

    # -- firing --------------------------------------------------------------------------

    async def _perform(self, firing: Firing) -> None:
        s = self.core.schedules.get(firing.schedule_id)
        if s is None:
            return
        entry: dict[str, Any] = {
            "schedule": s.id,
            "run": firing.run,
            "occurrence": iso(firing.occurrence_ms),
            "first": iso(firing.first_ms),
            "count": firing.count,
            "late_ms": firing.late_ms,
            "recorded": iso(self.peer.wall_ms()),
            "outcome": "firing" if firing.send else "skipped",
        }
        if not firing.send:
            self.counters["skipped"] += firing.count
            await self._save(s, entry)
            return
        s.pending = firing.run
        await self._save(s, entry)  # durable before the send: a crash cannot send it twice
        try:
            sent = await self._send(dict(s.message))
        except ApiError as exc:
            entry.update(outcome="failed", error=f"{exc.code}: {exc.message}")
            self.counters["failed"] += 1
        except Exception as exc:  # a bug: recorded and logged, the scheduler goes on
            self.log.error("schedule firing crashed", schedule=s.id, error=repr(exc),
                           exc_info=exc)
            entry.update(outcome="failed", error=f"internal: {exc!r}"[:300])
            self.counters["failed"] += 1
        else:
            entry.update(outcome="sent", message_id=sent["id"], topic=sent["topic"])
            self.counters["sent"] += 1
        entry["done"] = iso(self.peer.wall_ms())
        s.pending = None
        await self._save(s, entry)

    async def _save(self, s: Schedule, entry: dict[str, Any] | None = None) -> None:
        async with self._lock:
            items: dict[str, bytes | None] = {}
            if s.id in self.core.schedules:  # not deleted meanwhile
                items[SCHED_PREFIX + s.id] = _dump(s.to_json())
            if entry is not None:
                items[_run_key(s.id, entry["run"])] = _dump(entry)
                if entry["run"] > MAX_RUNS_KEPT:
                    items[_run_key(s.id, entry["run"] - MAX_RUNS_KEPT)] = None
            await self.book.put(items, reserve=True)

    # -- the API's operations ------------------------------------------------------------

    def new_id(self) -> str:
        return secrets.token_hex(8)

    async def add(self, s: Schedule) -> Schedule:
        self.core.add(s)  # ScheduleError past MAX_SCHEDULES
        await self._save(s)
        self._changed()
        return s

    def get(self, schedule_id: Any) -> Schedule:
        s = self.core.schedules.get(schedule_id) if isinstance(schedule_id, str) else None
        if s is None:
            raise ApiError(404, "not-found", f"no schedule {schedule_id!r}")
        return s

    async def pause(self, schedule_id: Any) -> Schedule:
        s = self.core.pause(self.get(schedule_id).id)
        await self._save(s)
        return s

    async def resume(self, schedule_id: Any) -> Schedule:
        s = self.core.resume(self.get(schedule_id).id, self.peer.wall_ms())
        await self._save(s)
        self._changed()
        return s

    async def delete(self, schedule_id: Any) -> Schedule:
        s = self.get(schedule_id)
        self.core.remove(s.id)
        async with self._lock:
            await self.book.put({SCHED_PREFIX + s.id: None}, reserve=True)
            prefix = RUN_PREFIX + s.id + "/"
            while await self.book.delete_before(prefix, prefix + "~") > 0:
                pass
        return s

    async def runs(
        self, schedule_id: Any, *, after: int = 0, limit: int = 100, newest: bool = False
    ) -> list[dict[str, Any]]:
        s = self.get(schedule_id)
        prefix = RUN_PREFIX + s.id + "/"
        mark = _run_key(s.id, after) if after else None
        rows = await self.book.page(prefix, mark, limit, reverse=newest)
        return [json.loads(raw) for _key, raw in rows]

    def metrics(self) -> Iterator[Metric]:
        """For ``/metrics``: schedules by state, occurrences by outcome."""
        stats = self.statistics()
        yield labelled(
            GaugeMetricFamily, "clawmesh_schedules", "schedules by state", "state",
            {k: stats[k] for k in ("active", "paused", "finished")},
        )
        yield labelled(
            CounterMetricFamily, "clawmesh_schedule_occurrences",
            "schedule occurrences by outcome (since start)", "outcome", self.counters,
        )

    def statistics(self) -> dict[str, Any]:
        states = [schedule_json(s)["state"] for s in self.core]
        return {
            "schedules": len(states),
            "active": states.count("active"),
            "paused": states.count("paused"),
            "finished": states.count("finished"),
            **self.counters,
        }


__all__ = ["RUN_PREFIX", "SCHED_PREFIX", "ScheduleService", "schedule_json"]
