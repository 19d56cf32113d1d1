"""Fewer garbage collections while catch-up stores pages: ``bulk_gc``.

A catch-up commit holds a page's worth of young objects per message (the
envelope, its log and inbox items and their results, the inbox entry) from
its check to its commit, in three threads. With CPython's default young
generation threshold (700) the collector runs every ~40 messages and walks
each of them again and again on their way to the old generation: 4-6 µs of
CPU per message caught up, measured (``bench.catchup_inproc`` reports it).
While a walk's pages are checked and stored, the young threshold is raised
to ``BULK_THRESHOLD`` (2.5-3 µs per message then, same sitting); it is put
back when no walk is storing. Rules kept here:

* Only the young generation's threshold changes, and only while at least
  one ``bulk_gc`` block runs (a count, so walks of several topics, or
  several peers in one process, nest); the last one out restores what it
  found. A collector that is off (``gc.disable()``, or threshold 0) is left
  alone, and so is a threshold already above ours.
* Not applied to everything all the time: a young collection of 10,000
  objects pauses the thread it runs in for a few milliseconds, which the
  relay's latency would pay. The threshold is the process's, and a block
  spans awaits, so while a catch-up stores pages every other topic relayed
  meanwhile pays those pauses too (the walked topics' live messages wait for
  the walk anyway): a peer catching up trades a few ms of latency on its
  other traffic for ~2-4 µs less CPU per message caught up.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

BULK_THRESHOLD = 10_000


class _State:
    depth = 0
    saved: tuple[int, int, int] | None = None


@contextlib.contextmanager
def bulk_gc() -> Iterator[None]:
    """Run the block with the young generation's threshold at ``BULK_THRESHOLD``."""
    if _State.depth == 0:
        current = gc.get_threshold()
        if gc.isenabled() and 0 < current[0] < BULK_THRESHOLD:
            _State.saved = current
            gc.set_threshold(BULK_THRESHOLD, current[1], current[2])
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
        if _State.depth == 0 and _State.saved is not None:
            gc.set_threshold(*_State.saved)
            _State.saved = None


__all__ = ["BULK_THRESHOLD", "bulk_gc"]
