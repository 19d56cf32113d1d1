"""DHT RPC messages: their shapes, canonical encoding and strict decoding.

Every message is a canonical CBOR map (protocol-spec/dht.md, "RPCs"):

* request  ``{"v": 1, "m": "q", "op", "rid", "srv", ...arguments}``
* response ``{"v": 1, "m": "r", "op", "rid", ...results}``
* error    ``{"v": 1, "m": "e", "rid", "code", "msg"}``

``rid`` is chosen by the requester and echoed in the reply, so many RPCs share
one authenticated link. ``srv`` says whether the requester serves the DHT: a
client (``srv: false``) is never added to the receiver's routing table.

Rules this module keeps:

* :func:`decode_message` returns one of the message classes below or raises
  :class:`peer.ProtocolError`; nothing else escapes it. It checks the size
  (``MAX_MESSAGE``), CBOR strictness (via ``peer.wire._cbor``), the exact set of
  fields for the message's kind and operation, every field's type and size,
  and the number of results per reply (contacts <= k, providers <= 20).
* It does not check that a contact's id matches its key or that a record
  verifies: lookups do that, so that they can count the liar.
* Encoders produce canonical CBOR and refuse to produce a message the
  decoder would refuse for its size.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from peer.wire._cbor import decode, encode
from peer.wire._errors import ErrorCode, ProtocolError
from peer.wire._fields import need_bytes, need_list, need_text, need_uint

from ._config import (
    ID_LEN,
    MAX_CARD_RECORD_BYTES,
    MAX_CARDS_PER_REPLY,
    MAX_CONTACTS_PER_REPLY,
    MAX_ERROR_TEXT,
    MAX_MESSAGE,
    MAX_MESSAGE_ITEMS,
    MAX_PROVIDERS_PER_REPLY,
    MAX_RECORD_BYTES,
    MAX_REQUEST_ID,
)
from ._contact import Contact, contact_from_wire

WIRE_VERSION = 1


class Op(StrEnum):
    PING = "ping"
    FIND_NODE = "find_node"
    FIND_PEER = "find_peer"
    PUT_PEER = "put_peer"
    ADD_PROVIDER = "add_provider"
    GET_PROVIDERS = "get_providers"
    PUT_CARD = "put_card"  # only to nodes with the "cards" capability
    GET_CARDS = "get_cards"


# -- requests ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping:
    rid: int
    serving: bool = True

    @property
    def op(self) -> Op:
        return Op.PING


@dataclass(frozen=True, slots=True)
class FindNode:
    """Ask for the k contacts closest to ``target``."""

    rid: int
    target: bytes
    serving: bool = True

    @property
    def op(self) -> Op:
        return Op.FIND_NODE


@dataclass(frozen=True, slots=True)
class FindPeer:
    """Ask for the peer record of ``target`` if held, and the k closest contacts."""

    rid: int
    target: bytes
    serving: bool = True

    @property
    def op(self) -> Op:
        return Op.FIND_PEER


@dataclass(frozen=True, slots=True)
class PutPeer:
    """Store the sender's own signed peer record."""

    rid: int
    record: bytes
    serving: bool = True

    @property
    def op(self) -> Op:
        return Op.PUT_PEER


@dataclass(frozen=True, slots=True)
class AddProvider:
    """Store the sender's own signed provider record."""

    rid: int
    record: bytes
    serving: bool = True

    @property
    def op(self) -> Op:
        return Op.ADD_PROVIDER


@dataclass(frozen=True, slots=True)
class GetProviders:
    """Ask for provider records of ``key`` and the k closest contacts."""

    rid: int
    key: bytes
    serving: bool = True

    @property
    def op(self) -> Op:
        return Op.GET_PROVIDERS


@dataclass(frozen=True, slots=True)
class PutCard:
    """File the sender's own signed card record under ``key`` (a skill or tag key)."""

    rid: int
    key: bytes
    record: bytes
    serving: bool = True

    @property
    def op(self) -> Op:
        return Op.PUT_CARD


