"""The agent directory's DHT side, sans-IO: the card store and the card lookup.

:class:`CardStore` holds the card records others filed here under skill and
tag keys (``_card.py``): one record per agent, filed under any of the keys its
card declares. :class:`CardLookup` walks to the k nodes closest to a skill or
tag key and collects the valid cards they hold.

Rules this module keeps:

* Only nodes that advertise the ``cards`` capability are sent card requests
  (an older peer would take the unknown operation for a malformed message);
  a card lookup skips every other contact, so cards are stored at, and looked
  up from, the k closest *card-serving* nodes.
* The store accepts a record only from its owner, only under a key its card
  declares, only with a sequence above the one held (the same bytes again
  file it under one more key and change nothing), and only within its
  bounds: ``max_cards`` agents, ``max_card_keys`` keys, ``max_cards_per_key``
  agents per key (for a full key a newcomer displaces the record expiring
  first if it expires later), and a per-agent budget of new versions (a
  flood of re-signed cards is refused ``rate``). Every refusal is counted
  by reason; expired records are dropped, never returned.
* A reply lists a key's cards in ascending agent id, after a cursor, within
  a count and byte budget, and says whether more remain; the lookup pages
  through a storer that says so.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from peer.wire._stats import Statistics, snapshot

from ._card import CardRecord, check_card_signature, parse_card_record, verify_card_record
from ._config import MAX_CARDS_PER_REPLY, DhtConfig
from ._contact import Contact
from ._lookup import Lookup
from ._records import Reason, RecordError, check_expiry

CARDS_CAP = "cards"  # the capability of a node that serves card requests
CARD_REPLY_BUDGET = 80 * 1024  # bytes of card records in one reply
MAX_PAGES = 8  # pages a lookup asks one storer for, after its first reply


@dataclass(frozen=True)
class CardLimits:
    """The bounds of one node's card store and of its own card."""

    card_ttl: float = 1200.0  # lifetime we give our own card record
    max_cards: int = 4096  # agents whose card we hold
    max_card_keys: int = 10_000  # skill and tag keys we hold cards under
    max_cards_per_key: int = 256  # agents per skill or tag key (paged, 64 per reply)
    updates_per_second: float = 1 / 30  # new versions of one agent's card, sustained ...
    update_burst: float = 6.0  # ... and at once


class Limiter(Protocol):
    def allow(self, peer_id: bytes, now: float, cost: float = 1.0) -> bool: ...


