"""Spam limits and peer scores for the gossip router, sans-IO.

Rules kept here (protocol-spec/gossip.md, section 9):

* Token buckets. ``Buckets`` keeps one bucket per key (an envelope's author,
  or a link), refilled at ``rate`` per second up to ``burst``; a rate of 0
  turns the limit off. The table holds at most ``max_keys`` buckets: the least
  recently used one is forgotten (that key starts again as a new one). A new
  key's bucket starts with ``initial`` tokens (default: a full ``burst``): the
  author limit gives a never-seen author one second of its rate, not its whole
  burst, so that a fresh identity cannot land a burst on the mesh the moment it
  appears (burst credit is earned by staying under the rate); keys in ``full``
  (our own) start full. ``mute`` takes a key's tokens away until a time: an
  author over its limit on its own link is relayed no more for a while.
  ``has`` remembers, for ``hold_s`` seconds, every key it found without a
  token (``held``): gap repair leaves such an author's gaps for later, so
  what the limit dropped does not come back at once by another path. What
  ``has`` drops is unchecked (forged copies among it), so a drop starts a
  hold only for a key not held already (its bucket emptied by its own
  checked envelopes: ``charge`` comes after the signature check), and
  extends one (to ``hold_s`` from then) only if the key was charged since
  the hold was set or last extended. A ``mute`` (its own authenticated
  link over its limit) holds it to the mute's end at least. Unchecked
  copies alone cannot keep a hold alive: it ends ``hold_s`` after the last
  drop that followed a checked envelope of its author (or its last mute).
* Scores. ``Scoreboard`` keeps one score per peer, outliving its links so that
  a reconnect does not wipe a bad record. A score decays towards 0 with a
  half-life of ``score_half_life`` seconds (computed lazily from ``now``);
  penalties lower it, first deliveries raise it up to ``score_cap``. The table
  is bounded (least recently touched entries forgotten first).
* IWANT promises. When we ask a peer for ids after its IHAVE, one of the ids
  (picked by the router's random source) is remembered with a deadline; if no
  copy of it has arrived from anyone by then, the promise is broken. At most
  ``promises_max`` promises are kept; beyond that new ones are not tracked.
* Bans. A peer sent below the graylist threshold is banned for
  ``ban_seconds``; the ban list is bounded (oldest bans dropped first).

Nothing here performs I/O or reads a clock: ``now`` is always passed in.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from peer.wire._limits import GossipParams


@dataclass(slots=True)
class Bucket:
    tokens: float
    stamp: float

    def refill(self, now: float, rate: float, burst: float) -> None:
        elapsed = max(0.0, now - self.stamp)
        self.stamp = max(self.stamp, now)
        self.tokens = min(burst, self.tokens + elapsed * rate)


class Buckets:
    """A bounded table of token buckets, one per key."""

    def __init__(
        self,
        rate: float,
        burst: float,
        max_keys: int,
        *,
        initial: float | None = None,
        full: frozenset[bytes] = frozenset(),
        hold_s: float = 0.0,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self.initial = burst if initial is None else min(burst, initial)
        self.full = full
        self.hold_s = hold_s
        self._held: OrderedDict[bytes, float] = OrderedDict()  # key -> until when
        self._charged: set[bytes] = set()  # held keys charged since their hold was set
        self._muted: OrderedDict[bytes, float] = OrderedDict()  # key -> until when
        self._buckets: OrderedDict[bytes, Bucket] = OrderedDict()

    @classmethod
    def for_authors(cls, params: GossipParams, me: bytes) -> Buckets:
        """The author limit: a never-seen author starts with ``sender_fresh_s`` seconds
        of its rate, we with our whole burst."""
        fresh = params.sender_rate * params.sender_fresh_s
        return cls(params.sender_rate, params.sender_burst, params.senders_max, initial=fresh,
                   full=frozenset([me]), hold_s=params.over_limit_mute_s)  # fmt: skip

    def __len__(self) -> int:
        return len(self._buckets)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def _bucket(self, key: bytes, now: float) -> Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            start = self.burst if key in self.full else self.initial
            bucket = self._buckets[key] = Bucket(start, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.refill(now, self.rate, self.burst)
        return bucket

    def take(self, key: bytes, now: float) -> bool:
        """Spend one token of ``key``'s bucket; False (nothing spent) if it has none."""
        if not self.enabled:
            return True
        bucket = self._bucket(key, now)
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def has(self, key: bytes, now: float) -> bool:
        """True if ``key`` has a whole token left (nothing spent) and is not muted."""
        if not self.enabled:
            return True
        until = self._muted.get(key)
        if until is not None and now >= until:
            del self._muted[key]
            until = None
        if until is None and self._bucket(key, now).tokens >= 1.0:
            return True
        # an unchecked drop: it starts a hold, but extends one only after a checked envelope
        if not self.held(key, now) or key in self._charged:
            self._hold(key, now + self.hold_s)
        return False

    def _hold(self, key: bytes, until: float) -> None:
        if self.hold_s > 0 and key not in self.full:
            self._held[key] = max(until, self._held.get(key, until))
            self._held.move_to_end(key)
            self._charged.discard(key)
            while len(self._held) > self.max_keys:
                self._charged.discard(self._held.popitem(last=False)[0])

    def peek(self, key: bytes, now: float) -> float:
        """The tokens ``key`` could spend at ``now`` (0 while muted), changing nothing:
        neither the table's order nor a bucket (check-ahead plans with it)."""
        if not self.enabled:
            return math.inf
        until = self._muted.get(key)
        if until is not None and now < until:
            return 0.0
        bucket = self._buckets.get(key)
        if bucket is None:
            return self.burst if key in self.full else self.initial
        return min(self.burst, bucket.tokens + max(0.0, now - bucket.stamp) * self.rate)

    def held(self, key: bytes, now: float) -> bool:
        """True while ``key``'s hold lasts (see the module header): ``hold_s`` seconds
        from a drop that started or extended it, or to the end of a mute."""
        until = self._held.get(key)
        if until is None:
            return False
        if now < until:
            return True
        del self._held[key]
        self._charged.discard(key)
        return False

    def holding(self, key: bytes, now: float) -> bool:
        """``held``, changing nothing (an expired hold is not forgotten: check-ahead)."""
        until = self._held.get(key)
        return until is not None and now < until

    def mute(self, key: bytes, until: float) -> None:
        """``key`` has no tokens before ``until`` and is held until then at least (at
        most ``max_keys`` are muted: the oldest mute goes first)."""
        if self.enabled and key not in self.full:
            self._muted[key] = until
            self._muted.move_to_end(key)
            while len(self._muted) > self.max_keys:
                self._muted.popitem(last=False)
            self._hold(key, until)

    def charge(self, key: bytes, now: float) -> None:
        """Spend one token even if that leaves the bucket in debt (at most one burst);
        called for checked envelopes only, so it may extend ``key``'s hold."""
        if self.enabled:
            bucket = self._bucket(key, now)
            bucket.tokens = max(-self.burst, bucket.tokens - 1.0)
            if key in self._held:
                self._charged.add(key)

    def forget(self, key: bytes) -> None:
        self._buckets.pop(key, None)


