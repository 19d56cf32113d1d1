"""One OCM link's state: handshake, subscriptions, who may send what, rates.

Sans-IO: :meth:`OcmSession.receive` takes a text frame and ``now`` and
returns decisions (frames to send back, messages to relay into the mesh,
sync requests to answer, a close). The gateway's shell performs them.

Rules kept here:

* Nothing but a ``handshake`` is accepted before the handshake; a wrong
  version is answered ``unsupported_version`` and closes the link.
* A ``message`` whose ``sender_id`` is not the link's handshake peer id is
  refused (``unauthorized``) unless it carries a signature that verifies
  under a key we know for that sender (a relayed message, OCM's own rule).
  A signature that does not verify is refused. A message from the link's
  own peer is relayed signed-and-verified or unsigned (``verified`` false).
* A peer may only subscribe to, ask for and write into a ``dm:<a>:<b>``
  channel it is one of.
* Frames are rate-limited per link (a token bucket); each refusal is
  counted by kind in the shared :class:`OcmCounters`, and a link that
  collects ``MAX_REFUSALS`` refusals is closed. ``sync_request`` has its own
  smaller bucket (``SYNC_RATE``): each one costs the gateway an inbox scan.
* Messages relayed into the mesh go out signed by the gateway peer and spend
  its author budget on every relay: each link has its own bucket
  (``MESSAGE_RATE``) and all links share one (``GATEWAY_MESSAGE_RATE``,
  passed in), both well below the mesh's author rate, so OCM traffic
  cannot get the gateway's own agent rate-limited by its neighbours.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ._ocm import (
    INVALID_MESSAGE,
    UNAUTHORIZED,
    Hello,
    OcmError,
    OcmMessage,
    PeerError,
    Ping,
    Subscribe,
    SyncRequest,
    SyncResponse,
    Unknown,
    dm_members,
    error_frame,
    hello_frame,
    key_of_peer_id,
    parse_frame,
)

FRAME_RATE = 50.0  # frames per second per link, sustained
FRAME_BURST = 200.0
MESSAGE_RATE = 10.0  # OCM messages relayed into the mesh per second per link, sustained
MESSAGE_BURST = 100.0  # (a sync page fits); the gateway as a whole: GATEWAY_MESSAGE_RATE
GATEWAY_MESSAGE_RATE = 100.0  # per second over all links: a tenth of the mesh's author rate
GATEWAY_MESSAGE_BURST = 300.0
SYNC_RATE = 2.0  # sync_requests per second per link, sustained (each scans the inbox)
SYNC_BURST = 8.0
MAX_REFUSALS = 20  # refusals on one link before it is closed
MAX_SUBSCRIPTIONS = 256  # channels one link may subscribe to
MAX_KNOWN_KEYS = 10_000  # sender keys remembered (least recently learned forgotten)
SENT_REMEMBERED = 4096  # message ids per link remembered as already sent to it


@dataclass
class OcmCounters:
    """What every OCM link of a gateway counted (``/status`` shows it)."""

    links_opened: int = 0
    links_closed: int = 0
    frames_in: int = 0
    frames_out: int = 0
    relayed_in: int = 0  # OCM messages relayed into the mesh
    relayed_out: int = 0  # mesh messages sent to OCM peers
    unverified_in: int = 0  # ... of relayed_in, unsigned
    sync_answered: int = 0
    refused: dict[str, int] = field(default_factory=dict)

    def refuse(self, kind: str) -> None:
        self.refused[kind] = self.refused.get(kind, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return {
            "links_opened": self.links_opened,
            "links_closed": self.links_closed,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "relayed_in": self.relayed_in,
            "relayed_out": self.relayed_out,
            "unverified_in": self.unverified_in,
            "sync_answered": self.sync_answered,
            "refused": dict(sorted(self.refused.items())),
        }


class Bucket:
    """A token bucket in the caller's time (seconds)."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, burst, now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class KnownKeys:
    """Sender id -> trusted Ed25519 key: an id that is a key names it; any other id
    keeps the first key learned for it (bounded; never overwritten nor evicted)."""

    def __init__(self, limit: int = MAX_KNOWN_KEYS) -> None:
        self._keys: dict[str, bytes] = {}
        self._limit = limit

    def learn(self, peer_id: str, key: bytes) -> bool:
        """Trust ``key`` for ``peer_id`` if nothing else is; False if another key is
        trusted for it (or the table is full: then it stays untrusted)."""
        trusted = self.get(peer_id)
        if trusted is not None:
            return trusted == key
        if len(self._keys) >= self._limit:
            return False
        self._keys[peer_id] = key
        return True

    def get(self, peer_id: str) -> bytes | None:
        return key_of_peer_id(peer_id) or self._keys.get(peer_id)