class CardStore:
    """Card records this node holds for others, by agent and by key, bounded."""

    def __init__(self, config: DhtConfig, limits: CardLimits, limiter: Limiter) -> None:
        self.config = config
        self.limits = limits
        self._limiter = limiter
        self._records: dict[bytes, CardRecord] = {}  # agent id -> its record
        self._index: dict[bytes, list[bytes]] = {}  # key -> agent ids, ascending
        self.refused: Counter[Reason] = Counter()
        self.accepted: Counter[str] = Counter()

    def put(self, key: bytes, wire: bytes, now: float, sender: bytes | None = None) -> CardRecord:
        """Validate and file a card record under ``key``, sent by ``sender`` (None: us)."""
        try:
            return self._put(key, wire, now, sender)
        except RecordError as exc:
            self.refused[exc.reason] += 1
            raise

    def _put(self, key: bytes, wire: bytes, now: float, sender: bytes | None) -> CardRecord:
        cfg = self.config
        record = parse_card_record(wire)
        if sender is not None and sender != record.id:
            raise RecordError(Reason.NOT_OWNER, "a card record may only be put by its owner")
        check_expiry(record.expires, now, cfg.max_record_ttl, cfg.clock_skew)
        held = self._live(record.id, now)
        if key not in record.keys:
            return self._withdraw(key, record, held, now, sender)
        if held is not None and held.wire == wire:
            self._file(key, held, now)
            self.accepted["unchanged"] += 1
            return held
        if held is not None and record.seq <= held.seq:
            raise RecordError(Reason.STALE, f"sequence {record.seq} not above {held.seq}")
        if held is None and len(self._records) >= self.limits.max_cards:
            self.expire(now)
            if len(self._records) >= self.limits.max_cards:
                raise RecordError(Reason.FULL, "this node holds as many cards as it may")
        victim = self._room_for(key, record)
        check_card_signature(record)
        if sender is not None and not self._limiter.allow(record.id, now):
            raise RecordError(Reason.RATE, "this agent re-signs its card too often")
        if victim is not None:
            self._unfile(key, victim)
        if held is not None:
            for old in set(held.keys) - set(record.keys):
                self._unfile(old, record.id)
        self._records[record.id] = record
        self._file(key, record, now)
        self.accepted["card"] += 1
        return record

    def _withdraw(
        self, key: bytes, record: CardRecord, held: CardRecord | None, now: float,
        sender: bytes | None,
    ) -> CardRecord:
        """A newer card that no longer declares ``key``: it replaces the one held, which
        leaves ``key`` (and every other key the new card drops). Nothing held: wrong-key."""
        if held is not None and held.wire == record.wire:  # it replaced the old one already
            self.accepted["unchanged"] += 1
            return held
        if held is None or key not in held.keys:
            raise RecordError(Reason.WRONG_KEY, "the card declares no skill or tag of this key")
        if record.seq <= held.seq:
            raise RecordError(Reason.STALE, f"sequence {record.seq} not above {held.seq}")
        check_card_signature(record)
        if sender is not None and not self._limiter.allow(record.id, now):
            raise RecordError(Reason.RATE, "this agent re-signs its card too often")
        for old in set(held.keys) - set(record.keys):
            self._unfile(old, record.id)
        kept = [k for k in record.keys if record.id in self._index.get(k, ())]
        if kept:
            self._records[record.id] = record
        self.accepted["withdrawn"] += 1
        return record

    def _room_for(self, key: bytes, record: CardRecord) -> bytes | None:
        """Whether ``record`` may be filed under ``key`` (RecordError FULL if not), and
        the agent it would displace there, if any. Changes nothing."""
        ids = self._index.get(key)
        if ids is None:
            if len(self._index) >= self.limits.max_card_keys:
                raise RecordError(Reason.FULL, "too many card keys")
            return None
        if record.id in ids or len(ids) < self.limits.max_cards_per_key:
            return None
        victim = min((self._records[i] for i in ids), key=lambda r: r.expires)
        if victim.expires >= record.expires:
            raise RecordError(Reason.FULL, "key has as many agents as it may")
        return victim.id

    def _file(self, key: bytes, record: CardRecord, now: float) -> None:
        ids = self._index.setdefault(key, [])
        at = bisect.bisect_left(ids, record.id)
        if at == len(ids) or ids[at] != record.id:
            ids.insert(at, record.id)

    def _unfile(self, key: bytes, agent: bytes) -> None:
        ids = self._index.get(key)
        if ids is None:
            return
        at = bisect.bisect_left(ids, agent)
        if at < len(ids) and ids[at] == agent:
            del ids[at]
        if not ids:
            del self._index[key]
        record = self._records.get(agent)
        if record is not None and not any(agent in self._index.get(k, ()) for k in record.keys):
            del self._records[agent]

    def _live(self, agent: bytes, now: float) -> CardRecord | None:
        record = self._records.get(agent)
        if record is not None and record.expires <= now:
            self._drop(record)
            return None
        return record

    def _drop(self, record: CardRecord) -> None:
        self._records.pop(record.id, None)
        for key in record.keys:
            ids = self._index.get(key)
            if ids is not None and record.id in ids:
                ids.remove(record.id)
                if not ids:
                    del self._index[key]

    def get(
        self,
        key: bytes,
        now: float,
        *,
        after: bytes | None = None,
        limit: int = MAX_CARDS_PER_REPLY,
        budget: int = CARD_REPLY_BUDGET,
    ) -> tuple[list[CardRecord], bool]:
        """Live cards under ``key`` with agent ids above ``after``, ascending, within
        ``limit`` records and ``budget`` bytes; and whether more remain."""
        ids = list(self._index.get(key, ()))
        start = 0 if after is None else bisect.bisect_right(ids, after)
        out: list[CardRecord] = []
        used = 0
        for agent in ids[start:]:
            record = self._live(agent, now)
            if record is None:
                continue
            if len(out) >= limit or used + len(record.wire) > budget:
                return out, True
            out.append(record)
            used += len(record.wire)
        return out, False

    def expire(self, now: float) -> int:
        """Drop every expired record; returns how many."""
        dead = [r for r in self._records.values() if r.expires <= now]
        for record in dead:
            self._drop(record)
        return len(dead)

    def __len__(self) -> int:
        return len(self._records)

    def statistics(self) -> Statistics:
        return snapshot(
            card_records=len(self._records),
            card_keys=len(self._index),
            **{f"cards_accepted_{k}": v for k, v in self.accepted.items()},
            **{f"cards_refused_{r.value}": n for r, n in self.refused.items()},
        )


