"""Signed DHT records, their validation, and the store that holds them.

Two record types (protocol-spec/dht.md, "Records"):

* a **peer record** says how to reach a node: id, public key, listen
  addresses, relays (for clients that cannot accept connections), capabilities,
  a sequence number and an expiry;
* a **provider record** says that a node carries a topic: the topic key
  SHA-256(``"clawmesh/dht/topic/v1"`` || topic name), the provider's id, key,
  addresses and relays, a sequence number and an expiry.

On the wire a record is the canonical CBOR array ``[body, sig]``: ``body`` is
the canonical CBOR map of the fields (a byte string, forwarded untouched) and
``sig`` the owner's Ed25519 signature over the record type's domain tag
followed by ``body``.

Rules this module keeps:

* Every record is validated on put and on receipt in a lookup: strict shape,
  ``id == peer_id_of(pk)``, not expired, expiry at most ``max_ttl`` (+ clock
  skew) ahead, signature. Checks run cheapest first, so floods of junk cost
  no signature verification. Failures raise :class:`RecordError`, a
  :class:`peer.ProtocolError` with a finer :class:`Reason`.
* The store only accepts a record from its owner (the authenticated sender),
  only with a sequence number strictly above the one it holds (the very same
  bytes again are accepted as a no-op), keeps at most
  ``max_providers_per_key`` providers per key and ``max_keys_per_provider``
  keys per provider, and drops records once they expire, also on get.
* Every refusal is counted by reason.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from peer.wire._cbor import decode as cbor_decode
from peer.wire._cbor import encode
from peer.wire._errors import ErrorCode, ProtocolError
from peer.wire._fields import need_bytes, need_list, need_uint
from peer.wire._identity import Identity, peer_id_of, verify_signature
from peer.wire._stats import Statistics, snapshot

from ._config import (
    ID_LEN,
    MAX_ADDR_BYTES,
    MAX_ADDRS,
    MAX_CAP_BYTES,
    MAX_CAPS,
    MAX_RECORD_BYTES,
    MAX_RECORD_ITEMS,
    MAX_RELAYS,
    DhtConfig,
)
from ._contact import Contact, check_texts, distance

PEER_RECORD_TAG = b"clawmesh/dht/peer-record/v1"
PROVIDER_RECORD_TAG = b"clawmesh/dht/provider-record/v1"
TOPIC_KEY_TAG = b"clawmesh/dht/topic/v1"
RECORD_VERSION = 1
MAX_UINT = 2**64 - 1

_PEER_KEYS = frozenset({"v", "id", "pk", "addrs", "relays", "caps", "seq", "exp"})
_PROVIDER_KEYS = frozenset({"v", "key", "id", "pk", "addrs", "relays", "seq", "exp"})


class Reason(StrEnum):
    """Why a record or request was refused; sent as ``code`` in error replies."""

    MALFORMED = "malformed"  # bad CBOR, bad shape, unknown field or operation
    TOO_LARGE = "too-large"
    BAD_SIGNATURE = "bad-signature"
    ID_MISMATCH = "id-mismatch"  # id is not SHA-256(tag || pk)
    WRONG_KEY = "wrong-key"  # a record for another id or topic key than the one asked for
    STALE = "stale"  # sequence number not above the one held
    EXPIRED = "expired"
    TOO_FAR_FUTURE = "too-far-future"  # expiry beyond max TTL plus clock skew
    NOT_OWNER = "not-owner"  # sender is not the record's owner
    FULL = "full"  # the store is at capacity for this key
    QUOTA = "quota"  # the sender holds as many records here as it may
    RATE = "rate"  # too many requests from this peer
    NOT_SERVING = "not-serving"  # we are a client and do not serve the DHT


_CODE_OF = {
    Reason.MALFORMED: ErrorCode.MALFORMED,
    Reason.TOO_LARGE: ErrorCode.TOO_LARGE,
    Reason.BAD_SIGNATURE: ErrorCode.BAD_SIGNATURE,
    Reason.ID_MISMATCH: ErrorCode.AUTH,
    Reason.WRONG_KEY: ErrorCode.AUTH,
    Reason.STALE: ErrorCode.UNEXPECTED,
    Reason.EXPIRED: ErrorCode.TIMEOUT,
    Reason.TOO_FAR_FUTURE: ErrorCode.UNEXPECTED,
    Reason.NOT_OWNER: ErrorCode.AUTH,
    Reason.FULL: ErrorCode.RATE,
    Reason.QUOTA: ErrorCode.RATE,
    Reason.RATE: ErrorCode.RATE,
    Reason.NOT_SERVING: ErrorCode.UNEXPECTED,
}


def code_of(reason: Reason) -> ErrorCode:
    """The generic :class:`peer.ErrorCode` a DHT refusal maps to."""
    return _CODE_OF[reason]


class RecordError(ProtocolError):
    """A refused record or request: a ProtocolError with a DHT-specific reason."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(_CODE_OF[reason], message)
        self.reason = reason


