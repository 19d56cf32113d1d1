"""Which carriers' catch-up pages overlap what we store, to pick how a page is checked.

A returning peer's pages hold nothing it stores: ``check_page`` opens them
whole and then asks the store by (sender, seq) (``MessageStore.held_in``),
with no look into the id index per message. A page from a second carrier of
a topic mostly holds what the first one gave: opening every envelope of it
would cost far more than looking its ids up first and leaving the held ones
unopened (``known``). ``Overlaps`` remembers, per (carrier, topic), whether
the last page checked held anything stored, so the next page of that walk
takes the cheaper way. Bounded: past ``MAX_LANES`` lanes it forgets them all
(a forgotten lane only costs one page opened whole).
"""

from __future__ import annotations

MAX_LANES = 1024


class Overlaps:
    """(carrier, topic) lanes whose last checked page held messages we store."""

    def __init__(self, max_lanes: int = MAX_LANES) -> None:
        self._lanes: set[tuple[bytes, str]] = set()
        self._max = max_lanes

    def opens_whole(self, carrier: bytes, topic: str) -> bool:
        """Check the next page of this lane by opening it whole (``stored``)?"""
        return (carrier, topic) not in self._lanes

    def checked(self, carrier: bytes, topic: str, messages: int, fresh: int) -> None:
        """A page of ``messages`` was checked, ``fresh`` of them not stored yet."""
        lane = (carrier, topic)
        if fresh >= messages:
            self._lanes.discard(lane)
            return
        if len(self._lanes) >= self._max:
            self._lanes.clear()
        self._lanes.add(lane)

    def __len__(self) -> int:
        return len(self._lanes)
