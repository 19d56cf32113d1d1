"""read-receipt.json: the DM content of a read receipt (catchup.md section 9.7)."""

from __future__ import annotations

import hashlib

from peer.node._readmarks import read_content
from peer.wire import _cbor

from .common import Json


def build_read_receipt() -> Json:
    ids = [hashlib.sha256(b"clawmesh/vector/read-receipt/%d" % i).digest() for i in (1, 2)]
    content = read_content(ids)
    assert content.payload is not None
    first = ids[0].hex()
    return {
        "description": "A read receipt (catchup.md section 9.7): the content of a DM a reader "
        "sends to the sender of DMs it read, if that sender announces the capability "
        "read-receipts. 'payload' is the CBOR of 'payload_value'; 'dm_content' the "
        "canonical map inside the DM's box (dm.json shows the sealing). 'not_read_receipts' "
        "are DM contents a receiver takes as ordinary DMs.",
        "capability": "read-receipts",
        "ids": [i.hex() for i in ids],
        "payload_value": {"clawmesh": {"read": [i.hex() for i in ids]}},
        "payload": content.payload.hex(),
        "dm_content": _cbor.encode(content.to_map()).hex(),
        "not_read_receipts": [
            {"why": "a body", "body": "hi", "payload_value": {"clawmesh": {"read": [first]}}},
            {"why": "no ids", "body": "", "payload_value": {"clawmesh": {"read": []}}},
            {"why": "65 ids", "body": "", "payload_value": {"clawmesh": {"read": [first] * 65}}},
            {
                "why": "an id not 64 hex digits",
                "body": "",
                "payload_value": {"clawmesh": {"read": ["00"]}},
            },
            {
                "why": "another key",
                "body": "",
                "payload_value": {"clawmesh": {"read": [first], "x": 1}},
            },
        ],
    }
