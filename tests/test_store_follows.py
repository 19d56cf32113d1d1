"""``AppendItem.follows``: an item stored with the one before it in its batch
(the peer's ``~inbox`` reference to a channel record), exactly when that one
is new, with one look into the id index (which never overwrites an entry)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from store import AppendItem, MessageStore


def _item(n: int, topic: str = "lobby") -> AppendItem:
    wire = n.to_bytes(8, "big") * 8
    return AppendItem(hashlib.sha256(wire).digest(), topic, b"\x05" * 32, n, 1000 + n, wire, 7)


def _ref(of: AppendItem) -> AppendItem:
    return AppendItem(hashlib.sha256(b"ref" + of.msg_id).digest(), "~refs", bytes(32), 0,
                      of.ts, b"ref" + of.msg_id, of.received_ms, True)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MessageStore]:
    s = MessageStore(str(tmp_path / "s"), sync=False)
    yield s
    s.close()


def _ids(s: MessageStore, topic: str) -> list[bytes]:
    return [m.msg_id for m in s.read(topic, after=0, limit=1000)]


def test_a_follower_is_stored_with_a_new_leader_and_indexed(store: MessageStore) -> None:
    items = [_item(1), _ref(_item(1)), _item(2), _ref(_item(2))]
    results = store.append_batch(items)
    assert [(r.topic, r.seq, r.duplicate) for r in results] == [
        ("lobby", 1, False), ("~refs", 1, False), ("lobby", 2, False), ("~refs", 2, False)]
    assert _ids(store, "~refs") == [_ref(_item(1)).msg_id, _ref(_item(2)).msg_id]
    assert store.position(_ref(_item(2)).msg_id) == ("~refs", 2)  # its id index entry
    assert store.check() == []


def test_a_duplicates_follower_is_not_stored(store: MessageStore) -> None:
    store.append_batch([_item(1), _ref(_item(1))])
    # again (another commit), and twice in one batch: the followers go nowhere
    results = store.append_batch([_item(1), _ref(_item(1)), _item(2), _ref(_item(2)),
                                  _item(2), _ref(_item(2))])
    assert [(r.seq, r.duplicate) for r in results] == [
        (1, True), (0, True), (2, False), (2, False), (2, True), (0, True)]
    assert _ids(store, "~refs") == [_ref(_item(1)).msg_id, _ref(_item(2)).msg_id]
    assert store.check() == []


def test_a_follower_with_nothing_before_it_is_not_stored(store: MessageStore) -> None:
    results = store.append_batch([_ref(_item(1)), _item(2)])
    assert [(r.seq, r.duplicate) for r in results] == [(0, True), (1, False)]
    assert _ids(store, "~refs") == []


def test_followers_follow_through_a_chain(store: MessageStore) -> None:
    """A follower of a follower goes with the first item's fate."""
    second = _ref(_item(1))._replace(msg_id=b"\x01" * 32, topic="~more")
    store.append_batch([_item(1), _ref(_item(1)), second])
    assert _ids(store, "~more") == [b"\x01" * 32]
    results = store.append_batch([_item(1), _ref(_item(1)), second])
    assert all(r.duplicate for r in results)
    assert _ids(store, "~more") == [b"\x01" * 32]


def test_a_follower_is_what_the_general_path_stores(tmp_path: Path) -> None:
    """The same batch with and without ``follows`` (the general path looks the
    follower's id up first) leaves the same records and index entries."""
    batch = [x for n in (1, 2, 3) for x in (_item(n), _ref(_item(n)))]
    again = [x for n in (2, 3, 4) for x in (_item(n), _ref(_item(n)))]
    stores = [MessageStore(str(tmp_path / name), sync=False) for name in ("fast", "general")]
    try:
        fast, general = stores
        for b in (batch, again):
            fast.append_batch(b)
            # the general path: only what is new, followers as plain items
            general.append_batch([i._replace(follows=False) for i in b])
        for topic in ("lobby", "~refs"):
            assert [(m.seq, m.msg_id, m.wire) for m in fast.read(topic, limit=100)] == [
                (m.seq, m.msg_id, m.wire) for m in general.read(topic, limit=100)]
        for i in again:
            assert fast.position(i.msg_id) == general.position(i.msg_id)
    finally:
        for s in stores:
            s.close()


def test_a_follower_never_takes_an_index_entry_another_record_owns(
    store: MessageStore,
) -> None:
    """Two references with one key (a reference's key keeps 8 bytes of the id: a
    sender forking at one seq could search for a collision): the second is refused as a
    duplicate, not written over the first's index entry."""
    def ref(of: AppendItem) -> AppendItem:
        return AppendItem(b"K" * 32, "~refs", bytes(32), 0, of.ts, b"ref" + of.msg_id,
                          of.received_ms, True)

    first, second = _item(1), _item(2)
    store.append_batch([first, ref(first)])
    results = store.append_batch([second, ref(second)])
    assert results[1].duplicate
    assert [m.seq for m in store.read("~refs", after=0, limit=10)] == [1]
    assert store.check() == []
