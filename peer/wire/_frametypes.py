"""Link frames as types: one frozen class per frame type (protocol-spec/frames.cddl).

Each class carries its CBOR ``"t"`` value as ``TYPE`` and the keys its map may
hold as ``KEYS``; :meth:`from_map` validates a decoded map (every field's type
and size, no other key) and builds the frame, or raises ProtocolError;
:meth:`encode` gives its canonical CBOR. :data:`FRAME_TYPES` maps ``"t"`` to
the class, and :data:`AnyFrame` is the union consumers ``match`` on.

Rules kept here:

* A frame that :meth:`from_map` built is valid: the layers above read its
  attributes without checking again.
* Sequences are tuples; a frame is immutable and hashable.
* Adding a frame type: its CDDL, a class here (or in a module of related
  frames, like ``._mailframes``) in :data:`FRAME_TYPES` and :data:`AnyFrame`,
  and the behaviour that handles it. Nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

from ._blobframes import BlobChunk as BlobChunk
from ._blobframes import BlobHave as BlobHave
from ._blobframes import BlobNone as BlobNone
from ._blobframes import BlobWant as BlobWant
from ._fields import Map, fail, need_bytes, need_list, need_text, need_topic, need_uint, only_keys
from ._framebase import _Frame, _keys
from ._limits import (
    MAX_ADDR_BYTES,
    MAX_CAPS,
    MAX_DHT_MESSAGE,
    MAX_ENVELOPE,
    MAX_IDS_PER_FRAME,
    MAX_INTEREST_HOPS,
    MAX_LISTEN_ADDRS,
    MAX_PAGE_HEADS,
    MAX_PAGE_MESSAGES,
    MAX_REQUEST_ID,
    MAX_TOPICS_PER_FRAME,
)
from ._mailframes import Deposit as Deposit
from ._mailframes import Deposited as Deposited
from ._mailframes import Push as Push

# -- handshake ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello(_Frame):
    TYPE: ClassVar[str] = "hello"
    KEYS: ClassVar[frozenset[str]] = _keys(
        "versions", "id", "pk", "eph", "nonce", "caps", "listen", "agent"
    )

    versions: tuple[int, ...]
    id: bytes
    pk: bytes
    eph: bytes
    nonce: bytes
    caps: tuple[str, ...]
    listen: tuple[str, ...]
    agent: str

    @classmethod
    def from_map(cls, m: Map) -> Hello:
        only_keys(m, cls.KEYS)
        versions = need_list(m, "versions", 8)
        if not versions or any(type(v) is not int or not 0 < v < 2**16 for v in versions):
            raise fail("versions must be a non-empty array of small unsigned integers")
        need_bytes(m, "id", 32)
        need_bytes(m, "pk", 32)
        need_bytes(m, "eph", 32)
        need_bytes(m, "nonce", 32)
        caps = need_list(m, "caps", MAX_CAPS)
        if any(not isinstance(c, str) or not 0 < len(c) <= 32 for c in caps):
            raise fail("caps must be short text strings")
        listen = need_list(m, "listen", MAX_LISTEN_ADDRS)
        if any(not isinstance(a, str) or len(a.encode()) > MAX_ADDR_BYTES for a in listen):
            raise fail("listen must be text addresses")
        need_text(m, "agent", 64)
        return cls(
            tuple(versions),
            m["id"],
            m["pk"],
            m["eph"],
            m["nonce"],
            tuple(caps),
            tuple(listen),
            m["agent"],
        )

    def to_map(self) -> Map:
        return {
            "t": self.TYPE,
            "versions": list(self.versions),
            "id": self.id,
            "pk": self.pk,
            "eph": self.eph,
            "nonce": self.nonce,
            "caps": list(self.caps),
            "listen": list(self.listen),
            "agent": self.agent,
        }


@dataclass(frozen=True, slots=True)
class Auth(_Frame):
    TYPE: ClassVar[str] = "auth"
    KEYS: ClassVar[frozenset[str]] = _keys("sig")

    sig: bytes

    @classmethod
    def from_map(cls, m: Map) -> Auth:
        only_keys(m, cls.KEYS)
        return cls(need_bytes(m, "sig", 64))

    def to_map(self) -> Map:
        return {"t": self.TYPE, "sig": self.sig}


@dataclass(frozen=True, slots=True)
class Error(_Frame):
    """Sent before closing a link; ``code`` is an ErrorCode value (or unknown text)."""

    TYPE: ClassVar[str] = "error"
    KEYS: ClassVar[frozenset[str]] = _keys("code", "msg")

    code: str
    msg: str

    @classmethod
    def from_map(cls, m: Map) -> Error:
        only_keys(m, cls.KEYS)
        code = need_text(m, "code", 32)
        return cls(code, need_text(m, "msg"))

    def to_map(self) -> Map:
        return {"t": self.TYPE, "code": self.code, "msg": self.msg}


# -- interest ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sub(_Frame):
    """Topics this side can deliver to, each with its distance in hops."""

    TYPE: ClassVar[str] = "sub"
    KEYS: ClassVar[frozenset[str]] = _keys("topics")

    topics: tuple[tuple[str, int], ...]

    @classmethod
    def from_map(cls, m: Map) -> Sub:
        only_keys(m, cls.KEYS)
        entries = need_list(m, "topics", MAX_TOPICS_PER_FRAME)
        for entry in entries:
            if not isinstance(entry, list) or len(entry) != 2:
                raise fail("sub entries are [topic, hops]")
            need_topic(entry[0])
            hops = entry[1]
            if type(hops) is not int or not 0 <= hops <= MAX_INTEREST_HOPS:
                raise fail(f"hops must be 0..{MAX_INTEREST_HOPS}")
        return cls(tuple((topic, hops) for topic, hops in entries))

    def to_map(self) -> Map:
        return {"t": self.TYPE, "topics": [[topic, hops] for topic, hops in self.topics]}


@dataclass(frozen=True, slots=True)
class Unsub(_Frame):
    TYPE: ClassVar[str] = "unsub"
    KEYS: ClassVar[frozenset[str]] = _keys("topics")

    topics: tuple[str, ...]

    @classmethod
    def from_map(cls, m: Map) -> Unsub:
        only_keys(m, cls.KEYS)
        return cls(tuple(need_topic(t) for t in need_list(m, "topics", MAX_TOPICS_PER_FRAME)))

    def to_map(self) -> Map:
        return {"t": self.TYPE, "topics": list(self.topics)}


# -- messages and the transit mesh ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pub(_Frame):
    """One envelope, forwarded by relays byte for byte."""

    TYPE: ClassVar[str] = "pub"
    KEYS: ClassVar[frozenset[str]] = _keys("e")

    envelope: bytes

    @classmethod
    def from_map(cls, m: Map) -> Pub:
        only_keys(m, cls.KEYS)
        return cls(need_bytes(m, "e", max_size=MAX_ENVELOPE))

    def to_map(self) -> Map:
        return {"t": self.TYPE, "e": self.envelope}


@dataclass(frozen=True, slots=True)
class Graft(_Frame):
    TYPE: ClassVar[str] = "graft"
    KEYS: ClassVar[frozenset[str]] = _keys("topic")

    topic: str

    @classmethod
    def from_map(cls, m: Map) -> Graft:
        only_keys(m, cls.KEYS)
        return cls(need_topic(m.get("topic")))

    def to_map(self) -> Map:
        return {"t": self.TYPE, "topic": self.topic}


@dataclass(frozen=True, slots=True)
class Prune(_Frame):
    TYPE: ClassVar[str] = "prune"
    KEYS: ClassVar[frozenset[str]] = _keys("topic")

    topic: str

    @classmethod
    def from_map(cls, m: Map) -> Prune:
        only_keys(m, cls.KEYS)
        return cls(need_topic(m.get("topic")))

    def to_map(self) -> Map:
        return {"t": self.TYPE, "topic": self.topic}


# -- repair ---------------------------------------------------------------------------


def _need_ids(m: Map) -> tuple[bytes, ...]:
    ids = need_list(m, "ids", MAX_IDS_PER_FRAME)
    if any(not isinstance(i, bytes) or len(i) != 32 for i in ids):
        raise fail("ids must be 32-byte strings")
    return tuple(ids)


@dataclass(frozen=True, slots=True)
class IHave(_Frame):
    TYPE: ClassVar[str] = "ihave"
    KEYS: ClassVar[frozenset[str]] = _keys("topic", "ids")

    topic: str
    ids: tuple[bytes, ...]

    @classmethod
    def from_map(cls, m: Map) -> IHave:
        only_keys(m, cls.KEYS)
        topic = need_topic(m.get("topic"))
        return cls(topic, _need_ids(m))

    def to_map(self) -> Map:
        return {"t": self.TYPE, "topic": self.topic, "ids": list(self.ids)}


@dataclass(frozen=True, slots=True)
class IWant(_Frame):
    TYPE: ClassVar[str] = "iwant"
    KEYS: ClassVar[frozenset[str]] = _keys("ids")

    ids: tuple[bytes, ...]

    @classmethod
    def from_map(cls, m: Map) -> IWant:
        only_keys(m, cls.KEYS)
        return cls(_need_ids(m))

    def to_map(self) -> Map:
        return {"t": self.TYPE, "ids": list(self.ids)}


# -- keepalive ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping(_Frame):
    TYPE: ClassVar[str] = "ping"
    KEYS: ClassVar[frozenset[str]] = _keys("n")

    n: int

    @classmethod
    def from_map(cls, m: Map) -> Ping:
        only_keys(m, cls.KEYS)
        return cls(need_uint(m, "n"))

    def to_map(self) -> Map:
        return {"t": self.TYPE, "n": self.n}


@dataclass(frozen=True, slots=True)
class Pong(_Frame):
    """Echoes the ``n`` of the ping it answers."""

    TYPE: ClassVar[str] = "pong"
    KEYS: ClassVar[frozenset[str]] = _keys("n")

    n: int

    @classmethod
    def from_map(cls, m: Map) -> Pong:
        only_keys(m, cls.KEYS)
        return cls(need_uint(m, "n"))

    def to_map(self) -> Map:
        return {"t": self.TYPE, "n": self.n}


# -- carried for other protocols ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dht(_Frame):
    """One DHT message, opaque here (dht/ checks it)."""

    TYPE: ClassVar[str] = "dht"
    KEYS: ClassVar[frozenset[str]] = _keys("m")

    message: bytes

    @classmethod
    def from_map(cls, m: Map) -> Dht:
        only_keys(m, cls.KEYS)
        return cls(need_bytes(m, "m", max_size=MAX_DHT_MESSAGE))

    def to_map(self) -> Map:
        return {"t": self.TYPE, "m": self.message}


@dataclass(frozen=True, slots=True)
class CuReq(_Frame):
    """A catch-up request: a log walk, or one sender's range ``first..last``."""

    TYPE: ClassVar[str] = "cureq"
    KEYS: ClassVar[frozenset[str]] = _keys(
        "r", "topic", "after", "since", "limit", "sender", "first", "last"
    )

    r: int
    topic: str
    after: int = 0
    since: int = 0  # ms on the carrier's clock; 0: from the start of its log
    limit: int = MAX_PAGE_MESSAGES
    sender: bytes | None = None  # with first/last: one sender's range only
    first: int = 0
    last: int = 0

    @classmethod
    def from_map(cls, m: Map) -> CuReq:
        only_keys(m, cls.KEYS)
        need_uint(m, "r", MAX_REQUEST_ID)
        need_topic(m.get("topic"))
        need_uint(m, "after")
        need_uint(m, "since")
        limit = need_uint(m, "limit", MAX_PAGE_MESSAGES)
        if limit < 1:
            raise fail("limit must be at least 1")
        ranged = [k in m for k in ("sender", "first", "last")]
        if any(ranged) and not all(ranged):
            raise fail("sender, first and last come together")
        if all(ranged):
            need_bytes(m, "sender", 32)
            if need_uint(m, "first") > need_uint(m, "last"):
                raise fail("first is after last")
        return cls.from_fields(m)

    @classmethod
    def from_fields(cls, f: Map) -> CuReq:
        """Built from a map already validated (``"t"`` may be there or not)."""
        return cls(
            r=f["r"],
            topic=f["topic"],
            after=f["after"],
            since=f["since"],
            limit=f["limit"],
            sender=f.get("sender"),
            first=f.get("first", 0),
            last=f.get("last", 0),
        )

    def fields(self) -> Map:
        """The frame's map without ``"t"``."""
        out: Map = {
            "r": self.r,
            "topic": self.topic,
            "after": self.after,
            "since": self.since,
            "limit": self.limit,
        }
        if self.sender is not None:
            out.update(sender=self.sender, first=self.first, last=self.last)
        return out

    def to_map(self) -> Map:
        return {"t": self.TYPE, **self.fields()}