# -- decisions -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    frame: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Established:
    hello: Hello


@dataclass(frozen=True, slots=True)
class Relay:
    """Relay an OCM message into the mesh."""

    message: OcmMessage
    verified: bool
    public_key: bytes | None


@dataclass(frozen=True, slots=True)
class Subscribed:
    channel_id: str
    on: bool


@dataclass(frozen=True, slots=True)
class AnswerSync:
    request: SyncRequest


@dataclass(frozen=True, slots=True)
class Close:
    reason: str


Decision = Send | Established | Relay | Subscribed | AnswerSync | Close


class OcmSession:
    """The state of one OCM link (either side may have dialled)."""

    def __init__(
        self,
        own_id: str,
        own_key: bytes,
        *,
        initiator: bool,
        store: bool,
        keys: KnownKeys,
        counters: OcmCounters,
        now: float,
        shared: Bucket | None = None,
    ) -> None:
        self.own_id = own_id
        self.own_key = own_key
        self.initiator = initiator
        self.store = store
        self.keys = keys
        self.counters = counters
        self.hello: Hello | None = None
        self.trusted_key: bytes | None = None  # the handshake's key, if trusted for its id
        self.subscriptions: set[str] = set()
        self.refusals = 0
        self.closed = False
        self._tokens = FRAME_BURST
        self._stamp = now
        self._messages = Bucket(MESSAGE_RATE, MESSAGE_BURST, now)
        self._shared = shared  # the gateway's bucket over all links, if any
        self._syncs = Bucket(SYNC_RATE, SYNC_BURST, now)
        self._sent: OrderedDict[str, None] = OrderedDict()

    @property
    def peer_id(self) -> str | None:
        return None if self.hello is None else self.hello.peer_id

    def start(self) -> list[Decision]:
        """What the dialling side sends first."""
        return [Send(self._hello())] if self.initiator else []

    def _hello(self) -> dict[str, Any]:
        return hello_frame(self.own_id, self.own_key, True, self.store)

    # -- message ids already sent to this link --------------------------------------

    def mark_sent(self, message_id: str) -> bool:
        """Remember ``message_id`` as sent to (or received from) this link; False if it was."""
        if message_id in self._sent:
            return False
        self._sent[message_id] = None
        if len(self._sent) > SENT_REMEMBERED:
            self._sent.popitem(last=False)
        return True

    def allowed(self, channel_id: str) -> bool:
        """May this link's peer read or write ``channel_id``?"""
        members = dm_members(channel_id)
        return members is None or self.peer_id in members

    # -- frames in ------------------------------------------------------------------------

    def receive(self, text: str, now: float) -> list[Decision]:
        if self.closed:
            return []
        self.counters.frames_in += 1
        if not self._take_token(now):
            return self._refused(OcmError(INVALID_MESSAGE, "rate", "over the frame rate limit"))
        try:
            frame = parse_frame(text)
            if self.hello is None:
                return self._on_hello(frame)
            return self._on_frame(frame)
        except OcmError as exc:
            return self._refused(exc, final=self.hello is None)

    def _take_token(self, now: float) -> bool:
        self._tokens = min(FRAME_BURST, self._tokens + (now - self._stamp) * FRAME_RATE)
        self._stamp = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _refused(self, exc: OcmError, final: bool = False) -> list[Decision]:
        self.counters.refuse(exc.kind)
        self.refusals += 1
        out: list[Decision] = [Send(error_frame(exc.code, exc.message))]
        if final or exc.kind == "version":
            self.closed = True
            out.append(Close(exc.message))
        elif self.refusals >= MAX_REFUSALS:
            self.closed = True
            out.append(Close("too many refusals"))
        return out

    def _on_hello(self, frame: object) -> list[Decision]:
        if not isinstance(frame, Hello):
            raise OcmError(INVALID_MESSAGE, "handshake", "a handshake comes first")
        if frame.peer_id == self.own_id:
            raise OcmError(UNAUTHORIZED, "handshake", "that is this peer's own id")
        if frame.public_key is not None and not self.keys.learn(frame.peer_id, frame.public_key):
            if self.keys.get(frame.peer_id) is not None:
                raise OcmError(UNAUTHORIZED, "key-mismatch",
                               "another key is already trusted for this peer id")
            self.trusted_key = None  # the table is full: relayed as unverified
        else:
            self.trusted_key = frame.public_key
        self.hello = frame
        out: list[Decision] = []
        if not self.initiator:
            out.append(Send(self._hello()))
        out.append(Established(frame))
        return out

    def _on_frame(self, frame: object) -> list[Decision]:
        if isinstance(frame, OcmMessage):
            return self._on_message(frame)
        if isinstance(frame, Subscribe):
            return self._on_subscribe(frame)
        if isinstance(frame, SyncRequest):
            if not self.allowed(frame.channel_id):
                raise OcmError(UNAUTHORIZED, "not-a-member", "not your DM channel")
            if not self._syncs.take(self._stamp):
                raise OcmError(INVALID_MESSAGE, "sync-rate", "over the sync_request rate limit")
            return [AnswerSync(frame)]
        if isinstance(frame, SyncResponse):
            out: list[Decision] = []
            for message in frame.messages:
                try:
                    out.extend(self._on_message(message))
                except OcmError as exc:  # one bad message of a page: skipped and counted
                    self.counters.refuse(exc.kind)
            return out
        if isinstance(frame, Ping):
            return [] if frame.pong else [Send({"type": "pong"})]
        if isinstance(frame, Hello):
            raise OcmError(INVALID_MESSAGE, "malformed", "handshake already done")
        if isinstance(frame, PeerError | Unknown):
            return []
        return []

    def _on_subscribe(self, frame: Subscribe) -> list[Decision]:
        if not frame.on:
            if frame.channel_id in self.subscriptions:
                self.subscriptions.discard(frame.channel_id)
                return [Subscribed(frame.channel_id, False)]
            return []
        if not self.allowed(frame.channel_id):
            raise OcmError(UNAUTHORIZED, "not-a-member", "not your DM channel")
        if frame.channel_id in self.subscriptions:
            return []
        if len(self.subscriptions) >= MAX_SUBSCRIPTIONS:
            raise OcmError(INVALID_MESSAGE, "too-many", f"over {MAX_SUBSCRIPTIONS} channels")
        self.subscriptions.add(frame.channel_id)
        return [Subscribed(frame.channel_id, True)]

    def _on_message(self, message: OcmMessage) -> list[Decision]:
        assert self.hello is not None
        own = message.sender_id == self.hello.peer_id
        key = self.trusted_key if own else self.keys.get(message.sender_id)
        if message.signature is not None and key is not None:
            if not message.verifies(key):
                raise OcmError(INVALID_MESSAGE, "bad-signature", "signature does not verify")
            verified = True
        elif own:
            verified = False
        else:
            raise OcmError(
                UNAUTHORIZED, "forged-sender",
                "sender_id is not this link's peer and no known key signed it",
            )
        members = dm_members(message.channel_id)
        if members is not None and message.sender_id not in members:
            raise OcmError(UNAUTHORIZED, "not-a-member", "the sender is not in this DM channel")
        if not self._messages.take(self._stamp):
            raise OcmError(INVALID_MESSAGE, "message-rate", "over this link's message rate")
        if self._shared is not None and not self._shared.take(self._stamp):
            raise OcmError(INVALID_MESSAGE, "gateway-rate", "over the gateway's message rate")
        self.mark_sent(message.message_id)  # never echo it back to this link
        return [Relay(message, verified, key if verified else None)]
