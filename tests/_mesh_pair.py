"""Two real peers, linked, for the client, CLI and MCP tests: ``a`` and ``b`` (b joined via a).

No DHT: a DM to a peer id nobody has seen is refused at once instead of
after a lookup. Both are on #lobby from the start.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests._procs import PeerProcess, start_peer, stop, wait_ready


@dataclass
class Pair:
    a: PeerProcess
    b: PeerProcess

    def keys(self, p: PeerProcess) -> Path:
        return p.home / "keys"


def start_pair(tmp: Path) -> Pair:
    a = start_peer(tmp, "a", "--no-dht", "--channel", "lobby")
    try:
        wait_ready(a)
        b = start_peer(tmp, "b", "--no-dht", "--channel", "lobby", bootstrap=a.ws_url)
        try:
            wait_ready(b)
            linked = b.get("/peers", min="1", wait="20", online="true").json()
            assert [p["peer_id"] for p in linked] == [a.peer_id], b.log_text()[-2000:]
            _wait_for_route(a, b)
        except BaseException:
            stop(b)
            raise
    except BaseException:
        stop(a)
        raise
    return Pair(a, b)


def _wait_for_route(a: PeerProcess, b: PeerProcess, deadline_s: float = 20.0) -> None:
    """Until a post on #lobby from ``a`` reaches ``b`` (the topic routes are exchanged)."""
    end = time.monotonic() + deadline_s
    while True:
        sent = a.post("/send", {"channel": "lobby", "body": "warm-up"}).json()
        got = b.get("/messages", channel="lobby", wait="2", after="0", limit="1000").json()
        if any(m["id"] == sent["id"] for m in got):
            b.post("/ack", {"through": got[-1]["cursor"]})
            return
        assert time.monotonic() < end, "the pair never routed #lobby"


def pair_fixture(tmp: Path) -> Iterator[Pair]:
    pair = start_pair(tmp)
    try:
        yield pair
    finally:
        stop(pair.b)
        stop(pair.a)
