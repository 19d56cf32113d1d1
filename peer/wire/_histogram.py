"""A latency histogram in the peer's counter style: fixed buckets inside, a frozen
snapshot outside.

The part that times something (the store's commits, the DHT's lookups) owns a
``LatencyHistogram`` and calls ``observe(seconds)``; ``statistics()`` returns a
``Statistics`` with the cumulative count per upper bound (``buckets``, keyed
by the bound as a string, ``"+Inf"`` last), ``count`` and ``sum``: what
``/status`` shows and what ``/metrics`` turns into a Prometheus histogram.
Pure: no clock of its own (the caller measures), no I/O.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from ._stats import Statistics, snapshot

# seconds: from a fast fsync (sub-millisecond) to a lookup across a slow mesh
DEFAULT_BOUNDS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)


def bound_label(bound: float) -> str:
    """The bucket key for ``bound``, as Prometheus writes ``le``."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


class LatencyHistogram:
    """Observations counted in fixed buckets (upper bounds, in seconds)."""

    __slots__ = ("_bounds", "_counts", "count", "sum")

    def __init__(self, bounds: Sequence[float] = DEFAULT_BOUNDS) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError("bucket bounds must be distinct and increasing")
        self._bounds = tuple(float(b) for b in bounds)
        self._counts = [0] * (len(self._bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self._counts[bisect.bisect_left(self._bounds, seconds)] += 1
        self.count += 1
        self.sum += seconds

    def statistics(self) -> Statistics:
        buckets: dict[str, int] = {}
        total = 0
        for bound, n in zip((*self._bounds, float("inf")), self._counts, strict=True):
            total += n
            buckets[bound_label(bound)] = total
        return snapshot(buckets=buckets, count=self.count, sum=round(self.sum, 6))


__all__ = ["DEFAULT_BOUNDS", "LatencyHistogram", "bound_label"]
