"""The agent directory from the CLI (``agents``, ``card``, ``peers --feature``) and the
Python client, against a real peer pair (no DHT there: each finds its own card;
tests/test_agents_processes.py finds others through the DHT)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from peer.cli._commands import cli
from peer.client import AgentInfo, AsyncClient, Client, InvalidRequest, NotFound
from tests._mesh_pair import Pair, pair_fixture
from tests._procs import PeerProcess


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    yield from pair_fixture(tmp_path_factory.mktemp("agents-cli"))


@pytest.fixture(autouse=True)
def _no_mesh_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MESH_API_URL", "MESH_KEY_DIR"):
        monkeypatch.delenv(name, raising=False)


def run(p: PeerProcess, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(
        cli, [*args, "--key-dir", str(p.home / "keys")], input=stdin, catch_exceptions=False
    )


def ok_json(p: PeerProcess, *args: str, stdin: str | None = None) -> Any:
    result = run(p, *args, "--json", stdin=stdin)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_card_and_agents_commands(pair: Pair, tmp_path: Path) -> None:
    p = pair.a
    none = run(p, "card")
    assert none.exit_code == 1 and "no-card" in none.stderr
    card = {"name": "ocr-bot", "skills": [{"id": "ocr", "name": "OCR", "tags": ["vision"]}]}
    path = tmp_path / "card.json"
    path.write_text(json.dumps(card))
    shown = ok_json(p, "card", "--set", str(path))
    assert shown["card"]["name"] == "ocr-bot" and shown["published"] is False  # no DHT here
    [me] = ok_json(p, "agents", "--skill", "ocr")
    assert me["peer_id"] == p.peer_id and me["self"] is True and me["online"] is True
    assert ok_json(p, "agents", "--tag", "vision")[0]["peer_id"] == p.peer_id
    assert ok_json(p, "agents", "--skill", "translate") == []
    table = run(p, "agents", "--skill", "OCR")  # skill ids are matched lower-cased
    assert table.exit_code == 0 and "ocr-bot" in table.stdout and "SKILLS" in table.stdout
    bad = run(p, "card", "--set", "-", stdin='{"name": "x", "skills": [{"id": "a b"}]}')
    assert bad.exit_code == 1 and "invalid-card" in bad.stderr
    gone = ok_json(p, "card", "--delete")
    assert gone["card"] is None
    assert ok_json(p, "agents", "--skill", "ocr") == []


def test_peers_feature_is_exact(pair: Pair) -> None:
    assert ok_json(pair.a, "peers", "--feature", "translate") == []
    listed = ok_json(pair.a, "peers", "--feature", "relay")
    assert [q["peer_id"] for q in listed] == [pair.b.peer_id]
    assert ok_json(pair.a, "peers", "--feature", "dht") == []  # the pair runs without one


def test_client_methods(pair: Pair) -> None:
    p = pair.b
    with Client(key_dir=p.home / "keys") as mesh:
        with pytest.raises(NotFound):
            mesh.card()
        made = mesh.set_card({"name": "b", "skills": [{"id": "translate", "name": "T"}]})
        assert made.card is not None and made.card["availability"] == "available"
        assert {"protocolBinding": "clawmesh", "url": f"clawmesh:{p.peer_id}"} in made.card[
            "supportedInterfaces"
        ]
        [agent] = mesh.agents(skill="translate", online=True)
        assert isinstance(agent, AgentInfo) and agent.skills == ["translate"] and agent.own
        assert mesh.agents(skill="translate", online=False) == []
        with pytest.raises(InvalidRequest):
            mesh.set_card({"name": "b", "skills": [], "price": 3})  # unknown field: refused
        with pytest.raises(InvalidRequest):
            mesh.agents(skill="not a label")
        mesh.delete_card()


async def test_async_client_methods(pair: Pair) -> None:
    p = pair.a
    async with AsyncClient(key_dir=p.home / "keys") as mesh:
        card = await mesh.set_card({"name": "a", "skills": [{"id": "search", "name": "S"}]})
        assert card.card is not None and card.card["name"] == "a"
        assert (await mesh.card()).card == card.card
        [agent] = await mesh.agents(skill="search")
        assert agent.peer_id == p.peer_id and agent.name == "a"
        assert (await mesh.delete_card()).card is None
        assert await mesh.agents(skill="search") == []
