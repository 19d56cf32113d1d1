"""Anti-entropy in process: peers with stores on memory links repair gaps while online.

The minimal case of issue 12: a publisher whose only relay is gone has its
messages acknowledged (stored, not routed); once the relay is back, the
relay and the subscriber get them by digest exchange, with nobody
restarted. Real time with bounded waits (the store works in threads); the
digest interval is shortened on each peer.
"""

from __future__ import annotations

import functools
from pathlib import Path

from peer import Identity, Peer
from peer.wire._envelope import Content
from peer.wire._errors import ErrorCode
from store import MessageStore

from .test_offline import _options, bodies, linked, running, until

CHANNEL = "storm"


def fast(*peers: Peer) -> None:
    """Digest rounds every 0.3 s instead of 5 s."""
    for peer in peers:
        assert peer.storage is not None
        peer.storage.catchup_service.anti_entropy.interval = 0.3


async def unlink(a: Peer, b: Peer) -> None:
    a.links[b.peer_id].close(ErrorCode.SHUTDOWN, "going away")
    await until(a, lambda: b.peer_id not in a.links and a.peer_id not in b.links)


def own_seqs(peer: Peer, author: Peer) -> list[int]:
    return [
        m.seq
        for m in peer.inbox.query(limit=100_000, topic=CHANNEL)
        if m.sender == author.peer_id
    ]


async def test_published_while_the_relay_was_away_reaches_the_subscriber(
    tmp_path: Path,
) -> None:
    ia, ib, iseed = Identity.generate(), Identity.generate(), Identity.generate()
    async with (
        running(iseed, _options(tmp_path, "seed", relay_only=True)) as seed,
        running(ia, _options(tmp_path, "a", channels=(CHANNEL,))) as a,
        running(ib, _options(tmp_path, "b", channels=(CHANNEL,))) as b,
    ):
        fast(seed, a, b)
        await linked(seed, b)
        await linked(a, seed)
        await until(a, lambda: a.router.reachable(CHANNEL))
        await unlink(a, seed)
        for i in range(1, 11):
            await a.send_message(CHANNEL, Content(body=f"m{i}"))  # acknowledged: stored
        await linked(a, seed)
        want = [f"m{i}" for i in range(1, 11)]
        await until(b, lambda: len(bodies(b, topic=CHANNEL)) >= 10)
        assert bodies(b, topic=CHANNEL) == want  # all, in order, once
        assert b.storage is not None
        assert b.storage.catchup[CHANNEL].missed == {}
        assert seed.storage is not None
        ranges = await seed.storage.service.read(lambda s: s.sender_ranges(ia.peer_id, CHANNEL))
        assert ranges == [(1, 10)]


async def test_a_gap_after_heard_messages_is_filled_and_missed_clears(tmp_path: Path) -> None:
    """The subscriber saw seq 1 live, then 2..11 went unrouted: it gets them, in order,
    and ``missed`` (reported while nobody linked had them) empties once repaired."""
    ia, ib, iseed = Identity.generate(), Identity.generate(), Identity.generate()
    async with (
        running(iseed, _options(tmp_path, "seed", relay_only=True)) as seed,
        running(ia, _options(tmp_path, "a", channels=(CHANNEL,))) as a,
        running(ib, _options(tmp_path, "b", channels=(CHANNEL,))) as b,
    ):
        fast(seed, a, b)
        await linked(seed, b)
        await linked(a, seed)
        await until(a, lambda: a.router.reachable(CHANNEL))
        await a.send_message(CHANNEL, Content(body="m1"))
        await until(b, lambda: bodies(b, topic=CHANNEL) == ["m1"])
        await unlink(a, seed)
        for i in range(2, 12):
            await a.send_message(CHANNEL, Content(body=f"m{i}"))
        assert b.storage is not None
        stats = b.storage.catchup[CHANNEL]
        stats.missed[ia.peer_id_hex] = 10  # as a walk would have reported it meanwhile
        await linked(a, seed)
        await until(b, lambda: len(bodies(b, topic=CHANNEL)) >= 11)
        assert own_seqs(b, a) == list(range(1, 12))
        await until(b, lambda: stats.missed == {})


async def test_both_sides_of_a_partition_converge(tmp_path: Path) -> None:
    ia, ib, iseed = Identity.generate(), Identity.generate(), Identity.generate()
    async with (
        running(iseed, _options(tmp_path, "seed", relay_only=True)) as seed,
        running(ia, _options(tmp_path, "a", channels=(CHANNEL,))) as a,
        running(ib, _options(tmp_path, "b", channels=(CHANNEL,))) as b,
    ):
        fast(seed, a, b)
        await linked(seed, b)
        await linked(a, seed)
        await until(a, lambda: a.router.reachable(CHANNEL))
        await until(b, lambda: b.router.reachable(CHANNEL))
        await a.send_message(CHANNEL, Content(body="a1"))
        await until(b, lambda: bodies(b, topic=CHANNEL) == ["a1"])
        await unlink(a, seed)  # a on one side; the seed and b on the other
        for i in range(2, 6):
            await a.send_message(CHANNEL, Content(body=f"a{i}"))
        for i in range(1, 6):
            await b.send_message(CHANNEL, Content(body=f"b{i}"))
        await linked(a, seed)
        await until(a, lambda: set(bodies(a, topic=CHANNEL)) == {f"b{i}" for i in range(1, 6)})
        await until(b, lambda: set(bodies(b, topic=CHANNEL)) == {f"a{i}" for i in range(1, 6)})
        assert own_seqs(a, b) == [1, 2, 3, 4, 5]
        assert own_seqs(b, a) == [1, 2, 3, 4, 5]
        assert seed.storage is not None
        for author in (ia, ib):  # the seed, in the middle, holds both sides
            read = functools.partial(
                MessageStore.sender_ranges, sender=author.peer_id, topic=CHANNEL
            )
            assert await seed.storage.service.read(read) == [(1, 5)]
