"""Read receipts for DMs: a DM whose content says "these DMs of yours were read".

A read receipt is an ordinary DM (encrypted, signed, receipted like any) with
an empty ``body`` and the payload ``{"clawmesh": {"read": [<hex id>, ...]}}``
(1 to ``MAX_READ_IDS`` ids of DMs its recipient sent to its sender). It is
sent only to a peer that announces the capability ``read-receipts``, so a
peer without this feature never gets one. The receiving inbox takes it as
read at once and moves the DMs it names, if they are its own DMs to that
sender, to the status ``read``; a later delivery receipt does not move a
read DM back to ``delivered``. Plain functions, no I/O.
"""

from __future__ import annotations

from typing import Any

from peer.wire import _cbor
from peer.wire._envelope import Content

READ_RECEIPTS_CAP = "read-receipts"
MAX_READ_IDS = 64
KEY = "clawmesh"


def read_content(ids: list[bytes]) -> Content:
    """The content of a read receipt for ``ids`` (1 to ``MAX_READ_IDS``)."""
    if not 1 <= len(ids) <= MAX_READ_IDS:
        raise ValueError(f"a read receipt names 1..{MAX_READ_IDS} DMs")
    return Content(body="", payload=_cbor.encode({KEY: {"read": [i.hex() for i in ids]}}))


def read_ids(kind: str, outgoing: bool, body: str, payload: Any) -> list[bytes] | None:
    """The DM ids a received message marks read, or None if it is no read receipt."""
    if kind != "dm" or outgoing or body or not isinstance(payload, dict) or len(payload) != 1:
        return None
    inner = payload.get(KEY)
    if not isinstance(inner, dict) or set(inner) != {"read"}:
        return None
    raw = inner["read"]
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_READ_IDS:
        return None
    out = []
    for item in raw:
        if not isinstance(item, str) or len(item) != 64:
            return None
        try:
            out.append(bytes.fromhex(item))
        except ValueError:
            return None
    return out


def batches(ids: list[bytes]) -> list[list[bytes]]:
    return [ids[i : i + MAX_READ_IDS] for i in range(0, len(ids), MAX_READ_IDS)]
