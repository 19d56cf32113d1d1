"""Anti-entropy as a sans-IO behaviour: digests of per-sender heads between carriers.

Two linked peers that both store topics tell each other, per topic, the
highest sequence number they hold of each sender (a ``heads`` frame,
protocol-spec/catchup.md section 7.5); a receiver that lacks something the
other holds fetches it with sender range requests, as catch-up gap filling
does. This is what repairs a gap while both stay online: a message
acknowledged while its author had no route, or sent across a partition.

``AntiEntropy`` takes link-up, link-down, ``heads`` frame and timer events
(with ``now``, monotonic seconds; randomness from an injected
``random.Random``) and returns typed commands that the Trio shell
(``peer.node._catchuphost``) performs. Rules kept here:

* Digests go only to links whose peer has the ``store`` capability: at
  once when the link comes up, then every ``ANTI_ENTROPY_INTERVAL`` seconds
  (jittered by ``JITTER``), at most ``MAX_DIGEST_TOPICS`` topics per link
  per round, round-robin over the topics the shell says we share with it.
* A digest is acted on (``Lack``) only for a topic the shell says we keep,
  from a linked carrier, when fewer than ``MAX_LACKS_IN_FLIGHT`` digests of
  that link are being acted on and none of the same topic; otherwise it is
  dropped (the next round brings it again).
* ``Lack`` carries only the heads that differ from what was settled for
  that (link, topic) before: a peer that has nothing new costs no store
  read. The shell reports which heads it settled (``lack_done``); the rest
  are asked about again with the next digest. The memory of settled heads
  is bounded (``MAX_MEMO_TOPICS`` topics per link, oldest forgotten first).
* What a repair stored (``repaired``) goes out at once as a digest of that
  topic to the other links sharing it, at most one such early digest per
  link per ``PUSH_INTERVAL``, so a healed partition converges hop by hop
  at the speed of a fetch.
* No trio, no store: which topics are shared and kept come from callables.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from peer.wire._frametypes import Heads
from peer.wire._limits import MAX_PAGE_HEADS

from ._catchup import missing_ranges

STORE_CAP = "store"
ANTI_ENTROPY_INTERVAL = 5.0
JITTER = 0.2  # a round's delay is interval * uniform(1 - JITTER, 1 + JITTER)
MAX_DIGEST_TOPICS = 8  # topics whose digest goes to one link in one round
MAX_LACKS_IN_FLIGHT = 4  # digests of one link being acted on at a time
MAX_MEMO_TOPICS = 64  # topics per link whose settled heads are remembered
PUSH_INTERVAL = 1.0  # at most one early digest per link per this many seconds

HeadList = tuple[tuple[bytes, int], ...]


# -- commands --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadHeads:
    """Read our heads of each of ``topics``; feed each to ``heads_read``."""

    peer: bytes
    topics: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SendHeads:
    """Send ``frame`` on the link to ``peer``."""

    peer: bytes
    frame: Heads


@dataclass(frozen=True, slots=True)
class Lack:
    """``peer`` holds ``heads`` of ``topic``: fetch from it what we lack (``wanted``),
    then feed ``lack_done`` with the heads settled."""

    peer: bytes
    topic: str
    heads: HeadList


Command = ReadHeads | SendHeads | Lack


def wanted(have: Sequence[tuple[int, int]], head: int, *, whole: bool) -> list[tuple[int, int]]:
    """The ranges of a sender's ``1..head`` to ask for, given the ranges we hold.

    Holding some: the gaps and what lies above (never below the first held,
    as in catch-up gap detection). Holding none: all of ``1..head`` if
    ``whole`` (a relay-only seed keeps a sender's whole log), else nothing
    (a member finds a new sender's messages with a log walk instead).
    """
    if have:
        return missing_ranges(have, head)
    return [(1, head)] if whole and head >= 1 else []


# -- state -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Link:
    due: float
    offset: int = 0  # where the next round's topics start in the shared list
    acting: set[str] = field(default_factory=set)  # topics of Lacks under way
    settled: OrderedDict[str, dict[bytes, int]] = field(default_factory=OrderedDict)
    pushed: float = float("-inf")  # when an early digest last went


class AntiEntropy:
    """Digest rounds and what to do with a digest; see the module docstring."""

    def __init__(
        self,
        shared_topics: Callable[[bytes], Sequence[str]],
        keeps: Callable[[str], bool],
        rng: random.Random,
        *,
        interval: float = ANTI_ENTROPY_INTERVAL,
        max_topics: int = MAX_DIGEST_TOPICS,
    ) -> None:
        self.shared_topics = shared_topics
        self.keeps = keeps
        self.rng = rng
        self.interval = interval
        self.max_topics = max_topics
        self.links: dict[bytes, _Link] = {}
        self.dropped = 0  # digests not acted on: busy, not kept, or from a non-carrier
        self.sent = 0

    # -- events ------------------------------------------------------------------------

    def on_link_up(self, peer: bytes, caps: Sequence[str], now: float) -> list[Command]:
        self.links.pop(peer, None)  # a new link replaced the old one
        if STORE_CAP not in caps:
            return []
        self.links[peer] = _Link(due=now)
        return self._round(peer, now)

    def on_link_down(self, peer: bytes) -> None:
        self.links.pop(peer, None)

    def on_heads(self, peer: bytes, frame: Heads) -> list[Command]:
        """A digest from ``peer``: a ``Lack`` for what changed, or nothing."""
        link = self.links.get(peer)
        topic = frame.topic
        if (
            link is None
            or not self.keeps(topic)
            or topic in link.acting
            or len(link.acting) >= MAX_LACKS_IN_FLIGHT
        ):
            self.dropped += 1
            return []
        settled = link.settled.get(topic, {})
        changed = tuple((s, n) for s, n in frame.heads if settled.get(s) != n)
        if not changed:
            return []
        link.acting.add(topic)
        return [Lack(peer, topic, changed)]

    def lack_done(self, peer: bytes, topic: str, settled: Iterable[tuple[bytes, int]]) -> None:
        """The shell acted on a ``Lack``; ``settled`` heads need no asking again."""
        link = self.links.get(peer)
        if link is None:
            return
        link.acting.discard(topic)
        memo = link.settled.get(topic)
        if memo is None:
            memo = link.settled[topic] = {}
            while len(link.settled) > MAX_MEMO_TOPICS:
                link.settled.popitem(last=False)
        else:
            link.settled.move_to_end(topic)
        for sender, head in settled:
            memo[sender] = head
        while len(memo) > MAX_PAGE_HEADS:  # only heads from frames are put here; kept bounded
            memo.pop(next(iter(memo)))

    def repaired(self, topic: str, source: bytes | None, now: float) -> list[Command]:
        """We stored messages of ``topic`` that a repair fetched (from ``source``): our
        other links may lack them too, so they get our digest of it now rather than at
        their next round (at most one early digest per link per ``PUSH_INTERVAL``;
        past it, the link's next round is brought forward). A repair thus spreads
        hop by hop at the speed of a fetch, not of a round per hop."""
        out: list[Command] = []
        for peer, link in self.links.items():
            if peer == source or topic not in self.shared_topics(peer):
                continue
            if now - link.pushed >= PUSH_INTERVAL:
                link.pushed = now
                out.append(ReadHeads(peer, (topic,)))
            else:
                link.due = min(link.due, link.pushed + PUSH_INTERVAL)
        return out

    def heads_read(
        self, peer: bytes, topic: str, heads: Sequence[tuple[bytes, int]], more: bool
    ) -> list[Command]:
        """Our heads of ``topic`` (``more``: we hold other senders too) for ``peer``."""
        if peer not in self.links or not heads:
            return []
        self.sent += 1
        return [SendHeads(peer, Heads(topic, tuple(heads[:MAX_PAGE_HEADS]), more))]

    def next_deadline(self) -> float | None:
        return min((link.due for link in self.links.values()), default=None)

    def handle_timer(self, now: float) -> list[Command]:
        out: list[Command] = []
        for peer in [p for p, link in self.links.items() if link.due <= now]:
            out += self._round(peer, now)
        return out

    # -- rounds ------------------------------------------------------------------------

    def _round(self, peer: bytes, now: float) -> list[Command]:
        link = self.links[peer]
        link.due = now + self.interval * self.rng.uniform(1 - JITTER, 1 + JITTER)
        topics = list(self.shared_topics(peer))
        if not topics:
            return []
        start = link.offset % len(topics)
        pick = (topics[start:] + topics[:start])[: self.max_topics]
        link.offset = (start + len(pick)) % len(topics)
        return [ReadHeads(peer, tuple(pick))]


__all__ = [
    "ANTI_ENTROPY_INTERVAL",
    "MAX_DIGEST_TOPICS",
    "MAX_LACKS_IN_FLIGHT",
    "PUSH_INTERVAL",
    "AntiEntropy",
    "Lack",
    "ReadHeads",
    "SendHeads",
    "wanted",
]
