"""The fleet view: the status core (limits, flood, stale) in virtual time, the
spec's vectors, and statuses carried by presence between two peers in
process, shown by ``GET /fleet`` and ``/metrics``."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from peer import Identity, Peer, PeerOptions, memory_link_pair, open_envelope
from peer.api._api import LocalApi
from peer.protocols._fleet import (
    FLEET_KEY,
    MAX_STATUS_BYTES,
    FleetView,
    StatusRefused,
    parse_status,
)
from peer.wire import _cbor
from tests._vectors import h, load

TOKEN = "test-token-0123456789"
STATUS = {"ver": "1.0", "up": 5, "links": 1, "outbox": 0, "store": None}
T0 = 1_800_000_000_000


def test_vectors_parse_and_refuse_as_specified() -> None:
    doc = load("fleet.json")
    env = open_envelope(h(doc["presence"]["wire"]))
    assert env.kind == "presence"
    payload = _cbor.decode(env.fields["payload"])
    status = parse_status(payload[FLEET_KEY], len(_cbor.encode(payload[FLEET_KEY])))
    value = doc["status"]["value"]
    assert (status.version, status.uptime_s, status.links, status.outbox, status.store_bytes) == (
        value["ver"], value["up"], value["links"], value["outbox"], value["store"]
    )
    assert dict(status.circuits) == value["circuits"]
    assert _cbor.encode(value) == h(doc["status"]["cbor"])
    for case in doc["refused"]:
        raw = h(case["status"])
        with pytest.raises(StatusRefused) as refused:
            parse_status(_cbor.decode(raw), len(raw))
        assert refused.value.reason == case["reason"], case["name"]
    assert doc["limits"]["max_status_bytes"] == MAX_STATUS_BYTES


def test_view_refuses_flood_and_stale_and_stays_bounded() -> None:
    view = FleetView(max_peers=3)
    a = b"\x01" * 32
    view.on_status(a, STATUS, 30, seq=T0, now_ms=T0)
    for seq, now, reason in (
        (T0 + 1000, T0 + 1000, "flood"),  # too soon after the last one taken
        (T0, T0 + 10_000, "stale"),  # not newer
    ):
        with pytest.raises(StatusRefused) as refused:
            view.on_status(a, STATUS, 30, seq=seq, now_ms=now)
        assert refused.value.reason == reason
    view.on_status(a, {**STATUS, "up": 65}, 30, seq=T0 + 60_000, now_ms=T0 + 60_000)
    with pytest.raises(StatusRefused):
        view.on_status(b"\x02" * 32, STATUS, MAX_STATUS_BYTES + 1, seq=T0, now_ms=T0)
    assert dict(view.refused) == {"flood": 1, "stale": 1, "oversize": 1}
    for i in range(2, 6):
        view.on_status(bytes([i]) * 32, STATUS, 30, seq=T0, now_ms=T0 + 60_000 + i)
    entries = view.entries(T0 + 60_000 + 200_000)
    assert len(entries) == 3 and a not in {pid for pid, *_ in entries}  # oldest dropped
    assert view.entries(T0 + 60_010)[0][3] is True  # heard recently: online


async def test_statuses_travel_in_presence(nursery: trio.Nursery, tmp_path: Path) -> None:
    peers = [
        Peer(Identity.generate(), PeerOptions(seed=i, dht=False, presence_interval=2.0,
                                              store_path=str(tmp_path / str(i)), name=f"p{i}"))
        for i in range(2)
    ]
    for p in peers:
        await nursery.start(p.run)
    apis = [LocalApi(p, TOKEN) for p in peers]
    for api in apis:
        await nursery.start(api.ops.run)
    ta, tb = memory_link_pair()
    peers[0].start_link(ta, initiator=True)
    peers[1].start_link(tb, initiator=False)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=apis[0].app),
                               base_url="http://127.0.0.1",
                               headers={"Authorization": f"Bearer {TOKEN}"})
    async with client:
        with trio.fail_after(15):
            while True:
                fleet = (await client.get("/fleet")).json()
                if fleet["peers"]:
                    break
                await trio.sleep(0.1)
        other = fleet["peers"][0]
        assert other["peer_id"] == peers[1].identity.peer_id_hex
        assert other["name"] == "p1" and other["online"] is True
        assert other["version"] == "0.1.0" and other["links"] == 1
        assert fleet["self"]["peer_id"] == peers[0].identity.peer_id_hex
        assert (await client.get("/fleet", params={"online": "false"})).json()["peers"] == []
        metrics = (await client.get("/metrics")).text
        assert 'clawmesh_fleet_peers{online="true"} 1.0' in metrics


def test_fleet_command_shows_the_other_peer(tmp_path: Path) -> None:
    """Real processes: b joins a; ``python -m peer fleet --json`` on a lists b's
    status (its presence goes out within seconds of the link)."""
    import json
    import subprocess
    import sys
    import time

    from tests._procs import REPO, running, start_peer, wait_ready

    a = start_peer(tmp_path, "a", "--no-dht", "--name", "alpha")
    wait_ready(a)
    b = start_peer(tmp_path, "b", "--no-dht", "--relay-only", bootstrap=a.ws_url)
    wait_ready(b)
    with running(a, b):
        deadline = time.monotonic() + 20
        while True:
            done = subprocess.run(
                [sys.executable, "-m", "peer", "fleet", "--json", "--key-dir",
                 str(a.home / "keys")],
                cwd=REPO, capture_output=True, text=True, timeout=30,
            )
            assert done.returncode == 0, done.stderr
            fleet = json.loads(done.stdout)
            if fleet["peers"]:
                break
            assert time.monotonic() < deadline, fleet
            time.sleep(0.2)
        table = subprocess.run(
            [sys.executable, "-m", "peer", "fleet", "--key-dir", str(a.home / "keys")],
            cwd=REPO, capture_output=True, text=True, timeout=30,
        )
    [other] = fleet["peers"]
    assert other["peer_id"] == b.peer_id and other["relay_only"] is True
    assert other["online"] is True and other["links"] >= 1
    assert other["store_bytes"] is None or other["store_bytes"] > 0  # known once measured
    assert fleet["self"]["name"] == "alpha"
    assert table.returncode == 0 and b.peer_id[:16] in table.stdout  # not a terminal: once
    assert "1 peer heard" in table.stdout
