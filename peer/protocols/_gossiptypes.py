"""The gossip router's commands, counters and per-link state, as plain data.

``Send``, ``Deliver`` and ``Close`` are what ``GossipRouter`` returns for the
Trio shell to carry out; ``GossipCounters`` only grows; ``LinkState`` is the
router's own record of one link (nothing else changes it). No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peer.wire._envelope import Envelope
from peer.wire._errors import ErrorCode


@dataclass(frozen=True, slots=True)
class Send:
    peer: bytes
    frame: bytes  # plaintext frame; the shell encrypts it for the link


@dataclass(frozen=True, slots=True)
class Deliver:
    """A new, verified envelope; ``member`` is False for one we only relay
    (reported when the router was made with ``observe_all``, for a store)."""

    envelope: Envelope
    member: bool = True


@dataclass(frozen=True, slots=True)
class Close:
    peer: bytes
    code: ErrorCode
    reason: str


Action = Send | Deliver | Close


@dataclass
class GossipCounters:
    frames_in: int = 0
    bytes_in: int = 0
    published: int = 0
    received: int = 0  # new, verified envelopes from links
    delivered: int = 0
    forwarded: int = 0  # frames sent on behalf of others
    duplicates: int = 0
    stale: int = 0
    rejected: int = 0  # frames that closed their link
    ihave_sent: int = 0
    iwant_sent: int = 0
    iwant_served: int = 0
    grafts: int = 0
    prunes: int = 0
    sender_limited: int = 0  # new envelopes dropped: their author over its limit
    link_limited: int = 0  # pub frames dropped: their link over its limit
    graylisted: int = 0  # links closed for a score below the graylist threshold
    banned_refused: int = 0  # links refused at once: their peer is banned
    broken_promises: int = 0


@dataclass(slots=True)
class LinkState:
    relay: bool
    opened: float
    interest: dict[str, int] = field(default_factory=dict)  # what they want, with hops
    told: dict[str, int] = field(default_factory=dict)  # what we told them
    frame_tokens: float = 0.0
    byte_tokens: float = 0.0
    refilled: float = 0.0
    iwant_budget: int = 0
    last_heard: float = 0.0
    ping_sent: float | None = None
    graylisted: bool = False  # its frames are ignored until the shell closes it
