"""Iterative Kademlia lookups as sans-IO state machines.

A :class:`Lookup` walks towards ``target``: the service asks it which
contacts to query (``next_requests(now)``), sends them the RPC, and feeds
back what happened (``on_response`` / ``on_failure``). Time is an input;
``next_deadline()`` says when to call ``next_requests`` again if nothing
arrives, like aioquic's ``get_timer``.

Rules this module keeps:

* At most ``alpha`` requests are in flight; candidates are queried nearest
  first, and only while fewer than k closer ones have answered.
* A request unanswered after ``rpc_timeout`` counts as failed (it no longer
  holds a slot nor blocks termination); its id is reported by
  ``take_timed_out()`` so the routing table can record the miss. A late reply
  from a peer we asked is still used.
* Stopping rule: done when the k closest non-failed candidates seen have all
  answered, or when nothing is left to ask (or ``max_queries`` were sent) and
  nothing is in flight.
* Replies from peers we did not ask (or asked and already heard from) are
  ignored and counted. A reply holding a contact whose id is not the hash of
  its public key, or a record that does not verify (bad signature, id not
  matching its key, record for another id or topic), is a lie: the whole reply
  is ignored, the peer counts as failed and is listed in ``liars``.
* Contacts from replies are never trusted beyond being worth a query; only
  peers that answer count towards the result.
* Bounded: at most ``max_queries`` requests, so at most that many replies
  of at most ``MAX_CONTACTS_PER_REPLY`` contacts each.

:class:`PeerLookup` (FIND_PEER) and :class:`ProviderLookup` (GET_PROVIDERS)
also collect validated records; identical record bytes are verified once.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from ._config import MAX_CONTACTS_PER_REPLY, DhtConfig
from ._contact import Contact, as_int
from ._records import (
    PeerRecord,
    ProviderRecord,
    Reason,
    RecordError,
    verify_peer_record,
    verify_provider_record,
)

# reasons that only mean the storer's clock differs from ours, not that it lies
_CLOCK_REASONS = frozenset({Reason.EXPIRED, Reason.TOO_FAR_FUTURE})


class _State(Enum):
    NEW = 0
    WAITING = 1
    SUCCEEDED = 2
    FAILED = 3
    TIMED_OUT = 4  # failed for the stopping rule, but a late reply is welcome


class _Candidate:
    __slots__ = ("contact", "depth", "dist", "sent_at", "state")

    def __init__(self, contact: Contact, dist: int, depth: int) -> None:
        self.contact = contact
        self.dist = dist
        self.depth = depth
        self.state = _State.NEW
        self.sent_at = 0.0


@dataclass
class LookupStats:
    queries: int = 0  # requests sent
    responses: int = 0  # replies used
    timeouts: int = 0
    failures: int = 0  # on_failure calls for peers we asked
    liars: int = 0  # replies ignored because they lied
    unsolicited: int = 0  # replies from peers we did not ask (or twice)
    late: int = 0  # replies after the lookup finished
    bad_records: int = 0  # records that did not verify (their senders are liars)
    clock_records: int = 0  # records refused only for their expiry


def _dist_of(c: _Candidate) -> int:
    return c.dist


class Lookup:
    """FIND_NODE: find the k nodes closest to ``target`` that answer."""

    def __init__(
        self,
        target: bytes,
        k: int,
        alpha: int,
        seeds: Iterable[Contact],
        now: float,
        rpc_timeout: float,
        *,
        own_id: bytes | None = None,
        max_queries: int | None = None,
    ) -> None:
        self.target = target
        self.k = k
        self.alpha = alpha
        self.rpc_timeout = rpc_timeout
        self.own_id = own_id
        self.max_queries = 10 * k if max_queries is None else max_queries
        self.started_at = now
        self.finished_at: float | None = None
        self.stats = LookupStats()
        self.liars: list[bytes] = []
        self._t = as_int(target)
        self._cands: list[_Candidate] = []
        self._by_id: dict[bytes, _Candidate] = {}
        self._waiting: dict[bytes, _Candidate] = {}  # requests in flight
        self._timed_out: list[bytes] = []
        self._done = False
        for contact in seeds:
            if contact.is_bound():
                self._add(contact, 1)
        self._update_done(now)

    # -- what the service reads --

    @property
    def done(self) -> bool:
        return self._done

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    def result(self) -> list[Contact]:
        """The (up to) k closest contacts that answered, nearest first."""
        return [c.contact for c in self._cands if c.state is _State.SUCCEEDED][: self.k]

    @property
    def hops(self) -> int:
        """Longest chain of replies that led to a contact in the result (seeds are 1)."""
        depths = [c.depth for c in self._cands if c.state is _State.SUCCEEDED][: self.k]
        return max(depths, default=0)

    @property
    def duration(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.started_at

    def next_deadline(self) -> float | None:
        """When the earliest request in flight times out (None: nothing in flight)."""
        if not self._waiting:
            return None
        return min(c.sent_at for c in self._waiting.values()) + self.rpc_timeout

    def take_timed_out(self) -> list[bytes]:
        """Ids whose requests timed out since the last call."""
        out, self._timed_out = self._timed_out, []
        return out

    # -- driving --

    def next_requests(self, now: float) -> list[Contact]:
        """Contacts to query now; marks requests past their deadline as failed."""
        self._expire(now)
        if self._done:
            return []
        out: list[Contact] = []
        succeeded = 0
        for cand in self._cands:
            state = cand.state
            if state is _State.SUCCEEDED:
                succeeded += 1
                if succeeded >= self.k:
                    break
            elif state is _State.NEW:
                if len(self._waiting) >= self.alpha or self.stats.queries >= self.max_queries:
                    break
                cand.state = _State.WAITING
                cand.sent_at = now
                self._waiting[cand.contact.id] = cand
                self.stats.queries += 1
                out.append(cand.contact)
        self._update_done(now)
        return out

    def on_response(
        self, contact_id: bytes, contacts: Sequence[Contact], now: float, value: object = None
    ) -> bool:
        """``contact_id`` answered with ``contacts`` (and a value); False if ignored."""
        if self._done:
            self.stats.late += 1
            return False
        cand = self._by_id.get(contact_id)
        if cand is None or cand.state not in (_State.WAITING, _State.TIMED_OUT):
            self.stats.unsolicited += 1
            return False
        if (
            len(contacts) > MAX_CONTACTS_PER_REPLY
            or not all(self._bound(c) for c in contacts)
            or not self._accept_value(value, now)
        ):
            self.stats.liars += 1
            self.liars.append(contact_id)
            self._settle(cand, _State.FAILED)
            self._update_done(now)
            return False
        self._settle(cand, _State.SUCCEEDED)
        self.stats.responses += 1
        for contact in contacts:
            self._add(contact, cand.depth + 1)
        self._update_done(now)
        return True

    def on_failure(self, contact_id: bytes, now: float | None = None) -> None:
        """The request to ``contact_id`` failed (error reply, link closed, ...)."""
        cand = self._by_id.get(contact_id)
        if cand is None or cand.state not in (_State.WAITING, _State.TIMED_OUT):
            return
        self.stats.failures += 1
        self._settle(cand, _State.FAILED)
        self._update_done(cand.sent_at if now is None else now)

    # -- internals --

    def _accept_value(self, value: object, now: float) -> bool:
        """Subclasses validate the value a reply carries; False means it lied."""
        return True

    def _bound(self, contact: Contact) -> bool:
        known = self._by_id.get(contact.id)
        if known is not None and known.contact.public_key == contact.public_key:
            return True  # checked when it was added
        return contact.is_bound()

    def _add(self, contact: Contact, depth: int) -> None:
        """Add a candidate whose binding was checked."""
        if contact.id == self.own_id:
            return
        known = self._by_id.get(contact.id)
        if known is not None:
            if known.state is _State.NEW and depth < known.depth:
                known.depth = depth
            return
        cand = _Candidate(contact, contact.num ^ self._t, depth)
        self._by_id[contact.id] = cand
        bisect.insort(self._cands, cand, key=_dist_of)

    def _settle(self, cand: _Candidate, state: _State) -> None:
        if cand.state is _State.WAITING:
            del self._waiting[cand.contact.id]
        cand.state = state

    def _expire(self, now: float) -> None:
        if not self._waiting:
            return
        deadline = now - self.rpc_timeout
        for cand in list(self._waiting.values()):
            if cand.sent_at <= deadline:
                self._settle(cand, _State.TIMED_OUT)
                self.stats.timeouts += 1
                self._timed_out.append(cand.contact.id)
        self._update_done(now)

    def _update_done(self, now: float) -> None:
        if self._done:
            return
        succeeded = 0
        can_query = self.stats.queries < self.max_queries
        for cand in self._cands:
            state = cand.state
            if state is _State.SUCCEEDED:
                succeeded += 1
                if succeeded >= self.k:
                    break
            elif state is _State.WAITING or (state is _State.NEW and can_query):
                return
        self._finish(now)

    def _finish(self, now: float) -> None:
        self._done = True
        self.finished_at = now


class PeerLookup(Lookup):
    """FIND_PEER: find ``target``'s peer record on the way to its k closest nodes.

    Stops early once ``quorum`` valid records were received (0: run to the
    stopping rule). ``record`` is the valid record with the highest sequence.
    """

    def __init__(
        self,
        target: bytes,
        k: int,
        alpha: int,
        seeds: Iterable[Contact],
        now: float,
        rpc_timeout: float,
        *,
        own_id: bytes | None = None,
        max_queries: int | None = None,
        quorum: int = 1,
        config: DhtConfig | None = None,
    ) -> None:
        self.record: PeerRecord | None = None
        self.records_seen = 0
        self.quorum = quorum
        self._cfg = config if config is not None else DhtConfig()
        self._verified: set[bytes] = set()
        super().__init__(
            target, k, alpha, seeds, now, rpc_timeout, own_id=own_id, max_queries=max_queries
        )

    def _accept_value(self, value: object, now: float) -> bool:
        if value is None:
            return True
        if not isinstance(value, bytes):
            return False
        if value not in self._verified:
            try:
                record = verify_peer_record(
                    value,
                    now,
                    node_id=self.target,
                    max_ttl=self._cfg.max_record_ttl,
                    skew=self._cfg.clock_skew,
                )
            except RecordError as exc:
                if exc.reason in _CLOCK_REASONS:
                    self.stats.clock_records += 1
                    return True
                self.stats.bad_records += 1
                return False
            if len(self._verified) < self.max_queries:
                self._verified.add(value)
            if self.record is None or record.seq > self.record.seq:
                self.record = record
        self.records_seen += 1
        return True

    def _update_done(self, now: float) -> None:
        if not self._done and self.quorum and self.records_seen >= self.quorum:
            self._finish(now)
            return
        super()._update_done(now)


class ProviderLookup(Lookup):
    """GET_PROVIDERS: collect validated provider records of ``target`` (a topic key).

    Stops early once ``max_providers`` distinct providers are known (None:
    run to the stopping rule).
    """

    def __init__(
        self,
        target: bytes,
        k: int,
        alpha: int,
        seeds: Iterable[Contact],
        now: float,
        rpc_timeout: float,
        *,
        own_id: bytes | None = None,
        max_queries: int | None = None,
        max_providers: int | None = None,
        config: DhtConfig | None = None,
    ) -> None:
        self.found: dict[bytes, ProviderRecord] = {}
        self.max_providers = max_providers
        self._cfg = config if config is not None else DhtConfig()
        self._verified: dict[bytes, ProviderRecord] = {}
        super().__init__(
            target, k, alpha, seeds, now, rpc_timeout, own_id=own_id, max_queries=max_queries
        )

    def providers(self) -> list[ProviderRecord]:
        """Distinct providers found, latest expiry first."""
        return sorted(self.found.values(), key=lambda r: r.expires, reverse=True)

    def _accept_value(self, value: object, now: float) -> bool:
        if value is None:
            return True
        if not isinstance(value, list | tuple):
            return False
        good: list[ProviderRecord] = []
        for wire in value:
            if not isinstance(wire, bytes):
                return False
            record = self._verified.get(wire)
            if record is None:
                try:
                    record = verify_provider_record(
                        wire,
                        now,
                        key=self.target,
                        max_ttl=self._cfg.max_record_ttl,
                        skew=self._cfg.clock_skew,
                    )
                except RecordError as exc:
                    if exc.reason in _CLOCK_REASONS:
                        self.stats.clock_records += 1
                        continue
                    self.stats.bad_records += 1
                    return False
                if len(self._verified) < 64 * self.k:
                    self._verified[wire] = record
            good.append(record)
        for record in good:
            held = self.found.get(record.id)
            if held is None or record.seq > held.seq:
                self.found[record.id] = record
        return True

    def _update_done(self, now: float) -> None:
        if (
            not self._done
            and self.max_providers is not None
            and len(self.found) >= self.max_providers
        ):
            self._finish(now)
            return
        super()._update_done(now)
