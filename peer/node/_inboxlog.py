"""The ``~inbox`` log: the local agent's messages in arrival order.

It is not a network topic: its records are our own disk's (decrypted DMs
included), written in the same commit as the messages they come from, and
their positions are the API's cursors. Records are plain CBOR (no need for
the slower canonical form); ids are derived from the message id, so a
message enters the inbox log once.

A channel message (ours or received) is recorded as a reference (``REF`` and its
message id, ``inbox_ref_item``) instead of a second full copy: the channel
log holds its envelope, and ``read_inbox`` builds the entry from it as it
was built when the message came (``inbox_entry``). Half the bytes and no
record to encode per message on catch-up's path. DMs (decrypted here) and
our own messages keep full records, and so does every record of an older
store: both forms are read. Channel retention keeps a record while the
inbox still holds a reference to it (``inbox_pins``, the reference's key in
the id index), skipping it and trimming the records behind it as usual
(``store._retention``); once the inbox's own count retention drops the
reference, the record goes at the next sweep. Only channel logs are pinned:
a DM's log (its ``inbox/<peer id>`` route) is never held by the inbox, which
keeps its own full, decrypted copy of every DM. A reference whose record is gone all the same
(a store from before pinning, or a record that no longer opens) is left out
of the inbox read at start, counted (``inbox_gone``) and logged, never shown
half-built.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Callable
from typing import Any

import cbor2

from peer.wire._blobframes import check_attachments
from peer.wire._envelope import (
    PRESENCE_TOPIC,
    inbox_topic,
    message_id,
    payload_value,
    split_wire,
)
from peer.wire._errors import ProtocolError
from peer.wire._identity import peer_id_of
from peer.wire._meta import Meta, check_meta
from store import (
    AppendItem,
    KeepRules,
    MessageStore,
    Pin,
    RetentionPolicy,
    StoredMessage,
    StoreService,
)

from ._host import PeerCore, StorageCounters
from ._inbox import InboxMessage, channel_entry_of

INBOX_LOG = "~inbox"
_INBOX_ID_TAG = b"clawmesh/local-inbox/v1"
_REF_ID_TAG = b"clawmesh/inbox-ref/v1"
_U64 = struct.Struct(">Q")
_NOBODY = bytes(32)
_DM_LOGS = inbox_topic(b"")  # "inbox/": the log topic of every DM and read receipt
REF = b"\xf7ref"  # CBOR "undefined", then "ref": a full record is a CBOR map, never this
_REF_SIZE = len(REF) + 32


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
    if message.attachments:
        m["attachments"] = [a.to_map() for a in message.attachments]
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
        attachments=check_attachments(m),
        meta=_meta_of(m.get("meta")),
    )


def _meta_of(raw: Any) -> Meta | None:
    if raw is None:
        return None
    try:
        return check_meta(raw)
    except ProtocolError:
        return None


def inbox_key(msg_id: bytes) -> bytes:
    """The id (in the store's id index) of message ``msg_id``'s full ``~inbox``
    record (and of a reference, in stores written before ``ref_key``)."""
    return hashlib.sha256(_INBOX_ID_TAG + msg_id).digest()


@functools.lru_cache(maxsize=4096)
def _lane_prefix(sender: bytes, topic: str) -> bytes:
    return hashlib.sha256(_REF_ID_TAG + sender + topic.encode()).digest()[:16]


def ref_key(sender: bytes, topic: str, seq: int, msg_id: bytes) -> bytes:
    """The id index key of a reference to the channel message ``msg_id`` (``seq`` of
    ``sender`` in ``topic``): 16 bytes naming the (sender, topic) lane, the seq, 8
    bytes of the id. A sender's references in a topic sort in seq order, so a
    catch-up page's go into the index at one place instead of one random place
    each (a commit rewrites far fewer of its pages); the id's bytes keep a forked
    sender's two messages at one seq apart. Not derived from the id alone, so the
    reference's id entry is never looked up before it is written: it follows its
    channel record (``AppendItem.follows``)."""
    return _lane_prefix(sender, topic) + _U64.pack(seq) + msg_id[:8]


def inbox_pins(topic: str) -> Pin | None:
    """``retention_sweep``'s pins: a channel record stays while the inbox refers to it
    (by either key a reference has had); nothing else is pinned (the inbox's own
    log, and DM logs: the inbox holds DMs whole)."""
    if topic in (INBOX_LOG, PRESENCE_TOPIC) or topic.startswith(_DM_LOGS):
        return None
    return _ref_keys


def _ref_keys(m: StoredMessage) -> tuple[bytes, bytes]:
    return ref_key(m.sender, m.topic, m.sender_seq, m.msg_id), inbox_key(m.msg_id)


def inbox_item(message: InboxMessage, payload: bytes | None) -> AppendItem:
    return AppendItem(
        msg_id=inbox_key(message.id),
        topic=INBOX_LOG,
        sender=_NOBODY,
        sender_seq=0,
        ts=message.ts,
        wire=inbox_record(message, payload),
        received_ms=message.received_ms,
    )


def inbox_ref_item(message: InboxMessage) -> AppendItem:
    """``inbox_item`` of a channel message, as a reference to its channel log record
    (``read_inbox`` builds the same entry from it)."""
    return AppendItem(
        ref_key(message.sender, message.topic, message.seq, message.id),
        INBOX_LOG,
        _NOBODY,
        0,
        message.ts,
        REF + message.id,
        message.received_ms,
        True,  # stored with its channel record, never without (``follows``)
    )


def inbox_item_of(kind: str, message: InboxMessage, payload: bytes | None) -> AppendItem:
    """The ``~inbox`` record of a message: a reference for a channel message, the
    full record otherwise (a DM's content is decrypted here only)."""
    return inbox_ref_item(message) if kind == "msg" else inbox_item(message, payload)


def referenced(wire: bytes) -> bytes | None:
    """The message id a reference record points to (None: a full record)."""
    return wire[len(REF) :] if len(wire) == _REF_SIZE and wire.startswith(REF) else None


def entry_from_log(
    wire: bytes, msg_id: bytes, cursor: int, received_ms: int, me: bytes,
    peer_ids: dict[bytes, bytes] | None = None,
) -> InboxMessage | None:
    """The inbox entry of the channel message ``wire`` (its log record), as
    ``Storage`` built it when the message came; None if it is not one.

    Our own disk: the envelope was checked and verified when it was stored,
    so it is decoded, not checked again (a full ``open_envelope`` costs five
    times more, for every reference read at start). ``peer_ids``: authors'
    peer ids by key, kept across calls."""
    try:
        signed, _ = cbor2.loads(wire)
        f = cbor2.loads(signed)
        if type(f) is not dict or f.get("kind") != "msg":
            return None
        key = f["from"]
        sender = None if peer_ids is None else peer_ids.get(key)
        if sender is None:
            sender = peer_id_of(key)
            if peer_ids is not None and len(peer_ids) < 4096:
                peer_ids[key] = sender
        message, _ = channel_entry_of(f, msg_id, sender, sender == me, received_ms)
    except (cbor2.CBORError, ValueError, TypeError, LookupError, ProtocolError):
        return None
    message.cursor = cursor
    return message


def _resolve(s: MessageStore, ids: list[bytes]) -> list[bytes | None]:
    """The envelopes (wire) of ``ids`` in the channel logs; None where it is gone."""
    found = s.get_many(ids)
    return [None if m is None or m.msg_id != i else m.wire for m, i in zip(found, ids, strict=True)]


async def read_inbox(
    service: StoreService,
    capacity: int,
    peer: PeerCore | None = None,
    counters: StorageCounters | None = None,
) -> list[InboxMessage]:
    """The last ``capacity`` messages of the inbox log, oldest first, read flags set.

    References are resolved from the channel logs (``peer``: whose inbox, for
    ``outgoing``); those that are gone all the same (removed before retention
    kept what the inbox refers to, or the record does not open) are left out,
    counted in ``counters.inbox_gone`` and logged."""
    gone: list[int] = []
    messages = await _read_inbox(service, capacity, _NOBODY if peer is None else peer.peer_id,
                                 gone)
    if gone:
        if counters is not None:
            counters.inbox_gone += len(gone)
        if peer is not None:
            peer.log.warning("inbox entries gone from their channel logs", count=len(gone),
                             first=gone[0], last=gone[-1])
    return messages


async def _read_inbox(
    service: StoreService, capacity: int, me: bytes, gone: list[int]
) -> list[InboxMessage]:
    head = await service.head(INBOX_LOG)
    start = max(head.first_seq - 1, head.next_seq - 1 - capacity)
    watermark, flagged = await service.read(lambda s: s.read_state(INBOX_LOG))
    messages: list[InboxMessage] = []
    peer_ids: dict[bytes, bytes] = {}
    while records := await service.read_log(INBOX_LOG, after=start, limit=5_000):
        ids = [ref for r in records if (ref := referenced(r.wire)) is not None]
        wires = dict(zip(ids, await service.read(functools.partial(_resolve, ids=ids)),
                         strict=True))
        for record in records:
            ref = referenced(record.wire)
            if ref is None:
                message = inbox_message(record.seq, record.received_ms, record.wire)
            else:
                built = _from_ref(record.seq, record.received_ms, ref, wires.get(ref), me,
                                  peer_ids)
                if built is None:
                    gone.append(record.seq)
                    continue
                message = built
            if record.seq <= watermark or record.seq in flagged:
                message.read = True
            messages.append(message)
        start = records[-1].seq
    return messages


def _from_ref(
    cursor: int, received_ms: int, ref: bytes, wire: bytes | None, me: bytes,
    peer_ids: dict[bytes, bytes],
) -> InboxMessage | None:
    if wire is None:
        return None
    return entry_from_log(wire, ref, cursor, received_ms, me, peer_ids)


__all__ = [
    "INBOX_LOG",
    "REF",
    "entry_from_log",
    "inbox_item",
    "inbox_item_of",
    "inbox_key",
    "inbox_message",
    "inbox_pins",
    "inbox_record",
    "inbox_ref_item",
    "read_inbox",
    "ref_key",
    "referenced",
]


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


def own_tails(s: MessageStore, me: bytes, size: int) -> list[tuple[str, list[tuple[int, bytes]]]]:
    """Our last ``size`` messages in every log topic we signed in, as (seq, wire) in seq
    order: what may not have left before we stopped (``peer.protocols._owntail``)."""
    out = []
    for head in s.topics():
        top = max((end for _, end in s.sender_ranges(me, head.topic)), default=0)
        if top:
            got = s.read_sender(head.topic, me, max(1, top - size + 1), top, size)
            out.append((head.topic, [(m.sender_seq, m.wire) for m in got]))
    return out


def mark_read(s: MessageStore, seqs: list[int]) -> None:
    s.mark_read(INBOX_LOG, seqs)


def with_inbox(rules: KeepRules, capacity: int) -> KeepRules:
    """``rules`` with the ``~inbox`` log kept to the inbox's capacity."""
    inbox = RetentionPolicy(max_count=max(capacity, 1))
    return KeepRules(
        default=rules.default, topics={**rules.topics, INBOX_LOG: inbox}, prefixes=rules.prefixes
    )


def sweep_rules(
    rules: KeepRules, capacity: int
) -> tuple[KeepRules, Callable[[str], Pin | None]]:
    """``retention_sweep``'s rules and pins for a peer: ``with_inbox`` and ``inbox_pins``."""
    return with_inbox(rules, capacity), inbox_pins
