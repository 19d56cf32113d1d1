"""Acceptance: real ``python -m peer`` processes on loopback, driven through the local API.

Topology, a line:  A -- R -- B -- C  where R is a relay-only seed. A message
from A reaches B across R (two hops) and C across R and B (three hops).
Everything is waited for with the API's long-poll (``wait=``), never a sleep.
The DHT is off (``--no-dht``) so that no peer links past its neighbours and the
line holds.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests._procs import PeerProcess, running, start_peer, wait_ready


def _bodies(p: PeerProcess, want: int, **params: str) -> list[dict[str, object]]:
    """Unread messages at ``p``, long-polling until ``want`` have arrived (bounded)."""
    got: list[dict[str, object]] = []
    for _ in range(10):
        r = p.get("/messages", unread="true", wait="5", **params)
        assert r.status_code == 200, r.text
        got.extend(r.json())
        if len(got) >= want:
            break
    return got


def test_line_of_four_processes(tmp_path: Path) -> None:
    relay = start_peer(tmp_path, "R", "--relay-only", "--no-dht")
    wait_ready(relay)
    # the three forms of --bootstrap: a peer address, a bootstrap.json URL, a file
    a = start_peer(
        tmp_path, "A", "--channel", "lobby", "--no-dht", bootstrap=f"{relay.ws_url}#{relay.peer_id}"
    )
    b = start_peer(
        tmp_path, "B", "--channel", "lobby", "--no-dht", bootstrap=f"{relay.api}/bootstrap.json"
    )
    with running(relay, a, b):
        wait_ready(a)
        wait_ready(b)
        listing = tmp_path / "bootstrap.json"
        listing.write_text(b.client.get(b.api + "/bootstrap.json").text)
        assert json.loads(listing.read_text())["peers"][0]["peer_id"] == b.peer_id
        c = start_peer(tmp_path, "C", "--channel", "lobby", "--no-dht", bootstrap=str(listing))
        with running(c):
            wait_ready(c)

            # everybody hears of everybody (presence crosses the relay)
            for p in (a, b, c):
                r = p.get("/peers", online="true", min="3", wait="20")
                ids = {q["peer_id"] for q in r.json()}
                assert ids >= {x.peer_id for x in (a, b, c, relay) if x is not p} - {relay.peer_id}
            status = relay.get("/status").json()
            assert status["relay_only"] is True
            assert status["peer_count"] == 2  # A and B only: the line holds

            # a channel message crosses the relay-only seed, then B
            sent = a.post(
                "/send",
                {"channel": "lobby", "body": "hello from A", "payload": {"kind": "note", "n": 1}},
            )
            assert sent.status_code == 200, sent.text
            msg_id = sent.json()["id"]
            for p in (b, c):
                got = _bodies(p, 1, channel="lobby")
                assert [m["id"] for m in got] == [msg_id]
                assert got[0]["body"] == "hello from A"
                assert got[0]["payload"] == {"kind": "note", "n": 1}
                assert got[0]["from"] == a.peer_id
            # the other way, from the end of the line
            back = c.post("/send", {"to": "#lobby", "content": "hello from C"})
            assert back.status_code == 200, back.text
            for p in (a, b):
                got = _bodies(p, 1)
                assert [m["body"] for m in got] == ["hello from C"]
            # read messages are not returned as unread again
            assert a.get("/messages", unread="true").json() == []
            # the relay-only seed has no agent and received nothing
            assert relay.get("/messages").json() == []

            # a DM from A to C: three hops, end-to-end encrypted
            dm = a.post("/send", {"to": c.peer_id, "content": "just for C"})
            assert dm.status_code == 200, dm.text
            got = _bodies(c, 1, peer=a.peer_id)
            assert [(m["kind"], m["body"], m["from"]) for m in got] == [
                ("dm", "just for C", a.peer_id)
            ]
            # B relayed it but has no copy it can read
            assert all(m["kind"] != "dm" for m in b.get("/messages").json())

            # errors a user meets
            unknown = a.post("/send", {"to": "ab" * 32, "content": "?"})
            assert unknown.status_code == 400
            assert unknown.json()["error"]["code"] == "unknown-peer"
            bad = a.post("/send", {"to": "not-a-peer", "content": "?"})
            assert bad.status_code == 400
            big = a.post("/send", {"channel": "lobby", "body": "x" * 70_000})
            assert big.status_code == 413
            assert big.json()["error"]["code"] == "too-large"
            noauth = a.client.get(a.api + "/messages")
            assert noauth.status_code == 401

            # exactly once: nothing further arrived anywhere
            for p in (a, b, c):
                assert p.get("/messages", unread="true").json() == []
