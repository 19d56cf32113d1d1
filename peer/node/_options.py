"""What a peer is told and what it counts: ``PeerOptions``, ``PeerCounters``.

Plain data, no I/O: the CLI builds a ``PeerOptions`` from flags and
environment, and the peer never changes it once running. ``PeerCounters``
only ever grows (each refusal is counted under its error code).
``UnknownPeer`` is what sending a DM to a never-seen peer id raises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dht import DhtConfig
from dht._cards import CARDS_CAP
from peer.protocols._deposits import MAILBOX_CAP
from peer.protocols._mailbox import MailboxQuota
from peer.protocols._order import ORDER_HOLD
from peer.wire._blobframes import BLOBS_CAP
from peer.wire._errors import ErrorCode
from peer.wire._handshake import PLAINTEXT_CAP
from peer.wire._limits import GossipParams
from store import KeepRules, RetentionPolicy

from ._readmarks import READ_RECEIPTS_CAP

PRESENCE_INTERVAL = 60.0
DAY_MS = 24 * 3600 * 1000


def default_keep_rules(relay_only: bool) -> KeepRules:
    """A peer keeps what it subscribes to for 30 days; a seed what it relays for 7."""
    if relay_only:
        return KeepRules(default=RetentionPolicy(max_age_ms=7 * DAY_MS, max_bytes=256 << 20))
    return KeepRules(default=RetentionPolicy(max_age_ms=30 * DAY_MS, max_bytes=1 << 30))


class UnknownPeer(Exception):
    """A DM to a peer id whose public key we have never seen."""


@dataclass(frozen=True)
class BenchOnly:
    """Switches for the benchmark harness only, unsafe, and not part of the public
    API (``PeerOptions`` has none): skip the envelope signature checks, and offer
    unencrypted links (used only if the other side offers them too). Only the
    CLI's hidden ``--bench-*`` flags set them."""

    no_verify: bool = False
    plaintext_links: bool = False

    @property
    def any(self) -> bool:
        return self.no_verify or self.plaintext_links


COORD_CAP = "coord"