@dataclass(frozen=True, slots=True)
class GetCards:
    """Ask for the cards filed under ``key`` (agent ids above ``after``) and the k closest."""

    rid: int
    key: bytes
    after: bytes | None = None
    serving: bool = True

    @property
    def op(self) -> Op:
        return Op.GET_CARDS


Request = Ping | FindNode | FindPeer | PutPeer | AddProvider | GetProviders | PutCard | GetCards

# -- responses ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pong:
    rid: int

    @property
    def op(self) -> Op:
        return Op.PING


@dataclass(frozen=True, slots=True)
class Nodes:
    """The reply to FIND_NODE."""

    rid: int
    nodes: tuple[Contact, ...]

    @property
    def op(self) -> Op:
        return Op.FIND_NODE


@dataclass(frozen=True, slots=True)
class PeerFound:
    """The reply to FIND_PEER: the record if held, and closer contacts."""

    rid: int
    nodes: tuple[Contact, ...]
    record: bytes | None = None

    @property
    def op(self) -> Op:
        return Op.FIND_PEER


@dataclass(frozen=True, slots=True)
class Stored:
    """The reply to PUT_PEER and ADD_PROVIDER: the record is held."""

    rid: int
    op: Op


@dataclass(frozen=True, slots=True)
class Providers:
    """The reply to GET_PROVIDERS."""

    rid: int
    providers: tuple[bytes, ...]
    nodes: tuple[Contact, ...]

    @property
    def op(self) -> Op:
        return Op.GET_PROVIDERS


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A refused request; ``code`` is a :class:`dht.Reason` value (or one we do not know)."""

    rid: int
    code: str
    message: str = ""


@dataclass(frozen=True, slots=True)
class Cards:
    """The reply to GET_CARDS: card records in ascending agent id, whether more remain."""

    rid: int
    cards: tuple[bytes, ...]
    nodes: tuple[Contact, ...]
    more: bool = False

    @property
    def op(self) -> Op:
        return Op.GET_CARDS


Response = Pong | Nodes | PeerFound | Stored | Providers | Cards | ErrorReply
Message = Request | Response

_ARGS = {
    Op.PING: frozenset(),
    Op.FIND_NODE: frozenset({"target"}),
    Op.FIND_PEER: frozenset({"target"}),
    Op.PUT_PEER: frozenset({"rec"}),
    Op.ADD_PROVIDER: frozenset({"rec"}),
    Op.GET_PROVIDERS: frozenset({"key"}),
    Op.PUT_CARD: frozenset({"key", "rec"}),
    Op.GET_CARDS: frozenset({"key"}),  # plus an optional "after"
}
_RESULTS = {
    Op.PING: frozenset(),
    Op.FIND_NODE: frozenset({"nodes"}),
    Op.FIND_PEER: frozenset({"nodes"}),  # plus an optional "rec"
    Op.PUT_PEER: frozenset(),
    Op.ADD_PROVIDER: frozenset(),
    Op.GET_PROVIDERS: frozenset({"provs", "nodes"}),
    Op.PUT_CARD: frozenset(),
    Op.GET_CARDS: frozenset({"cards", "nodes", "more"}),
}
_HEAD_Q = frozenset({"v", "m", "op", "rid", "srv"})
_HEAD_R = frozenset({"v", "m", "op", "rid"})
_ERROR_KEYS = frozenset({"v", "m", "rid", "code", "msg"})


def answers(request: Request, response: Response) -> bool:
    """True if ``response`` is a possible reply to ``request``."""
    if response.rid != request.rid:
        return False
    return isinstance(response, ErrorReply) or response.op == request.op


# -- encoding -------------------------------------------------------------------------


def _finish(m: dict[str, Any]) -> bytes:
    data = encode(m)
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(
            ErrorCode.TOO_LARGE, f"DHT message of {len(data)} bytes over {MAX_MESSAGE}"
        )
    return data


def encode_request(req: Request) -> bytes:
    m: dict[str, Any] = {
        "v": WIRE_VERSION,
        "m": "q",
        "op": req.op.value,
        "rid": req.rid,
        "srv": req.serving,
    }
    if isinstance(req, FindNode | FindPeer):
        m["target"] = req.target
    elif isinstance(req, PutPeer | AddProvider):
        m["rec"] = req.record
    elif isinstance(req, GetProviders):
        m["key"] = req.key
    elif isinstance(req, PutCard):
        m["key"], m["rec"] = req.key, req.record
    elif isinstance(req, GetCards):
        m["key"] = req.key
        if req.after is not None:
            m["after"] = req.after
    return _finish(m)


def _contacts(nodes: tuple[Contact, ...]) -> list[list[Any]]:
    if len(nodes) > MAX_CONTACTS_PER_REPLY:
        raise ValueError(f"at most {MAX_CONTACTS_PER_REPLY} contacts per reply")
    return [c.to_wire() for c in nodes]


def encode_response(resp: Response) -> bytes:
    if isinstance(resp, ErrorReply):
        text = resp.message.encode()[:MAX_ERROR_TEXT].decode(errors="ignore")
        return _finish(
            {"v": WIRE_VERSION, "m": "e", "rid": resp.rid, "code": resp.code[:32], "msg": text}
        )
    m: dict[str, Any] = {"v": WIRE_VERSION, "m": "r", "op": resp.op.value, "rid": resp.rid}
    if isinstance(resp, Nodes):
        m["nodes"] = _contacts(resp.nodes)
    elif isinstance(resp, PeerFound):
        m["nodes"] = _contacts(resp.nodes)
        if resp.record is not None:
            m["rec"] = resp.record
    elif isinstance(resp, Providers):
        if len(resp.providers) > MAX_PROVIDERS_PER_REPLY:
            raise ValueError(f"at most {MAX_PROVIDERS_PER_REPLY} providers per reply")
        m["provs"] = list(resp.providers)
        m["nodes"] = _contacts(resp.nodes)
    elif isinstance(resp, Cards):
        if len(resp.cards) > MAX_CARDS_PER_REPLY:
            raise ValueError(f"at most {MAX_CARDS_PER_REPLY} cards per reply")
        m["cards"] = list(resp.cards)
        m["nodes"] = _contacts(resp.nodes)
        m["more"] = resp.more
    return _finish(m)


def encode_message(msg: Message) -> bytes:
    if isinstance(msg, _REQUEST_TYPES):
        return encode_request(msg)
    return encode_response(msg)


# -- decoding -------------------------------------------------------------------------


def _fail(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.MALFORMED, message)


def _op(m: dict[str, Any]) -> Op:
    value = m.get("op")
    if not isinstance(value, str):
        raise _fail("op must be a text string")
    try:
        return Op(value)
    except ValueError:
        raise _fail(f"unknown DHT operation {value!r:.40}") from None


def _nodes(m: dict[str, Any]) -> tuple[Contact, ...]:
    return tuple(contact_from_wire(c) for c in need_list(m, "nodes", MAX_CONTACTS_PER_REPLY))


def _record(m: dict[str, Any]) -> bytes:
    return need_bytes(m, "rec", max_size=MAX_RECORD_BYTES)


def decode_message(data: bytes) -> Message:
    """Decode and validate one DHT message, or raise ProtocolError."""
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(
            ErrorCode.TOO_LARGE, f"DHT message of {len(data)} bytes over {MAX_MESSAGE}"
        )
    m = decode(data, max_items=MAX_MESSAGE_ITEMS)
    if not isinstance(m, dict):
        raise _fail("a DHT message is a CBOR map")
    if m.get("v") != WIRE_VERSION or type(m.get("v")) is not int:
        raise ProtocolError(ErrorCode.VERSION, "unknown DHT message version")
    kind = m.get("m")
    rid = need_uint(m, "rid", MAX_REQUEST_ID)
    if kind == "e":
        return _error_from(m, rid)
    if kind == "q":
        return _request_from(m, rid)
    if kind == "r":
        return _response_from(m, rid)
    raise _fail("m must be q, r or e")


def _error_from(m: dict[str, Any], rid: int) -> ErrorReply:
    if m.keys() != _ERROR_KEYS:
        raise _fail("an error reply has exactly v, m, rid, code, msg")
    return ErrorReply(rid, need_text(m, "code", 32), need_text(m, "msg", MAX_ERROR_TEXT))


def _request_from(m: dict[str, Any], rid: int) -> Request:
    op = _op(m)
    keys = m.keys()
    if keys != _HEAD_Q | _ARGS[op] and not (
        op is Op.GET_CARDS and keys == _HEAD_Q | _ARGS[op] | {"after"}
    ):
        raise _fail(f"wrong fields for a {op.value} request")
    serving = m["srv"]
    if not isinstance(serving, bool):
        raise _fail("srv must be a boolean")
    if op is Op.PING:
        return Ping(rid, serving)
    if op is Op.FIND_NODE:
        return FindNode(rid, need_bytes(m, "target", ID_LEN), serving)
    if op is Op.FIND_PEER:
        return FindPeer(rid, need_bytes(m, "target", ID_LEN), serving)
    if op is Op.PUT_PEER:
        return PutPeer(rid, _record(m), serving)
    if op is Op.ADD_PROVIDER:
        return AddProvider(rid, _record(m), serving)
    if op is Op.PUT_CARD:
        rec = need_bytes(m, "rec", max_size=MAX_CARD_RECORD_BYTES)
        return PutCard(rid, need_bytes(m, "key", ID_LEN), rec, serving)
    if op is Op.GET_CARDS:
        after = need_bytes(m, "after", ID_LEN) if "after" in m else None
        return GetCards(rid, need_bytes(m, "key", ID_LEN), after, serving)
    return GetProviders(rid, need_bytes(m, "key", ID_LEN), serving)


def _response_from(m: dict[str, Any], rid: int) -> Response:
    op = _op(m)
    expected = _HEAD_R | _RESULTS[op]
    keys = m.keys()
    if keys != expected and not (op is Op.FIND_PEER and keys == expected | {"rec"}):
        raise _fail(f"wrong fields for a {op.value} response")
    if op is Op.PING:
        return Pong(rid)
    if op is Op.FIND_NODE:
        return Nodes(rid, _nodes(m))
    if op is Op.FIND_PEER:
        return PeerFound(rid, _nodes(m), _record(m) if "rec" in m else None)
    if op is Op.GET_PROVIDERS:
        provs = need_list(m, "provs", MAX_PROVIDERS_PER_REPLY)
        if any(not isinstance(p, bytes) or len(p) > MAX_RECORD_BYTES for p in provs):
            raise _fail(f"provs must be byte strings of at most {MAX_RECORD_BYTES} bytes")
        return Providers(rid, tuple(provs), _nodes(m))
    if op is Op.GET_CARDS:
        return _cards_from(m, rid)
    return Stored(rid, op)


def _cards_from(m: dict[str, Any], rid: int) -> Cards:
    cards = need_list(m, "cards", MAX_CARDS_PER_REPLY)
    if any(not isinstance(c, bytes) or len(c) > MAX_CARD_RECORD_BYTES for c in cards):
        raise _fail(f"cards must be byte strings of at most {MAX_CARD_RECORD_BYTES} bytes")
    more = m["more"]
    if not isinstance(more, bool):
        raise _fail("more must be a boolean")
    return Cards(rid, tuple(cards), _nodes(m), more)


_REQUEST_TYPES = (Ping, FindNode, FindPeer, PutPeer, AddProvider, GetProviders, PutCard, GetCards)


def decode_request(data: bytes) -> Request:
    """Decode a message that must be a request; ProtocolError otherwise."""
    msg = decode_message(data)
    if not isinstance(msg, _REQUEST_TYPES):
        raise ProtocolError(ErrorCode.UNEXPECTED, "expected a DHT request")
    return msg


def decode_response(data: bytes) -> Response:
    """Decode a message that must be a response or error; ProtocolError otherwise."""
    msg = decode_message(data)
    if isinstance(msg, _REQUEST_TYPES):
        raise ProtocolError(ErrorCode.UNEXPECTED, "expected a DHT response")
    return msg