@dataclass(slots=True)
class _Score:
    value: float
    stamp: float


class Scoreboard:
    """Per-peer scores, IWANT promises and bans (see the module docstring)."""

    def __init__(self, params: GossipParams) -> None:
        self.params = params
        self._scores: OrderedDict[bytes, _Score] = OrderedDict()
        self._dups = Buckets(params.duplicate_rate, params.duplicate_burst, params.score_max_peers)
        self._promises: dict[bytes, tuple[bytes, float]] = {}  # msg id -> (peer, deadline)
        self._bans: OrderedDict[bytes, float] = OrderedDict()  # peer -> banned until

    # -- scores ---------------------------------------------------------------------

    def _entry(self, peer: bytes, now: float) -> _Score:
        entry = self._scores.get(peer)
        if entry is None:
            entry = self._scores[peer] = _Score(0.0, now)
            while len(self._scores) > self.params.score_max_peers:
                self._scores.popitem(last=False)
            return entry
        self._scores.move_to_end(peer)
        elapsed = now - entry.stamp
        if elapsed > 0:
            entry.value *= 0.5 ** (elapsed / self.params.score_half_life)
            if abs(entry.value) < 0.01:
                entry.value = 0.0
            entry.stamp = now
        return entry

    def score(self, peer: bytes, now: float) -> float:
        if peer not in self._scores:
            return 0.0
        return self._entry(peer, now).value

    def reward(self, peer: bytes, now: float) -> None:
        """A first delivery of a message in a topic we subscribe to."""
        entry = self._entry(peer, now)
        entry.value = min(self.params.score_cap, entry.value + self.params.first_delivery_reward)

    def penalize(self, peer: bytes, amount: float, now: float) -> float:
        """Lower ``peer``'s score by ``amount``; returns the new score."""
        entry = self._entry(peer, now)
        entry.value -= amount
        return entry.value

    def duplicate(self, peer: bytes, now: float) -> float | None:
        """A duplicate from ``peer``: free within its allowance, else a penalty
        (returns the new score then, None otherwise)."""
        if self._dups.take(peer, now):
            return None
        return self.penalize(peer, self.params.duplicate_penalty, now)

    def sizes(self) -> dict[str, int]:
        return {
            "scores_kept": len(self._scores),
            "promises": len(self._promises),
            "bans": len(self._bans),
        }

    def snapshot(self, peers: list[bytes], now: float) -> dict[str, float]:
        return {p.hex()[:16]: round(self.score(p, now), 2) for p in peers}

    def __len__(self) -> int:
        return len(self._scores)

    # -- IWANT promises -------------------------------------------------------------

    def promise(self, peer: bytes, msg_id: bytes, now: float) -> None:
        if msg_id in self._promises or len(self._promises) >= self.params.promises_max:
            return
        self._promises[msg_id] = (peer, now + self.params.iwant_deadline)

    def fulfil(self, msg_id: bytes) -> None:
        """A copy of ``msg_id`` arrived (from anyone): its promise is kept."""
        self._promises.pop(msg_id, None)

    def expire_promises(self, now: float) -> list[bytes]:
        """Penalise every peer whose promise is past its deadline; returns those peers."""
        broken = [(mid, peer) for mid, (peer, due) in self._promises.items() if due <= now]
        for mid, peer in broken:
            del self._promises[mid]
            self.penalize(peer, self.params.broken_promise_penalty, now)
        return [peer for _, peer in broken]

    @property
    def promises(self) -> int:
        return len(self._promises)

    # -- bans -----------------------------------------------------------------------

    def ban(self, peer: bytes, now: float) -> None:
        self._bans.pop(peer, None)
        self._bans[peer] = now + self.params.ban_seconds
        while len(self._bans) > self.params.ban_max:
            self._bans.popitem(last=False)

    def forget_ban(self, peer: bytes) -> None:
        self._bans.pop(peer, None)

    def banned(self, peer: bytes, now: float) -> bool:
        until = self._bans.get(peer)
        if until is None:
            return False
        if until <= now:
            del self._bans[peer]
            return False
        return True

    @property
    def bans(self) -> int:
        return len(self._bans)
