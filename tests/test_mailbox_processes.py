"""Acceptance (offline DMs without a seed): a DM reaches its recipient while its
sender is away, through the recipient's mailbox peers, and the recipient's
receipt reaches the sender the same way while the recipient is away.

Real ``python -m peer`` processes on loopback, DHT on, no relay-only seed:
B and C hold mailboxes (the default), A and D do not (``--no-mailbox``).
D stops; A sends it a DM (200) and, after the deposit delay, deposits it with
B and C; A stops. D starts again and gets the DM from a mailbox; its receipt
goes to A's mailboxes (A is away); D stops. A starts again and its outbox
shows the DM delivered: the receipt, signed by D, came from a mailbox, since
neither D nor any seed was there to give it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests._procs import PeerProcess, running, start_peer, stop, wait_ready

DEADLINE_S = 90.0


def _until(what: str, check: Callable[[], Any], deadline_s: float = DEADLINE_S) -> Any:
    """Poll ``check`` until it returns something true (each poll long-polls or is
    quick), failing after ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _mailbox(p: PeerProcess) -> dict[str, Any]:
    mailbox: dict[str, Any] = p.get("/status").json()["store"]["mailbox"]
    return mailbox


def _again(tmp: Path, p: PeerProcess, *extra: str, bootstrap: str) -> PeerProcess:
    again = start_peer(
        tmp, p.name, *extra, bootstrap=bootstrap, ports=(p.mesh_port, p.api_port)
    )
    wait_ready(again)
    return again


def test_a_dm_and_its_receipt_travel_through_mailboxes(tmp_path: Path) -> None:
    b = start_peer(tmp_path, "b")
    wait_ready(b)
    c = start_peer(tmp_path, "c", bootstrap=b.ws_url)
    a = start_peer(tmp_path, "a", "--no-mailbox", bootstrap=b.ws_url)
    d = start_peer(tmp_path, "d", "--no-mailbox", bootstrap=b.ws_url)
    with running(b, c, a, d):
        for p in (c, a, d):
            wait_ready(p)
        assert _mailbox(b)["enabled"] and not _mailbox(a)["enabled"]
        _until(  # A knows D's key (a DM to it can be sealed)
            "A to know D",
            lambda: d.peer_id in {x["peer_id"] for x in a.get("/peers", wait="5").json()},
        )
        stop(d)
        _until("A to see D gone", lambda: not any(
            x["peer_id"] == d.peer_id and x["linked"] for x in a.get("/peers").json()
        ))
        sent = a.post("/send", {"to": d.peer_id, "body": "while you were away"})
        assert sent.status_code == 200, sent.text
        dm_id = sent.json()["id"]
        # the deposit delay passes, A looks D's mailboxes up and both take the DM
        _until("B and C to hold the DM", lambda: all(
            _mailbox(p)["held"] >= 1 for p in (b, c)
        ))
        assert _mailbox(a)["deposits"]["placed"] >= 2
        stop(a)

        d2 = _again(tmp_path, d, "--no-mailbox", bootstrap=b.ws_url)
        with running(d2):
            got = _until("D to get the DM", lambda: [
                m for m in d2.get("/messages", peek="true", wait="5").json() if m["id"] == dm_id
            ])
            assert got[0]["body"] == "while you were away" and got[0]["from"] == a.peer_id
            # A is away: D's receipt goes to A's mailboxes
            _until("D's receipt to be deposited", lambda: (
                _mailbox(d2)["deposits"]["placed"] >= 1
            ))
        stop(d2)

        a2 = _again(tmp_path, a, "--no-mailbox", bootstrap=c.ws_url)
        with running(a2):
            assert a2.get("/outbox", wait="60").json() == []  # long-polls until empty
            mine = [m for m in a2.get("/messages", peek="true").json() if m["id"] == dm_id]
            assert mine and mine[0]["status"] == "delivered", mine
            assert a2.get("/dead-letters").json() == []
        for p in (b, c):  # the mailboxes refused nothing
            assert _mailbox(p)["refused"] == {}, _mailbox(p)
