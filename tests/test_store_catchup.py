"""The store's carrier-side reads for catch-up, and the read state of a local inbox.

* ``seq_at`` equals a brute-force answer on random logs (received times
  non-decreasing, oldest records removed by retention), keeps its local
  guarantee when the times are not sorted, and reads O(log n) records.
* ``read_sender`` returns one topic's records of one sender in a sender
  sequence range, ascending, never another topic's and never a record
  retention removed.
* ``sender_heads`` only rises, survives retention and reopening, and is
  filled in when a schema 1 store (without it) is opened.
* Read flags and the read watermark: what counts, what is ignored, retention
  deleting flags with their records, persistence across reopening, and the
  consistency checker agreeing throughout.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from pathlib import Path

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from store import MAX_PAGE, AppendItem, MessageStore, StoredMessage, StoreError
from store._records import _decode_record

ALICE = b"\xa1" * 32
BOB = b"\xb0" * 32


def item(
    topic: str, sender: bytes, sender_seq: int, received_ms: int, tag: bytes = b""
) -> AppendItem:
    wire = b"%s/%s/%d/%s" % (topic.encode(), sender[:1].hex().encode(), sender_seq, tag)
    msg_id = hashlib.sha256(wire).digest()
    return AppendItem(msg_id, topic, sender, sender_seq, 1000 + sender_seq, wire, received_ms)


def open_store(path: Path) -> MessageStore:
    return MessageStore(path, sync=False)


# -- seq_at ------------------------------------------------------------------------


def oracle_seq_at(log: list[StoredMessage], first_seq: int, received_ms: int) -> int:
    """The largest s with every stored record of seq <= s received before ``received_ms``."""
    s = first_seq - 1
    for m in log:
        if m.received_ms >= received_ms:
            break
        s = m.seq
    return s


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.integers(0, 50), min_size=0, max_size=60),
    trimmed=st.integers(0, 70),
    queries=st.lists(st.integers(0, 2_000), min_size=1, max_size=10),
)
def test_seq_at_matches_brute_force(steps: list[int], trimmed: int, queries: list[int]) -> None:
    with tempfile.TemporaryDirectory(prefix="clawmesh-catchup-") as tmp:
        s = open_store(Path(tmp) / "s")
        received, items = 100, []
        for n, step in enumerate(steps, 1):
            received += step  # receipt order: never earlier than the record before
            items.append(item("lobby", ALICE, n, received))
        if items:
            s.append_batch(items)
        s.append_batch([item("other", ALICE, 10_000, 0)])  # another topic, received earlier
        s.apply_retention("lobby", now_ms=0, max_count=max(0, len(items) - trimmed))
        head = s.head("lobby")
        log = s.read("lobby", 0, MAX_PAGE)
        for q in [*queries, 0, 100, received, received + 1]:
            assert s.seq_at("lobby", q) == oracle_seq_at(log, head.first_seq, q)
        if head.count == 0:
            assert s.seq_at("lobby", 5) == head.next_seq - 1
        assert s.check() == []
        s.close()


@settings(max_examples=40, deadline=None)
@given(
    times=st.lists(st.integers(0, 100), min_size=1, max_size=40),
    q=st.integers(0, 101),
)
def test_seq_at_unsorted_times_keeps_its_local_guarantee(times: list[int], q: int) -> None:
    with tempfile.TemporaryDirectory(prefix="clawmesh-catchup-") as tmp:
        s = open_store(Path(tmp) / "s")
        s.append_batch([item("t", BOB, n, r) for n, r in enumerate(times, 1)])
        got = s.seq_at("t", q)
        assert 0 <= got <= len(times)
        if got >= 1:
            assert times[got - 1] < q
        if got < len(times):
            assert times[got] >= q
        s.close()


def test_seq_at_edges_and_record_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = open_store(tmp_path / "s")
    assert s.seq_at("never", 10) == 0
    n = 1000
    s.append_batch([item("t", ALICE, k, 10 * k) for k in range(1, n + 1)])
    s.apply_retention("t", now_ms=0, max_count=n - 100)  # first_seq 101
    assert s.seq_at("t", 0) == 100  # the oldest stored is not older: first_seq - 1
    assert s.seq_at("t", 1010) == 100
    assert s.seq_at("t", 1011) == 101
    assert s.seq_at("t", 10 * n) == n - 1
    assert s.seq_at("t", 10 * n + 1) == n

    decoded = 0

    def counting(key: bytes, value: bytes) -> StoredMessage:
        nonlocal decoded
        decoded += 1
        return _decode_record(key, value)

    monkeypatch.setattr("store._log._decode_record", counting)
    assert s.seq_at("t", 5005) == 500
    assert decoded <= math.ceil(math.log2(n - 100)) + 1
    monkeypatch.undo()

    s.apply_retention("t", now_ms=0, max_count=0, budget=n)
    assert s.seq_at("t", 0) == s.seq_at("t", 10**9) == n  # empty: next_seq - 1
    for bad in (-1, 1 << 64, True):
        with pytest.raises(ValueError):
            s.seq_at("t", bad)
    with pytest.raises(ValueError):
        s.seq_at("", 1)
    s.close()


# -- read_sender -----------------------------------------------------------------------


def test_read_sender_one_topic_ascending_without_retained_away(tmp_path: Path) -> None:
    s = open_store(tmp_path / "s")
    # ALICE's sequence is shared by her topics: odd seqs in "lobby", even in "dev";
    # BOB writes to "lobby" with the same numbers.
    s.append_batch([item("lobby" if k % 2 else "dev", ALICE, k, k) for k in range(20, 0, -1)])
    s.append_batch([item("lobby", BOB, k, 100 + k) for k in range(1, 21)])
    s.append_batch([item("lobby", ALICE, 7, 200, tag=b"reused")])  # a reused sequence

    got = s.read_sender("lobby", ALICE, 3, 11)
    assert [m.sender_seq for m in got] == [3, 5, 7, 7, 9, 11]
    assert all(m.topic == "lobby" and m.sender == ALICE for m in got)
    assert [m.msg_id for m in got if m.sender_seq == 7] == sorted(
        m.msg_id for m in got if m.sender_seq == 7
    )
    assert [m.sender_seq for m in s.read_sender("dev", ALICE, 3, 11)] == [4, 6, 8, 10]
    assert [m.sender_seq for m in s.read_sender("lobby", ALICE, 0, 10**6, limit=3)] == [1, 3, 5]
    assert s.read_sender("lobby", ALICE, 11, 3) == []
    assert s.read_sender("nowhere", ALICE, 0, 100) == []
    for m in got:  # the very records read() returns
        assert s.read("lobby", m.seq - 1, 1) == [m]

    # "lobby" was appended in descending ALICE order: its oldest records are 19, 17, 15
    s.apply_retention("lobby", now_ms=0, max_count=s.head("lobby").count - 3)
    after = [m.sender_seq for m in s.read_sender("lobby", ALICE, 0, 100)]
    assert after == [1, 3, 5, 7, 7, 9, 11, 13]
    assert [m.sender_seq for m in s.read_sender("dev", ALICE, 0, 100)] == list(range(2, 21, 2))
    assert s.check() == []

    for args in (
        ("lobby", ALICE[:31], 1, 2),
        ("lobby", ALICE, -1, 2),
        ("lobby", ALICE, 1, 1 << 64),
        ("", ALICE, 1, 2),
    ):
        with pytest.raises(ValueError):
            s.read_sender(*args)
    for limit in (0, MAX_PAGE + 1):
        with pytest.raises(ValueError):
            s.read_sender("lobby", ALICE, 1, 2, limit)
    s.close()


# -- sender heads ---------------------------------------------------------------------------


def test_sender_heads_rise_and_survive_retention_and_reopen(tmp_path: Path) -> None:
    s = open_store(tmp_path / "s")
    assert s.sender_heads("lobby") == []
    s.append_batch([item("lobby", BOB, 5, 1), item("lobby", ALICE, 9, 2)])
    s.append_batch([item("lobby", ALICE, 3, 3), item("dev", ALICE, 40, 4)])
    s.append_batch([item("lobby", ALICE, 9, 5)])  # a duplicate changes nothing
    assert s.sender_heads("lobby") == [(ALICE, 9), (BOB, 5)]  # by sender
    assert s.sender_heads("lobby", limit=1) == [(ALICE, 9)]
    assert s.sender_heads("dev") == [(ALICE, 40)]
    s.apply_retention("lobby", now_ms=0, max_count=0)
    assert s.head("lobby").count == 0
    assert s.sender_heads("lobby") == [(ALICE, 9), (BOB, 5)]
    s.close()
    s = open_store(tmp_path / "s")
    assert s.sender_heads("lobby") == [(ALICE, 9), (BOB, 5)]
    s.append_batch([item("lobby", BOB, 6, 6)])
    assert s.sender_heads("lobby") == [(ALICE, 9), (BOB, 6)]
    assert s.check() == []
    for limit in (0, MAX_PAGE + 1):
        with pytest.raises(ValueError):
            s.sender_heads("lobby", limit)
    s.close()


def _downgrade_to_schema_1(path: Path) -> None:
    """Make the store at ``path`` look like one written before ``latest`` and ``flags``."""
    env = lmdb.open(str(path), max_dbs=32, subdir=True)
    with env.begin(write=True) as txn:
        for name in (b"latest", b"flags"):
            txn.drop(env.open_db(name, txn=txn), delete=True)
        txn.put(b"schema", (1).to_bytes(8, "big"), db=env.open_db(b"meta", txn=txn))
    env.close()


def _set_schema(path: Path, version: int) -> None:
    env = lmdb.open(str(path), max_dbs=32, subdir=True)
    with env.begin(write=True) as txn:
        txn.put(b"schema", version.to_bytes(8, "big"), db=env.open_db(b"meta", txn=txn))
    env.close()


def test_a_schema_1_store_is_upgraded_on_open(tmp_path: Path) -> None:
    path = tmp_path / "s"
    s = MessageStore(path, sync=False, max_seen_ranges=2)
    s.append_batch([item("lobby", ALICE, k, k) for k in (1, 4, 8, 12, 30)])  # gaps past the bound
    s.append_batch([item("lobby", BOB, 2, 40), item("dev", BOB, 77, 41)])
    s.apply_retention("lobby", now_ms=0, max_count=1)
    want = {t: s.sender_heads(t) for t in ("lobby", "dev")}
    s.close()
    _downgrade_to_schema_1(path)

    s = MessageStore(path, sync=False, max_seen_ranges=2)
    assert {t: s.sender_heads(t) for t in ("lobby", "dev")} == want
    assert want["lobby"] == [(ALICE, 30), (BOB, 2)]
    assert s.read_state("lobby") == (0, set())
    assert s.check() == []
    s.close()

    _set_schema(path, 3)  # from the future: refused, not guessed at
    with pytest.raises(StoreError, match="schema"):
        open_store(path)


# -- read flags --------------------------------------------------------------------------------


def test_read_flags_and_watermark(tmp_path: Path) -> None:
    s = open_store(tmp_path / "s")
    assert s.read_state("inbox") == (0, set())
    assert s.unread_count("inbox") == 0
    assert s.mark_read("inbox", [1, 2]) == 0  # nothing stored yet
    assert s.mark_read_through("inbox", 5) == 0  # and no watermark past the last seq
    assert s.read_state("inbox") == (0, set())

    s.append_batch([item("inbox", ALICE, k, k) for k in range(1, 11)])
    s.append_batch([item("other", ALICE, k, k) for k in range(1, 4)])
    assert s.unread_count("inbox") == 10
    assert s.mark_read("inbox", [2, 4, 4, 11, 0, 99]) == 2  # 11, 0, 99 are not stored
    assert s.mark_read("inbox", iter([4, 6])) == 1  # 4 was flagged already
    assert s.read_state("inbox") == (0, {2, 4, 6})
    assert s.unread_count("inbox") == 7
    assert s.unread_count("other") == 3 and s.read_state("other") == (0, set())

    assert s.mark_read_through("inbox", 4) == 2  # 1 and 3 become read; 2 and 4 were
    assert s.read_state("inbox") == (4, {6})
    assert s.mark_read("inbox", [3, 4, 5]) == 1  # at or below the watermark: ignored
    assert s.read_state("inbox") == (4, {5, 6})
    assert s.mark_read_through("inbox", 2) == 0  # never falls
    assert s.read_state("inbox") == (4, {5, 6})
    assert s.unread_count("inbox") == 4  # 7, 8, 9, 10
    assert s.check() == []

    assert s.mark_read_through("inbox", (1 << 64) - 1) == 4  # "all read": up to seq 10
    assert s.read_state("inbox") == (10, set())
    assert s.unread_count("inbox") == 0
    s.append_batch([item("inbox", BOB, k, 100 + k) for k in range(1, 4)])  # seqs 11..13
    assert s.unread_count("inbox") == 3

    for bad in ([-1], [1 << 64], [True], range(MAX_PAGE + 1)):
        with pytest.raises(ValueError):
            s.mark_read("inbox", bad)
    with pytest.raises(ValueError):
        s.mark_read_through("inbox", -1)
    with pytest.raises(ValueError):
        s.read_state("a\x00b")
    assert s.check() == []
    s.close()


def test_retention_deletes_flags_with_their_records(tmp_path: Path) -> None:
    s = open_store(tmp_path / "s")
    s.append_batch([item("inbox", ALICE, k, 10 * k) for k in range(1, 21)])  # seqs 1..20
    s.mark_read_through("inbox", 3)
    assert s.mark_read("inbox", [5, 6, 12, 19]) == 4
    assert s.unread_count("inbox") == 13

    s.apply_retention("inbox", now_ms=0, max_count=14)  # deletes seqs 1..6
    assert s.read_state("inbox") == (3, {12, 19})
    assert s.unread_count("inbox") == 12  # 7..20 stored, two of them flagged
    assert s.check() == []
    assert s.mark_read("inbox", [5, 6]) == 0  # gone: ignored
    # the watermark rises past removed records; only stored ones are counted
    assert s.mark_read_through("inbox", 12) == 5  # 7..11 (12 was flagged)
    assert s.read_state("inbox") == (12, {19})
    s.close()

    s = open_store(tmp_path / "s")  # everything persists
    assert s.read_state("inbox") == (12, {19})
    assert s.unread_count("inbox") == 7
    s.apply_retention("inbox", now_ms=0, max_count=0)
    assert s.read_state("inbox") == (12, set())
    assert s.unread_count("inbox") == 0
    assert s.check() == []
    s.append_batch([item("inbox", BOB, 1, 500)])  # seq 21
    assert s.unread_count("inbox") == 1
    assert s.mark_read_through("inbox", 30) == 1
    assert s.read_state("inbox") == (21, set())
    s.close()


def test_reader_cursors_do_not_see_the_watermark(tmp_path: Path) -> None:
    s = open_store(tmp_path / "s")
    s.append_batch([item("inbox", ALICE, 1, 1)])
    s.set_cursor("api", "inbox", 1)
    s.mark_read_through("inbox", 1)
    assert s.cursors("api") == {"inbox": 1}
    with pytest.raises(ValueError):
        s.get_cursor("\x00read", "inbox")  # the reserved name cannot be spelled
    s.close()


# -- several writes, one commit ------------------------------------------------------


def test_atomically_commits_appends_and_state_together(tmp_path: Path) -> None:
    s = MessageStore(tmp_path / "s", map_size=64 * 1024, max_map_size=64 * 1024 * 1024,
                     sync=False)
    runs = 0
    batch = [item("lobby", ALICE, n, 10, tag=b"x" * 2000) for n in range(1, 201)]

    def page(store: MessageStore) -> int:
        nonlocal runs
        runs += 1
        store.append_batch(batch)  # 400 KB: the 64 KiB map grows on the way
        store.set_cursor("cu:carrier", "lobby", 200)
        assert store.held([batch[0].msg_id]) == {batch[0].msg_id}  # reads see the write
        return store.head("lobby").count

    assert s.atomically(page) == 200
    assert runs > 1  # the map grew: everything ran again from the start, once stored
    assert s.get_cursor("cu:carrier", "lobby") == 200
    assert [m.sender_seq for m in s.read("lobby", limit=500)] == list(range(1, 201))
    assert s.check() == []

    def half_then_fail(store: MessageStore) -> None:
        store.append_batch([item("lobby", BOB, 1, 20)])
        store.set_cursor("cu:carrier", "lobby", 999)
        raise RuntimeError("the page turned out bad")

    with pytest.raises(RuntimeError):
        s.atomically(half_then_fail)
    assert s.get_cursor("cu:carrier", "lobby") == 200  # nothing of it was kept
    assert s.held([item("lobby", BOB, 1, 20).msg_id]) == set()
    assert s.head("lobby").count == 200
    s.close()


def test_write_states_puts_and_deletes_in_one_commit(tmp_path: Path) -> None:
    s = MessageStore(tmp_path / "s", sync=False)
    s.write_states({"a/1": b"one", "a/2": b"two"})
    s.write_states({"a/1": None, "a/3": b"three"})  # None: delete
    assert s.state_items("a/") == {"a/2": b"two", "a/3": b"three"}
    with pytest.raises(ValueError):
        s.write_states({"a/4": b"four", "": b"a bad key"})  # refused: nothing of it kept
    assert s.state_items("a/") == {"a/2": b"two", "a/3": b"three"}
    s.close()
