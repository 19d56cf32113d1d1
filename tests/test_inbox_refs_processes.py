"""A user's view of the ``~inbox`` references, with real ``python -m peer`` processes:
a peer that caught up on a channel, restarted, lists the same messages through
``/messages`` as before the restart (references resolved from the channel log),
and ``/status`` says no inbox entry was left out.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests._mesh_pair import start_pair
from tests._procs import PeerProcess, start_peer, stop, wait_ready

MISSED = 30


def _listed(p: PeerProcess) -> list[dict[str, Any]]:
    return list(p.get("/messages", after="0", limit="1000", peek="true").json())


def _restart(tmp: Path, old: PeerProcess, *extra: str) -> PeerProcess:
    p = start_peer(tmp, old.name, "--no-dht", "--channel", "lobby", *extra,
                   ports=(old.mesh_port, old.api_port))
    wait_ready(p)
    return p


def test_a_restarted_peer_lists_what_it_caught_up(tmp_path: Path) -> None:
    pair = start_pair(tmp_path)
    a, b = pair.a, pair.b
    try:
        stop(b)  # away
        for i in range(MISSED):
            r = a.post("/send", {"channel": "lobby", "body": f"missed {i}",
                                 **({"payload": {"i": i}} if i % 4 == 0 else {})})
            assert r.status_code == 200, r.text
        b = _restart(tmp_path, b, "--bootstrap", a.ws_url)
        deadline = time.monotonic() + 30
        while True:
            listed = _listed(b)
            if sum(m["body"].startswith("missed") for m in listed) >= MISSED:
                break
            assert time.monotonic() < deadline, b.log_text()[-2000:]
            last = str(listed[-1]["cursor"]) if listed else "0"
            b.get("/messages", after=last, wait="2", limit="1", peek="true")  # until more
        before = _listed(b)
        missed = [m for m in before if m["body"].startswith("missed")]
        assert [m["body"] for m in missed] == [f"missed {i}" for i in range(MISSED)]
        assert [m.get("payload") for m in missed[:5]] == [{"i": 0}, None, None, None, {"i": 4}]
        assert all(m["channel"] == "lobby" for m in before)
        stop(b)
        b = _restart(tmp_path, b)  # no link: what it lists comes from its own store
        assert _listed(b) == before
        assert b.get("/status").json()["store"]["inbox_gone"] == 0
    finally:
        stop(b)
        stop(a)