def topic_key(topic: str) -> bytes:
    """The 32-byte DHT key of a topic (channel) name."""
    return hashlib.sha256(TOPIC_KEY_TAG + topic.encode()).digest()


@dataclass(frozen=True, slots=True)
class Relay:
    """A relay through which a client can be reached: the relay's id and address."""

    id: bytes
    addr: str


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """A parsed peer record (verified if it came from ``verify_peer_record``)."""

    id: bytes
    public_key: bytes
    addrs: tuple[str, ...]
    relays: tuple[Relay, ...]
    caps: tuple[str, ...]
    seq: int
    expires: int  # seconds since the Unix epoch
    wire: bytes = field(repr=False)
    body: bytes = field(repr=False)
    sig: bytes = field(repr=False)

    def contact(self) -> Contact:
        return Contact(self.id, self.public_key, self.addrs, self.caps)


@dataclass(frozen=True, slots=True)
class ProviderRecord:
    """A parsed provider record: ``id`` carries the topic whose key is ``key``."""

    key: bytes
    id: bytes
    public_key: bytes
    addrs: tuple[str, ...]
    relays: tuple[Relay, ...]
    seq: int
    expires: int
    wire: bytes = field(repr=False)
    body: bytes = field(repr=False)
    sig: bytes = field(repr=False)


# -- parsing -----------------------------------------------------------------------


def _split(wire: bytes, keys: frozenset[str]) -> tuple[dict[str, Any], bytes, bytes]:
    if not isinstance(wire, bytes):
        raise RecordError(Reason.MALFORMED, "a record is a byte string")
    if len(wire) > MAX_RECORD_BYTES:
        raise RecordError(Reason.TOO_LARGE, f"record of {len(wire)} bytes over {MAX_RECORD_BYTES}")
    try:
        outer = cbor_decode(wire, max_items=3)
        if (
            not isinstance(outer, list)
            or len(outer) != 2
            or not isinstance(outer[0], bytes)
            or not isinstance(outer[1], bytes)
            or len(outer[1]) != 64
        ):
            raise RecordError(Reason.MALFORMED, "a record is [body bytes, 64-byte signature]")
        body, sig = outer
        fields = cbor_decode(body, max_items=MAX_RECORD_ITEMS)
    except RecordError:
        raise
    except ProtocolError as exc:
        reason = Reason.TOO_LARGE if exc.code is ErrorCode.TOO_LARGE else Reason.MALFORMED
        raise RecordError(reason, exc.message) from None
    if not isinstance(fields, dict) or fields.keys() != keys:
        raise RecordError(Reason.MALFORMED, "record body has the wrong fields")
    if fields["v"] != RECORD_VERSION:
        raise RecordError(Reason.MALFORMED, "unknown record version")
    return fields, body, sig


def _relays(value: list[Any]) -> tuple[Relay, ...]:
    out = []
    for entry in value:
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or not isinstance(entry[0], bytes)
            or len(entry[0]) != ID_LEN
            or not isinstance(entry[1], str)
            or not entry[1]
            or len(entry[1].encode()) > MAX_ADDR_BYTES
        ):
            raise RecordError(Reason.MALFORMED, "a relay is [32-byte id, address]")
        out.append(Relay(entry[0], entry[1]))
    return tuple(out)


