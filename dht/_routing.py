"""The Kademlia routing table: 256 XOR-distance buckets of at most k contacts.

Bucket ``i`` holds the contacts whose id shares exactly ``i`` leading bits
with our own id. The table performs no I/O: it *returns* decisions and the
service performs them.

Rules this module keeps:

* Only bound contacts (``id == peer_id_of(pk)``) with at least one address
  enter the table; never our own id.
* Within a bucket contacts are kept least-recently-seen first. Seeing a known
  contact moves it to the end and clears its failures.
* A full bucket never drops a contact on sight of a newcomer: ``observe``
  returns ``PING`` naming the least-recently-seen contact and holds the
  newcomer as a replacement candidate (bounded list per bucket). While that
  ping is out, further newcomers are only held (``PENDING``).
* A missed reply (``ping_result(id, False)``, also fed for lookup timeouts)
  only counts a failure; a contact is evicted after ``failures_to_evict``
  (default 2) consecutive failures, and the most recently seen replacement
  that fits the range limits takes its place.
* At most ``max_per_range_bucket`` contacts of one address range per bucket
  and ``max_per_range_table`` in the whole table (None switches a limit off;
  loopback tests must, since every loopback address is one range).
* ``closest(target, n)`` is exact: buckets are disjoint intervals of XOR
  distance from any target, so walking them in distance order and sorting
  within each gives the same answer as sorting every contact.
"""

from __future__ import annotations

import random
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from ._config import ID_BITS, ID_LEN, K
from ._contact import Contact, address_ranges, as_int

_ALL_ONES = (1 << ID_BITS) - 1


class ObserveKind(StrEnum):
    ADDED = "added"  # the contact now has a slot
    UPDATED = "updated"  # already known: marked as just seen
    PING = "ping"  # bucket full: ping ``Observation.ping``; the newcomer waits as replacement
    PENDING = "pending"  # bucket full and a ping is already out: held as replacement
    REFUSED = "refused"  # not admitted; ``Observation.reason`` says why


class Refusal(StrEnum):
    SELF = "self"
    UNBOUND = "unbound"  # id is not the hash of the public key
    NO_ADDRESS = "no-address"
    ADDRESS_RANGE = "address-range"


@dataclass(frozen=True, slots=True)
class Observation:
    """What ``observe`` decided about a contact."""

    kind: ObserveKind
    contact: Contact
    ping: Contact | None = None  # for PING: the least-recently-seen contact to ping
    reason: Refusal | None = None  # for REFUSED


@dataclass(frozen=True, slots=True)
class PingOutcome:
    """What a ping result (or any missed reply) changed."""

    evicted: Contact | None = None
    promoted: Contact | None = None  # the replacement that took the evicted slot
    retry: Contact | None = None  # failed once, a replacement is waiting: ping it again


class _Bucket:
    __slots__ = ("contacts", "ping_started", "pinging", "replacements", "touched")

    def __init__(self) -> None:
        self.contacts: OrderedDict[bytes, Contact] = OrderedDict()  # least recently seen first
        self.replacements: OrderedDict[bytes, Contact] = OrderedDict()  # oldest first
        self.pinging: bytes | None = None
        self.ping_started = 0.0
        self.touched: float | None = None  # last lookup into this range or addition


