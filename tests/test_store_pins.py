"""Retention with pins (``apply_retention(..., pinned=...)``): a record whose pin
key is in the id index is kept and skipped, and the unpinned records behind it are
trimmed all the same (oldest first, while the topic is over its limit), leaving
holes that reads and ``check`` accept.

The pin key here is the id of a record in another topic (as the peer's
``~inbox`` references are): deleting that record releases the pin, and the
next step deletes what it held.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from store import (
    AppendItem,
    KeepRules,
    MessageStore,
    Pin,
    RetentionPolicy,
    StoredMessage,
    _retention,
    open_store_service,
)

_TAG = b"test-pin"


def pin_key(msg_id: bytes) -> bytes:
    return hashlib.sha256(_TAG + msg_id).digest()


def pinned_by_key(m: StoredMessage) -> tuple[bytes]:
    return (pin_key(m.msg_id),)


def item(n: int, topic: str = "lobby", received_ms: int = 0) -> AppendItem:
    wire = n.to_bytes(8, "big") * 8
    return AppendItem(hashlib.sha256(wire + topic.encode()).digest(), topic, b"\x05" * 32, n,
                      1000 + n, wire, received_ms)


def holder(of: AppendItem, n: int) -> AppendItem:
    """A record in ``~holds`` (swept after ``lobby``: topics go by name), its id
    ``of``'s pin key."""
    return AppendItem(pin_key(of.msg_id), "~holds", b"\x06" * 32, n, 1000 + n, b"ref" * 4, 0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MessageStore]:
    s = MessageStore(str(tmp_path / "s"), sync=False)
    yield s
    s.close()


def _seqs(s: MessageStore, topic: str = "lobby") -> list[int]:
    return [m.seq for m in s.read(topic, after=0, limit=1000)]


@pytest.mark.parametrize("limit", [{"max_age_ms": 0}, {"max_count": 0}, {"max_bytes": 1}])
def test_a_pinned_oldest_record_is_kept_and_the_ones_behind_it_go(
    store: MessageStore, limit: dict[str, Any]
) -> None:
    items = [item(n) for n in range(1, 11)]
    store.append_batch(items)
    store.append_batch([holder(items[0], 1)])  # the oldest is pinned
    result = store.apply_retention("lobby", now_ms=10, pinned=pinned_by_key, **limit)
    assert (result.deleted, result.done, result.pinned) == (9, True, 1)
    assert _seqs(store) == [1]  # it stays; nothing behind it waits for it
    head = store.head("lobby")
    assert (head.first_seq, head.next_seq, head.count) == (1, 11, 1)
    assert head.total_bytes == len(items[0].wire)
    assert store.check() == []
    # a step with nothing more to delete writes nothing and is done
    again = store.apply_retention("lobby", now_ms=10, pinned=pinned_by_key, **limit)
    assert (again.deleted, again.done, again.pinned) == (0, True, 1)
    # without pins (or pins nobody holds) the same call deletes it too
    unpinned = store.apply_retention("lobby", now_ms=10, pinned=lambda m: (b"\0" * 32,), **limit)
    assert (unpinned.deleted, unpinned.done, unpinned.pinned) == (1, True, 0)
    assert _seqs(store) == [] and store.check() == []
    assert store.head("lobby").first_seq == 11


def test_pinned_records_count_towards_the_limit_of_older_records_only(
    store: MessageStore,
) -> None:
    items = [item(n) for n in range(1, 21)]
    store.append_batch(items)
    store.append_batch([holder(items[0], 1), holder(items[6], 2), holder(items[14], 3)])
    result = store.apply_retention("lobby", now_ms=10, max_count=8, pinned=pinned_by_key)
    # oldest first, while the records from here on are over 8: a pin passed no longer
    # counts (1 and 7 are kept beyond the limit), one ahead does (15: 7 others stay)
    assert (result.deleted, result.done, result.pinned) == (10, True, 2)
    assert _seqs(store) == [1, 7, 13, 14, 15, 16, 17, 18, 19, 20]
    assert store.get(items[6].msg_id) is not None
    assert store.get(items[5].msg_id) is None  # its index entries went with it
    assert store.head("lobby").first_seq == 1 and store.check() == []
    # reads go over the holes
    assert [m.seq for m in store.read("lobby", after=1, limit=3)] == [7, 13, 14]


def test_pins_alone_over_the_limit_never_cost_a_newer_record(store: MessageStore) -> None:
    """The review's case: 5 pinned records over a limit of 5 took every fresh record
    behind them; now the pinned ones passed are left out of the count."""
    items = [item(n) for n in range(1, 9)]
    store.append_batch(items)
    store.append_batch([holder(items[n], n) for n in range(5)])
    limits: list[dict[str, Any]] = [
        {"max_count": 5},
        {"max_bytes": sum(len(i.wire) for i in items[:5])},
    ]
    for limit in limits:
        result = store.apply_retention("lobby", now_ms=10, pinned=pinned_by_key, **limit)
        assert result.deleted == 0 and result.done
        assert _seqs(store) == list(range(1, 9))


def test_an_unpinned_oldest_record_moves_first_seq_over_the_holes(store: MessageStore) -> None:
    items = [item(n) for n in range(1, 11)]
    store.append_batch(items)
    store.append_batch([holder(items[4], 1)])
    assert store.apply_retention("lobby", now_ms=10, max_count=6, pinned=pinned_by_key).deleted == 4
    assert _seqs(store) == [5, 6, 7, 8, 9, 10] and store.head("lobby").first_seq == 5
    store.append_batch([holder(items[7], 2)])
    step = store.apply_retention("lobby", now_ms=10, max_count=2, pinned=pinned_by_key)
    assert (step.deleted, step.pinned) == (2, 2) and _seqs(store) == [5, 8, 9, 10]
    assert store.check() == []


