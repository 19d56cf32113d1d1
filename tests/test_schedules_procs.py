"""Scheduled messages in real processes: a recurring schedule every 2 s across
``kill -9`` and a restart fires each occurrence exactly once per its policy
(the job history says so, and the inbox agrees), and a one-off scheduled
before the restart fires after it."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tests._procs import PeerProcess, kill_hard, running, start_peer, wait_ready

EVERY_MS = 2000


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def _runs(p: PeerProcess, sid: str) -> list[dict[str, Any]]:
    r = p.get("/schedules/runs", id=sid, limit=1000)
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()
    return rows


def _wait_runs(p: PeerProcess, sid: str, n: int, deadline_s: float = 20.0) -> list[dict[str, Any]]:
    end = time.monotonic() + deadline_s
    while True:
        rows = [r for r in _runs(p, sid) if r["outcome"] != "firing"]
        if len(rows) >= n:
            return rows
        assert time.monotonic() < end, f"only {len(rows)} runs of {sid}: {rows}"
        time.sleep(0.1)


def _settled(p: PeerProcess, sid: str, deadline_s: float = 15.0) -> list[dict[str, Any]]:
    """The history once no firing is in flight."""
    end = time.monotonic() + deadline_s
    while True:
        rows = _runs(p, sid)
        if rows and all(r["outcome"] != "firing" for r in rows):
            return rows
        assert time.monotonic() < end, f"{sid} still firing: {rows}"
        time.sleep(0.1)


def _covered(rows: list[dict[str, Any]]) -> list[int]:
    out: list[int] = []
    for row in rows:
        first = _ms(row["first"])
        out += [first + i * EVERY_MS for i in range(row["count"])]
    return out


def _check_exactly_once(rows: list[dict[str, Any]]) -> None:
    assert [r["run"] for r in rows] == list(range(1, len(rows) + 1))
    occurrences = _covered(rows)
    assert len(occurrences) == len(set(occurrences)), "an occurrence was recorded twice"
    assert occurrences == sorted(occurrences)
    span = range(occurrences[0], occurrences[-1] + 1, EVERY_MS)
    assert occurrences == list(span), "an occurrence is missing from the history"


def _create(p: PeerProcess, body: dict[str, Any]) -> str:
    r = p.post("/schedules", body)
    assert r.status_code == 201, r.text
    sid: str = r.json()["id"]
    return sid


def test_recurring_across_kill_and_restart(tmp_path: Path) -> None:
    a = start_peer(tmp_path, "a", "--channel", "tick", "--no-dht")
    wait_ready(a)
    try:
        fire = _create(a, {"message": {"channel": "tick", "body": "fire"}, "every": 2})
        skip = _create(
            a,
            {"message": {"channel": "tick", "body": "skip"}, "every": 2, "missed": "skip",
             "grace": 0.5},
        )
        _wait_runs(a, fire, 1)
        soon = int(time.time() * 1000) + 1500
        r = a.post("/send", {"channel": "tick", "body": "one-off", "send_at": soon})
        assert r.status_code == 202, r.text
        once = r.json()["scheduled"]["id"]
        kill_hard(a)
        assert time.time() * 1000 < soon  # killed before the one-off was due
        time.sleep(4.5)  # down for two or more occurrences of each schedule, and the one-off
        a = start_peer(tmp_path, "a", "--channel", "tick", "--no-dht",
                       ports=(a.mesh_port, a.api_port))
        wait_ready(a)
        before = len(_runs(a, fire))
        _wait_runs(a, fire, before + 1)
        _wait_runs(a, skip, len(_runs(a, skip)) + 1)
        _wait_runs(a, once, 1)
        for sid in (fire, skip):  # stop them, so history and inbox can be compared exactly
            assert a.post("/schedules/pause", {"id": sid}).status_code == 200
        rows_fire, rows_skip, rows_once = (_settled(a, sid) for sid in (fire, skip, once))
        r = a.get("/messages", channel="tick", limit=1000, peek="true")
        assert r.status_code == 200, r.text
        messages: list[dict[str, Any]] = r.json()
        listed = {s["id"]: s for s in a.get("/schedules").json()}
    finally:
        with running(a):
            pass
    assert listed[fire]["state"] == "paused" and listed[once]["state"] == "finished"
    assert [r["outcome"] for r in rows_once] == ["sent"]
    assert _ms(rows_once[0]["occurrence"]) == soon
    for rows in (rows_fire, rows_skip):
        _check_exactly_once(rows)
        assert {r["outcome"] for r in rows} <= {"sent", "skipped", "interrupted"}
    # missed=fire: the occurrences missed while down were sent once, as one firing
    assert any(r["count"] > 1 and r["outcome"] == "sent" for r in rows_fire)
    assert all(r["outcome"] != "skipped" for r in rows_fire)
    # missed=skip: they were recorded as skipped, not sent
    assert any(r["outcome"] == "skipped" for r in rows_skip)
    # the inbox agrees with the history: one message per sent firing, none twice
    for body, rows in (("fire", rows_fire), ("skip", rows_skip), ("one-off", rows_once)):
        sent_ids = {r["message_id"] for r in rows if r["outcome"] == "sent"}
        got = [m["id"] for m in messages if m["body"] == body]
        interrupted = sum(r["outcome"] == "interrupted" for r in rows)
        assert len(got) == len(set(got))
        assert sent_ids <= set(got)
        assert len(sent_ids) <= len(got) <= len(sent_ids) + interrupted
