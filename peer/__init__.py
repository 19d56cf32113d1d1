"""clawmesh peer: identities, links, gossip pub/sub, the local API and the CLI.

Public names are re-exported here; modules starting with ``_`` are private.
"""

from ._envelope import (
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
from ._errors import ErrorCode, ProtocolError
from ._frames import Frame, RecordBuffer, decode_frame, encode_frame, frame_record
from ._gossip import Close, Deliver, GossipRouter, Send
from ._handshake import Handshake, HandshakeResult, LinkCipher
from ._identity import Identity, parse_peer_id, peer_id_of
from ._limits import GossipParams
from ._node import Peer, PeerOptions, UnknownPeer, memory_link_pair

__all__ = [
    "Close",
    "Content",
    "Deliver",
    "Envelope",
    "ErrorCode",
    "Frame",
    "GossipParams",
    "GossipRouter",
    "Handshake",
    "HandshakeResult",
    "Identity",
    "LinkCipher",
    "Peer",
    "PeerOptions",
    "ProtocolError",
    "RecordBuffer",
    "Send",
    "UnknownPeer",
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
