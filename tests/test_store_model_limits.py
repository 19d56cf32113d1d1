"""The store's edges, in plain tests beside the model (test_store_model).

Map growth up to the limit, then ``StoreFull`` and room again after
retention; bad input refused before any write; readers running while the map
grows; items built from real envelopes; and the pure keep/backoff policies.
"""

from __future__ import annotations

import hashlib
import random
import threading
from pathlib import Path

import pytest

from peer import Content, Identity, seal_message
from store import (
    AppendItem,
    Backoff,
    KeepRules,
    MessageStore,
    RetentionPolicy,
    StoreFull,
)

TINY_MAP = 64 * 1024


def _item(n: int, topic: str = "t", size: int = 2000) -> AppendItem:
    wire = n.to_bytes(8, "big") * (size // 8)
    return AppendItem(hashlib.sha256(wire).digest(), topic, b"s" * 32, n, n, wire, n)


def test_map_grows_then_full_then_trimmed(tmp_path: Path) -> None:
    store = MessageStore(tmp_path / "s", map_size=TINY_MAP, max_map_size=2 * 1024 * 1024,
                         sync=False)
    n = 0
    with pytest.raises(StoreFull) as full:
        for _ in range(10_000):
            store.append_batch([_item(n + k) for k in range(1, 11)])
            n += 10
    assert full.value.reason == "map"
    stats = store.stats()
    assert stats.map_grows >= 2 and stats.map_size >= 2 * 1024 * 1024
    head = store.head("t")
    assert head.count == n  # the failed batch left nothing behind
    assert [m.seq for m in store.read("t", head.last_seq - 3, 10)] == list(
        range(head.last_seq - 2, head.next_seq)
    )  # reads keep working
    store.set_cursor("api", "t", head.last_seq)  # small state still fits (the reserve)
    assert store.get_cursor("api", "t") == head.last_seq
    with pytest.raises(StoreFull):  # appends never take the reserve for themselves
        for k in range(1, 100):
            store.append_batch([_item(n + k)])
    assert store.stats().map_size <= 2 * 1024 * 1024 + 1024 * 1024
    head = store.head("t")
    n = head.last_seq
    steps = 0
    while not store.apply_retention("t", now_ms=0, max_count=10, budget=64).done:
        steps += 1
    assert steps > 3 and store.head("t").count == 10
    [result] = store.append_batch([_item(n + 1)])  # room again
    assert result.seq == head.next_seq
    assert store.check() == []
    store.close()


def test_bad_input_is_refused_before_any_write(tmp_path: Path) -> None:
    store = MessageStore(tmp_path / "s", sync=False)
    commits = store.stats().commits
    good = _item(1)
    bad = [
        AppendItem(good.msg_id[:31], "t", good.sender, 1, 1, b"x", 1),
        AppendItem(good.msg_id, "", good.sender, 1, 1, b"x", 1),
        AppendItem(good.msg_id, "a\x00b", good.sender, 1, 1, b"x", 1),
        AppendItem(good.msg_id, "x" * 256, good.sender, 1, 1, b"x", 1),
        AppendItem(good.msg_id, "t", good.sender, -1, 1, b"x", 1),
        AppendItem(good.msg_id, "t", good.sender, 1, 1, b"x" * (store.max_record + 1), 1),
    ]
    for item in bad:
        with pytest.raises(ValueError):
            store.append_batch([good, item])
    with pytest.raises(ValueError):
        store.read("t", 0, 0)
    assert store.stats().commits == commits and store.topics() == []
    store.close()


def test_readers_run_while_the_map_grows(tmp_path: Path) -> None:
    store = MessageStore(tmp_path / "s", map_size=TINY_MAP, max_map_size=256 * 1024 * 1024,
                         sync=False)
    store.append_batch([_item(0)])
    stop = threading.Event()
    failures: list[BaseException] = []
    reads = [0]

    def reader() -> None:
        try:
            while not stop.is_set():
                msgs = store.read("t", 0, 50)
                seqs = [m.seq for m in msgs]
                assert seqs == list(range(1, len(seqs) + 1))
                reads[0] += 1
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for n in range(1, 2001, 20):
            store.append_batch([_item(n + k) for k in range(20)])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures
    assert store.stats().map_grows >= 3  # 4 MB of records from a 64 KiB map
    assert reads[0] > 0
    assert store.head("t").count == 2001
    store.close()


def test_items_from_envelopes(tmp_path: Path) -> None:
    alice = Identity.from_seed(b"\x11" * 32)
    envs = [
        seal_message(alice, topic="lobby", content=Content(body=f"hi {n}"), seq=n, ts=1000 + n)
        for n in (1, 2, 4)
    ]
    store = MessageStore(tmp_path / "s", sync=False)
    results = store.append_batch([AppendItem.from_envelope(e, received_ms=5) for e in envs])
    assert [r.seq for r in results] == [1, 2, 3]
    got = store.get(envs[2].id)
    assert got is not None and got.wire == envs[2].wire and got.sender == alice.peer_id
    assert store.sender_gaps(alice.peer_id, "lobby") == [(3, 3)]  # "missed 1 from alice"
    store.close()


def test_keep_rules_and_backoff() -> None:
    keep = RetentionPolicy(max_age_ms=1000)
    dms = RetentionPolicy(max_count=50)
    rules = KeepRules(
        default=None, topics={"lobby": keep}, prefixes={"dm/": dms, "dm/archive/": None}
    )
    assert rules.policy_for("lobby") == keep and rules.keeps("lobby")
    assert rules.policy_for("dm/abc") == dms
    assert rules.policy_for("dm/archive/x") is None  # the longest prefix wins
    assert not rules.keeps("elsewhere")
    assert KeepRules().policy_for("anything") == RetentionPolicy()  # default: keep all
    with pytest.raises(ValueError):
        RetentionPolicy(max_bytes=-1)

    backoff = Backoff(base_ms=100, cap_ms=1000)
    rng = random.Random(7)
    for attempts in range(12):
        delays = [backoff.delay_ms(attempts, rng) for _ in range(50)]
        assert all(100 <= d <= min(1000, 100 * 2**attempts) for d in delays)
    assert max(backoff.delay_ms(30, rng) for _ in range(200)) > 500  # jitter up to the cap
    assert backoff.next_try_ms(5_000, 0, rng) == 5_100
