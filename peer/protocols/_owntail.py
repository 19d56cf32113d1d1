"""Our own recent messages, sent again ahead of the next one when they may not have left.

A message of ours is acknowledged once it is stored, and leaves with the next
frames to its topic's carriers. If no link carried the topic then, or the
process was killed before the frames went out, the carriers learn of it only
from a digest round (catchup.md 9), and a later message of ours, published
live, overtakes it. Every subscriber then holds the later one until the gap
is filled (catchup.md 7.6); if we are gone again before a digest round
(a peer that comes back for a moment and is killed again), we are its only
holder and the hold ends first: the agent gets our messages out of order.

So, per log topic, the last ``size`` messages of ours are kept here (read
from the store at start), and they go out again, in seq order, ahead of

* the first message of that topic we publish after a start, and
* the first one published after one that had no carrier to go to.

A receiver that already has them drops the copies as duplicates (cheap: an id
lookup). Nothing here reads a clock or performs I/O: the shell asks
``before`` what to send ahead of each message of ours and sends it.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable

TAIL = 32  # messages of ours per log topic kept to send again
MAX_TOPICS = 1024  # log topics tracked (least recently published forgotten)


class OwnTail:
    """The recent messages of ours per log topic; see the module docstring."""

    def __init__(self, size: int = TAIL, max_topics: int = MAX_TOPICS) -> None:
        self.size = size
        self.max_topics = max_topics
        self._tails: OrderedDict[str, deque[tuple[int, bytes]]] = OrderedDict()
        self._due: set[str] = set()  # log topics whose tail goes ahead of the next one
        self.resent = 0  # messages sent again ahead of a newer one

    def preload(self, tails: Iterable[tuple[str, list[tuple[int, bytes]]]]) -> None:
        """At start: ``(log topic, [(seq, wire), ...])`` of ours from the store, in seq
        order. Whether they left before we stopped is unknown: each is due."""
        for topic, items in tails:
            tail = self._tail(topic)
            tail.extend(items[-self.size :])
            self._due.add(topic)

    def before(self, log_topic: str, seq: int, wire: bytes, *, routed: bool) -> list[bytes]:
        """The wires to send, in order, ahead of our message ``seq`` of ``log_topic``
        (``wire``), which is about to be published; ``routed``: some link carries its
        topic now. Remembers the message."""
        tail = self._tail(log_topic)
        ahead: list[bytes] = []
        if not routed:
            self._due.add(log_topic)  # it goes nowhere now: ahead of the next one, it goes
        elif log_topic in self._due:
            self._due.discard(log_topic)
            ahead = [w for s, w in tail if s < seq]
            self.resent += len(ahead)
        tail.append((seq, wire))
        return ahead

    def _tail(self, topic: str) -> deque[tuple[int, bytes]]:
        tail = self._tails.get(topic)
        if tail is None:
            tail = self._tails[topic] = deque(maxlen=self.size)
            while len(self._tails) > self.max_topics:
                old, _ = self._tails.popitem(last=False)
                self._due.discard(old)
        else:
            self._tails.move_to_end(topic)
        return tail


__all__ = ["MAX_TOPICS", "TAIL", "OwnTail"]
