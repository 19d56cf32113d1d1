"""What the client returns: frozen dataclasses over the API's JSON, each keeping ``raw``.

Fields are the ones every peer of API version 1 sends; ``raw`` holds the
whole object, so fields a newer peer adds are not lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) else None


def _int(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


@dataclass(frozen=True)
class Message:
    """One inbox entry: a channel message (``channel`` set) or a DM (``peer`` set).

    ``cursor`` is its persistent position in the inbox: resume with ``after=cursor``.
    ``sender`` is the author's peer id; an outgoing DM has a ``status``
    (``pending``, ``delivered`` or ``undeliverable``).
    """

    cursor: int
    id: str
    sender: str
    body: str
    topic: str
    kind: str
    channel: str | None
    peer: str | None
    timestamp: str
    seq: int
    read: bool
    outgoing: bool
    payload: Any = None
    reply_to: str | None = None
    thread: str | None = None
    status: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # blobs it refers to: {id, name, type, size}; fetch with download_blob(id, path)
    attachments: list[dict[str, Any]] = field(default_factory=list, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Message:
        return cls(
            cursor=_int(data, "cursor"),
            id=_str(data, "id") or "",
            sender=_str(data, "from") or "",
            body=_str(data, "body") or _str(data, "content") or "",
            topic=_str(data, "topic") or "",
            kind=_str(data, "kind") or "",
            channel=_str(data, "channel"),
            peer=_str(data, "peer"),
            timestamp=str(data.get("timestamp", "")),
            seq=_int(data, "seq"),
            read=bool(data.get("read")),
            outgoing=bool(data.get("outgoing")),
            payload=data.get("payload"),
            reply_to=_str(data, "reply_to"),
            thread=_str(data, "thread"),
            status=_str(data, "status"),
            raw=data,
            attachments=list(data.get("attachments") or []),
        )


@dataclass(frozen=True)
class StatusChange:
    """An outgoing DM's delivery status changed (``delivered``, ``undeliverable``, ...)."""

    id: str
    peer: str
    status: str
    cursor: int
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StatusChange:
        return cls(
            id=_str(data, "id") or "",
            peer=_str(data, "peer") or "",
            status=_str(data, "status") or "",
            cursor=_int(data, "cursor"),
            raw=data,
        )


@dataclass(frozen=True)
class Gap:
    """Messages the peer no longer holds (evicted) between cursors ``after`` and ``next``:
    the stream says so instead of skipping them silently."""

    after: int
    next: int
    lost: int
    message: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Gap:
        return cls(_int(data, "after"), _int(data, "next"), _int(data, "lost"),
                   _str(data, "message") or "")


Event = Message | StatusChange | Gap


@dataclass(frozen=True)
class SendResult:
    """A message the peer stored and sent: its ``id``, where it went and its ``seq``."""

    id: str
    topic: str
    seq: int
    timestamp: str
    stored: bool
    channel: str | None = None
    to: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SendResult:
        return cls(
            id=_str(data, "id") or "",
            topic=_str(data, "topic") or "",
            seq=_int(data, "seq"),
            timestamp=str(data.get("timestamp", "")),
            stored=bool(data.get("stored")),
            channel=_str(data, "channel"),
            to=_str(data, "to"),
            raw=data,
        )


@dataclass(frozen=True)
class PeerInfo:
    """A peer this one knows: linked now, or seen recently (``online``)."""

    peer_id: str
    pubkey: str
    online: bool
    linked: bool
    last_seen: str
    listen: list[str]
    name: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PeerInfo:
        listen = data.get("listen")
        return cls(
            peer_id=_str(data, "peer_id") or "",
            pubkey=_str(data, "pubkey") or "",
            online=bool(data.get("online")),
            linked=bool(data.get("linked")),
            last_seen=str(data.get("last_seen", "")),
            listen=_strings(listen),
            name=_str(data, "name") or _str(data, "agent"),
            raw=data,
        )


@dataclass(frozen=True)
class Status:
    """The peer's own state: id, links, known peers, channels, unread count."""

    peer_id: str
    pubkey: str
    uptime_seconds: float
    peer_count: int
    known_peers: int
    online_peers: int
    channels: list[str]
    unread: int
    listen: list[str]
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Status:
        channels = data.get("channels")
        listen = data.get("listen")
        uptime = data.get("uptime_seconds")
        return cls(
            peer_id=_str(data, "peer_id") or "",
            pubkey=_str(data, "pubkey") or "",
            uptime_seconds=float(uptime) if isinstance(uptime, int | float) else 0.0,
            peer_count=_int(data, "peer_count"),
            known_peers=_int(data, "known_peers"),
            online_peers=_int(data, "online_peers"),
            channels=_strings(channels),
            unread=_int(data, "unread"),
            listen=_strings(listen),
            raw=data,
        )


@dataclass(frozen=True)
class AckResult:
    """How many messages an ack marked read, and how many are still unread."""

    marked: int
    unread: int
