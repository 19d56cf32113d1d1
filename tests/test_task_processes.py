"""Acceptance (tasks, real processes): a requester gives a worker a task;
the worker's agent reports progress and streams partial results, asks for
input, gets it and completes; the requester sees every step live on
``/events``; a second task is canceled and its worker sees it canceled."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests._procs import PeerProcess, start_peer, stop, wait_ready


def _until(what: str, check: Any, deadline_s: float = 30.0) -> Any:
    end = time.monotonic() + deadline_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _task(p: PeerProcess, task_id: str) -> dict[str, Any]:
    r = p.get(f"/tasks/{task_id}")
    return r.json() if r.status_code == 200 else {}


def _status(p: PeerProcess, task_id: str, **body: Any) -> dict[str, Any]:
    r = p.post(f"/tasks/{task_id}/status", body)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_task_lifecycle_progress_input_and_cancel(tmp_path: Path) -> None:
    req = start_peer(tmp_path, "req")
    wait_ready(req)
    work = start_peer(tmp_path, "work", bootstrap=req.ws_url)
    wait_ready(work)
    try:
        for p in (req, work):
            assert p.get("/peers", min="1", wait="20").json()
        events: list[dict[str, Any]] = []
        opened = threading.Event()

        def listen() -> None:
            with httpx.Client(timeout=httpx.Timeout(10, read=30)) as http, http.stream(
                "GET", req.api + "/events", headers=req.headers()
            ) as r:
                opened.set()
                name = ""
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: ") and name == "task":
                        events.append(json.loads(line[6:]))
                        if events[-1]["state"] == "completed":
                            return

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        assert opened.wait(10)
        r = req.post("/tasks", {"to": work.peer_id, "body": "index the docs",
                                "payload": {"repo": "clawmesh"}})
        assert r.status_code == 200, r.text
        task_id = r.json()["id"]
        assert r.json()["state"] == "submitted" and r.json()["role"] == "requester"
        mine = _until("the worker has it", lambda: _task(work, task_id))
        assert mine["role"] == "worker" and mine["payload"] == {"repo": "clawmesh"}
        _status(work, task_id, state="working", progress=0.3,
                artifact={"name": "log", "data": "scanned 30 files", "append": True,
                          "last": False})
        _status(work, task_id, state="working", progress=0.6,
                artifact={"name": "log", "data": "scanned 60 files", "append": True,
                          "last": False})
        _status(work, task_id, state="input-required", message="which branch?")
        _until("input asked", lambda: _task(req, task_id).get("state") == "input-required")
        assert req.post(f"/tasks/{task_id}/input", {"body": "main"}).status_code == 200
        _until("the worker gets the answer", lambda: any(
            m["body"] == "main" for m in work.get("/messages", peek="true").json()))
        _status(work, task_id, state="working", progress=0.9)
        _status(work, task_id, state="completed", progress=1.0,
                artifact={"name": "index", "data": {"pages": 120}})
        done = _until("completed", lambda: (
            t if (t := _task(req, task_id)).get("state") == "completed" else None))
        assert done["progress"] == 1.0
        assert {a["name"]: a["parts"] for a in done["artifacts"]} == {
            "log": ["scanned 30 files", "scanned 60 files"], "index": [{"pages": 120}]}
        listener.join(20)
        states = [e["state"] for e in events if e["id"] == task_id]
        assert states == ["submitted", "working", "working", "input-required", "working",
                          "completed"]
        assert [e["progress"] for e in events if e["id"] == task_id][1:3] == [0.3, 0.6]
        # a worker cannot move a finished task, a requester cannot update one
        bad = work.post(f"/tasks/{task_id}/status", {"state": "working"})
        assert bad.status_code == 409 and bad.json()["error"]["code"] == "conflict"
        assert req.post(f"/tasks/{task_id}/cancel", {}).status_code == 409

        second = req.post("/tasks", {"to": work.peer_id, "body": "long job"}).json()["id"]
        _until("the worker has the second", lambda: _task(work, second))
        assert req.post(f"/tasks/{second}/status", {"state": "working"}).status_code == 400
        assert req.post(f"/tasks/{second}/cancel", {}).status_code == 200
        _until("canceled at the worker", lambda: _task(work, second).get("state")
               == "canceled")
        assert [t["id"] for t in work.get("/tasks", role="worker", state="canceled").json()] \
            == [second]
    finally:
        stop(req)
        stop(work)
