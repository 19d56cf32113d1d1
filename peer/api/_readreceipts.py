"""Sending read receipts (``peer.node._readmarks``) when DMs are marked read.

``POST /ack`` marks messages read; for the DMs among them that were unread,
each sender that announces ``read-receipts`` gets one read receipt per 64
ids. A receipt that cannot be sent now (the sender's key unknown, the store
refusing) is logged and skipped: the DMs stay read here, their sender keeps
showing "delivered".
"""

from __future__ import annotations

from collections import defaultdict

from peer.node._node import Peer, UnknownPeer
from peer.node._readmarks import READ_RECEIPTS_CAP, batches, read_content
from peer.wire._errors import ProtocolError
from store import StoreError


def unread_dms(peer: Peer, ids: list[bytes]) -> dict[bytes, list[bytes]]:
    """The unread DMs among ``ids`` that a read receipt may go for, by sender."""
    out: dict[bytes, list[bytes]] = defaultdict(list)
    for msg_id in ids:
        message = peer.inbox.get(msg_id)
        if message is None or message.read or message.outgoing or message.kind != "dm":
            continue
        info = peer.directory.get(message.sender)
        if (
            info is not None
            and READ_RECEIPTS_CAP in info.caps
            and msg_id not in out[message.sender]
        ):
            out[message.sender].append(msg_id)
    return out


async def send_read_receipts(peer: Peer, by_sender: dict[bytes, list[bytes]]) -> int:
    """Send the read receipts; returns how many went out."""
    sent = 0
    for sender, ids in by_sender.items():
        for batch in batches(ids):
            try:
                await peer.send_direct(sender, read_content(batch))
            except (UnknownPeer, ProtocolError, StoreError) as exc:
                peer.log.warning("read receipt not sent", peer=sender.hex()[:16], error=repr(exc))
                break
            sent += 1
    return sent
