"""Check-ahead checks no more than the router would: hostile bursts, and the bound on
all links' bursts in flight (``peer.node._checkahead``, ``peer.protocols._checkahead``).

The router drops some envelopes before their signature: a muted author's, an author
over its limit, a link over its ``pub`` limit or its frame budget, ids it has seen.
Check-ahead plans only what the router would check, so a hostile link cannot make a
relay verify what it would have dropped unverified; and bursts waiting for a thread
are bounded across links, a burst over the bound being routed on the loop at once.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
import trio

from peer.node import _checkahead as shell
from peer.node._checkahead import MIN_CHECKS, CheckAhead
from peer.node._options import PeerCounters
from peer.protocols._checkahead import NO_VOUCHES, plan, run_checks
from peer.protocols._gossip import GossipRouter
from peer.wire._envelope import split_wire
from peer.wire._errors import ErrorCode
from peer.wire._frametypes import AnyFrame, Ping, Pub
from peer.wire._limits import GossipParams
from tests.test_checkahead import AUTHORS, _compare, _env, _pub, _sent

FEW = GossipParams(sender_rate=40.0, sender_fresh_s=0.25)  # a new author: 10 tokens


def _sigs(envs: list[Any]) -> Counter[bytes]:
    return Counter(split_wire(e.wire)[1] for e in envs)


async def test_a_muted_authors_burst_is_not_checked_at_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    envs = [_env(n) for n in range(16)]
    muted = (AUTHORS[0].peer_id,)
    c = await _compare(monkeypatch, [[_pub(e.wire) for e in envs]], muted=muted)
    assert _sent(c.fast) == [] and c.fast.close_code is None
    assert sum(c.general_checks.values()) == 0  # the router drops them unchecked ...
    assert sum(c.fast_checks.values()) == 0  # ... and nothing is checked ahead either
    assert c.fast.counters.checked_ahead == 0 and c.fast.counters.checked_ahead_bursts == 0


async def test_only_what_an_author_may_still_send_is_checked_ahead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new author has 10 tokens: of its 15 envelopes the router checks 10 and drops
    5 unchecked; check-ahead checks those 10 only (and another author's behind them)."""
    envs = [_env(n) for n in range(15)] + [_env(100, author=1)]
    c = await _compare(monkeypatch, [[_pub(e.wire) for e in envs]], params=FEW)
    passed = [*envs[:10], envs[15]]
    assert _sent(c.fast) == [e.wire for e in passed]
    assert c.general_checks == c.fast_checks == _sigs(passed)
    assert c.fast.counters.checked_ahead == 11 and c.fast_on_loop == 0


async def test_a_link_over_its_pub_limit_or_budget_gets_nothing_more_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    envs = [_env(n, author=n % 3) for n in range(16)]
    frames = [_pub(e.wire) for e in envs]
    # the link's pub limit: 6 pub frames, then dropped before they are parsed
    pubs = replace(GossipParams(), link_pub_burst=6.0, link_pub_rate=0.001)
    c = await _compare(monkeypatch, [frames], params=pubs)
    assert c.general_checks == c.fast_checks == _sigs(envs[:6])
    assert c.fast.counters.checked_ahead == 6
    # the frame budget: the 8th frame closes the link (a ping among them counts)
    budget = replace(GossipParams(), frame_burst=8.0, frames_per_second=0.001)
    c = await _compare(monkeypatch, [[Ping(1).encode(), *frames]], params=budget)
    assert c.fast.close_code == ErrorCode.RATE
    assert c.general_checks == c.fast_checks == _sigs(envs[:7])
    assert c.fast.counters.checked_ahead == 7


