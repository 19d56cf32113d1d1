"""Every bound and tunable of the DHT, in one place.

protocol-spec/dht.md ("Limits") lists the wire limits below; a node may
choose tighter ones but must accept anything within them. ``DhtConfig`` holds
the tunables of one node (k, alpha, timeouts, TTLs, quotas); the sans-IO
modules take their values from it, so a test can shrink or relax any bound.
"""

from __future__ import annotations

from dataclasses import dataclass

# -- wire limits (protocol-spec/dht.md, "Limits") -----------------------------

K = 20  # replication parameter and bucket size
ID_LEN = 32  # node ids and keys are 256 bits
ID_BITS = 8 * ID_LEN
MAX_MESSAGE = 96 * 1024  # one encoded DHT message
MAX_MESSAGE_ITEMS = 2048  # CBOR data items in one message
MAX_CONTACTS_PER_REPLY = K  # "nodes" in any reply
MAX_PROVIDERS_PER_REPLY = 20  # records in one GET_PROVIDERS reply
MAX_ADDRS = 4  # listen addresses per contact or record
MAX_ADDR_BYTES = 256  # UTF-8 bytes of one address
MAX_CAPS = 8  # capabilities per contact or record
MAX_CAP_BYTES = 32
MAX_RELAYS = 4  # relays a client advertises
MAX_RECORD_BYTES = 2048  # one signed record, signature included
MAX_RECORD_ITEMS = 64  # CBOR data items in a record's signed body
MAX_CARD_RECORD_BYTES = 8192  # one signed agent card record (dht/_card.py)
MAX_CARDS_PER_REPLY = 64  # card records in one GET_CARDS reply
MAX_ERROR_TEXT = 200  # bytes of an error reply's message
MAX_REQUEST_ID = 2**64 - 1


@dataclass(frozen=True)
class DhtConfig:
    """The tunables of one DHT node."""

    k: int = K
    alpha: int = 3  # lookup parallelism
    rpc_timeout: float = 5.0  # seconds before an unanswered request counts as failed
    max_lookup_queries: int = 10 * K  # requests one lookup may send at most
    failures_to_evict: int = 2  # consecutive missed replies before a contact is evicted
    replacements_per_bucket: int = K  # newcomers held for a full bucket
    refresh_interval: float = 3600.0  # a bucket untouched this long is refreshed
    # contacts per address range (IPv4 /24, IPv6 /48, or host name); None = off
    max_per_range_bucket: int | None = 2
    max_per_range_table: int | None = 10
    # requests one peer may send us: a token bucket
    requests_per_second: float = 20.0
    request_burst: float = 40.0
    max_rate_tracked: int = 4096  # peers whose request budget we remember
    # records
    peer_record_ttl: float = 3600.0  # lifetime we give our own peer record
    provider_ttl: float = 1200.0  # lifetime we give our provider records
    republish_interval: float = 600.0  # we re-sign and re-put our records this often
    max_record_ttl: float = 24 * 3600.0  # refuse records expiring later than this ...
    clock_skew: float = 120.0  # ... plus this much slack
    max_peer_records: int = 10_000  # peer records a node stores
    max_providers_per_key: int = 64
    max_provider_keys: int = 10_000  # topic keys with provider records
    max_keys_per_provider: int = 128  # topics one publisher may hold records for here
    providers_per_reply: int = MAX_PROVIDERS_PER_REPLY

    def __post_init__(self) -> None:
        if not 1 <= self.k <= MAX_CONTACTS_PER_REPLY:
            raise ValueError(f"k must be 1..{MAX_CONTACTS_PER_REPLY}")
        if self.alpha < 1 or self.failures_to_evict < 1:
            raise ValueError("alpha and failures_to_evict must be positive")
        if not 1 <= self.providers_per_reply <= MAX_PROVIDERS_PER_REPLY:
            raise ValueError(f"providers_per_reply must be 1..{MAX_PROVIDERS_PER_REPLY}")