def test_a_released_pin_lets_the_next_step_delete(store: MessageStore) -> None:
    items = [item(n) for n in range(1, 6)]
    store.append_batch(items)
    store.append_batch([holder(items[0], 1), holder(items[2], 2)])
    result = store.apply_retention("lobby", now_ms=10, max_age_ms=0, pinned=pinned_by_key)
    assert (result.deleted, result.pinned) == (3, 2)
    assert _seqs(store) == [1, 3]
    # the holder's own retention drops its oldest record: the first pin goes
    assert store.apply_retention("~holds", now_ms=10, max_count=1).deleted == 1
    result = store.apply_retention("lobby", now_ms=10, max_age_ms=0, pinned=pinned_by_key)
    assert (result.deleted, result.pinned) == (1, 1)
    assert _seqs(store) == [3] and store.head("lobby").first_seq == 3
    assert store.apply_retention("~holds", now_ms=10, max_count=0).deleted == 1
    result = store.apply_retention("lobby", now_ms=10, max_age_ms=0, pinned=pinned_by_key)
    assert (result.deleted, result.done, result.pinned) == (1, True, 0)
    assert _seqs(store) == [] and store.check() == []


def test_an_age_limit_stops_at_the_first_young_record_behind_pins(store: MessageStore) -> None:
    items = [item(n, received_ms=n) for n in range(1, 11)]
    store.append_batch(items)
    store.append_batch([holder(items[1], 1)])
    result = store.apply_retention("lobby", now_ms=16, max_age_ms=10, pinned=pinned_by_key)
    assert (result.deleted, result.done, result.pinned) == (4, True, 1)  # 1, 3, 4, 5
    assert _seqs(store) == [2, 6, 7, 8, 9, 10]
    # "since" a time goes over the holes: after 2 for 3..6, then by the record
    assert [store.seq_at("lobby", ms) for ms in (0, 2, 3, 6, 7, 100)] == [1, 1, 2, 2, 6, 10]
    assert store.check() == []


def test_budget_steps_resume_where_they_stopped(
    store: MessageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = [item(n) for n in range(1, 31)]
    store.append_batch(items)
    store.append_batch([holder(items[n], n) for n in range(0, 12)])  # 1..12 pinned
    monkeypatch.setattr(_retention, "MAX_SCAN", 5)
    first = store.apply_retention("lobby", now_ms=10, max_count=0, budget=4, pinned=pinned_by_key)
    assert (first.deleted, first.done, first.pinned, first.resume) == (0, False, 5, 5)
    steps, after, deleted = 1, first.resume, 0
    while True:
        step = store.apply_retention(
            "lobby", now_ms=10, max_count=0, budget=4, pinned=pinned_by_key, after=after
        )
        steps, deleted, after = steps + 1, deleted + step.deleted, step.resume
        if step.done:
            break
        assert step.resume > 0
    assert deleted == 18 and _seqs(store) == list(range(1, 13))
    assert steps <= 2 + 12 // 5 + 18 // 4 + 1  # each step went forward
    assert store.check() == []


async def test_a_sweep_with_pins_trims_behind_them_and_frees_what_was_released(
    tmp_path: Path,
) -> None:
    items = [item(n) for n in range(1, 42)]
    rules = KeepRules(topics={"lobby": RetentionPolicy(max_count=4),
                              "~holds": RetentionPolicy(max_count=1)})  # fmt: skip

    def pins(topic: str) -> Pin | None:
        return None if topic == "~holds" else pinned_by_key

    with trio.fail_after(30):
        async with open_store_service(str(tmp_path / "s"), sync=False) as service:
            await service.append_many(items[:40])
            await service.append_many([holder(items[9], 1), holder(items[29], 2)])
            first = await service.retention_sweep(rules, now_ms=10, budget=4, pinned=pins)
            lobby = await service.head("lobby")
            # lobby keeps the pinned 10 and 30 beyond the limit, and the 4 newest;
            # holds drops pin 10
            assert first == 34 + 1
            assert (lobby.first_seq, lobby.count) == (10, 6)
            await service.append_many([items[40]])  # one more: over the limit again
            second = await service.retention_sweep(rules, now_ms=10, budget=4, pinned=pins)
            lobby = await service.head("lobby")
            assert second == 2  # 10, released, and the oldest behind 30
            assert (lobby.first_seq, lobby.count) == (30, 5)
            assert await service.read(lambda s: s.check()) == []


def test_steps_over_pins_with_nothing_due_open_no_write(
    store: MessageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A topic held by many pins and nothing due: each bounded step only reads (a
    write transaction that deletes nothing still takes the writer's lock)."""
    items = [item(n) for n in range(1, 31)]
    store.append_batch(items)
    store.append_batch([holder(items[n], n) for n in range(30)])  # every record pinned
    monkeypatch.setattr(_retention, "MAX_SCAN", 5)
    writes = 0
    write = store._write

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal writes
        writes += 1
        return write(*args, **kwargs)

    monkeypatch.setattr(store, "_write", counting)
    after, kept, steps = 0, (0, 0), 0
    while True:
        step = store.apply_retention(
            "lobby", now_ms=10, max_count=0, pinned=pinned_by_key, after=after, kept=kept
        )
        steps += 1
        if step.done:
            break
        after, kept = step.resume, (kept[0] + step.pinned, kept[1] + step.pinned_bytes)
    assert steps == 30 // 5 and writes == 0 and _seqs(store) == list(range(1, 31))
