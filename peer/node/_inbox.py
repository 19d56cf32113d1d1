"""What the local agent sees: received messages and the peers it knows.

Plain data structures, no I/O. The inbox is bounded: past ``capacity`` the
oldest read messages go first, then the oldest unread ones (counted in
``dropped``). Each message gets a local, increasing ``cursor`` so an agent
can ask for everything after the last one it saw.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from peer.wire._blobframes import Attachment, check_attachments
from peer.wire._envelope import Content, Envelope, payload_value
from peer.wire._meta import Meta, meta_json

from ._readmarks import read_ids


@dataclass(slots=True)
class InboxMessage:
    cursor: int
    id: bytes
    kind: str  # "msg" or "dm"
    topic: str
    channel: str | None  # channel name for "msg", None for DMs
    sender: bytes  # peer id
    peer: bytes | None  # the other side of a DM
    body: str
    payload: Any
    has_payload: bool
    reply_to: bytes | None
    thread: bytes | None
    ts: int  # sender's clock, ms
    received_ms: int
    outgoing: bool
    read: bool = False
    # an outgoing DM: "pending", "delivered", "read" (_readmarks) or "undeliverable"
    status: str | None = None
    seq: int = 0  # the sender's sequence number in this conversation or channel
    attachments: tuple[Attachment, ...] = ()  # blobs it refers to (``GET /blobs/<id>``)
    meta: Meta | None = None  # a DM's message semantics (envelope.md section 12)
    handed: bool = False  # given to the agent (API, stream or webhook) at least once
    receipt: str | None = None  # our DM: the furthest state its recipient signed

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "cursor": self.cursor,
            "id": self.id.hex(),
            "kind": self.kind,
            "topic": self.topic,
            "from": self.sender.hex(),
            "body": self.body,
            "content": self.body,
            "timestamp": self.ts,
            "received": self.received_ms,
            "read": self.read,
            "outgoing": self.outgoing,
            "seq": self.seq,
        }
        if self.channel is not None:
            out["channel"] = self.channel
        if self.peer is not None:
            out["peer"] = self.peer.hex()
        if self.has_payload:
            out["payload"] = self.payload
        if self.reply_to is not None:
            out["reply_to"] = self.reply_to.hex()
        if self.thread is not None:
            out["thread"] = self.thread.hex()
        if self.status is not None:
            out["status"] = self.status
        if self.attachments:
            out["attachments"] = [a.to_json() for a in self.attachments]
        if self.meta is not None:
            out.update(meta_json(self.meta))
        if self.receipt is not None:
            out["receipt"] = self.receipt
        return out


@dataclass(frozen=True, slots=True)
class StatusChange:
    """An outgoing DM's status changed: the ``number``-th change this inbox saw."""

    number: int
    id: bytes
    peer: bytes | None
    status: str
    cursor: int


STATUS_CHANGES_KEPT = 4096


