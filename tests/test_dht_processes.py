"""Acceptance (discovery): 12 real peers that know only one seed find each other.

Each ``python -m peer`` is told only the seed's address and may hold at most
four links (``--max-links 4``), so lookups cannot link everyone to everyone.
Through the DHT (and presence on the gossip layer) every peer must list all
eleven others in ``/peers`` within 10 s, and a DM between two peers that never
had a link to each other must arrive, routed by the mesh.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests._procs import PeerProcess, running, start_peer, wait_ready

PEERS = 12


def test_twelve_peers_find_each_other_through_one_seed(tmp_path: Path) -> None:
    seed = start_peer(tmp_path, "seed", "--relay-only")
    wait_ready(seed)
    others = [
        start_peer(tmp_path, f"p{i}", "--max-links", "4", bootstrap=seed.ws_url)
        for i in range(PEERS - 1)
    ]
    everyone: list[PeerProcess] = [seed, *others]
    with running(*everyone):
        for p in others:
            wait_ready(p)
        started = time.monotonic()
        ids = {p.peer_id for p in everyone}
        for p in everyone:
            left = max(0.5, 10.0 - (time.monotonic() - started))
            r = p.get("/peers", min=str(PEERS - 1), wait=f"{left:.1f}")
            assert r.status_code == 200
            listed = {q["peer_id"] for q in r.json()}
            assert listed == ids - {p.peer_id}, f"{p.name} lists {len(listed)} of {PEERS - 1}"
        elapsed = time.monotonic() - started
        assert elapsed <= 10.5, f"discovery took {elapsed:.1f}s"

        # the DHT is alive on every serving peer
        dht = others[0].get("/dht").json()
        assert dht["contacts"] >= 1 and dht["joined"] is True

        # a DM between two peers that never had a link between them
        sender = others[0]
        never = {q["peer_id"] for q in sender.get("/peers").json() if q["times_linked"] == 0}
        target = next(p for p in others[1:] if p.peer_id in never)
        sent = sender.post("/send", {"to": target.peer_id, "content": "found you"})
        assert sent.status_code == 200, sent.text
        got = target.get("/messages", unread="true", peer=sender.peer_id, wait="10").json()
        assert [(m["kind"], m["body"], m["from"]) for m in got] == [
            ("dm", "found you", sender.peer_id)
        ]
        # ... and it was delivered without a direct link having been made for it
        view = {q["peer_id"]: q for q in sender.get("/peers").json()}
        assert view[target.peer_id]["times_linked"] == 0