def _need_heads(m: Map, key: str = "heads") -> list[Any]:
    heads = need_list(m, key, MAX_PAGE_HEADS)
    for entry in heads:
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or not isinstance(entry[0], bytes)
            or len(entry[0]) != 32
            or type(entry[1]) is not int
            or not 0 <= entry[1] < 2**64
        ):
            raise fail("heads entries are [peer id, sequence]")
    return heads


@dataclass(frozen=True, slots=True)
class CuPage(_Frame):
    """The answer to one ``cureq``: envelopes in log order, or a refusal (``err``).

    ``messages`` and ``heads`` may be given as lists; they are kept as tuples.
    """

    TYPE: ClassVar[str] = "cupage"
    KEYS: ClassVar[frozenset[str]] = _keys("r", "topic", "m", "next", "more", "heads", "err")

    r: int
    topic: str
    messages: Sequence[bytes]
    next: int
    more: bool
    heads: Sequence[tuple[bytes, int]]
    err: str | None = None

    def __post_init__(self) -> None:
        if type(self.messages) is not tuple:
            object.__setattr__(self, "messages", tuple(self.messages))
        if type(self.heads) is not tuple:
            object.__setattr__(self, "heads", tuple(self.heads))

    @classmethod
    def from_map(cls, m: Map) -> CuPage:
        only_keys(m, cls.KEYS)
        need_uint(m, "r", MAX_REQUEST_ID)
        need_topic(m.get("topic"))
        msgs = need_list(m, "m", MAX_PAGE_MESSAGES)
        if not all(isinstance(e, bytes) and len(e) <= MAX_ENVELOPE for e in msgs):
            raise fail("m holds envelopes (byte strings)")
        need_uint(m, "next")
        if not isinstance(m.get("more"), bool):
            raise fail("more must be a boolean")
        _need_heads(m)
        if "err" in m:
            need_text(m, "err", 32)
        return cls.from_fields(m)

    @classmethod
    def from_fields(cls, f: Map) -> CuPage:
        """Built from a map already validated (``"t"`` may be there or not)."""
        return cls(
            r=f["r"],
            topic=f["topic"],
            messages=tuple(f["m"]),
            next=f["next"],
            more=f["more"],
            heads=tuple((s, n) for s, n in f["heads"]),
            err=f.get("err"),
        )

    def fields(self) -> Map:
        """The frame's map without ``"t"``."""
        out: Map = {
            "r": self.r,
            "topic": self.topic,
            "m": list(self.messages),
            "next": self.next,
            "more": self.more,
            "heads": [[s, n] for s, n in self.heads],
        }
        if self.err is not None:
            out["err"] = self.err
        return out

    def to_map(self) -> Map:
        return {"t": self.TYPE, **self.fields()}