def _common(
    fields: dict[str, Any],
) -> tuple[bytes, bytes, tuple[str, ...], tuple[Relay, ...], int, int]:
    try:
        node_id = need_bytes(fields, "id", ID_LEN)
        public_key = need_bytes(fields, "pk", ID_LEN)
        addrs = check_texts(need_list(fields, "addrs", MAX_ADDRS), "addrs", MAX_ADDR_BYTES)
        relays = _relays(need_list(fields, "relays", MAX_RELAYS))
        seq = need_uint(fields, "seq")
        expires = need_uint(fields, "exp")
    except RecordError:
        raise
    except ProtocolError as exc:
        reason = Reason.TOO_LARGE if exc.code is ErrorCode.TOO_LARGE else Reason.MALFORMED
        raise RecordError(reason, exc.message) from None
    if peer_id_of(public_key) != node_id:
        raise RecordError(Reason.ID_MISMATCH, "record id is not the hash of its public key")
    return node_id, public_key, addrs, relays, seq, expires


def parse_peer_record(wire: bytes) -> PeerRecord:
    """Shape and id binding of a peer record; no signature or expiry check."""
    fields, body, sig = _split(wire, _PEER_KEYS)
    node_id, public_key, addrs, relays, seq, expires = _common(fields)
    try:
        caps = check_texts(need_list(fields, "caps", MAX_CAPS), "caps", MAX_CAP_BYTES)
    except ProtocolError as exc:
        raise RecordError(Reason.MALFORMED, exc.message) from None
    return PeerRecord(node_id, public_key, addrs, relays, caps, seq, expires, wire, body, sig)


def parse_provider_record(wire: bytes) -> ProviderRecord:
    """Shape and id binding of a provider record; no signature or expiry check."""
    fields, body, sig = _split(wire, _PROVIDER_KEYS)
    node_id, public_key, addrs, relays, seq, expires = _common(fields)
    key = fields["key"]
    if not isinstance(key, bytes) or len(key) != ID_LEN:
        raise RecordError(Reason.MALFORMED, "provider key must be 32 bytes")
    return ProviderRecord(key, node_id, public_key, addrs, relays, seq, expires, wire, body, sig)


def check_expiry(expires: int, now: float, max_ttl: float, skew: float) -> None:
    if expires <= now:
        raise RecordError(Reason.EXPIRED, "record has expired")
    if expires > now + max_ttl + skew:
        raise RecordError(Reason.TOO_FAR_FUTURE, "record expires too far in the future")


def check_signature(record: PeerRecord | ProviderRecord) -> None:
    tag = PEER_RECORD_TAG if isinstance(record, PeerRecord) else PROVIDER_RECORD_TAG
    if not verify_signature(record.public_key, tag + record.body, record.sig):
        raise RecordError(Reason.BAD_SIGNATURE, "record signature does not verify")


def verify_peer_record(
    wire: bytes,
    now: float,
    *,
    node_id: bytes | None = None,
    max_ttl: float = DhtConfig.max_record_ttl,
    skew: float = DhtConfig.clock_skew,
) -> PeerRecord:
    """A fully validated peer record (of ``node_id`` if given), or RecordError."""
    record = parse_peer_record(wire)
    if node_id is not None and record.id != node_id:
        raise RecordError(Reason.WRONG_KEY, "peer record is for another id")
    check_expiry(record.expires, now, max_ttl, skew)
    check_signature(record)
    return record


def verify_provider_record(
    wire: bytes,
    now: float,
    *,
    key: bytes | None = None,
    max_ttl: float = DhtConfig.max_record_ttl,
    skew: float = DhtConfig.clock_skew,
) -> ProviderRecord:
    """A fully validated provider record (for ``key`` if given), or RecordError."""
    record = parse_provider_record(wire)
    if key is not None and record.key != key:
        raise RecordError(Reason.WRONG_KEY, "provider record is for another key")
    check_expiry(record.expires, now, max_ttl, skew)
    check_signature(record)
    return record


# -- signing --------------------------------------------------------------------------


