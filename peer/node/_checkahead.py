"""Check ahead: a burst's signature checks in a worker thread, while the loop goes on.

The link manager's reader hands a burst of records it already read and
opened (``peer.node._linkhost``) to ``CheckAhead.check`` before routing it.
Rules kept here (the sans-IO half is ``peer.protocols._checkahead``):

* Only a burst with at least ``MIN_CHECKS`` envelopes worth checking goes to
  a thread, in one ``trio.to_thread.run_sync`` call: a lone record (the
  latency path) and a smaller burst never wait for a thread; they are
  routed as always.
* Only what the router would check itself is planned (``plan`` with the
  router's ``Foresight`` for the link: its budget and ``pub`` limit, seen
  ids, muted or over-limit authors), with the author tokens of the bursts
  in flight taken off (``reserved``), and planning stops at a frame that may
  end the link; the thread stops at the first failed check, which the router
  then refuses without checking it again (``Verdicts.refuted``). So a
  hostile link or many of them get no more signatures checked than without
  check-ahead.
* Threads are bounded by one ``CapacityLimiter`` per peer (the cores but
  one, at least one); each link has at most one burst in flight (its reader
  waits for it, holding at most ``MAX_HELD`` bytes), and all links together
  at most ``MAX_IN_FLIGHT`` bursts and ``MAX_IN_FLIGHT_BYTES`` bytes: a burst
  over either is routed on the loop at once, its checks made by the router
  as without check-ahead (never dropped or delayed for it; counted in
  ``checked_ahead_over_budget``). So memory and per-link order stay bounded.
* An id being checked for one link is not checked again for another link's
  burst meanwhile (``busy``); that copy is left to the router, which by then
  has usually seen it.
* ``vouching`` sets the router's ``vouched`` only for the synchronous
  stretch that routes the burst, and always clears it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import trio

from peer.protocols._checkahead import NO_VOUCHES, Vouch, Vouching, plan, run_checks
from peer.wire._frametypes import AnyFrame
from peer.wire._identity import peer_id_of

from ._options import PeerCounters

# envelopes a burst must hold to be checked in a thread: below 4 the hand-off costs the
# event loop more than the checks it takes off it (python -m bench.check_ahead_cpu)
MIN_CHECKS = 4
MAX_HELD = 1 << 20  # plaintext bytes a link's burst may hold while its checks run, at most
MAX_IN_FLIGHT = 64  # bursts waiting for or in a thread, all links together, at most
MAX_IN_FLIGHT_BYTES = 8 << 20  # ... and the plaintext bytes they hold


class CheckAhead:
    """Runs bursts' checks in threads for one peer's ``router``."""

    def __init__(
        self, router: Vouching, counters: PeerCounters, threads: int | None = None
    ) -> None:
        self.router = router
        self.counters = counters  # checked_ahead_bursts, checked_ahead, checked_ahead_failed
        self.limiter = trio.CapacityLimiter(threads or max(1, (os.cpu_count() or 2) - 1))
        self._busy: set[bytes] = set()
        self._reserved: Counter[bytes] = Counter()  # author -> envelopes planned in flight
        self.in_flight = 0  # bursts
        self.in_flight_bytes = 0

    async def check(
        self, peer: bytes, burst: Sequence[tuple[AnyFrame, int]], held: int, now: float
    ) -> Vouch:
        """The vouches for ``burst`` (frames and sizes, ``held`` bytes, from ``peer``'s
        link at ``now``): none if too few are worth a thread, or if holding the burst
        while they run would take it over ``MAX_HELD`` or all over the in-flight budget."""
        if held > MAX_HELD:
            return NO_VOUCHES
        ahead = self.router.foresight(peer, now, self._reserved)
        checks = plan(burst, self.router.seen, self._busy, ahead)
        if len(checks) < MIN_CHECKS:
            return NO_VOUCHES
        if self.in_flight >= MAX_IN_FLIGHT or self.in_flight_bytes + held > MAX_IN_FLIGHT_BYTES:
            self.counters.checked_ahead_over_budget += 1
            return NO_VOUCHES
        mids = [c.mid for c in checks]
        authors = Counter(peer_id_of(c.key) for c in checks)
        self._busy.update(mids)
        self._reserved.update(authors)
        self.in_flight += 1
        self.in_flight_bytes += held
        try:
            passed = await trio.to_thread.run_sync(run_checks, checks, limiter=self.limiter)
        finally:
            self._busy.difference_update(mids)
            self._reserved.subtract(authors)
            for author in authors:
                if self._reserved[author] <= 0:
                    del self._reserved[author]
            self.in_flight -= 1
            self.in_flight_bytes -= held
        failed = 0 if passed.refuted is None else 1  # nothing is checked after it
        self.counters.checked_ahead_bursts += 1
        self.counters.checked_ahead += len(passed) + failed
        self.counters.checked_ahead_failed += failed
        return passed

    @contextmanager
    def vouching(self, vouched: Vouch) -> Iterator[None]:
        """The router skips exactly the checks in ``vouched`` while this lasts."""
        self.router.vouched = vouched
        try:
            yield
        finally:
            self.router.vouched = NO_VOUCHES
