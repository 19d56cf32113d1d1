"""``GET /metrics``: scraped with prometheus_client's own parser, every family
documented in README.md, values the same as ``/status`` shows."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from peer import Identity, Peer, PeerOptions, memory_link_pair
from peer.api._api import LocalApi
from peer.wire._histogram import LatencyHistogram

TOKEN = "test-token-0123456789"
README = Path(__file__).resolve().parent.parent / "README.md"


def _samples(text: str) -> dict[str, list[Sample]]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _exposed(text: str) -> set[str]:
    """The names as a scraper sees them (a counter with its ``_total``)."""
    return {
        f.name + "_total" if f.type == "counter" else f.name
        for f in text_string_to_metric_families(text)
    }


def _value(samples: list[Sample], name: str, **labels: str) -> float:
    for s in samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {name} {labels}")


def test_histogram_counts_cumulatively() -> None:
    h = LatencyHistogram((0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 3.0, -1.0):
        h.observe(seconds)
    stats = h.statistics()
    assert dict(stats["buckets"]) == {"0.1": 3, "1.0": 4, "+Inf": 5}
    assert stats["count"] == 5
    assert stats["sum"] == 3.65


async def test_metrics_scraped_and_documented(nursery: trio.Nursery, tmp_path: Path) -> None:
    a = Peer(
        Identity.generate(),
        PeerOptions(channels=("lobby",), seed=1, store_path=str(tmp_path / "a")),
    )
    b = Peer(
        Identity.generate(),
        PeerOptions(channels=("lobby",), seed=2, store_path=str(tmp_path / "b")),
    )
    await nursery.start(a.run)
    await nursery.start(b.run)
    ta, tb = memory_link_pair()
    a.start_link(ta, initiator=True)
    b.start_link(tb, initiator=False)
    with trio.fail_after(10):
        while not (a.links and b.links and a.router.reachable("lobby")):
            await a.wait_changed()
    assert a.dht is not None
    with trio.fail_after(10):
        await a.dht.find_peer(b.peer_id)  # one lookup at least, timed
    app = LocalApi(a, TOKEN).app
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
    ) as api:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        for i in range(3):
            r = await api.post("/send", json={"channel": "lobby", "body": f"m{i}"}, headers=headers)
            assert r.status_code == 200, r.text
        with trio.fail_after(10):
            while b.router.statistics()["delivered"] < 3:
                await b.wait_changed()
        page = await api.get("/metrics")  # open, like /status: no token
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/plain; version=0.0.4")
        families = _samples(page.text)
        status = (await api.get("/status")).json()

    # the same counters as /status, at scrape time
    messages = families["clawmesh_messages"]
    out = _value(messages, "clawmesh_messages_total", direction="out")
    assert 3 <= out <= status["gossip"]["published"]  # ours, presence included
    assert _value(families["clawmesh_links"], "clawmesh_links") == 1
    assert _value(families["clawmesh_links_opened"], "clawmesh_links_opened_total") == 1
    # every append waited for a commit: the histogram saw them
    commits = families["clawmesh_store_commit_seconds"]
    count = _value(commits, "clawmesh_store_commit_seconds_count")
    assert count >= 3
    assert _value(commits, "clawmesh_store_commit_seconds_bucket", le="+Inf") == count
    assert _value(families["clawmesh_store_messages"], "clawmesh_store_messages") >= 3
    assert _value(families["clawmesh_store_used_bytes"], "clawmesh_store_used_bytes") > 0
    assert _value(families["clawmesh_dht_lookups"], "clawmesh_dht_lookups_total") >= 1
    lookups = _value(families["clawmesh_dht_lookup_seconds"], "clawmesh_dht_lookup_seconds_count")
    assert lookups == status["dht"]["lookup_latency"]["count"]
    assert "lobby" in {s.labels["topic"] for s in families["clawmesh_catchup_received"]}
    # the operator's parts: the same figures in /status and /metrics
    assert status["schedules"]["schedules"] == 0 and status["fleet"]["peers"] == 0
    written = _value(families["clawmesh_audit_records"], "clawmesh_audit_records_total")
    assert written <= status["audit"]["written"]
    info = families["clawmesh_peer_info"][0]
    assert info.labels["peer_id"] == a.identity.peer_id_hex

    # every family is in README's metrics table, and the table names no ghosts
    readme = README.read_text()
    first_cells = [line.split("|")[1] for line in readme.splitlines() if line.startswith("| `claw")]
    documented = {name for cell in first_cells for name in re.findall(r"`(clawmesh_\w+)`", cell)}
    exposed = _exposed(page.text)
    missing = exposed - documented
    assert not missing, f"metrics not documented in README: {sorted(missing)}"
    ghosts = documented - exposed - {"clawmesh_circuit_state"}  # only where circuits exist
    assert not ghosts, f"README documents metrics that do not exist: {sorted(ghosts)}"
