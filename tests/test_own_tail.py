"""Our messages that may not have left go out again ahead of the next one (``OwnTail``).

The chaos harness found it: a publisher acknowledged a message, was killed
before it left, came back for a moment, published newer ones live, and was
killed again; every subscriber held the newer ones for the gap, nobody but the
publisher had it, the hold ended, and the agent got them out of order.
"""

from __future__ import annotations

from pathlib import Path

from peer import Identity
from peer.protocols._owntail import OwnTail
from peer.wire._envelope import Content

from .test_antientropy_live import CHANNEL, own_seqs, unlink
from .test_offline import _options, linked, running, until


def test_nothing_goes_ahead_while_every_message_was_routed() -> None:
    tail = OwnTail(size=4)
    assert [tail.before("t", s, b"w%d" % s, routed=True) for s in (1, 2, 3)] == [[], [], []]


def test_after_an_unrouted_one_the_tail_goes_ahead_of_the_next_once() -> None:
    tail = OwnTail(size=4)
    for s in (1, 2):
        tail.before("t", s, b"w%d" % s, routed=True)
    assert tail.before("t", 3, b"w3", routed=False) == []  # nowhere to go now
    assert tail.before("t", 4, b"w4", routed=False) == []
    assert tail.before("t", 5, b"w5", routed=True) == [b"w1", b"w2", b"w3", b"w4"]  # last 4
    assert tail.before("t", 6, b"w6", routed=True) == []  # once
    assert tail.resent == 4
    assert tail.before("other", 1, b"o1", routed=True) == []  # per log topic


def test_after_a_start_the_stored_tail_goes_ahead_of_the_first_of_each_topic() -> None:
    tail = OwnTail(size=3)
    tail.preload([("a", [(s, b"a%d" % s) for s in range(1, 11)]), ("b", [(7, b"b7")])])
    assert tail.before("a", 11, b"a11", routed=True) == [b"a8", b"a9", b"a10"]
    assert tail.before("a", 12, b"a12", routed=True) == []
    assert tail.before("b", 8, b"b8", routed=True) == [b"b7"]


def test_topics_tracked_are_bounded() -> None:
    tail = OwnTail(size=2, max_topics=3)
    for i in range(10):
        tail.before(f"t{i}", 1, b"w", routed=False)
    assert len(tail._tails) == 3 and tail._due <= set(tail._tails)


async def test_unrouted_messages_reach_a_subscriber_before_the_next_one(tmp_path: Path) -> None:
    """With no order hold at the subscriber (arrival order is what its agent sees) and
    digest rounds too slow to help, the next live message brings the unrouted ones
    ahead of it, over the same links."""
    ia, ib, iseed = Identity.generate(), Identity.generate(), Identity.generate()
    async with (
        running(iseed, _options(tmp_path, "seed", relay_only=True)) as seed,
        running(ia, _options(tmp_path, "a", channels=(CHANNEL,))) as a,
        running(ib, _options(tmp_path, "b", channels=(CHANNEL,), order_hold=0.0)) as b,
    ):
        for peer in (seed, a, b):
            assert peer.storage is not None
            peer.storage.catchup_service.anti_entropy.interval = 3600.0
        await linked(seed, b)
        await linked(a, seed)
        await until(a, lambda: a.router.reachable(CHANNEL))
        await a.send_message(CHANNEL, Content(body="m1"))
        await until(b, lambda: own_seqs(b, a) == [1])
        await unlink(a, seed)
        for i in range(2, 5):
            await a.send_message(CHANNEL, Content(body=f"m{i}"))  # acknowledged, unrouted
        await linked(a, seed)
        await until(a, lambda: a.router.reachable(CHANNEL))
        await a.send_message(CHANNEL, Content(body="m5"))
        await until(b, lambda: len(own_seqs(b, a)) >= 5)
        assert own_seqs(b, a) == [1, 2, 3, 4, 5]
        assert a.swarm.own_tail.resent >= 3
