"""Per-sender order in a running peer: what goes to the inbox waits for what its
sender sent before it, and the gap is fetched at once (peer/node/_ordering.py)."""

from __future__ import annotations

from pathlib import Path

from peer import Identity, Peer
from peer.wire._envelope import Content, Envelope, seal_message

from .test_offline import _options, bodies, linked, running, until

CHANNEL = "lobby"


def sealed(author: Identity, now_ms: int, n: int) -> list[Envelope]:
    return [
        seal_message(author, topic=CHANNEL, content=Content(body=f"m{i}"), seq=i, ts=now_ms)
        for i in range(1, n + 1)
    ]


def storage_of(peer: Peer):  # type: ignore[no-untyped-def]
    assert peer.storage is not None
    return peer.storage


async def test_a_later_message_waits_for_the_earlier_one(tmp_path: Path) -> None:
    opts = _options(tmp_path, "b", channels=(CHANNEL,), order_hold=60.0)
    async with running(Identity.generate(), opts) as b:
        envs = sealed(Identity.generate(), b.wall_ms(), 4)
        store = storage_of(b)
        for i in (0, 2, 3):
            store.accept(envs[i])
        await until(b, lambda: bodies(b, topic=CHANNEL) == ["m1"])
        assert store.order.order.held == 2
        assert store.statistics().to_json()["order"]["held"] == 2
        store.accept(envs[1])
        await until(b, lambda: len(bodies(b, topic=CHANNEL)) == 4)
        assert bodies(b, topic=CHANNEL) == ["m1", "m2", "m3", "m4"]
        cursors = [m.cursor for m in b.inbox.query(limit=10, topic=CHANNEL)]
        assert cursors == sorted(cursors)
        assert store.order.order.held == 0


async def test_the_gap_is_fetched_from_a_carrier_at_once(tmp_path: Path) -> None:
    hold = {"channels": (CHANNEL,), "order_hold": 60.0}  # only the fetch can release m3
    async with (
        running(Identity.generate(), _options(tmp_path, "a", **hold)) as a,
        running(Identity.generate(), _options(tmp_path, "b", **hold)) as b,
    ):
        for peer in (a, b):  # no digest round after the first: the fetch alone repairs
            storage_of(peer).catchup_service.anti_entropy.interval = 3600.0
        await linked(a, b)
        core = storage_of(b).catchup_service.core
        await until(b, lambda: a.peer_id in core.carriers and not core.walking())
        envs = sealed(Identity.generate(), b.wall_ms(), 3)
        await storage_of(a).accept_many(envs)  # the carrier holds all three
        storage_of(b).accept(envs[0])  # b hears 1 and 3 live; 2 went astray
        storage_of(b).accept(envs[2])
        await until(b, lambda: len(bodies(b, topic=CHANNEL)) == 3)
        assert bodies(b, topic=CHANNEL) == ["m1", "m2", "m3"]
        assert storage_of(b).order.order.skipped == 0


async def test_after_a_restart_the_order_goes_on_from_the_store(tmp_path: Path) -> None:
    author = Identity.generate()
    me = Identity.generate()
    opts = _options(tmp_path, "b", channels=(CHANNEL,), order_hold=60.0)
    async with running(me, opts) as b:
        envs = sealed(author, b.wall_ms(), 5)
        await storage_of(b).accept_many(envs[:2])
        await until(b, lambda: len(bodies(b, topic=CHANNEL)) == 2)
    async with running(me, opts) as b:
        store = storage_of(b)
        store.accept(envs[3])  # 3 is missing: 4 waits, though this run never saw 1 or 2
        store.accept(envs[4])
        store.accept(envs[2])
        await until(b, lambda: len(bodies(b, topic=CHANNEL)) == 5)
        assert bodies(b, topic=CHANNEL) == ["m1", "m2", "m3", "m4", "m5"]


async def test_a_new_senders_first_messages_that_went_astray_come_first(tmp_path: Path) -> None:
    hold = {"channels": (CHANNEL,), "order_hold": 60.0}
    async with (
        running(Identity.generate(), _options(tmp_path, "a", **hold)) as a,
        running(Identity.generate(), _options(tmp_path, "b", **hold)) as b,
    ):
        for peer in (a, b):
            storage_of(peer).catchup_service.anti_entropy.interval = 3600.0
        await linked(a, b)
        core = storage_of(b).catchup_service.core
        await until(b, lambda: a.peer_id in core.carriers and not core.walking())
        envs = sealed(Identity.generate(), b.wall_ms(), 4)
        await storage_of(a).accept_many(envs)
        storage_of(b).accept(envs[2])  # b first hears this sender at seq 3, then 4
        storage_of(b).accept(envs[3])
        await until(b, lambda: len(bodies(b, topic=CHANNEL)) == 4)
        assert bodies(b, topic=CHANNEL) == ["m1", "m2", "m3", "m4"]


async def test_a_new_senders_history_from_before_we_subscribed_is_not_handed_on(
    tmp_path: Path,
) -> None:
    hold = {"channels": (CHANNEL,), "order_hold": 60.0}
    async with (
        running(Identity.generate(), _options(tmp_path, "a", **hold)) as a,
        running(Identity.generate(), _options(tmp_path, "b", **hold)) as b,
    ):
        for peer in (a, b):
            storage_of(peer).catchup_service.anti_entropy.interval = 3600.0
        await linked(a, b)
        core = storage_of(b).catchup_service.core
        await until(b, lambda: a.peer_id in core.carriers and not core.walking())
        author, now = Identity.generate(), b.wall_ms()
        old = [
            seal_message(author, topic=CHANNEL, content=Content(body=f"old{i}"), seq=i,
                         ts=now - 3_600_000)
            for i in range(1, 6)
        ]  # fmt: skip
        new = seal_message(author, topic=CHANNEL, content=Content(body="new"), seq=6, ts=now)
        await storage_of(a).accept_many(old)  # a followed this sender an hour ago; b did not
        storage_of(b).accept(new)
        await until(b, lambda: bodies(b, topic=CHANNEL) == ["new"])  # not after 60 s: looked back
        await until(b, lambda: storage_of(b).order.history == 5)
        assert storage_of(b).order.order.skipped == 0


async def test_repairs_of_one_sender_are_paced(tmp_path: Path) -> None:
    """A gap nobody can fill (an author held to its limit leaves one per dropped
    message) is asked about a few times, then at the pace of REPAIR_RATE."""
    from peer.node._gapfill import REPAIR_BURST

    async with running(Identity.generate(), _options(tmp_path, "b", channels=(CHANNEL,))) as b:
        filler = storage_of(b).catchup_service.filler
        flooder, honest = b"f" * 32, b"h" * 32
        passes = [filler.may_repair(CHANNEL, flooder) for _ in range(int(REPAIR_BURST) + 2)]
        assert passes == [True] * int(REPAIR_BURST) + [False, False]
        assert filler.deferred == 2
        assert filler.may_repair(CHANNEL, honest)  # another sender has its own passes
        assert storage_of(b).statistics().to_json()["repairs_deferred"] == 2