def _relay_wire(relays: Iterable[Relay]) -> list[list[Any]]:
    return [[r.id, r.addr] for r in relays]


def _seal(identity: Identity, tag: bytes, fields: dict[str, Any]) -> bytes:
    body = encode(fields)
    return encode([body, identity.sign(tag + body)])


def sign_peer_record(
    identity: Identity,
    *,
    addrs: Iterable[str] = (),
    relays: Iterable[Relay] = (),
    caps: Iterable[str] = (),
    seq: int,
    expires: int,
) -> PeerRecord:
    """Sign our peer record; RecordError if a field is outside the limits."""
    fields = {
        "v": RECORD_VERSION,
        "id": identity.peer_id,
        "pk": identity.public_key,
        "addrs": list(addrs),
        "relays": _relay_wire(relays),
        "caps": list(caps),
        "seq": seq,
        "exp": expires,
    }
    return parse_peer_record(_seal(identity, PEER_RECORD_TAG, fields))


def sign_provider_record(
    identity: Identity,
    *,
    key: bytes,
    addrs: Iterable[str] = (),
    relays: Iterable[Relay] = (),
    seq: int,
    expires: int,
) -> ProviderRecord:
    """Sign a record saying that we carry the topic whose key is ``key``."""
    fields = {
        "v": RECORD_VERSION,
        "key": key,
        "id": identity.peer_id,
        "pk": identity.public_key,
        "addrs": list(addrs),
        "relays": _relay_wire(relays),
        "seq": seq,
        "exp": expires,
    }
    return parse_provider_record(_seal(identity, PROVIDER_RECORD_TAG, fields))


# -- the store ---------------------------------------------------------------------------


