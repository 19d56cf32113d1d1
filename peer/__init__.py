"""clawmesh peer: identities, links, gossip pub/sub, the local API and the CLI.

Public names are re-exported here; modules starting with ``_`` are private.
"""

from typing import TYPE_CHECKING, Any

from .protocols._gossip import Close, Deliver, GossipRouter, Send
from .wire._envelope import (
    Content,
    Envelope,
    dm_topic,
    inbox_topic,
    message_id,
    open_dm,
    open_envelope,
    seal_dm,
    seal_message,
)
from .wire._errors import ErrorCode, ProtocolError
from .wire._frames import RecordBuffer, decode_frame, encode_frame, frame_record
from .wire._frametypes import (
    FRAME_TYPES,
    AnyFrame,
    Auth,
    CuPage,
    CuReq,
    Dht,
    Error,
    Graft,
    Hello,
    IHave,
    IWant,
    Ping,
    Pong,
    Prune,
    Pub,
    Push,
    Sub,
    Unsub,
)
from .wire._handshake import Handshake, HandshakeResult, LinkCipher, PeerRefused, SelfConnection
from .wire._identity import Identity, parse_peer_id, peer_id_of
from .wire._limits import GossipParams

if TYPE_CHECKING:
    from .node._node import Peer, PeerOptions, UnknownPeer, memory_link_pair

_LAZY = frozenset({"Peer", "PeerOptions", "UnknownPeer", "memory_link_pair"})


def __getattr__(name: str) -> Any:
    # The Trio shell imports the dht package, which imports this package's
    # sans-IO modules: loading the shell lazily lets either package come first.
    if name in _LAZY:
        from peer.node import _node

        return getattr(_node, name)
    raise AttributeError(f"module 'peer' has no attribute {name!r}")


__all__ = [
    "FRAME_TYPES",
    "AnyFrame",
    "Auth",
    "Close",
    "Content",
    "CuPage",
    "CuReq",
    "Deliver",
    "Dht",
    "Envelope",
    "Error",
    "ErrorCode",
    "GossipParams",
    "GossipRouter",
    "Graft",
    "Handshake",
    "HandshakeResult",
    "Hello",
    "IHave",
    "IWant",
    "Identity",
    "LinkCipher",
    "Peer",
    "PeerOptions",
    "PeerRefused",
    "Ping",
    "Pong",
    "ProtocolError",
    "Prune",
    "Pub",
    "Push",
    "RecordBuffer",
    "SelfConnection",
    "Send",
    "Sub",
    "UnknownPeer",
    "Unsub",
    "decode_frame",
    "dm_topic",
    "encode_frame",
    "frame_record",
    "inbox_topic",
    "memory_link_pair",
    "message_id",
    "open_dm",
    "open_envelope",
    "parse_peer_id",
    "peer_id_of",
    "seal_dm",
    "seal_message",
]
