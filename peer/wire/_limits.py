"""Every bound clawmesh puts on network input, in one place.

protocol-spec/README.md ("Limits") lists the same numbers; a peer may choose
tighter ones but must accept anything within these.
"""

from __future__ import annotations

from dataclasses import dataclass

PROTOCOL_VERSIONS = (1,)

MAX_RECORD = 320 * 1024  # one link record (WebSocket message or stream record)
MAX_HANDSHAKE_RECORD = 4 * 1024
MAX_ENVELOPE = 288 * 1024  # a signed envelope, signature included
MAX_BODY_BYTES = 64 * 1024  # UTF-8 bytes of a message's text body
MAX_PAYLOAD = 256 * 1024  # CBOR bytes of a message's payload
MAX_FRAME_ITEMS = 4096  # CBOR data items in one frame
MAX_TOPIC_BYTES = 128
MAX_TOPICS_PER_FRAME = 256
MAX_TOPICS_PER_PEER = 4096
MAX_IDS_PER_FRAME = 512
MAX_LISTEN_ADDRS = 8
MAX_ADDR_BYTES = 256
MAX_CAPS = 16
MAX_TEXT_FIELD = 256
MAX_INTEREST_HOPS = 12
MAX_PAGE_MESSAGES = 512  # envelopes in one catch-up page
MAX_PAGE_BYTES = 256 * 1024  # envelope bytes in one page (one larger envelope goes alone)
MAX_PAGE_HEADS = 256  # [sender, seq] pairs in one page
MAX_REQUEST_ID = 2**32 - 1
MAX_DHT_MESSAGE = 96 * 1024  # one DHT RPC carried in a dht frame (dht/_config.py)


@dataclass(frozen=True)
class GossipParams:
    """Tunables of the gossip router (protocol-spec/gossip.md)."""

    mesh_degree: int = 6  # D: target transit mesh size per topic
    mesh_low: int = 4  # D_lo: graft below this
    mesh_high: int = 12  # D_hi: prune above this
    gossip_degree: int = 6  # IHAVE targets per topic per heartbeat
    heartbeat: float = 1.0  # seconds
    history_windows: int = 3  # heartbeats a message stays in the IWANT cache
    seen_ttl: float = 600.0  # seconds a message id is remembered
    seen_max: int = 100_000  # ids remembered at most
    max_age: float = 540.0  # gossip refuses envelopes older than this (seconds)
    max_skew: float = 120.0  # ... or this far in the future
    frames_per_second: float = 20_000.0  # per-link budget; exceeding it closes the link
    frame_burst: float = 40_000.0
    bytes_per_second: float = 32 * 1024 * 1024
    byte_burst: float = 64 * 1024 * 1024
    iwant_per_heartbeat: int = 1024  # envelopes served per peer per heartbeat
    # spam limits (gossip.md section 9); a rate of 0 turns a limit off
    # honest storms in the acceptance tests reach ~600/s per author: the limit sits above
    sender_rate: float = 1000.0  # new envelopes per second per author, relayed or our own
    sender_burst: float = 10_000.0
    sender_fresh_s: float = 0.25  # a never-seen author starts with this much of its rate
    senders_max: int = 10_000  # author buckets kept (least recently used forgotten)
    link_pub_rate: float = 5000.0  # pub frames per second per link (any author)
    link_pub_burst: float = 20_000.0
    # peer scores: decay, what lowers and raises them, and the thresholds
    score_half_life: float = 30.0  # seconds
    score_cap: float = 20.0  # first deliveries raise a score at most to this
    first_delivery_reward: float = 0.5
    invalid_penalty: float = 50.0  # an envelope that does not open (the link closes too)
    duplicate_rate: float = 1000.0  # duplicates per second per link without penalty
    duplicate_burst: float = 5000.0
    duplicate_penalty: float = 0.1  # per duplicate beyond that
    over_limit_penalty: float = 1.0  # per pub dropped by a sender or link limit
    over_limit_mute_s: float = 60.0  # an author over its limit on its own link: none relayed
    broken_promise_penalty: float = 10.0  # per IWANT not answered in time
    iwant_deadline: float = 3.0  # seconds for an IHAVE's promise to be kept
    promises_max: int = 4096
    gossip_threshold: float = -10.0  # below: no IHAVE to or from it
    prune_threshold: float = -40.0  # below: out of every mesh, never grafted
    graylist_threshold: float = -80.0  # below: link closed (rate), banned
    ban_seconds: float = 300.0
    ban_max: int = 1024
    score_max_peers: int = 4096  # scores kept, linked or not