def test_the_foresight_changes_nothing_in_the_router() -> None:
    router = GossipRouter(b"\x01" * 32, params=FEW)
    link = b"\x02" * 32
    router.add_link(link, relay=True, now=0.0)
    envs = [_env(n) for n in range(16)]
    burst: list[tuple[AnyFrame, int]] = [(Pub(e.wire), 400) for e in envs]
    before = (router._links[link].frame_tokens, len(router._senders), len(router._link_pubs))
    for _ in range(3):  # planned again and again: the same, nothing spent
        checks = plan(burst, router.seen, (), router.foresight(link, 1.0))
        assert [c.mid for c in checks] == [e.id for e in envs[:10]]
    after = (router._links[link].frame_tokens, len(router._senders), len(router._link_pubs))
    assert before == after
    # what bursts in flight were planned to spend of an author is not planned again
    reserved = {AUTHORS[0].peer_id: 7}
    assert len(plan(burst, router.seen, (), router.foresight(link, 1.0, reserved))) == 3
    # an unknown link, or one graylisted: the router checks nothing from it
    assert plan(burst, router.seen, (), router.foresight(b"\x09" * 32, 1.0)) == []
    router._links[link].graylisted = True
    assert plan(burst, router.seen, (), router.foresight(link, 1.0)) == []


class Gate:
    """Holds every thread's checks until ``open`` (so bursts stay in flight)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.release = threading.Event()
        self.entered = 0
        self._changed = trio.Event()

        def held(checks: Any) -> Any:
            trio.from_thread.run_sync(self._enter)
            self.release.wait(10)
            return run_checks(checks)

        monkeypatch.setattr(shell, "run_checks", held)

    def _enter(self) -> None:
        self.entered += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_entered(self, n: int) -> None:
        while self.entered < n:
            await self._changed.wait()


async def test_bursts_in_flight_are_bounded_across_links(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``MAX_IN_FLIGHT`` bursts waiting for threads, another link's burst gets no
    thread: it is routed at once (its checks left to the router), never held back;
    the same with ``MAX_IN_FLIGHT_BYTES``. An author's tokens planned in flight are not
    planned again for another link meanwhile."""
    monkeypatch.setattr(shell, "MAX_IN_FLIGHT", 2)
    gate = Gate(monkeypatch)
    router = GossipRouter(b"\x01" * 32, params=FEW)
    links = [bytes([9, n]) * 16 for n in range(4)]
    for link in links:
        router.add_link(link, relay=True, now=0.0)
    counters = PeerCounters()
    ahead = CheckAhead(router, counters, threads=4)
    per_author = [[_env(n, author=a) for n in range(8)] for a in range(3)]

    def burst(envs: list[Any]) -> list[tuple[AnyFrame, int]]:
        return [(Pub(e.wire), 1000) for e in envs]

    got: list[Any] = []

    async def one(link: bytes, envs: list[Any], held: int = 8000) -> None:
        got.append(await ahead.check(link, burst(envs), held, 1.0))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, links[0], per_author[0][:6])
            nursery.start_soon(one, links[1], per_author[1])
            await gate.wait_entered(2)
            assert ahead.in_flight == 2 and ahead.in_flight_bytes == 16000
            # over the count: routed at once, no thread, no wait
            assert await ahead.check(links[2], burst(per_author[2]), 8000, 1.0) is NO_VOUCHES
            assert counters.checked_ahead_over_budget == 1 and gate.entered == 2
            # author 0 has 10 tokens, 6 planned in flight: 4 left for another link
            monkeypatch.setattr(shell, "MAX_IN_FLIGHT", 3)
            nursery.start_soon(one, links[3], [_env(n) for n in range(10, 18)])
            await gate.wait_entered(3)
            gate.release.set()
    assert sorted(len(v) for v in got) == [MIN_CHECKS, 6, 8]
    assert ahead.in_flight == 0 and ahead.in_flight_bytes == 0 and not ahead._reserved
    # over the bytes: the same (and nothing was reserved for it)
    monkeypatch.setattr(shell, "MAX_IN_FLIGHT_BYTES", 4000)
    assert await ahead.check(links[2], burst(per_author[2]), 8000, 1.0) is NO_VOUCHES
    assert counters.checked_ahead_over_budget == 2
