"""Delivery policy as sans-IO parts in virtual time: the per-peer circuit
breaker (3 failures, 60 s cooldown, half-open probe), the outbox's retry
schedule with it, dead letters revived, and alert deduplication."""

from __future__ import annotations

import itertools
import random

from peer.protocols._alerts import ESCALATE, IGNORED, NEW, RECOVERY, SUPPRESSED, AlertDedup
from peer.protocols._breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreakers
from peer.protocols._delivery import Delivery, Expire, Pending, Reach, Reschedule
from store import Backoff

BOB = b"\x0b" * 32


def test_breaker_opens_after_three_failures_and_probes_after_the_cooldown() -> None:
    b = CircuitBreakers()
    for t in (0, 1000):
        assert b.allow(BOB, t) and not b.on_failure(BOB, t)
    assert b.state(BOB, 1500) == CLOSED
    assert b.allow(BOB, 2000) and b.on_failure(BOB, 2000)  # the third: open
    assert b.state(BOB, 2001) == OPEN and not b.allow(BOB, 2001)
    assert not b.allow(BOB, 61_999) and b.refused == 2
    assert b.state(BOB, 62_000) == HALF_OPEN
    assert b.allow(BOB, 62_000)  # the probe
    assert not b.allow(BOB, 62_001)  # only one
    assert b.on_failure(BOB, 63_000)  # the probe failed: open again, a new cooldown
    assert not b.allow(BOB, 122_999) and b.allow(BOB, 123_000)
    b.on_success(BOB)  # the probe made it
    assert b.state(BOB, 123_001) == CLOSED and b.allow(BOB, 123_001)
    assert b.snapshot(123_001) == {}


def test_retry_schedule_with_the_breaker_in_virtual_time() -> None:
    """The outbox tries again on its backoff; reaches are held while the breaker is
    open, the DM is never dropped, and it is a dead letter only at its deadline."""
    core = Delivery(b"\x0a" * 32, Backoff(base_ms=1000, cap_ms=8000), random.Random(1),
                    deadline_ms=300_000)
    entry = core.plan_dm(b"\x01" * 32, BOB, 1, b"wire", now_ms=0)
    core.on_own_dm_stored(entry)
    breakers = CircuitBreakers()
    now, reaches, held, tries = 0, 0, 0, []
    while now < 300_000:
        nxt = core.next_deadline()
        assert (nxt is not None and nxt > now) or nxt == now
        now = nxt
        for command in core.handle_timer(now):
            if isinstance(command, Reach):
                if breakers.allow(BOB, now):
                    reaches += 1
                    breakers.on_failure(BOB, now)  # bob stays unreachable
                else:
                    held += 1
            elif isinstance(command, Reschedule):
                tries.append(command.next_try_ms)
            elif isinstance(command, Expire):
                assert now == 300_000
                now = 300_001
    assert tries == sorted(tries) and all(
        b - a <= 8000 for a, b in itertools.pairwise(tries))
    # reaches: 3 before the breaker opens, then one probe per 60 s cooldown
    assert 3 + 4 <= reaches <= 3 + 5 and held > reaches
    assert core.has_dead(BOB) and core.dead_to(BOB) == [entry.msg_id]
    # bob is back: the dead letter goes into the outbox again
    core.revive(Pending(entry.msg_id, BOB, 1, b"wire", 0, 400_000, 700_000))
    assert not core.has_dead(BOB) and entry.msg_id in core


def test_alert_dedup_new_suppressed_escalate_recovery() -> None:
    d = AlertDedup(window_ms=60_000, escalate_after=3)
    kinds = [d.on_alert("db1", "disk", False, t).kind for t in (0, 10, 20, 30, 40)]
    assert kinds == [NEW, SUPPRESSED, ESCALATE, SUPPRESSED, SUPPRESSED]
    assert d.on_alert("db2", "disk", False, 50).kind == NEW  # keyed by host and check
    assert d.on_alert("db1", "cpu", False, 50).kind == NEW
    assert d.on_alert("db1", "disk", True, 60).kind == RECOVERY
    assert d.on_alert("db1", "disk", True, 70).kind == IGNORED
    assert d.on_alert("db1", "disk", False, 80).kind == NEW  # firing again after recovery
    assert d.on_alert("db2", "disk", False, 50 + 60_000).kind == NEW  # the window passed
    assert d.counts[SUPPRESSED] == 3 and d.on_alert("x", "y", False, 0).send
