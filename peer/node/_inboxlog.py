"""The ``~inbox`` log: the local agent's messages in arrival order.

It is not a network topic: its records are our own disk's (decrypted DMs
included), written in the same commit as the messages they come from, and
their positions are the API's cursors. Records are plain CBOR (no need for
the slower canonical form); ids are derived from the message id, so a
message enters the inbox log once.
"""

from __future__ import annotations

import hashlib
from typing import Any

import cbor2

from peer.wire._envelope import message_id, payload_value, split_wire
from peer.wire._errors import ProtocolError
from peer.wire._meta import Meta, check_meta
from store import AppendItem, KeepRules, MessageStore, RetentionPolicy, StoreService

from ._inbox import InboxMessage

INBOX_LOG = "~inbox"
_INBOX_ID_TAG = b"clawmesh/local-inbox/v1"
_NOBODY = bytes(32)


def inbox_record(message: InboxMessage, payload: bytes | None) -> bytes:
    """The ``~inbox`` log record of one message (decrypted: it is our own disk)."""
    m: dict[str, Any] = {
        "id": message.id,
        "kind": message.kind,
        "topic": message.topic,
        "from": message.sender,
        "body": message.body,
        "ts": message.ts,
        "out": message.outgoing,
        "seq": message.seq,
    }
    if message.channel is not None:
        m["ch"] = message.channel
    if message.peer is not None:
        m["peer"] = message.peer
    if payload is not None:
        m["payload"] = payload
    if message.reply_to is not None:
        m["reply_to"] = message.reply_to
    if message.thread is not None:
        m["thread"] = message.thread
    if message.meta is not None:
        m["meta"] = message.meta.to_map()
    return cbor2.dumps(m)  # our own disk: no need for the (slower) canonical form


def inbox_message(cursor: int, received_ms: int, record: bytes) -> InboxMessage:
    m = cbor2.loads(record)
    payload = m.get("payload")
    return InboxMessage(
        cursor=cursor,
        id=m["id"],
        kind=m["kind"],
        topic=m["topic"],
        channel=m.get("ch"),
        sender=m["from"],
        peer=m.get("peer"),
        body=m["body"],
        payload=None if payload is None else payload_value(payload),
        has_payload=payload is not None,
        reply_to=m.get("reply_to"),
        thread=m.get("thread"),
        ts=m["ts"],
        received_ms=received_ms,
        outgoing=m["out"],
        read=m["out"],
        seq=m.get("seq", 0),
        meta=_meta_of(m.get("meta")),
    )


def _meta_of(raw: Any) -> Meta | None:
    if raw is None:
        return None
    try:
        return check_meta(raw)
    except ProtocolError:
        return None


def inbox_item(message: InboxMessage, payload: bytes | None) -> AppendItem:
    return AppendItem(
        msg_id=hashlib.sha256(_INBOX_ID_TAG + message.id).digest(),
        topic=INBOX_LOG,
        sender=_NOBODY,
        sender_seq=0,
        ts=message.ts,
        wire=inbox_record(message, payload),
        received_ms=message.received_ms,
    )


async def read_inbox(service: StoreService, capacity: int) -> list[InboxMessage]:
    """The last ``capacity`` messages of the inbox log, oldest first, read flags set."""
    head = await service.head(INBOX_LOG)
    start = max(head.first_seq - 1, head.next_seq - 1 - capacity)
    watermark, flagged = await service.read(lambda s: s.read_state(INBOX_LOG))
    messages: list[InboxMessage] = []
    while records := await service.read_log(INBOX_LOG, after=start, limit=5_000):
        for record in records:
            message = inbox_message(record.seq, record.received_ms, record.wire)
            if record.seq <= watermark or record.seq in flagged:
                message.read = True
            messages.append(message)
        start = records[-1].seq
    return messages


__all__ = ["INBOX_LOG", "inbox_item", "inbox_message", "inbox_record", "read_inbox"]


def chain_heads(s: MessageStore, me: bytes) -> dict[str, tuple[int, bytes | None]]:
    """Our last ``seq`` in every log topic we signed in, and that envelope's id
    (None if the store no longer has it): where each chain of ours goes on."""
    chains: dict[str, tuple[int, bytes | None]] = {}
    for head in s.topics():
        seq = max((end for _, end in s.sender_ranges(me, head.topic)), default=0)
        if seq:
            last = s.read_sender(head.topic, me, seq, seq, 1)
            chains[head.topic] = (seq, message_id(split_wire(last[0].wire)[0]) if last else None)
    return chains


def mark_read(s: MessageStore, seqs: list[int]) -> None:
    s.mark_read(INBOX_LOG, seqs)


def with_inbox(rules: KeepRules, capacity: int) -> KeepRules:
    """``rules`` with the ``~inbox`` log kept to the inbox's capacity."""
    inbox = RetentionPolicy(max_count=max(capacity, 1))
    return KeepRules(
        default=rules.default, topics={**rules.topics, INBOX_LOG: inbox}, prefixes=rules.prefixes
    )