class RecordStore:
    """Peer and provider records this node holds for others, bounded and validated."""

    def __init__(self, config: DhtConfig | None = None, own_id: bytes | None = None) -> None:
        self.config = config if config is not None else DhtConfig()
        self.own_id = own_id
        self._peers: dict[bytes, PeerRecord] = {}
        self._providers: dict[bytes, dict[bytes, ProviderRecord]] = {}
        self._keys_of: Counter[bytes] = Counter()  # provider id -> keys it holds here
        self._provider_count = 0
        self.refused: Counter[Reason] = Counter()
        self.accepted: Counter[str] = Counter()

    # -- peer records --

    def put_peer(self, wire: bytes, now: float, sender: bytes | None = None) -> PeerRecord:
        """Validate and store a peer record sent by ``sender`` (None: ourselves)."""
        try:
            return self._put_peer(wire, now, sender)
        except RecordError as exc:
            self.refused[exc.reason] += 1
            raise

    def _put_peer(self, wire: bytes, now: float, sender: bytes | None) -> PeerRecord:
        cfg = self.config
        record = parse_peer_record(wire)
        if sender is not None and sender != record.id:
            raise RecordError(Reason.NOT_OWNER, "a peer record may only be put by its owner")
        check_expiry(record.expires, now, cfg.max_record_ttl, cfg.clock_skew)
        held = self.get_peer(record.id, now)
        if held is not None:
            if held.wire == wire:
                self.accepted["unchanged"] += 1
                return held
            if record.seq <= held.seq:
                raise RecordError(Reason.STALE, f"sequence {record.seq} not above {held.seq}")
        check_signature(record)
        if held is None and len(self._peers) >= cfg.max_peer_records:
            self._make_room_for_peer(record.id, now)
        self._peers[record.id] = record
        self.accepted["peer"] += 1
        return record

    def _make_room_for_peer(self, node_id: bytes, now: float) -> None:
        self.expire(now)
        if len(self._peers) < self.config.max_peer_records:
            return
        if self.own_id is None:
            raise RecordError(Reason.FULL, "peer record store is full")
        farthest = max(self._peers, key=lambda i: distance(i, self.own_id or b""))
        if distance(farthest, self.own_id) <= distance(node_id, self.own_id):
            raise RecordError(Reason.FULL, "peer record store is full of closer records")
        del self._peers[farthest]

    def get_peer(self, node_id: bytes, now: float) -> PeerRecord | None:
        """The held record of ``node_id`` if it is still valid."""
        record = self._peers.get(node_id)
        if record is None:
            return None
        if record.expires <= now or peer_id_of(record.public_key) != node_id:
            del self._peers[node_id]
            return None
        return record

    # -- provider records --

    def add_provider(self, wire: bytes, now: float, sender: bytes | None = None) -> ProviderRecord:
        """Validate and store a provider record sent by ``sender`` (None: ourselves)."""
        try:
            return self._add_provider(wire, now, sender)
        except RecordError as exc:
            self.refused[exc.reason] += 1
            raise

    def _add_provider(self, wire: bytes, now: float, sender: bytes | None) -> ProviderRecord:
        cfg = self.config
        record = parse_provider_record(wire)
        if sender is not None and sender != record.id:
            raise RecordError(Reason.NOT_OWNER, "a provider record may only be added by its owner")
        check_expiry(record.expires, now, cfg.max_record_ttl, cfg.clock_skew)
        entries = self._live_entries(record.key, now)
        held = entries.get(record.id) if entries is not None else None
        if held is not None:
            if held.wire == wire:
                self.accepted["unchanged"] += 1
                return held
            if record.seq <= held.seq:
                raise RecordError(Reason.STALE, f"sequence {record.seq} not above {held.seq}")
        else:
            if self._keys_of[record.id] >= cfg.max_keys_per_provider:
                raise RecordError(Reason.QUOTA, "provider holds records for too many keys here")
            if entries is None and len(self._providers) >= cfg.max_provider_keys:
                raise RecordError(Reason.FULL, "too many provider keys")
        victim: ProviderRecord | None = None
        if held is None and entries is not None and len(entries) >= cfg.max_providers_per_key:
            victim = min(entries.values(), key=lambda r: r.expires)
            if victim.expires >= record.expires:
                raise RecordError(Reason.FULL, "key has as many providers as it may")
        check_signature(record)
        if entries is None:
            entries = self._providers[record.key] = {}
        if victim is not None:
            self._drop_provider(record.key, victim.id)
        if held is None:
            self._keys_of[record.id] += 1
            self._provider_count += 1
        entries[record.id] = record
        self.accepted["provider"] += 1
        return record

    def _live_entries(self, key: bytes, now: float) -> dict[bytes, ProviderRecord] | None:
        entries = self._providers.get(key)
        if entries is None:
            return None
        for pid in [p for p, r in entries.items() if r.expires <= now]:
            self._drop_provider(key, pid)
        return self._providers.get(key)

    def _drop_provider(self, key: bytes, provider_id: bytes) -> None:
        entries = self._providers[key]
        del entries[provider_id]
        self._provider_count -= 1
        self._keys_of[provider_id] -= 1
        if self._keys_of[provider_id] <= 0:
            del self._keys_of[provider_id]
        if not entries:
            del self._providers[key]

    def get_providers(
        self, key: bytes, now: float, limit: int | None = None
    ) -> list[ProviderRecord]:
        """Live providers of ``key``, latest expiry first, at most ``limit``."""
        entries = self._live_entries(key, now)
        if not entries:
            return []
        ranked = sorted(entries.values(), key=lambda r: r.expires, reverse=True)
        return ranked if limit is None else ranked[:limit]

    # -- housekeeping --

    def expire(self, now: float) -> int:
        """Drop every expired record; returns how many."""
        dead = [i for i, r in self._peers.items() if r.expires <= now]
        for i in dead:
            del self._peers[i]
        count = len(dead)
        for key in list(self._providers):
            before = self._provider_count
            self._live_entries(key, now)
            count += before - self._provider_count
        return count

    @property
    def peer_count(self) -> int:
        return len(self._peers)

    @property
    def provider_count(self) -> int:
        return self._provider_count

    def statistics(self) -> Statistics:
        return snapshot(
            peer_records=len(self._peers),
            provider_records=self._provider_count,
            provider_keys=len(self._providers),
            **{f"accepted_{k}": v for k, v in self.accepted.items()},
            **{f"refused_{r.value}": n for r, n in self.refused.items()},
        )
