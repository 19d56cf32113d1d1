"""One DHT node, sans-IO: answers requests, creates lookups, keeps its records.

``DhtNode`` ties the routing table, the record store and the lookups together
and is the only object the Trio service talks to. It never performs I/O: it
answers a decoded request with a response object, builds the requests a
lookup needs, and queues the pings the routing table asks for
(``take_pings``). ``now`` is wall-clock seconds (Unix time; the shell adds a
fixed offset to ``trio.current_time()``) because record expiries are
compared across machines.

Rules this module keeps:

* A request is first charged to its sender's token bucket
  (``requests_per_second``, ``request_burst``; at most ``max_rate_tracked``
  senders remembered); over budget it is answered ``rate`` and counted.
* Only a sender that says it serves the DHT (``srv: true``) is offered to the
  routing table; clients never enter anyone's table.
* Replies hold at most k contacts (never the requester, never contacts that
  missed their last reply) and at most ``providers_per_reply`` records.
* Records are accepted only from their owner and only if they validate
  (``RecordStore``); refusals are answered with the reason and counted.
* A node in client mode (``Mode.CLIENT``) serves nothing (every request is
  answered ``not-serving``), sends ``srv: false``, and advertises relays in
  its peer record instead of listen addresses.
* A contact that answers a lookup is offered to the table; a timeout counts
  a miss; a liar is removed.
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from peer.wire._identity import Identity
from peer.wire._stats import Statistics, snapshot

from ._card import CardRecord, sign_card_record
from ._cards import CardLimits, CardLookup, CardNodeLookup, CardPage, CardStore
from ._config import DhtConfig
from ._contact import Contact
from ._lookup import Lookup, PeerLookup, ProviderLookup
from ._owncard import OwnCard
from ._records import (
    PeerRecord,
    ProviderRecord,
    Reason,
    RecordError,
    RecordStore,
    Relay,
    sign_peer_record,
    sign_provider_record,
    topic_key,
)
from ._routing import Observation, ObserveKind, PingOutcome, RoutingTable
from ._rpc import (
    AddProvider,
    Cards,
    ErrorReply,
    FindNode,
    FindPeer,
    GetCards,
    GetProviders,
    Nodes,
    Op,
    PeerFound,
    Ping,
    Pong,
    Providers,
    PutCard,
    PutPeer,
    Request,
    Response,
    Stored,
)


class Mode(StrEnum):
    SERVER = "server"  # reachable peers and seeds: serve the DHT
    CLIENT = "client"  # cannot accept connections: use the DHT, reachable via relays


@dataclass(frozen=True, slots=True)
class Publication:
    """A record to (re)publish: look up ``key``, then send ``op`` to the k closest."""

    op: Op  # PUT_PEER, ADD_PROVIDER or PUT_CARD
    key: bytes  # our id for a peer record, the topic key (provider), skill or tag key (card)
    record: bytes


class RateLimiter:
    """Token buckets per peer id, bounded: the least recently active peer is forgotten."""

    def __init__(self, rate: float, burst: float, max_tracked: int) -> None:
        self.rate = rate
        self.burst = burst
        self.max_tracked = max_tracked
        self._buckets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()

    def allow(self, peer_id: bytes, now: float, cost: float = 1.0) -> bool:
        tokens, stamp = self._buckets.pop(peer_id, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - stamp) * self.rate)
        ok = tokens >= cost
        if ok:
            tokens -= cost
        self._buckets[peer_id] = (tokens, now)
        while len(self._buckets) > self.max_tracked:
            self._buckets.popitem(last=False)
        return ok

    def __len__(self) -> int:
        return len(self._buckets)


UPKEEP_INTERVAL = 5.0  # seconds between bucket-refresh and record-expiry rounds


@dataclass(frozen=True, slots=True)
class Publish:
    """Store ``pub`` at the k closest nodes to its key."""

    pub: Publication


@dataclass(frozen=True, slots=True)
class PingContact:
    """Ping ``contact`` and report the outcome with ``ping_result``."""

    contact: Contact


@dataclass(frozen=True, slots=True)
class Refresh:
    """Look up ``target`` to refresh the bucket it falls in."""

    target: bytes


Upkeep = Publish | PingContact | Refresh


class DhtNode:
    """The sans-IO DHT of one peer."""

    def __init__(
        self,
        identity: Identity,
        *,
        rng: random.Random,
        now: float,
        config: DhtConfig | None = None,
        mode: Mode = Mode.SERVER,
        addrs: Iterable[str] = (),
        caps: Iterable[str] = (),
        relays: Iterable[Relay] = (),
        card_limits: CardLimits | None = None,
    ) -> None:
        self.identity = identity
        self.id = identity.peer_id
        self.config = cfg = config if config is not None else DhtConfig()
        self.mode = mode
        self.addrs = tuple(addrs) if mode is Mode.SERVER else ()
        self.caps = tuple(caps)
        self.relays = tuple(relays)
        self.rng = rng
        self.table = RoutingTable(
            self.id,
            cfg.k,
            rng=rng,
            failures_to_evict=cfg.failures_to_evict,
            replacements=cfg.replacements_per_bucket,
            max_per_range_bucket=cfg.max_per_range_bucket,
            max_per_range_table=cfg.max_per_range_table,
        )
        self.store = RecordStore(cfg, self.id)
        self.card_limits = lim = card_limits if card_limits is not None else CardLimits()
        flood = RateLimiter(lim.updates_per_second, lim.update_burst, cfg.max_rate_tracked)
        self.cards = CardStore(cfg, lim, flood)
        self.own_card = OwnCard(self._sign_card, lim.card_ttl, cfg.republish_interval)
        self.limiter = RateLimiter(cfg.requests_per_second, cfg.request_burst, cfg.max_rate_tracked)
        self.counters: Counter[str] = Counter()
        self._pings: list[Contact] = []
        self._rid = rng.getrandbits(32)
        self._seq = 0
        self._own_record: PeerRecord | None = None
        self._peer_due = now
        self._providing: dict[str, float] = {}  # topic -> next (re)publication
        self._upkeep_due = now  # next bucket refresh and expiry round

    # -- who we are --

    @property
    def serving(self) -> bool:
        return self.mode is Mode.SERVER

    def contact(self) -> Contact:
        return Contact(self.id, self.identity.public_key, self.addrs, self.caps)

    def set_relays(self, relays: Iterable[Relay], now: float) -> None:
        """Change the relays we advertise; our peer record is republished at once."""
        self.relays = tuple(relays)
        self._own_record = None
        self._peer_due = now

    def next_rid(self) -> int:
        self._rid = (self._rid + 1) % 2**64
        return self._rid

    # -- requests we answer --

    def handle_request(self, sender: Contact, req: Request, now: float) -> Response:
        """Answer a request ``sender`` (known from the authenticated link) sent us."""
        self.counters["requests"] += 1
        self.counters[f"requests_{req.op.value}"] += 1
        if not self.serving:
            return self._refuse(req, Reason.NOT_SERVING, "this node is a DHT client")
        if not self.limiter.allow(sender.id, now):
            return self._refuse(req, Reason.RATE, "too many DHT requests")
        if req.serving:
            self.add_contact(sender, now)
        k = self.config.k
        if isinstance(req, Ping):
            return Pong(req.rid)
        if isinstance(req, FindNode):
            return Nodes(req.rid, self._closest_for(req.target, sender.id, k))
        if isinstance(req, FindPeer):
            return PeerFound(
                req.rid,
                self._closest_for(req.target, sender.id, k),
                self._record_of(req.target, now),
            )
        if isinstance(req, GetProviders):
            held = self.store.get_providers(req.key, now, self.config.providers_per_reply)
            nodes = self._closest_for(req.key, sender.id, k)
            return Providers(req.rid, tuple(r.wire for r in held), nodes)
        if isinstance(req, GetCards):
            cards, more = self.cards.get(req.key, now, after=req.after)
            nodes = self._closest_for(req.key, sender.id, k)
            return Cards(req.rid, tuple(r.wire for r in cards), nodes, more)
        try:
            if isinstance(req, PutPeer):
                self.store.put_peer(req.record, now, sender.id)
            elif isinstance(req, PutCard):
                self.cards.put(req.key, req.record, now, sender.id)
            else:
                self.store.add_provider(req.record, now, sender.id)
        except RecordError as exc:
            return self._refuse(req, exc.reason, exc.message)
        self.counters[f"stored_{req.op.value}"] += 1
        return Stored(req.rid, req.op)

    def _refuse(self, req: Request, reason: Reason, message: str) -> ErrorReply:
        self.counters[f"refused_{reason.value}"] += 1
        return ErrorReply(req.rid, reason.value, message)

    def _closest_for(self, target: bytes, requester: bytes, k: int) -> tuple[Contact, ...]:
        found = self.table.closest(target, k + 1, healthy=True)
        return tuple(c for c in found if c.id != requester)[:k]

    def _record_of(self, node_id: bytes, now: float) -> bytes | None:
        if node_id == self.id:
            return self.own_record(now).wire
        held = self.store.get_peer(node_id, now)
        return None if held is None else held.wire

    # -- the routing table's decisions --

    def add_contact(self, contact: Contact, now: float) -> Observation:
        """Offer a contact we heard from (a seed after its handshake, a server that asked us)."""
        obs = self.table.observe(contact, now)
        if obs.kind is ObserveKind.PING and obs.ping is not None:
            self._pings.append(obs.ping)
        return obs

    def take_pings(self) -> list[Contact]:
        """Contacts the table wants pinged; report with ``ping_result``."""
        out, self._pings = self._pings, []
        return out

    def ping_result(self, contact_id: bytes, ok: bool, now: float) -> PingOutcome:
        outcome = self.table.ping_result(contact_id, ok, now)
        if outcome.retry is not None:
            self._pings.append(outcome.retry)
        if outcome.evicted is not None:
            self.counters["evicted"] += 1
        return outcome

    # -- lookups we run --

    def _lookup_args(self, target: bytes, now: float) -> dict[str, Any]:
        """What every lookup starts from: our table's closest contacts and the config."""
        cfg = self.config
        return {
            "target": target,
            "k": cfg.k,
            "alpha": cfg.alpha,
            "seeds": self.table.closest(target, cfg.k),
            "now": now,
            "rpc_timeout": cfg.rpc_timeout,
            "own_id": self.id,
            "max_queries": cfg.max_lookup_queries,
        }

    def lookup_node(self, target: bytes, now: float) -> Lookup:
        return Lookup(**self._lookup_args(target, now))

    def lookup_peer(self, target: bytes, now: float, *, quorum: int = 1) -> PeerLookup:
        return PeerLookup(**self._lookup_args(target, now), quorum=quorum, config=self.config)

    def lookup_providers(
        self, key: bytes, now: float, *, max_providers: int | None = None
    ) -> ProviderLookup:
        return ProviderLookup(
            **self._lookup_args(key, now), max_providers=max_providers, config=self.config
        )

    def lookup_card_nodes(self, key: bytes, now: float) -> CardNodeLookup:
        """The k card-serving nodes closest to a key: where our card goes."""
        return CardNodeLookup(**self._lookup_args(key, now))

    def lookup_cards(self, key: bytes, now: float) -> CardLookup:
        """The k card-serving nodes closest to a skill or tag key, and their cards."""
        lookup = CardLookup(**self._lookup_args(key, now), config=self.config)
        held, _ = self.cards.get(key, now, limit=self.card_limits.max_cards_per_key, budget=2**31)
        own = self.own_card_record
        if own is not None and key in own.keys and own.expires > now:
            held.append(own)
        for record in held:  # what we hold ourselves (verified when stored, or ours)
            lookup.found[record.id] = record
        return lookup

    def request_for(self, lookup: Lookup) -> Request:
        """The request to send each contact ``lookup.next_requests`` names (fresh rid)."""
        rid = self.next_rid()
        if isinstance(lookup, CardLookup):
            return GetCards(rid, lookup.target, None, self.serving)
        if isinstance(lookup, PeerLookup):
            return FindPeer(rid, lookup.target, self.serving)
        if isinstance(lookup, ProviderLookup):
            return GetProviders(rid, lookup.target, self.serving)
        return FindNode(rid, lookup.target, self.serving)

    def ping_request(self) -> Ping:
        return Ping(self.next_rid(), self.serving)

    def step(self, lookup: Lookup, now: float) -> list[Contact]:
        """``lookup.next_requests(now)``, feeding its timeouts to the routing table."""
        out = lookup.next_requests(now)
        for contact_id in lookup.take_timed_out():
            self.ping_result(contact_id, False, now)
        if lookup.done:
            self._finished(lookup, now)
        return out

    def on_reply(self, lookup: Lookup, contact: Contact, resp: Response, now: float) -> bool:
        """Feed a lookup the reply ``contact`` sent; False if the reply was not used."""
        if isinstance(resp, ErrorReply):
            self.counters[f"error_reply_{resp.code}"] += 1
            lookup.on_failure(contact.id, now)
            self._finished(lookup, now)
            return False
        value: object = None
        nodes: tuple[Contact, ...] = ()
        if isinstance(lookup, PeerLookup) and isinstance(resp, PeerFound):
            nodes, value = resp.nodes, resp.record
        elif isinstance(lookup, ProviderLookup) and isinstance(resp, Providers):
            nodes, value = resp.nodes, list(resp.providers)
        elif isinstance(lookup, CardLookup) and isinstance(resp, Cards):
            nodes, value = resp.nodes, CardPage(resp.cards, resp.more)
        elif type(lookup) in (Lookup, CardNodeLookup) and isinstance(resp, Nodes):
            nodes = resp.nodes
        else:
            self.counters["wrong_reply"] += 1
            lookup.on_failure(contact.id, now)
            self._finished(lookup, now)
            return False
        used = lookup.on_response(contact.id, nodes, now, value)
        if used:
            self.add_contact(contact, now)
            if isinstance(value, CardPage) and isinstance(lookup, CardLookup):
                lookup.note_more(contact.id, value)
        elif contact.id in lookup.liars:
            self.counters["liars"] += 1
            self.table.remove(contact.id, now)
        self._finished(lookup, now)
        return used

    def on_no_reply(self, lookup: Lookup, contact_id: bytes, now: float) -> None:
        """The request to ``contact_id`` failed without a reply (link lost, ...)."""
        lookup.on_failure(contact_id, now)
        self.ping_result(contact_id, False, now)
        self._finished(lookup, now)

    def _finished(self, lookup: Lookup, now: float) -> None:
        if lookup.done and type(lookup) is Lookup:
            self.table.mark_refreshed(lookup.target, now)

    def refresh_targets(self, now: float) -> list[bytes]:
        """Random ids to look up so that no bucket goes unrefreshed for long."""
        return self.table.stale_buckets(now, self.config.refresh_interval)

    # -- our records --

    def _next_seq(self, now: float) -> int:
        self._seq = max(self._seq + 1, int(now * 1000))
        return self._seq

    def own_record(self, now: float) -> PeerRecord:
        """Our current signed peer record, re-signed when it is half-way to expiry."""
        rec = self._own_record
        if rec is None or rec.expires - now < self.config.peer_record_ttl / 2:
            rec = self._own_record = sign_peer_record(
                self.identity,
                addrs=self.addrs,
                relays=self.relays,
                caps=self.caps,
                seq=self._next_seq(now),
                expires=int(now + self.config.peer_record_ttl),
            )
        return rec

    def provider_record(self, topic: str, now: float) -> ProviderRecord:
        return sign_provider_record(
            self.identity,
            key=topic_key(topic),
            addrs=self.addrs,
            relays=self.relays,
            seq=self._next_seq(now),
            expires=int(now + self.config.provider_ttl),
        )

    def start_providing(self, topic: str, now: float) -> None:
        """Announce that we carry ``topic``; ``due_publications`` yields it at once."""
        if (
            topic not in self._providing
            and len(self._providing) >= self.config.max_keys_per_provider
        ):
            raise ValueError("providing too many topics")
        self._providing[topic] = now

    def stop_providing(self, topic: str) -> None:
        """Stop republishing; the records held elsewhere expire after their TTL."""
        self._providing.pop(topic, None)

    @property
    def providing(self) -> tuple[str, ...]:
        return tuple(self._providing)

    # -- our agent card --

    @property
    def card(self) -> dict[str, Any] | None:
        return self.own_card.card

    @property
    def own_card_record(self) -> CardRecord | None:
        return self.own_card.record

    def set_card(self, card: dict[str, Any] | None, now: float) -> CardRecord | None:
        """Publish ``card`` (checked: RecordError if invalid) at once and keep it
        refreshed; None withdraws it from the keys it was filed under."""
        return self.own_card.set(card, now)

    def _sign_card(self, card: dict[str, Any], now: float) -> CardRecord:
        return sign_card_record(
            self.identity,
            card,
            addrs=self.addrs,
            relays=self.relays,
            seq=self._next_seq(now),
            expires=int(now + self.card_limits.card_ttl),
        )

    def _card_publications(self, now: float) -> list[Publication]:
        withdrawals, pubs = self.own_card.due_now(now)
        if self.serving:  # our own store is one of the storers too
            for key, wire in withdrawals:
                with contextlib.suppress(RecordError):  # (we may hold nothing there)
                    self.cards.put(key, wire, now)
            for key, wire in pubs:
                try:
                    self.cards.put(key, wire, now)
                except RecordError:
                    self.counters["own_card_not_stored"] += 1
        return [Publication(Op.PUT_CARD, key, wire) for key, wire in withdrawals + pubs]

    def due_publications(self, now: float) -> list[Publication]:
        """Records whose (re)publication is due; each is re-signed with a higher seq."""
        out: list[Publication] = []
        every = self.config.republish_interval
        if now >= self._peer_due:
            self._own_record = None
            rec = self.own_record(now)
            out.append(Publication(Op.PUT_PEER, self.id, rec.wire))
            self._peer_due = now + every
        for topic, due in self._providing.items():
            if now >= due:
                prec = self.provider_record(topic, now)
                if self.serving:
                    try:
                        self.store.add_provider(prec.wire, now)
                    except RecordError:
                        self.counters["own_provider_not_stored"] += 1
                out.append(Publication(Op.ADD_PROVIDER, prec.key, prec.wire))
                self._providing[topic] = now + every
        return out + self._card_publications(now)

    def publish_request(self, pub: Publication) -> PutPeer | AddProvider | PutCard:
        """The request that stores ``pub`` at one of the k closest nodes (fresh rid)."""
        if pub.op is Op.PUT_PEER:
            return PutPeer(self.next_rid(), pub.record, self.serving)
        if pub.op is Op.PUT_CARD:
            return PutCard(self.next_rid(), pub.key, pub.record, self.serving)
        return AddProvider(self.next_rid(), pub.record, self.serving)

    def housekeeping(self, now: float) -> int:
        """Drop expired records; returns how many."""
        return self.store.expire(now) + self.cards.expire(now)

    # -- the timer --

    def next_deadline(self) -> float:
        """When :meth:`handle_timer` must run next (wall seconds): at once while
        contacts wait to be pinged, else at the next (re)publication or upkeep round
        (bucket refresh and record expiry, every ``UPKEEP_INTERVAL``)."""
        if self._pings:
            return self._upkeep_due - UPKEEP_INTERVAL
        due = (self._upkeep_due, self._peer_due, self.own_card.due)
        return min(*due, *self._providing.values())

    def handle_timer(self, now: float) -> list[Upkeep]:
        """What is due at ``now``: publications, pings, bucket refreshes; drops
        expired records. The shell runs each command and reports pings with
        :meth:`ping_result` and lookups with :meth:`lookup_done` as usual."""
        out: list[Upkeep] = [Publish(pub) for pub in self.due_publications(now)]
        out += [PingContact(contact) for contact in self.take_pings()]
        if now >= self._upkeep_due:
            self._upkeep_due = now + UPKEEP_INTERVAL
            out += [Refresh(target) for target in self.refresh_targets(now)]
            self.housekeeping(now)
        return out

    def statistics(self) -> Statistics:
        return snapshot(
            mode=self.mode.value,
            contacts=len(self.table),
            buckets=len(self.table.buckets_summary()),
            rate_tracked=len(self.limiter),
            **self.counters,
            **self.store.statistics(),
            **self.cards.statistics(),
            **{f"table_refused_{r.value}": n for r, n in self.table.refused.items()},
        )
