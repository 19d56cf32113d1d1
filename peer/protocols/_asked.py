"""Gossip repair, the asking side, sans-IO: what we ask for with IWANT, and its answers.

Rules kept here (protocol-spec/gossip.md, sections 5 and 9):

* An IHAVE from a link whose score is at least ``gossip_threshold`` is
  answered with an IWANT for the ids we have not seen, at most
  ``iwant_per_heartbeat`` ids per link per heartbeat (as many as a link
  serves us in one: asking for more would only be refused); one of them
  becomes a promise (``Scoreboard``).
* Every id asked for is remembered with the link it was asked of, for
  ``iwant_deadline`` seconds; at most ``MAX_ASKED`` at once: past that the
  link with the most asks waiting loses its oldest (their answers then meet
  the author's limit as any envelope does), so links that make us want more
  than we can hold neither stop us asking an honest link nor take the free
  pass of what we asked it for. A link's budget window restarts after
  ``WINDOW_SLACK`` of a heartbeat, so an IHAVE round a little early is not
  left unasked.
* An envelope that answers our IWANT, over the link we asked, was sent
  because we asked: it is neither looked at by nor charged to its author's
  limit, so it never mutes its author nor penalises the link, and it does
  not leave the author in debt for its live messages. Without this, a peer
  that (re)started next to a busy author asked that author's link for a
  heartbeat window of ids at once, found the answers over the quarter second
  of rate a never-seen author starts with, muted the author, charged the
  link for each of its honest messages that followed and banned it for
  ``ban_seconds``: cut off from its only neighbour, it caught up nothing
  for five minutes. The price is bounded and ours to choose: at most
  ``iwant_per_heartbeat`` envelopes per link per heartbeat pass an author's
  limit, ids we chose to ask for, each taken once; everything else about
  them (the link's ``pub`` limit, seen ids, the signature, the age) is
  checked as for any envelope. The bound is per link: an author that
  announces its own messages by IHAVE on top of pushing them, or relays
  that collude with it, can get up to that many more per link and heartbeat
  past its limit here before it is held back (below).
* Except for an author held back (``Buckets.held``: something of it was
  dropped over its limit lately, a flooder): answers then meet its limit
  as any envelope does (so what honest relays let through of a flood does
  not come back in by IWANT), but a drop among them still never mutes the
  author nor charges the link: we asked.

Nothing here performs I/O or reads a clock: ``now`` is passed in.
"""

from __future__ import annotations

import random
from collections import OrderedDict

from peer.wire._frametypes import IWant
from peer.wire._limits import GossipParams

from ._gossiptypes import Action, GossipCounters, Send
from ._score import Scoreboard

MAX_ASKED = 65_536  # ids asked for and not yet answered, across all links
# A link's asking window restarts a little before a heartbeat has passed: its IHAVE
# rounds come a heartbeat apart give or take the network's jitter, and one that came
# early would otherwise find the window still spent and be asked nothing.
WINDOW_SLACK = 0.9
_MAX_WINDOWS = 4096  # links whose current window is kept (stale ones pruned past this)


class AskBook:
    """The ids asked of each link and not answered yet, and each link's asking budget."""

    def __init__(
        self, per_link: int, window: float, deadline: float, max_ids: int = MAX_ASKED
    ) -> None:
        self.per_link, self.window, self.deadline, self.max_ids = (
            per_link, window, deadline, max_ids
        )
        # link -> id -> until, oldest first; expired entries go when their link is
        # next asked or answered, or when the table is full
        self._asked: dict[bytes, OrderedDict[bytes, float]] = {}
        self._total = 0
        self._windows: dict[bytes, tuple[float, int]] = {}  # link -> (start, ids asked)

    @classmethod
    def of(cls, params: GossipParams) -> AskBook:
        return cls(params.iwant_per_heartbeat, params.heartbeat, params.iwant_deadline)

    def __len__(self) -> int:
        return self._total

    def ask(self, peer: bytes, ids: tuple[bytes, ...], now: float) -> tuple[bytes, ...]:
        """The first of ``ids`` that may be asked of ``peer`` now (within its budget for
        this window), remembered as asked."""
        start, used = self._windows.get(peer, (now, 0))
        if now - start >= self.window * WINDOW_SLACK or now < start:
            start, used = now, 0
        asked = ids[: max(0, min(self.per_link - used, self.max_ids))]
        if asked:
            mine = self._asked.setdefault(peer, OrderedDict())
            self._expire(peer, mine, now)
            until = now + self.deadline
            for mid in asked:
                if mid not in mine:
                    self._total += 1
                mine[mid] = until
                mine.move_to_end(mid)
            if self._total > self.max_ids:
                self._evict(self._total - self.max_ids)
        if len(self._windows) >= _MAX_WINDOWS and peer not in self._windows:
            self._windows = {
                p: w for p, w in self._windows.items() if 0 <= now - w[0] < self.window
            }
        self._windows[peer] = (start, used + len(asked))
        return asked

    def asked(self, peer: bytes, mid: bytes, now: float) -> bool:
        """``mid`` was asked of ``peer`` and is not answered or expired (nothing changes)."""
        mine = self._asked.get(peer)
        until = None if mine is None else mine.get(mid)
        return until is not None and now < until

    def answered(self, peer: bytes, mid: bytes, now: float) -> bool:
        """``asked``, and from now on not any more: an id's answer is taken once."""
        if not self._total:  # the relay's hot path, nothing asked: nothing to look up
            return False
        mine = self._asked.get(peer)
        until = None if mine is None else mine.pop(mid, None)
        if until is None:
            return False
        self._total -= 1
        if not mine:
            del self._asked[peer]
        return now < until

    def _expire(self, peer: bytes, mine: OrderedDict[bytes, float], now: float) -> None:
        while mine:
            mid, until = next(iter(mine.items()))
            if until > now:
                return
            del mine[mid]
            self._total -= 1

    def _evict(self, excess: int) -> None:
        """Full: the link with the most asks waiting loses its oldest, ``excess`` of
        them (then the next largest), so links that make us want a lot cannot take
        the free pass of what we asked an honest link for."""
        while excess > 0 and self._asked:
            big = max(self._asked, key=lambda p: len(self._asked[p]))
            entries = self._asked[big]
            for _ in range(min(excess, len(entries))):
                entries.popitem(last=False)
                self._total -= 1
                excess -= 1
            if not entries:
                del self._asked[big]


class Asking:
    """The router's asking side (``GossipRouter`` inherits it)."""

    _seen: OrderedDict[bytes, float]
    _rng: random.Random
    _asked: AskBook
    params: GossipParams
    scores: Scoreboard
    stats: GossipCounters

    def _on_ihave(self, peer: bytes, ids: tuple[bytes, ...], now: float) -> list[Action]:
        if self.scores.score(peer, now) < self.params.gossip_threshold:
            return []
        wanted = self._asked.ask(peer, tuple(i for i in ids if i not in self._seen), now)
        if not wanted:
            return []
        self.scores.promise(peer, self._rng.choice(wanted), now)  # one id, as gossipsub
        self.stats.iwant_sent += 1
        return [Send(peer, IWant(wanted).encode())]


__all__ = ["MAX_ASKED", "AskBook", "Asking"]
