"""How far a topic's nearest subscriber is, seen from each link (split horizon), in O(N).

A relay tells each link the distance to the nearest subscriber of a topic it
knows of *through the other links* (gossip.md, interest; ``GossipRouter``).
Asked link by link, that is a pass over every carrier for every link: O(N^2)
per change, and a seed taking N subscribers one by one spent O(N^3) on it
(the handshakes of 1,000 links slowed from 28/s to 2/s). ``Nearest`` is one
pass: the best distance, the one link that holds it alone (if only one
does), and the second best; the answer for a link is the best unless that
link is the sole holder, then the second best. Two ``Nearest`` that are
equal give every link the same answer, which lets the router skip the links
whose answer cannot have changed.

Pure: no I/O, no time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple


class Nearest(NamedTuple):
    member: bool  # we subscribe ourselves: distance 0 to every link
    best: int | None  # the nearest carrier's distance from us (its hops + 1)
    holder: bytes | None  # the only carrier at ``best``; None if several (or none)
    second: int | None  # the nearest distance among the other carriers

    def excluding(self, peer: bytes, max_hops: int) -> int | None:
        """The distance to advertise to ``peer``: not counting what ``peer`` itself told
        us; None beyond ``max_hops`` or if there is none."""
        if self.member:
            return 0
        best = self.second if peer == self.holder else self.best
        return None if best is None or best > max_hops else best


def nearest(member: bool, relay: bool, carriers: Iterable[tuple[bytes, int]]) -> Nearest:
    """One pass over the carriers of a topic, ``(link, hops it told us)`` each (a
    non-relay advertises only its own subscriptions)."""
    if member or not relay:
        return Nearest(member, None, None, None)
    best: int | None = None
    second: int | None = None
    holder: bytes | None = None
    for peer, told in carriers:
        hops = told + 1
        if best is None or hops < best:
            second, best, holder = best, hops, peer
        elif hops == best:
            second, holder = best, None
        elif second is None or hops < second:
            second = hops
    return Nearest(False, best, holder, second)


def with_carrier(near: Nearest | None, peer: bytes, hops: int) -> Nearest | None:
    """``near`` once ``peer``, not a carrier before, told us ``hops``: O(1) rather than a
    pass over every carrier (None if ``near`` is not known: compute it)."""
    if near is None or near.member:
        return near
    best, second, dist = near.best, near.second, hops + 1
    if best is None or dist < best:
        return Nearest(False, dist, peer, best)
    if dist == best:
        return Nearest(False, best, None, best)
    return Nearest(False, best, near.holder, dist if second is None else min(second, dist))


def remember(told: dict[str, Nearest], nears: dict[str, Nearest]) -> None:
    """Keep what every link was told per topic; forget topics nobody carries."""
    for topic, near in nears.items():
        if near.best is None and not near.member:
            told.pop(topic, None)
        else:
            told[topic] = near


def to_tell(
    told: dict[str, Nearest],
    nears: dict[str, Nearest],
    links: list[bytes],
    only: bytes | None,
    changed: bytes | None,
) -> list[bytes]:
    """The links to re-tell ``nears`` to: ``only``; or, after a change (then ``told`` is
    brought up to date), ``changed`` alone if no topic's Nearest moved, else every link."""
    if only is not None:
        return [only]
    unchanged = all(told.get(t) == n for t, n in nears.items())
    remember(told, nears)
    return [changed] if changed is not None and unchanged else links
