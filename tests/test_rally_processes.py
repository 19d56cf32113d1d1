"""Acceptance (requests and rallies, real processes): a request answered by
a reply; a rally to 5 agents, 2 of them offline, with quorum 3 completes
before its deadline while its initiator is killed with ``kill -9`` and
restarted mid-rally; the 2 late answers are recorded when they come back.

Every agent answers through its own peer's API, as agents do: it reads the
question from ``/messages`` and replies with ``reply_to``.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from peer.client import Client
from tests._procs import PeerProcess, kill_hard, start_peer, stop, wait_ready

Q = "deploy friday?"


def _until(what: str, check: Any, deadline_s: float = 30.0) -> Any:
    end = time.monotonic() + deadline_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _answer(agent: PeerProcess, asker: str, asked: str, text: str) -> str:
    """Wait for the question ``asked`` from ``asker`` and reply to it; its id."""
    question = _until(f"{agent.name} gets the question", lambda: next(
        (m for m in agent.get("/messages", peek="true").json()
         if m.get("message_kind") == "request" and m["from"] == asker
         and m["body"] == asked), None))
    r = agent.post("/send", {"to": asker, "body": text, "reply_to": question["id"],
                             "payload": {"vote": "yes"}})
    assert r.status_code == 200, r.text
    return str(question["id"])


def _restart(tmp_path: Path, p: PeerProcess, bootstrap: str | None) -> PeerProcess:
    again = start_peer(tmp_path, p.name, bootstrap=bootstrap, ports=(p.mesh_port, p.api_port))
    wait_ready(again)
    return again


def test_rally_quorum_late_answers_and_initiator_crash(tmp_path: Path) -> None:
    boss = start_peer(tmp_path, "boss")
    wait_ready(boss)
    agents = [start_peer(tmp_path, f"a{i}", bootstrap=boss.ws_url) for i in range(5)]
    for a in agents:
        wait_ready(a)
    live: list[PeerProcess] = [boss, *agents]
    try:
        assert len(boss.get("/peers", min="5", wait="20").json()) >= 5
        for a in agents[:3]:  # the answering agents know boss's key
            assert a.get("/peers", min="1", wait="20").json()
        # a plain request first: asked, answered by a reply, complete
        ask = boss.post("/request", {"to": agents[0].peer_id, "body": "ping?", "timeout": 30})
        assert ask.status_code == 200, ask.text
        request_id = ask.json()["id"]
        _answer(agents[0], boss.peer_id, "ping?", "pong")
        done = boss.get(f"/requests/{request_id}", wait="20").json()
        assert done["state"] == "complete" and done["response"]["body"] == "pong"

        for a in agents[3:]:  # two agents are offline
            kill_hard(a)
            live.remove(a)
        r = boss.post("/rally", {"to": [a.peer_id for a in agents], "body": Q,
                                 "quorum": 3, "timeout": 120})
        assert r.status_code == 200, r.text
        rally_id = r.json()["id"]
        assert r.json()["state"] == "open" and len(r.json()["rounds"][0]["asked"]) == 5

        _answer(agents[1], boss.peer_id, Q, "yes from a1")
        _until("a1 recorded", lambda: boss.get(f"/rallies/{rally_id}").json()["answers"])
        kill_hard(boss)  # mid-rally, no goodbye
        live.remove(boss)
        _answer(agents[2], boss.peer_id, Q, "yes from a2")  # sent while boss is down
        boss = _restart(tmp_path, boss, None)
        live.append(boss)
        _answer(agents[0], boss.peer_id, Q, "yes from a0")
        view = boss.get(f"/rallies/{rally_id}", wait="30").json()
        assert view["state"] == "complete", view
        assert {a["body"] for a in view["answers"]} == {"yes from a0", "yes from a1",
                                                       "yes from a2"}
        assert all(not a["late"] for a in view["answers"])
        assert all(a["payload"] == {"vote": "yes"} for a in view["answers"])

        # the two offline agents come back: their answers are recorded as late
        for i in (3, 4):
            agents[i] = _restart(tmp_path, agents[i], boss.ws_url)
            live.append(agents[i])
            _answer(agents[i], boss.peer_id, Q, f"late from a{i}")
        view = _until("late answers", lambda: (
            v if len((v := boss.get(f"/rallies/{rally_id}").json())["answers"]) == 5 else None))
        late = {a["body"] for a in view["answers"] if a["late"]}
        assert late == {"late from a3", "late from a4"} and view["state"] == "complete"
    finally:
        for p in live:
            stop(p)


def test_request_through_the_client_with_live_rally_events(tmp_path: Path) -> None:
    alice = start_peer(tmp_path, "alice")
    wait_ready(alice)
    bob = start_peer(tmp_path, "bob", bootstrap=alice.ws_url)
    wait_ready(bob)
    try:
        assert alice.get("/peers", min="1", wait="20").json()
        assert bob.get("/peers", min="1", wait="20").json()
        seen: list[dict[str, Any]] = []
        opened = threading.Event()

        def listen() -> None:
            with httpx.Client(timeout=httpx.Timeout(10, read=30)) as http, http.stream(
                "GET", alice.api + "/events", headers=alice.headers()
            ) as r:
                opened.set()
                name = ""
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: ") and name == "rally":
                        seen.append(json.loads(line[6:]))
                        if seen[-1]["change"] == "complete":
                            return

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        assert opened.wait(10)
        with Client(alice.api, token=alice.token) as mesh:
            asked = mesh.request(bob.peer_id, "uptime?", within=30)
            assert asked["state"] == "open" and asked["to"] == [bob.peer_id]
            _answer(bob, alice.peer_id, "uptime?", "42 days")
            done = mesh.get_request(asked["id"], wait=20)
            assert done["state"] == "complete" and done["response"]["body"] == "42 days"
            assert [r["id"] for r in mesh.rallies(state="complete")] == [asked["id"]]
        listener.join(20)
        assert [e["change"] for e in seen] == ["open", "answer", "complete"]
        assert all(e["id"] == asked["id"] for e in seen)
    finally:
        stop(alice)
        stop(bob)
