"""A rally addressed to a skill: the choice of peers (pure, ``choose_agents``),
the rally record keeping how they were chosen, and (real processes) a rally to
the two agents of four that declare a skill completing with its quorum."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cbor2
import trio

from peer.client import AsyncClient, Client
from peer.node._agents import AgentEntry
from peer.node._skillrally import SkillChoice, choose_agents
from peer.protocols._rally import MAX_TARGETS, Rally, new_rally
from tests._procs import PeerProcess, running, start_peer, wait_ready
from tests.test_rally_processes import _answer, _until

ME = b"\x00" * 32


def _entry(i: int, *, online: bool = True, name: str = "", own: bool = False) -> AgentEntry:
    pid = ME if own else bytes([i]) * 32
    return AgentEntry(pid, {"name": name or f"n{i}"}, 1, 2**40, online, None, own)


def test_choice_skips_this_peer_and_duplicates() -> None:
    entries = [_entry(1), _entry(0, own=True), _entry(2), _entry(1)]
    assert choose_agents(entries, self_id=ME, online=None) == (bytes([1]) * 32, bytes([2]) * 32)
    # our own id without the own flag (a card record of ours found in the DHT) too
    assert choose_agents([AgentEntry(ME, {}, 1, 1, True, None, False)], self_id=ME,
                         online=None) == ()


def test_choice_filters_online_orders_online_first_and_limits() -> None:
    entries = [_entry(3, online=False, name="a"), _entry(2, name="z"), _entry(1, name="m")]
    ids = [bytes([i]) * 32 for i in (1, 2, 3)]
    assert choose_agents(entries, self_id=ME, online=None) == (ids[0], ids[1], ids[2])
    assert choose_agents(entries, self_id=ME, online=True) == (ids[0], ids[1])
    assert choose_agents(entries, self_id=ME, online=False) == (ids[2],)
    assert choose_agents(entries, self_id=ME, online=None, limit=1) == (ids[0],)
    many = [_entry(i % 250 + 1) for i in range(300)] + [
        AgentEntry(bytes([1, i]) * 16, {}, 1, 1, True, None, False) for i in range(100)]
    assert len(choose_agents(many, self_id=ME, online=None)) == MAX_TARGETS
    assert choose_agents([], self_id=ME, online=None) == ()


def test_the_rally_record_keeps_its_selector() -> None:
    choice = SkillChoice("translate", None, True, 3, (b"\x01" * 32, b"\x02" * 32))
    rally = new_rally(b"\x42" * 16, kind="rally", targets=choice.chosen, channel=None,
                      question="q", payload=None, quorum=2, deadline_ms=10, now_ms=0,
                      selector=choice.selector())
    again = Rally.from_record(cbor2.loads(cbor2.dumps(rally.to_record())))
    assert again.selector == {"skill": "translate", "tag": None, "online": True, "found": 3}
    assert again.targets == choice.chosen
    plain = rally.to_record()
    del plain["sel"]  # a record written before skill rallies existed
    assert Rally.from_record(plain).selector is None


def _agents(p: PeerProcess, skill: str) -> set[str]:
    return {a["peer_id"] for a in p.get("/agents", skill=skill).json()}


def test_a_rally_to_a_skill_asks_exactly_its_agents(tmp_path: Path) -> None:
    boss = start_peer(tmp_path, "boss", "--skill", "plan")
    wait_ready(boss)
    others = [start_peer(tmp_path, name, *extra, bootstrap=boss.ws_url)
              for name, extra in (("t1", ("--skill", "translate")),
                                  ("t2", ("--skill", "translate", "--skill", "ocr")),
                                  ("x", ("--skill", "ocr")))]
    with running(boss, *others):
        for p in others:
            wait_ready(p)
        t1, t2, x = others
        want = {t1.peer_id, t2.peer_id}
        _until("the directory lists both translators",
               lambda: _agents(boss, "translate") == want, 20)

        r = boss.post("/rally", {"skill": "nobody-has-this", "body": "?"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "no-agents", r.text
        r = boss.post("/rally", {"skill": "translate", "body": "?", "quorum": 3})
        assert r.status_code == 409 and r.json()["error"]["code"] == "too-few-agents", r.text
        r = boss.post("/rally", {"skill": "translate", "to": [t1.peer_id], "body": "?"})
        assert r.status_code == 400, r.text

        r = boss.post("/rally", {"skill": "Translate", "body": "bonjour?", "timeout": 60})
        assert r.status_code == 200, r.text
        view: dict[str, Any] = r.json()
        assert set(view["to"]) == want and view["quorum"] == 2
        assert view["selected_by"] == {"skill": "translate", "tag": None, "online": None,
                                       "found": 2}
        for agent in (t1, t2):
            _answer(agent, boss.peer_id, "bonjour?", f"hello from {agent.name}")
        done = boss.get(f"/rallies/{view['id']}", wait="20").json()
        assert done["state"] == "complete", done
        assert {a["from"] for a in done["answers"]} == want
        assert done["selected_by"]["skill"] == "translate"
        # x never got the question
        assert not any(m.get("message_kind") == "request"
                       for m in x.get("/messages", peek="true").json())

        # an agent declaring the skill asks the others, never itself (the Python clients)
        _until("t2 knows t1's card", lambda: t1.peer_id in _agents(t2, "translate"), 20)
        with Client(key_dir=t2.home / "keys") as mesh:
            asked = mesh.rally("and you?", skill="translate", online=True, within=60)
            assert asked["to"] == [t1.peer_id] and asked["selected_by"]["online"] is True
            assert mesh.cancel_rally(asked["id"])["state"] == "canceled"

        async def from_async() -> dict[str, Any]:
            async with AsyncClient(key_dir=x.home / "keys") as mesh:
                return await mesh.rally("ocr?", skill="ocr", within=60)

        assert trio.run(from_async)["to"] == [t2.peer_id]  # x declares ocr too: not asked
