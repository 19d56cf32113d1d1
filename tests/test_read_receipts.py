"""Read receipts for DMs (peer/node/_readmarks.py, catchup.md section 9.7): the
content against its vector, and what a receiving inbox does with one."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import trio

from peer.node._inbox import Inbox, InboxMessage
from peer.node._readmarks import read_content, read_ids
from peer.wire import _cbor
from peer.wire._envelope import payload_value

from ._vectors import VECTORS
from .test_api import Pair, pair  # noqa: F401  (pair: the fixture)
from .test_inbox import msg

ME, BOB, EVE = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


def test_read_receipt_matches_its_vector() -> None:
    doc = json.loads((VECTORS / "read-receipt.json").read_text())
    ids = [bytes.fromhex(i) for i in doc["ids"]]
    content = read_content(ids)
    assert content.payload is not None
    assert content.payload.hex() == doc["payload"]
    assert _cbor.encode(content.to_map()).hex() == doc["dm_content"]
    assert payload_value(content.payload) == doc["payload_value"]
    assert read_ids("dm", False, "", doc["payload_value"]) == ids
    for case in doc["not_read_receipts"]:
        assert read_ids("dm", False, case["body"], case["payload_value"]) is None, case["why"]
    # only an incoming DM is one
    assert read_ids("msg", False, "", doc["payload_value"]) is None
    assert read_ids("dm", True, "", doc["payload_value"]) is None


def _dm(i: int, *, sender: bytes, peer: bytes, outgoing: bool, **kw: Any) -> InboxMessage:
    base = msg(i)
    return dataclasses.replace(
        base,
        kind="dm",
        topic="dm/x",
        channel=None,
        sender=sender,
        peer=peer,
        outgoing=outgoing,
        read=outgoing,
        status="pending" if outgoing else None,
        **kw,
    )


def test_a_read_receipt_moves_own_dms_to_read_and_is_itself_read() -> None:
    inbox = Inbox()
    mine = _dm(1, sender=ME, peer=BOB, outgoing=True)
    to_eve = _dm(2, sender=ME, peer=EVE, outgoing=True)
    for m in (mine, to_eve):
        inbox.add(m)
    inbox.set_status(mine.id, "delivered")
    ids = [mine.id, to_eve.id]
    receipt = _dm(
        3,
        sender=BOB,
        peer=BOB,
        outgoing=False,
        body="",
        payload={"clawmesh": {"read": [i.hex() for i in ids]}},
        has_payload=True,
    )
    before = inbox.status_count
    inbox.add(receipt)
    assert mine.status == "read"
    assert to_eve.status == "pending"  # bob cannot mark eve's DMs
    assert receipt.read and inbox.unread() == 0
    changes = inbox.status_since(before)
    assert [(c.id, c.status) for c in changes] == [(mine.id, "read")]
    # a delivery receipt that comes late does not move it back
    inbox.set_status(mine.id, "delivered")
    assert mine.status == "read"


async def test_ack_of_a_dm_sends_a_read_receipt_to_its_sender(pair: Pair) -> None:  # noqa: F811
    b_id = pair.b.identity.peer_id_hex
    sent = await pair.api_a.post("/send", json={"to": b_id, "body": "read me"})
    assert sent.status_code == 200, sent.text
    dm_id = sent.json()["id"]
    with trio.fail_after(10):
        while pair.b.inbox.get(bytes.fromhex(dm_id)) is None:
            await pair.b.wait_inbox_changed()
    acked = await pair.api_b.post("/ack", json={"ids": [dm_id]})
    assert acked.json()["marked"] == 1
    with trio.fail_after(10):
        while (message := pair.a.inbox.get(bytes.fromhex(dm_id))) is None or (
            message.status != "read"
        ):
            await pair.a.wait_inbox_changed()
    got = (await pair.api_a.get("/messages", params={"peer": b_id})).json()
    mine = next(m for m in got if m["id"] == dm_id)
    assert mine["status"] == "read"
    # the read receipt itself reached a's inbox already read; a second ack sends none
    assert pair.a.inbox.unread() == 0
    before = len(pair.b.inbox)
    assert (await pair.api_b.post("/ack", json={"ids": [dm_id]})).json()["marked"] == 0
    assert len(pair.b.inbox) == before


async def test_no_read_receipt_to_a_peer_without_the_capability(pair: Pair) -> None:  # noqa: F811
    sent = await pair.api_a.post("/send", json={"to": pair.b.identity.peer_id_hex, "body": "x"})
    dm_id = bytes.fromhex(sent.json()["id"])
    with trio.fail_after(10):
        while pair.b.inbox.get(dm_id) is None:
            await pair.b.wait_inbox_changed()
    info = pair.b.directory.get(pair.a.peer_id)
    assert info is not None
    info.caps = tuple(c for c in info.caps if c != "read-receipts")  # an older peer
    before = len(pair.b.inbox)
    assert (await pair.api_b.post("/ack", json={"ids": [dm_id.hex()]})).json()["marked"] == 1
    assert len(pair.b.inbox) == before  # nothing sent: no outgoing read receipt
    message = pair.a.inbox.get(dm_id)
    assert message is not None and message.status != "read"
