"""Per-sender order in a running peer: what goes to the inbox waits for what its
sender sent before it, and the gap is fetched at once (peer/node/_ordering.py)."""

from __future__ import annotations

from pathlib import Path

from peer import Identity, Peer
from peer.wire._envelope import Content, Envelope, seal_message
from store import MessageStore

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


async def test_a_dm_after_a_receipt_is_not_held(tmp_path: Path) -> None:
    """A DM sender's receipts to us are numbered in the same lane as its DMs: the DM
    that follows a receipt goes on at once, not after the hold."""
    hold = {"order_hold": 60.0}
    async with (
        running(Identity.generate(), _options(tmp_path, "a", **hold)) as a,
        running(Identity.generate(), _options(tmp_path, "b", **hold)) as b,
    ):
        await linked(a, b)
        await until(a, lambda: a.router.reachable(f"inbox/{b.peer_id.hex()}"))
        await until(b, lambda: b.router.reachable(f"inbox/{a.peer_id.hex()}"))
        await b.send_direct(a.peer_id, Content(body="question"))  # b's seq 1 to a
        await until(a, lambda: bodies(a) == ["question"])
        answer = await a.send_direct(b.peer_id, Content(body="answer"))
        await until(a, lambda: a.inbox.get(answer.id).status == "delivered")  # type: ignore[union-attr]
        await b.send_direct(a.peer_id, Content(body="thanks"))  # after b's receipt to a
        await until(a, lambda: bodies(a) == ["question", "thanks"])
        assert storage_of(a).order.order.skipped == 0


async def test_history_from_a_second_carrier_is_history_too(tmp_path: Path) -> None:
    hold = {"channels": (CHANNEL,), "order_hold": 60.0}
    async with (
        running(Identity.generate(), _options(tmp_path, "a", **hold)) as a,
        running(Identity.generate(), _options(tmp_path, "c", **hold)) as c,
        running(Identity.generate(), _options(tmp_path, "b", **hold)) as b,
    ):
        for peer in (a, b, c):
            storage_of(peer).catchup_service.anti_entropy.interval = 3600.0
        await linked(a, b)
        await linked(c, b)
        core = storage_of(b).catchup_service.core
        await until(b, lambda: {a.peer_id, c.peer_id} <= core.carriers and not core.walking())
        author, now = Identity.generate(), b.wall_ms()
        old = [
            seal_message(author, topic=CHANNEL, content=Content(body=f"old{i}"), seq=i,
                         ts=now - 3_600_000)
            for i in range(1, 6)
        ]  # fmt: skip
        for carrier in (a, c):
            await storage_of(carrier).accept_many(old)
        storage_of(b).accept(
            seal_message(author, topic=CHANNEL, content=Content(body="new"), seq=6, ts=now)
        )
        await until(b, lambda: bodies(b, topic=CHANNEL) == ["new"])
        await until(b, lambda: storage_of(b).order.history >= 5)
        storage_of(b).accept(old[0])  # a copy that comes again, later
        storage_of(b).accept(seal_message(author, topic=CHANNEL, content=Content(body="7"),
                                          seq=7, ts=now))  # fmt: skip
        await until(b, lambda: len(bodies(b, topic=CHANNEL)) == 2)
        assert bodies(b, topic=CHANNEL) == ["new", "7"]


async def test_a_walk_cursor_does_not_move_past_what_waits_unstored(tmp_path: Path) -> None:
    """Held messages are in memory only: the page's cursor move (its ``then``) waits,
    so a crash while they wait makes the next walk bring them again."""
    opts = _options(tmp_path, "b", channels=(CHANNEL,), order_hold=60.0)
    async with running(Identity.generate(), opts) as b:
        store = storage_of(b)
        envs = sealed(Identity.generate(), b.wall_ms(), 3)
        await store.accept_many(envs[:1])

        def moved(s: MessageStore) -> None:
            s.put_state("cursor-moved", b"1")

        await store.accept_many([envs[2]], then=moved)  # 3 waits for 2
        assert await store.service.read(lambda s: s.get_state("cursor-moved")) is None
        await store.accept_many([envs[1]], then=moved)  # 2 comes: both go on
        assert await store.service.read(lambda s: s.get_state("cursor-moved")) == b"1"
        assert bodies(b, topic=CHANNEL) == ["m1", "m2", "m3"]


async def test_what_the_author_limit_dropped_is_repaired_only_after_the_hold(
    tmp_path: Path,
) -> None:
    """An author over b's limit is dropped live and held back from gap repair for
    ``over_limit_mute_s``: its gaps are counted, asked for once the hold is over, then
    repaired from its carrier (what was acknowledged arrives, later)."""
    from dataclasses import replace

    from peer.wire._limits import GossipParams

    strict = replace(GossipParams(), sender_rate=10.0, sender_burst=20.0, over_limit_mute_s=2.0)
    opts_b = _options(tmp_path, "b", channels=(CHANNEL,), gossip=strict)
    ia, ib = Identity.generate(), Identity.generate()
    async with running(ia, _options(tmp_path, "a", channels=(CHANNEL,))) as a, running(
        ib, opts_b
    ) as b:
        await linked(a, b)
        await until(a, lambda: a.router.reachable(CHANNEL))
        for i in range(30):
            await a.send_message(CHANNEL, Content(body=f"m{i}"))
        await until(b, lambda: b.router.held_back(a.peer_id, b.now()))
        filler = storage_of(b).catchup_service.filler
        deferred = filler.deferred
        assert not filler.may_repair(CHANNEL, a.peer_id)  # held back: left for later
        assert filler.deferred == deferred + 1
        assert len(bodies(b, topic=CHANNEL)) < 30
        await until(b, lambda: bodies(b, topic=CHANNEL) == [f"m{i}" for i in range(30)])