@dataclass
class PeerOptions:
    """How a peer behaves; the CLI builds one from flags and environment."""

    listen_urls: tuple[str, ...] = ()  # what we advertise as our address(es)
    relay: bool = True
    relay_only: bool = False
    channels: tuple[str, ...] = ()
    gossip: GossipParams = field(default_factory=GossipParams)
    max_links: int = 128
    max_links_per_ip: int = 8  # inbound connections per remote address; loopback is exempt
    inbox_capacity: int = 100_000
    keepalive: float = 5.0  # a silent link is pinged (handshake.md section 10)
    idle_timeout: float = 15.0  # ... and closed
    presence_interval: float = PRESENCE_INTERVAL
    backoff_initial: float = 1.0
    backoff_max: float = 10.0  # redials of a lost link: a healed network relinks soon
    seed: int | None = None  # for reproducible simulations
    dht: bool = True
    dht_config: DhtConfig = field(default_factory=DhtConfig)
    providers_to_link: int = 3  # carriers of a channel we link to when we subscribe
    store_path: str | None = None  # LMDB directory; None: nothing persists (tests, benchmarks)
    keep_rules: KeepRules | None = None  # None: default_keep_rules(relay_only)
    max_kept_topics: int = 4096  # topics a relay-only seed keeps receiving to store them
    dm_deadline: float = 7 * 24 * 3600.0  # seconds a DM waits for its receipt
    outbox_retry_initial: float = 2.0  # first retry of an unreceipted DM, then backoff
    # a relay-only seed acknowledges nothing it relays and has no inbox: its live
    # traffic waits up to this many seconds to share a commit (fewer fsyncs)
    relay_commit_delay: float = 0.025
    # a message that would overtake an earlier one of its sender waits up to this many
    # seconds for it (peer/protocols/_order.py); then the gap is given up and reported
    order_hold: float = ORDER_HOLD
    name: str = ""  # a display name others see in our presence (``/peers``)
    skills: tuple[tuple[str, str], ...] = ()  # (id, description) in our presence: A2A cards
    # mailbox duty (catchup.md section 9.6): hold others' sealed DMs and receipts for
    # their offline recipients, within these quotas; needs a store and a served DHT
    mailbox: bool = True
    mailbox_quota: MailboxQuota = field(default_factory=MailboxQuota)
    mailbox_delay: float = 5.0  # seconds an undelivered DM or receipt waits before deposits
    # our agent card (dht/_card.py), published under its skills and tags; None: no card
    card: dict[str, Any] | None = None
    # blobs (protocol-spec/blobs.md): the largest one uploaded, and all chunks kept on disk
    blob_max_bytes: int = 1 << 30
    blob_quota_bytes: int = 4 << 30
    # the OpenClaw Messaging gateway (peer/node/_ocmhost.py): OCM peers on our listener,
    # and OCM bootstrap lists whose peers we dial; never on a relay-only seed
    ocm: bool = True
    ocm_bootstrap: tuple[str, ...] = ()
    # MESH webhook clients (peer/api/_meshhooks.py): a bearer token that opens only
    # /hooks and /inbox (besides the API token), and MESH's signing-keys directory
    mesh_token: str = ""
    mesh_keys: str | None = None
    # addresses (CIDR) replyTo URLs may reach besides public ones (none by default)
    mesh_reply_allow: tuple[str, ...] = ()
    # the listener shares its port with the other workers of a seed (SO_REUSEPORT)
    reuse_port: bool = False
    # a burst of envelopes from one link has its signatures checked in a worker
    # thread while the event loop goes on (peer/node/_checkahead.py)
    check_ahead: bool = True

    def __post_init__(self) -> None:
        if self.keep_rules is None:
            self.keep_rules = default_keep_rules(self.relay_only)

    @property
    def rules(self) -> KeepRules:
        assert self.keep_rules is not None
        return self.keep_rules

    def caps_for(self, serving_dht: bool, bench: BenchOnly | None = None) -> tuple[str, ...]:
        caps = ["relay"] if self.relay else []
        if self.relay_only:
            caps.append("relay-only")
        if self.store_path is not None:
            caps.append("store")
            if not self.relay_only:
                caps.append(COORD_CAP)  # reads DM meta and signs acks (envelope.md 12)
        if serving_dht:
            caps.extend(("dht", CARDS_CAP))
        if self.mailbox and serving_dht and self.store_path is not None and not self.relay_only:
            caps.append(MAILBOX_CAP)
        if not self.relay_only:
            caps.append(READ_RECEIPTS_CAP)
        caps.append(BLOBS_CAP)  # answers and forwards blob wants (a store holds blobs)
        if bench is not None and bench.plaintext_links:
            caps.append(PLAINTEXT_CAP)
        return tuple(caps)

    @property
    def caps(self) -> tuple[str, ...]:
        return self.caps_for(False)


@dataclass
class PeerCounters:
    links_opened: int = 0
    links_closed: int = 0
    handshakes_failed: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    link_errors: int = 0  # bugs while serving a link: the link was closed
    task_errors: int = 0  # bugs in a peer's timer loops: logged, the loop went on
    upgrade_failures: int = 0  # inbound connections that never became WebSockets
    dm_undecryptable: int = 0
    # check-ahead (peer/node/_checkahead.py): bursts whose signatures were checked in
    # a worker thread, the envelopes checked there, and those that did not verify;
    # bursts routed on the loop because all links' bursts in flight were at the bound
    checked_ahead_bursts: int = 0
    checked_ahead: int = 0
    checked_ahead_failed: int = 0
    checked_ahead_over_budget: int = 0

    def refuse(self, code: ErrorCode) -> None:
        self.refused[code.value] = self.refused.get(code.value, 0) + 1
