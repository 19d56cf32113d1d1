"""Issue 18, acceptance 1 (real processes): 8 peers with different skills find each other.

Eight ``python -m peer`` processes on loopback; seven declare skills with
``--skill`` or a ``--card`` file, one declares none. ``GET /agents?skill=X``
on every peer must list exactly the agents declaring X within 10 s (polled
with a deadline). Then one agent changes its card with ``PUT /card`` and the
change is found; ``/peers?feature=`` is exact.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests._procs import PeerProcess, running, start_peer, wait_ready

SKILLS: list[tuple[str, ...]] = [
    ("translate", "summarize"),
    ("translate",),
    ("code-review",),
    ("summarize", "ocr"),
    ("translate", "ocr"),
    (),  # no card at all
    ("search",),
]
CARD = {  # the eighth peer's --card file
    "name": "reviewer",
    "description": "reviews code and searches the web",
    "skills": [
        {"id": "code-review", "name": "Code review", "tags": ["code"],
         "inputModes": ["text/x-diff"], "outputModes": ["text/markdown"]},
        {"id": "search", "name": "Web search", "tags": ["web"]},
    ],
}
DEADLINE = 10.0


def _agents(p: PeerProcess, **params: str) -> set[str]:
    r = p.get("/agents", **params)
    assert r.status_code == 200, r.text
    return {a["peer_id"] for a in r.json()}


def _poll(peers: list[PeerProcess], skill: str, want: set[str], deadline: float) -> None:
    for p in peers:
        got = _agents(p, skill=skill)
        while got != want and time.monotonic() < deadline:
            got = _agents(p, skill=skill)
        assert got == want, f"{p.name}: /agents?skill={skill} lists {len(got)}, want {len(want)}"


def test_eight_peers_find_agents_by_skill(tmp_path: Path) -> None:
    card_file = tmp_path / "card.json"
    card_file.write_text(json.dumps(CARD))
    first = start_peer(tmp_path, "a0", *[f"--skill={s}" for s in SKILLS[0]], "--name", "a0")
    wait_ready(first)
    rest = [
        start_peer(
            tmp_path, f"a{i}", *[f"--skill={s}" for s in skills], "--name", f"a{i}",
            bootstrap=first.ws_url,
        )
        for i, skills in enumerate(SKILLS[1:], start=1)
    ]
    rest.append(start_peer(tmp_path, "a7", "--card", str(card_file), bootstrap=first.ws_url))
    peers = [first, *rest]
    with running(*peers):
        for p in rest:
            wait_ready(p)
        declared = [*SKILLS, ("code-review", "search")]
        want = {
            skill: {p.peer_id for p, skills in zip(peers, declared, strict=True) if skill in skills}
            for skill in ("translate", "summarize", "code-review", "ocr", "search")
        }
        started = time.monotonic()
        # /peers?feature=<skill> on a peer that never asked /agents: exact, found in the DHT
        by_feature: set[str] = set()
        while by_feature != want["translate"] and time.monotonic() < started + DEADLINE:
            found = peers[5].get("/peers", feature="translate").json()
            by_feature = {q["peer_id"] for q in found}
        assert by_feature == want["translate"]
        for skill, agents in want.items():
            _poll(peers, skill, agents, started + DEADLINE)
        elapsed = time.monotonic() - started
        print(f"\nevery peer listed every skill's agents exactly after {elapsed:.1f} s")
        assert elapsed <= DEADLINE + 1.0

        # the card itself, as the agent declared it, with the mesh interface added
        listed = first.get("/agents", skill="code-review").json()
        reviewer = next(a for a in listed if a["peer_id"] == peers[7].peer_id)
        assert reviewer["name"] == "reviewer" and reviewer["online"] is True
        card = reviewer["card"]
        assert card["skills"][0]["inputModes"] == ["text/x-diff"]
        assert {"protocolBinding": "clawmesh", "url": f"clawmesh:{peers[7].peer_id}"} in card[
            "supportedInterfaces"
        ]
        assert _agents(peers[3], tag="code") == {peers[7].peer_id}
        assert _agents(peers[3], skill="search", tag="web") == {peers[7].peer_id}
        assert _agents(peers[3], skill="nobody-does-this") == set()

        # /peers?feature= is exact: a capability, or a skill of a card we know
        for p in (first, peers[5]):
            feature = {q["peer_id"] for q in p.get("/peers", feature="translate").json()}
            assert feature == want["translate"] - {p.peer_id}
        assert first.get("/peers", feature="no-such-feature").json() == []
        relays = first.get("/peers", feature="relay").json()
        assert len(relays) == 7

        # a card changes: agent 1 does OCR instead of translating; both are seen
        r = peers[1].client.put(
            peers[1].api + "/card",
            json={"name": "a1", "skills": [{"id": "ocr", "name": "OCR"}]},
            headers=peers[1].headers(),
        )
        assert r.status_code == 200, r.text
        assert r.json()["published"] is True
        changed = time.monotonic() + DEADLINE
        _poll(peers, "ocr", want["ocr"] | {peers[1].peer_id}, changed)
        _poll(peers, "translate", want["translate"] - {peers[1].peer_id}, changed)

        # a card withdrawn: agent 6 no longer searches
        r = peers[6].client.delete(peers[6].api + "/card", headers=peers[6].headers())
        assert r.status_code == 200 and r.json()["card"] is None
        _poll(peers, "search", {peers[7].peer_id}, time.monotonic() + DEADLINE)

        # a bad card is refused with a JSON error naming the problem
        bad = peers[1].client.put(
            peers[1].api + "/card",
            json={"name": "x", "skills": [{"id": "Bad Id!", "name": "x"}]},
            headers=peers[1].headers(),
        )
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == "invalid-card"
        assert "skill id" in bad.json()["error"]["message"]
