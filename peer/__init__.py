"""clawmesh peer: identities, links, gossip pub/sub, the local API and the CLI.

Public names are re-exported here; modules starting with ``_`` are private.
To run a peer inside a program::

    async with peer.open_peer("~/.clawmesh/keys", bootstrap=["ws://seed:7433/#..."]) as p:
        await p.send_message("lobby", peer.Content("hello"))
        async for message in p.messages(channel="lobby"):
            print(message.body)

The layers, lowest first: ``peer.wire`` (the wire format, pure),
``peer.protocols`` (the protocol decisions, sans-IO), ``peer.node`` (the Trio
shell), ``peer.api`` (the local HTTP API) and ``peer.cli``.
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
    Heads,
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
    from ._embed import StartError, open_peer
    from .node._inbox import InboxMessage
    from .node._node import Peer, PeerOptions, UnknownPeer, memory_link_pair

_LAZY = {
    "Peer": "peer.node._node",
    "PeerOptions": "peer.node._node",
    "UnknownPeer": "peer.node._node",
    "memory_link_pair": "peer.node._node",
    "InboxMessage": "peer.node._inbox",
    "open_peer": "peer._embed",
    "StartError": "peer._embed",
}


def __getattr__(name: str) -> Any:
    # The Trio shell imports the dht package, which imports peer.wire: loading
    # the shell when first asked for lets either package be imported first.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'peer' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


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
    "Heads",
    "Hello",
    "IHave",
    "IWant",
    "Identity",
    "InboxMessage",
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
    "StartError",
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
    "open_peer",
    "parse_peer_id",
    "peer_id_of",
    "seal_dm",
    "seal_message",
]