class RoutingTable:
    """A Kademlia routing table keyed on ``own_id``."""

    def __init__(
        self,
        own_id: bytes,
        k: int = K,
        *,
        rng: random.Random | None = None,
        failures_to_evict: int = 2,
        replacements: int | None = None,
        max_per_range_bucket: int | None = 2,
        max_per_range_table: int | None = 10,
        ping_grace: float = 30.0,
    ) -> None:
        if len(own_id) != ID_LEN:
            raise ValueError("own_id must be 32 bytes")
        if k < 1 or failures_to_evict < 1:
            raise ValueError("k and failures_to_evict must be positive")
        self.own_id = own_id
        self.k = k
        self._own = as_int(own_id)
        self._rng = rng if rng is not None else random.Random(own_id)
        self.failures_to_evict = failures_to_evict
        self.max_replacements = k if replacements is None else replacements
        self.max_per_range_bucket = max_per_range_bucket
        self.max_per_range_table = max_per_range_table
        self.ping_grace = ping_grace  # a ping unanswered this long no longer blocks a new one
        self._buckets = [_Bucket() for _ in range(ID_BITS)]
        self._used: set[int] = set()  # indices of non-empty buckets
        self._ranges: dict[bytes, frozenset[str]] = {}  # ranges of contacts in the table
        self._range_count: Counter[str] = Counter()
        self._size = 0
        self.refused: Counter[Refusal] = Counter()

    # -- queries ----------------------------------------------------------------

    def bucket_index(self, node_id: bytes) -> int:
        """Leading bits ``node_id`` shares with our id (0..255); ValueError for our id."""
        diff = self._own ^ as_int(node_id)
        if not diff:
            raise ValueError("our own id has no bucket")
        return ID_BITS - diff.bit_length()

    def __len__(self) -> int:
        return self._size

    def __contains__(self, node_id: object) -> bool:
        return isinstance(node_id, bytes) and self.get(node_id) is not None

    def get(self, node_id: bytes) -> Contact | None:
        if len(node_id) != ID_LEN or node_id == self.own_id:
            return None
        return self._buckets[self.bucket_index(node_id)].contacts.get(node_id)

    def contacts(self) -> list[Contact]:
        """Every contact (copies), bucket by bucket."""
        return [c.copy() for i in sorted(self._used) for c in self._buckets[i].contacts.values()]

    def closest(
        self, target: bytes, n: int | None = None, *, healthy: bool = False
    ) -> list[Contact]:
        """The ``n`` (default k) contacts closest to ``target``, nearest first (copies).

        With ``healthy`` contacts that missed their last reply are skipped.
        """
        n = self.k if n is None else n
        t = as_int(target)
        d = self._own ^ t
        # Bucket i lies at distances whose bits above i equal d's and whose bit i is
        # the complement of d's: buckets where d has a 1 come first, nearest-first by
        # increasing i; then buckets where d has a 0, by decreasing i.
        order = sorted(
            self._used,
            key=lambda i: (0, i) if (d >> (ID_BITS - 1 - i)) & 1 else (1, -i),
        )
        out: list[Contact] = []
        for i in order:
            members: Iterable[Contact] = self._buckets[i].contacts.values()
            if healthy:
                members = [c for c in members if not c.failures]
            ranked = sorted(members, key=lambda c: c.num ^ t)
            out.extend(c.copy() for c in ranked[: n - len(out)])
            if len(out) >= n:
                break
        return out

    def stale_buckets(self, now: float, refresh_interval: float) -> list[bytes]:
        """Random ids to look up, one per bucket not refreshed within the interval.

        Considers buckets up to one past the deepest non-empty one: deeper buckets
        are empty in any network that is not astronomically large.
        """
        if not self._used:
            return []
        deepest = min(max(self._used) + 1, ID_BITS - 1)
        out = []
        for i in range(deepest + 1):
            touched = self._buckets[i].touched
            if touched is None or now - touched >= refresh_interval:
                out.append(self.random_id_in_bucket(i))
        return out

    def random_id_in_bucket(self, index: int) -> bytes:
        """A random id that shares exactly ``index`` leading bits with ours."""
        flip = 1 << (ID_BITS - 1 - index)
        high = _ALL_ONES ^ ((flip << 1) - 1)
        value = (
            (self._own & high)
            | ((self._own & flip) ^ flip)
            | (self._rng.getrandbits(ID_BITS) & (flip - 1))
        )
        return value.to_bytes(ID_LEN, "big")

    def mark_refreshed(self, target: bytes, now: float) -> None:
        """A lookup of ``target`` finished: its bucket needs no refresh for a while."""
        if target != self.own_id and len(target) == ID_LEN:
            self._buckets[self.bucket_index(target)].touched = now

    def buckets_summary(self) -> list[dict[str, object]]:
        """One JSON-friendly entry per non-empty bucket, for a status endpoint."""
        out: list[dict[str, object]] = []
        for i in sorted(self._used):
            b = self._buckets[i]
            out.append(
                {
                    "index": i,
                    "size": len(b.contacts),
                    "replacements": len(b.replacements),
                    "pinging": b.pinging.hex() if b.pinging else None,
                    "failing": sum(1 for c in b.contacts.values() if c.failures),
                    "oldest_seen": next(iter(b.contacts.values())).last_seen,
                    "touched": b.touched,
                }
            )
        return out

    # -- decisions ----------------------------------------------------------------

    def observe(self, contact: Contact, now: float) -> Observation:
        """We heard from ``contact`` (it answered us, or sent us a request as a server)."""
        if contact.id == self.own_id:
            return self._refuse(contact, Refusal.SELF)
        if len(contact.id) != ID_LEN:
            return self._refuse(contact, Refusal.UNBOUND)
        index = self.bucket_index(contact.id)
        bucket = self._buckets[index]
        known = bucket.contacts.get(contact.id)
        # a known id with the same key was checked when it was added
        if (known is None or known.public_key != contact.public_key) and not contact.is_bound():
            return self._refuse(contact, Refusal.UNBOUND)
        if not contact.addrs:
            return self._refuse(contact, Refusal.NO_ADDRESS)
        if known is not None:
            if (known.addrs, known.caps) != (contact.addrs, contact.caps):
                ranges = address_ranges(contact.addrs)
                if self._fits(bucket, ranges, contact.id):
                    self._set_ranges(contact.id, ranges)
                    known.addrs, known.caps = contact.addrs, contact.caps
            known.last_seen = now
            known.failures = 0
            bucket.contacts.move_to_end(contact.id)
            if bucket.pinging == contact.id:
                bucket.pinging = None
            return Observation(ObserveKind.UPDATED, known.copy())
        fresh = contact.copy()
        fresh.last_seen = now
        fresh.failures = 0
        bucket.replacements.pop(contact.id, None)
        full = len(bucket.contacts) >= self.k
        pinging = bucket.pinging is not None and now - bucket.ping_started < self.ping_grace
        if full and pinging:
            # held only: the range limits are applied when a replacement is promoted
            self._hold(bucket, fresh)
            return Observation(ObserveKind.PENDING, fresh.copy())
        ranges = address_ranges(contact.addrs)
        if not self._fits(bucket, ranges, None):
            return self._refuse(contact, Refusal.ADDRESS_RANGE)
        if not full:
            self._insert(index, fresh, ranges, now)
            return Observation(ObserveKind.ADDED, fresh.copy())
        self._hold(bucket, fresh)
        oldest = next(iter(bucket.contacts.values()))
        bucket.pinging = oldest.id
        bucket.ping_started = now
        return Observation(ObserveKind.PING, fresh.copy(), ping=oldest.copy())

    def ping_result(self, contact_id: bytes, ok: bool, now: float) -> PingOutcome:
        """A ping (or any request) to ``contact_id`` was answered, or not."""
        if len(contact_id) != ID_LEN or contact_id == self.own_id:
            return PingOutcome()
        index = self.bucket_index(contact_id)
        bucket = self._buckets[index]
        if bucket.pinging == contact_id:
            bucket.pinging = None
        known = bucket.contacts.get(contact_id)
        if known is None:
            if not ok:
                bucket.replacements.pop(contact_id, None)
            return PingOutcome()
        if ok:
            known.last_seen = now
            known.failures = 0
            bucket.contacts.move_to_end(contact_id)
            return PingOutcome()
        known.failures += 1
        if known.failures < self.failures_to_evict:
            if bucket.replacements and bucket.pinging is None:
                bucket.pinging = contact_id
                bucket.ping_started = now
                return PingOutcome(retry=known.copy())
            return PingOutcome()
        evicted = self._remove(index, contact_id)
        return PingOutcome(evicted=evicted, promoted=self._promote(index, now))

    def remove(self, contact_id: bytes, now: float = 0.0) -> Contact | None:
        """Drop a contact (e.g. it proved to be lying); a replacement may take its slot."""
        if len(contact_id) != ID_LEN or contact_id == self.own_id:
            return None
        index = self.bucket_index(contact_id)
        bucket = self._buckets[index]
        bucket.replacements.pop(contact_id, None)
        if contact_id not in bucket.contacts:
            return None
        if bucket.pinging == contact_id:
            bucket.pinging = None
        removed = self._remove(index, contact_id)
        self._promote(index, now)
        return removed

    # -- internals ------------------------------------------------------------------

    def _refuse(self, contact: Contact, reason: Refusal) -> Observation:
        self.refused[reason] += 1
        return Observation(ObserveKind.REFUSED, contact, reason=reason)

    def _hold(self, bucket: _Bucket, contact: Contact) -> None:
        bucket.replacements[contact.id] = contact
        while len(bucket.replacements) > self.max_replacements:
            bucket.replacements.popitem(last=False)

    def _fits(self, bucket: _Bucket, ranges: frozenset[str], ignore: bytes | None) -> bool:
        """True if a contact in ``ranges`` stays within the range limits."""
        if self.max_per_range_table is not None:
            own = self._ranges.get(ignore, frozenset()) if ignore else frozenset()
            for r in ranges:
                if self._range_count[r] - (r in own) >= self.max_per_range_table:
                    return False
        limit = self.max_per_range_bucket
        if limit is not None:
            for r in ranges:
                n = sum(1 for cid in bucket.contacts if cid != ignore and r in self._ranges[cid])
                if n >= limit:
                    return False
        return True

    def _set_ranges(self, contact_id: bytes, ranges: frozenset[str]) -> None:
        old = self._ranges.get(contact_id)
        if old is not None:
            self._range_count.subtract(old)
        self._ranges[contact_id] = ranges
        self._range_count.update(ranges)

    def _insert(self, index: int, contact: Contact, ranges: frozenset[str], now: float) -> None:
        bucket = self._buckets[index]
        bucket.contacts[contact.id] = contact
        bucket.touched = now
        self._set_ranges(contact.id, ranges)
        self._used.add(index)
        self._size += 1

    def _remove(self, index: int, contact_id: bytes) -> Contact:
        bucket = self._buckets[index]
        contact = bucket.contacts.pop(contact_id)
        old = self._ranges.pop(contact_id)
        self._range_count.subtract(old)
        for r in old:
            if self._range_count[r] <= 0:
                del self._range_count[r]
        if not bucket.contacts:
            self._used.discard(index)
        self._size -= 1
        return contact

    def _promote(self, index: int, now: float) -> Contact | None:
        bucket = self._buckets[index]
        while bucket.replacements and len(bucket.contacts) < self.k:
            _, candidate = bucket.replacements.popitem(last=True)
            ranges = address_ranges(candidate.addrs)
            if self._fits(bucket, ranges, None):
                self._insert(index, candidate, ranges, now)
                return candidate.copy()
        return None