class Inbox:
    def __init__(self, capacity: int = 100_000) -> None:
        self._messages: OrderedDict[int, InboxMessage] = OrderedDict()
        self._by_id: dict[bytes, int] = {}
        self._read: OrderedDict[int, None] = OrderedDict()  # cursors of read messages, oldest first
        self._capacity = capacity
        self._next = 1
        self.dropped = 0
        # the last status changes of our DMs, for live streams (not persisted: a DM's
        # current status is in its message)
        self.status_changes: deque[StatusChange] = deque(maxlen=STATUS_CHANGES_KEPT)
        self.status_count = 0
        self.on_handed: Callable[[InboxMessage], None] | None = None

    def __len__(self) -> int:
        return len(self._messages)

    def __iter__(self) -> Iterator[InboxMessage]:
        return iter(self._messages.values())

    @property
    def last_cursor(self) -> int:
        return self._next - 1

    def unread(self) -> int:
        return len(self._messages) - len(self._read)

    def add(self, message: InboxMessage) -> InboxMessage | None:
        """Hold ``message``; None if already held.

        Its cursor is assigned here unless it has one (a persistent inbox
        gives the store's position, in increasing order).
        """
        if message.id in self._by_id:
            return None
        if message.cursor <= 0:
            message.cursor = self._next
        marks = read_ids(message.kind, message.outgoing, message.body, message.payload)
        if marks is not None:  # a read receipt: nothing for the agent to read
            message.read = True
        self._next = max(self._next, message.cursor + 1)
        self._messages[message.cursor] = message
        self._by_id[message.id] = message.cursor
        if message.read:
            self._read[message.cursor] = None
        while len(self._messages) > self._capacity:
            self._evict()
        for msg_id in marks or ():
            target = self.get(msg_id)
            if target is not None and target.outgoing and target.peer == message.sender:
                self.set_status(msg_id, "read")
        return message

    def _evict(self) -> None:
        if self._read:
            victim, _ = self._read.popitem(last=False)
        else:
            victim = next(iter(self._messages))
            self.dropped += 1
        message = self._messages.pop(victim)
        del self._by_id[message.id]

    def get(self, msg_id: bytes) -> InboxMessage | None:
        cursor = self._by_id.get(msg_id)
        return None if cursor is None else self._messages[cursor]

    def remove(self, msg_id: bytes) -> InboxMessage | None:
        """Take a message out (an expired one): it is never handed again."""
        cursor = self._by_id.pop(msg_id, None)
        if cursor is None:
            return None
        self._read.pop(cursor, None)
        return self._messages.pop(cursor)

    def handed(self, messages: Iterable[InboxMessage]) -> None:
        """``messages`` are being given to the agent: ``on_handed`` hears of the new ones."""
        for message in messages:
            if not message.handed and not message.outgoing:
                message.handed = True
                if self.on_handed is not None:
                    self.on_handed(message)

    def set_status(self, msg_id: bytes, status: str) -> InboxMessage | None:
        """Record an outgoing DM's new status (``status_changes`` keeps it for streams)."""
        message = self.get(msg_id)
        if message is None or message.status == status:
            return message
        if message.status == "read" and status == "delivered":  # a late delivery receipt
            return message
        message.status = status
        self.status_count += 1
        self.status_changes.append(
            StatusChange(self.status_count, message.id, message.peer, status, message.cursor)
        )
        return message

    def status_since(self, number: int) -> list[StatusChange]:
        """The status changes after the ``number``-th, oldest first (as many as are kept)."""
        if number >= self.status_count:
            return []
        return [c for c in self.status_changes if c.number > number]

    @property
    def first_cursor(self) -> int:
        """The cursor of the oldest message held (``last_cursor + 1`` when empty)."""
        return next(iter(self._messages), self._next)

    def query(
        self,
        *,
        unread: bool | None = None,
        topic: str | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> list[InboxMessage]:
        out: list[InboxMessage] = []
        if limit <= 0:
            return out
        for cursor, message in self._messages.items():
            if cursor <= after:
                continue
            if unread is not None and message.read == unread:
                continue
            if topic is not None and message.topic != topic:
                continue
            out.append(message)
            if len(out) >= limit:
                break
        return out

    def since(self, after: int, limit: int = 1000) -> list[InboxMessage]:
        """The oldest ``limit`` messages with a cursor past ``after``, in cursor order;
        reads from the new end, so a reader that keeps up pays for what is new only,
        and one far behind looks its cursors up one by one (cursors are dense)."""
        if self._next - 1 - after > 4 * limit:
            found = self._forward(after, limit)
            if found is not None:
                return found
        newer: list[InboxMessage] = []
        for cursor in reversed(self._messages):
            if cursor <= after:
                break
            newer.append(self._messages[cursor])
        newer.reverse()
        return newer[:limit]

    def _forward(self, after: int, limit: int) -> list[InboxMessage] | None:
        """``since`` by looking cursors up from ``after`` on; None if they are too
        sparse (many evicted) to be worth it."""
        found: list[InboxMessage] = []
        cursor = max(after, 0) + 1
        for _ in range(8 * limit):
            if len(found) == limit or cursor >= self._next:
                return found
            message = self._messages.get(cursor)
            if message is not None:
                found.append(message)
            cursor += 1
        return found if len(found) == limit or cursor >= self._next else None

    def _mark(self, message: InboxMessage) -> bool:
        if message.read:
            return False
        message.read = True
        self._read[message.cursor] = None
        return True

    def mark_read(self, ids: list[bytes]) -> int:
        count = 0
        for msg_id in ids:
            message = self.get(msg_id)
            if message is not None and self._mark(message):
                count += 1
        return count

    def mark_read_through(self, cursor: int) -> int:
        count = 0
        for c, message in self._messages.items():
            if c > cursor:
                break
            if self._mark(message):
                count += 1
        return count


@dataclass(slots=True)
class PeerInfo:
    peer_id: bytes
    public_key: bytes
    last_seen_ms: int
    listen: tuple[str, ...] = ()
    caps: tuple[str, ...] = ()
    agent: str = ""
    linked: bool = False
    times_linked: int = 0  # links ever completed with this peer
    remote: str = ""
    name: str = ""  # the display name its presence carries
    extra: dict[str, Any] = field(default_factory=dict)


class Directory:
    """Peers we know of, from links, presence announcements and messages.

    ``capacity`` bounds the peers we only heard of; linked peers are never
    dropped (``--max-links`` bounds them), so a seed holding more links than the
    capacity still takes the next one. Dropping the oldest unheard-of peer is
    O(1) amortised: a linked peer met at the front is moved to the back.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self._peers: OrderedDict[bytes, PeerInfo] = OrderedDict()
        self._capacity = capacity
        self._linked = 0  # how many of _peers are linked
        self.on_new: Callable[[PeerInfo], None] | None = None  # a persistent peer keeps keys

    def __len__(self) -> int:
        return len(self._peers)

    def __iter__(self) -> Iterator[PeerInfo]:
        return iter(self._peers.values())

    def get(self, peer_id: bytes) -> PeerInfo | None:
        return self._peers.get(peer_id)

    def see(
        self, peer_id: bytes, public_key: bytes, now_ms: int, *, linking: bool = False
    ) -> PeerInfo:
        """The peer's entry, made the most recent (``linking``: it is linked now)."""
        info = self._peers.get(peer_id)
        if info is None:
            info = PeerInfo(peer_id, public_key, now_ms)
            self._peers[peer_id] = info
            if self.on_new is not None:
                self.on_new(info)
        else:
            self._peers.move_to_end(peer_id)
        if linking and not info.linked:
            info.linked = True
            self._linked += 1
        info.last_seen_ms = max(info.last_seen_ms, now_ms)
        self._trim()
        return info

    def unlink(self, peer_id: bytes) -> None:
        """The peer's link is gone: its entry may be dropped again."""
        info = self._peers.get(peer_id)
        if info is not None and info.linked:
            info.linked = False
            self._linked -= 1

    def _trim(self) -> None:
        peers = self._peers
        while len(peers) - self._linked > self._capacity:
            oldest, info = next(iter(peers.items()))
            if info.linked:
                peers.move_to_end(oldest)  # linked: as recent as a peer can be
            else:
                del peers[oldest]


def inbox_entry(
    env: Envelope,
    content: Content,
    channel: str | None,
    peer: bytes | None,
    outgoing: bool,
    now_ms: int,
) -> tuple[InboxMessage, bytes | None]:
    """The inbox entry of a message (its cursor given when it is added), and its
    payload's CBOR bytes."""
    message = InboxMessage(
        cursor=0,
        id=env.id,
        kind=env.kind,
        topic=env.topic,
        channel=channel,
        sender=env.sender,
        peer=peer,
        body=content.body,
        payload=None if content.payload is None else payload_value(content.payload),
        has_payload=content.payload is not None,
        reply_to=content.reply_to,
        thread=content.thread,
        ts=env.ts,
        received_ms=now_ms,
        outgoing=outgoing,
        read=outgoing,
        status="pending" if outgoing and env.kind == "dm" else None,
        seq=env.seq,
        attachments=content.attachments,
        meta=content.meta,
    )
    return message, content.payload


def channel_entry(env: Envelope, outgoing: bool, now_ms: int) -> tuple[InboxMessage, bytes | None]:
    """``inbox_entry(env, env.content(), env.topic, None, outgoing, now_ms)`` for a
    channel message (``env.kind`` is "msg"), from its fields at once (no ``Content`` in
    between: it runs for every message a catch-up stores)."""
    return channel_entry_of(env.fields, env.id, env.sender, outgoing, now_ms)


def channel_entry_of(
    f: dict[str, Any], msg_id: bytes, sender: bytes, outgoing: bool, now_ms: int
) -> tuple[InboxMessage, bytes | None]:
    """``channel_entry`` from a channel message's checked fields, its id and its
    author's peer id."""
    payload = f.get("payload")
    message = InboxMessage(
        0, msg_id, "msg", f["topic"], f["topic"], sender, None, f.get("body", ""),
        None if payload is None else payload_value(payload), payload is not None,
        f.get("reply_to"), f.get("thread"), f["ts"], now_ms, outgoing, outgoing, None, f["seq"],
        check_attachments(f) if "attachments" in f else (), None,
    )
    return message, payload


Admitted = tuple[InboxMessage | None, bytes | None] | None
AdmitDm = Callable[[Envelope, Content, int], Admitted]


def admit_plain(env: Envelope, content: Content, now_ms: int) -> Admitted:
    """A DM for us as the inbox takes it when nothing else decides (no coordination)."""
    return inbox_entry(env, content, None, env.sender, False, now_ms)
