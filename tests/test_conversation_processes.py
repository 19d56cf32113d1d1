"""Acceptance (conversations, real processes): each of MESH's six types with
three agents answering through their own peers' APIs; consensus computed
from votes (majority, unanimity, threshold) or set by the initiator, and
every participant sees the same verdict, verified as signed by the
initiator's peer; idle timeout; search by keyword, agent, type and status.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

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


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("conv")
    lead = start_peer(tmp, "lead")
    wait_ready(lead)
    agents = [start_peer(tmp, f"ag{i}", bootstrap=lead.ws_url) for i in range(3)]
    for a in agents:
        wait_ready(a)
    try:
        for p in (lead, *agents):
            assert len(p.get("/peers", min="3", wait="30").json()) >= 3
        yield lead, agents
    finally:
        for p in (lead, *agents):
            stop(p)


def _view(p: PeerProcess, conv_id: str) -> dict[str, Any]:
    r = p.get(f"/conversations/{conv_id}")
    return r.json() if r.status_code == 200 else {}


def _start(lead: PeerProcess, agents: list[PeerProcess], **extra: Any) -> str:
    body = {"to": [a.peer_id for a in agents], **extra}
    r = lead.post("/conversations", body)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "open"
    conv_id = str(r.json()["id"])
    for a in agents:  # every participant's peer knows it from the opening
        _until(f"{a.name} sees {extra['type']}", lambda a=a: _view(a, conv_id))
    return conv_id


def _post(a: PeerProcess, conv_id: str, body: str, vote: Any = None) -> None:
    data: dict[str, Any] = {"body": body}
    if vote is not None:
        data["vote"] = vote
    r = a.post(f"/conversations/{conv_id}/messages", data)
    assert r.status_code == 200, r.text


def _verdict_everywhere(lead: PeerProcess, agents: list[PeerProcess], conv_id: str,
                        decision: str) -> None:
    for p in (lead, *agents):
        view = _until(f"{p.name} has the verdict", lambda p=p: (
            v if (v := _view(p, conv_id)).get("state") == "complete" else None))
        assert view["verdict"]["decision"] == decision
        assert view["verdict"]["signed_by"] == lead.peer_id
        if p is not lead:
            assert view["verdict"]["verified"] is True  # the initiator's signed envelope


@pytest.mark.parametrize(("type_", "rule", "votes", "decision"), [
    ("rally", "majority", ["go", "wait", "go"], "go"),
    ("opinion", "unanimity", ["spaces", "spaces", "spaces"], "spaces"),
    ("escalation", "threshold", ["page-oncall", "ignore", "page-oncall"], "page-oncall"),
])
def test_computed_consensus(mesh: Any, type_: str, rule: str, votes: list[str],
                            decision: str) -> None:
    lead, agents = mesh
    extra: dict[str, Any] = {"type": type_, "body": f"{type_}: what now?", "rule": rule}
    if rule == "threshold":
        extra["threshold"] = 0.6
    conv_id = _start(lead, agents, **extra)
    for a, vote in zip(agents, votes, strict=True):
        _post(a, conv_id, f"I say {vote}", vote)
    _verdict_everywhere(lead, agents, conv_id, decision)
    view = _view(agents[0], conv_id)
    assert len(view["history"]) >= 3  # posts fan out to every member


@pytest.mark.parametrize("type_", ["collab", "brainstorm", "broadcast"])
def test_initiator_sets_the_verdict(mesh: Any, type_: str) -> None:
    lead, agents = mesh
    conv_id = _start(lead, agents, type=type_, body=f"{type_}: ideas for the launch?")
    for i, a in enumerate(agents):
        _post(a, conv_id, f"idea {i} from {a.name}")
    _until("active with 3 posts", lambda: (
        (v := _view(lead, conv_id))["state"] == "active" and len(v["history"]) == 3))
    r = lead.post(f"/conversations/{conv_id}/verdict",
                  {"decision": "ship idea 1", "summary": "idea 1 wins"})
    assert r.status_code == 200, r.text
    _verdict_everywhere(lead, agents, conv_id, "ship idea 1")
    assert agents[1].post(f"/conversations/{conv_id}/messages",
                          {"body": "too late"}).status_code == 409
    again = lead.post(f"/conversations/{conv_id}/verdict", {"decision": "no, idea 2"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    found = lead.get("/conversations", q="launch", agent=agents[2].peer_id, type=type_,
                     status="complete").json()
    assert [c["id"] for c in found] == [conv_id]


def test_idle_timeout(mesh: Any) -> None:
    lead, agents = mesh
    conv_id = _start(lead, agents, type="collab", body="anyone?", idle_timeout=1)
    for p in (lead, *agents):
        _until(f"{p.name} sees it time out", lambda p=p: _view(p, conv_id).get("state")
               == "timed_out", 20)
