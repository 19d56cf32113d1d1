"""Retention with pins (``apply_retention(..., pinned=...)``): a record whose pin
key is in the id index is kept, and since retention trims only a topic's old
end, the topic stops there for this step, reported ``done`` with ``pinned``.

The pin key here is the id of a record in another topic (as the peer's
``~inbox`` references are): deleting that record releases the pin, and the
next step deletes what it held.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from store import (
    AppendItem,
    KeepRules,
    MessageStore,
    Pin,
    RetentionPolicy,
    StoredMessage,
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
def test_a_pinned_oldest_record_is_kept_and_retention_is_done(
    store: MessageStore, limit: dict[str, int]
) -> None:
    items = [item(n) for n in range(1, 11)]
    store.append_batch(items)
    store.append_batch([holder(items[0], 1)])  # the oldest is pinned
    result = store.apply_retention("lobby", now_ms=10, pinned=pinned_by_key, **limit)
    assert (result.deleted, result.done, result.pinned) == (0, True, 1)
    assert _seqs(store) == list(range(1, 11))  # nothing behind it goes either
    # without pins (or pins nobody holds) the same call deletes them all
    unpinned = store.apply_retention("lobby", now_ms=10, pinned=lambda m: (b"\0" * 32,), **limit)
    assert (unpinned.deleted, unpinned.done, unpinned.pinned) == (10, True, 0)
    assert _seqs(store) == []


def test_deleting_stops_at_the_oldest_pinned_record(store: MessageStore) -> None:
    items = [item(n) for n in range(1, 21)]
    store.append_batch(items)
    store.append_batch([holder(items[6], 1), holder(items[14], 2)])
    result = store.apply_retention("lobby", now_ms=10, max_count=0, pinned=pinned_by_key)
    assert (result.deleted, result.done, result.pinned) == (6, True, 1)
    assert _seqs(store) == list(range(7, 21))
    assert store.get(items[6].msg_id) is not None
    assert store.get(items[5].msg_id) is None  # its index entries went with it
    assert store.check() == []


def test_a_released_pin_lets_the_next_step_delete(store: MessageStore) -> None:
    items = [item(n) for n in range(1, 6)]
    store.append_batch(items)
    store.append_batch([holder(items[0], 1), holder(items[2], 2)])
    kept = store.apply_retention("lobby", now_ms=10, max_age_ms=0, pinned=pinned_by_key)
    assert kept.deleted == 0
    # the holder's own retention drops its oldest record: the first pin goes
    assert store.apply_retention("~holds", now_ms=10, max_count=1).deleted == 1
    result = store.apply_retention("lobby", now_ms=10, max_age_ms=0, pinned=pinned_by_key)
    assert (result.deleted, result.pinned) == (2, 1)
    assert _seqs(store) == [3, 4, 5]
    assert store.apply_retention("~holds", now_ms=10, max_count=0).deleted == 1
    result = store.apply_retention("lobby", now_ms=10, max_age_ms=0, pinned=pinned_by_key)
    assert (result.deleted, result.done, result.pinned) == (3, True, 0)
    assert _seqs(store) == [] and store.check() == []


def test_a_budget_step_that_ends_before_a_pin_is_not_done(store: MessageStore) -> None:
    items = [item(n) for n in range(1, 11)]
    store.append_batch(items)
    store.append_batch([holder(items[7], 1)])
    first = store.apply_retention("lobby", now_ms=10, max_count=0, budget=4, pinned=pinned_by_key)
    assert (first.deleted, first.done, first.pinned) == (4, False, 0)
    second = store.apply_retention("lobby", now_ms=10, max_count=0, budget=4, pinned=pinned_by_key)
    assert (second.deleted, second.done, second.pinned) == (3, True, 1)
    assert _seqs(store) == [8, 9, 10]


async def test_a_sweep_with_pins_ends_and_frees_what_was_released(tmp_path: Path) -> None:
    items = [item(n) for n in range(1, 41)]
    rules = KeepRules(topics={"lobby": RetentionPolicy(max_age_ms=0),
                              "~holds": RetentionPolicy(max_count=1)})

    def pins(topic: str) -> Pin | None:
        return None if topic == "~holds" else pinned_by_key

    with trio.fail_after(30):
        async with open_store_service(str(tmp_path / "s"), sync=False) as service:
            await service.append_many(items)
            await service.append_many([holder(items[9], 1), holder(items[29], 2)])
            first = await service.retention_sweep(rules, now_ms=10, budget=4, pinned=pins)
            lobby = await service.head("lobby")
            assert first == 9 + 1  # lobby up to the first pin; holds drops that pin
            assert (lobby.first_seq, lobby.count) == (10, 31)
            second = await service.retention_sweep(rules, now_ms=10, budget=4, pinned=pins)
            lobby = await service.head("lobby")
            assert second == 20  # up to the pin still held
            assert (lobby.first_seq, lobby.count) == (30, 11)
            # no pins: the sweep empties the topic
            assert await service.retention_sweep(rules, now_ms=10) == 11