@dataclass(frozen=True, slots=True)
class Heads(_Frame):
    """A storing peer's per-sender heads of one topic (anti-entropy); ``more``: it
    holds more senders than listed. ``heads`` may be given as a list (kept as a tuple)."""

    TYPE: ClassVar[str] = "heads"
    KEYS: ClassVar[frozenset[str]] = _keys("topic", "h", "more")

    topic: str
    heads: Sequence[tuple[bytes, int]]
    more: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple(self.heads))

    @classmethod
    def from_map(cls, m: Map) -> Heads:
        only_keys(m, cls.KEYS)
        heads = _need_heads(m, "h")
        if not isinstance(m.get("more", False), bool):
            raise fail("more must be a boolean")
        return cls(need_topic(m.get("topic")), [(s, n) for s, n in heads], m.get("more", False))

    def to_map(self) -> Map:
        more = {"more": True} if self.more else {}
        return {"t": self.TYPE, "topic": self.topic, "h": [[s, n] for s, n in self.heads], **more}


# (push, deposit, deposited: ._mailframes; blob-want, -have, -chunk, -none: ._blobframes)

# -- the registry ---------------------------------------------------------------------------

AnyFrame: TypeAlias = (
    Hello
    | Auth
    | Error
    | Sub
    | Unsub
    | Pub
    | Graft
    | Prune
    | IHave
    | IWant
    | Ping
    | Pong
    | Dht
    | CuReq
    | CuPage
    | Heads
    | Push
    | Deposit
    | Deposited
    | BlobWant
    | BlobHave
    | BlobChunk
    | BlobNone
)

FRAME_CLASSES: tuple[type[AnyFrame], ...] = (
    Hello,
    Auth,
    Error,
    Sub,
    Unsub,
    Pub,
    Graft,
    Prune,
    IHave,
    IWant,
    Ping,
    Pong,
    Dht,
    CuReq,
    CuPage,
    Heads,
    Push,
    Deposit,
    Deposited,
    BlobWant,
    BlobHave,
    BlobChunk,
    BlobNone,
)

FRAME_TYPES: dict[str, type[AnyFrame]] = {cls.TYPE: cls for cls in FRAME_CLASSES}