@dataclass(frozen=True, slots=True)
class CardPage:
    """What one GET_CARDS reply carried: record bytes and whether more remain."""

    cards: tuple[bytes, ...]
    more: bool


class CardNodeLookup(Lookup):
    """FIND_NODE over card-serving nodes only: where to store our card under a key."""

    def _add(self, contact: Contact, depth: int) -> None:
        if CARDS_CAP in contact.caps:
            super()._add(contact, depth)


class CardLookup(Lookup):
    """GET_CARDS: the k card-serving nodes closest to a skill or tag key, and the
    valid cards they hold (one per agent, highest sequence)."""

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
        config: DhtConfig | None = None,
    ) -> None:
        self.found: dict[bytes, CardRecord] = {}
        self.more_from: dict[bytes, bytes] = {}  # storer id -> cursor to page on from
        self.pages = 0
        self._cfg = config if config is not None else DhtConfig()
        self._verified: dict[bytes, CardRecord] = {}
        super().__init__(
            target, k, alpha, seeds, now, rpc_timeout, own_id=own_id, max_queries=max_queries
        )

    def cards(self) -> list[CardRecord]:
        """The agents found, in ascending id."""
        return [self.found[i] for i in sorted(self.found)]

    def _add(self, contact: Contact, depth: int) -> None:
        if CARDS_CAP in contact.caps:
            super()._add(contact, depth)

    def _accept_value(self, value: object, now: float) -> bool:
        if value is None:
            return True
        if not isinstance(value, CardPage):
            return False
        return self._take(value, now) is not None

    def _take(self, page: CardPage, now: float) -> bytes | None:
        """Verify and keep a page's cards; the cursor after it (b"" if empty), None if
        a record lied."""
        good: list[CardRecord] = []
        cursor = b""
        for wire in page.cards:
            record = self._verified.get(wire)
            if record is None:
                try:
                    record = verify_card_record(
                        wire,
                        now,
                        key=self.target,
                        max_ttl=self._cfg.max_record_ttl,
                        skew=self._cfg.clock_skew,
                    )
                except RecordError as exc:
                    if exc.reason in (Reason.EXPIRED, Reason.TOO_FAR_FUTURE):
                        self.stats.clock_records += 1
                        continue
                    self.stats.bad_records += 1
                    return None
                if len(self._verified) < 4 * MAX_CARDS_PER_REPLY:
                    self._verified[wire] = record
            good.append(record)
            cursor = max(cursor, record.id)
        for record in good:
            held = self.found.get(record.id)
            if held is None or record.seq > held.seq:
                self.found[record.id] = record
        return cursor

    def on_cards(self, contact_id: bytes, page: CardPage, now: float) -> bool:
        """A page a storer sent after its first reply (see ``pages_wanted``)."""
        cursor = self._take(page, now)
        self.pages += 1
        self.more_from.pop(contact_id, None)
        if cursor is None:
            self.liars.append(contact_id)
            return False
        if page.more and cursor and self.pages < MAX_PAGES * self.k:
            self.more_from[contact_id] = cursor
        return True

    def note_more(self, contact_id: bytes, page: CardPage) -> None:
        """A first reply said more cards remain: page on from its last agent id."""
        if page.more and page.cards:
            try:
                last = max(parse_card_record(w).id for w in page.cards)
            except RecordError:
                return
            self.more_from[contact_id] = last

    def pages_wanted(self, limit: int = 3) -> list[tuple[Contact, bytes]]:
        """Storers (nearest first, at most ``limit``) to ask for the next page, and
        from which agent id on; empty once the lookup has every page it wants."""
        out: list[tuple[Contact, bytes]] = []
        for contact in self.result():
            cursor = self.more_from.get(contact.id)
            if cursor is not None:
                out.append((contact, cursor))
                if len(out) >= limit:
                    break
        return out
