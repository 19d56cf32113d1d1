"""Acceptance test 1: the store's log and cursor model, checked against a plain Python model.

A Hypothesis state machine drives ``MessageStore`` and a dict-based model
with the same operations and compares every answer: appends (with duplicates,
within and across batches), reads from any cursor with any limit, lookups by
id and by (sender, sender seq), sender gaps, retention steps by age, bytes and
count, cursors, peer state, the DM outbox and dead letters, the catch-up
reads (``seq_at``, ``read_sender``, ``sender_heads``), read flags and the read
watermark, and restarts
(close and reopen the store at the same path). The store starts with a map
far too small for its data, so map growth happens in every run. After each
step, every topic's head and whole log must equal the model's and
``MessageStore.check()`` must find nothing wrong.

The machine runs with ``sync=False`` to stay fast: durability across crashes
is test_store_crash's job. The plain tests of map-full, validation, concurrent
readers during map growth, items from envelopes and the keep/backoff policies
are in test_store_model_limits.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from store import (
    MAX_PAGE,
    AppendItem,
    DeadLetter,
    MessageStore,
    OutboxEntry,
    StoredMessage,
    TopicHead,
    gaps_between,
    merge_ranges,
)

N_MSGS = 40
N_RUN = 24
TOPICS = ("alpha", "beta", "dm/gamma")
SENDERS = (b"\x01" * 32, b"\x02" * 32)
NAMES = ("api", "sync")
STATE_KEYS = ("subs", "unread/alpha", "unread/beta", "me/seq")
OUT_IDS = tuple(hashlib.sha256(b"out%d" % j).digest() for j in range(6))
RECIPIENT = b"\x09" * 32
MAX_SEEN = 3  # small, so the bound on seen ranges is exercised
TINY_MAP = 64 * 1024


@dataclass(frozen=True)
class Msg:
    msg_id: bytes
    topic: str
    sender: bytes
    sender_seq: int
    ts: int
    wire: bytes


def msg(i: int) -> Msg:
    """Message ``i`` of a fixed pool: the same id always has the same content.

    Below ``N_MSGS``: scattered senders, topics and sequences, every 13th one
    not sequenced (0). From ``N_MSGS``: one author's sequences 1..``N_RUN`` in
    one topic, which ``append_run`` stores as runs."""
    size = 6000 if i % 10 == 0 else 1 + (i * 37) % 700  # a few need overflow pages
    wire = (hashlib.sha256(b"wire%d" % i).digest() * (size // 32 + 1))[:size]
    if i >= N_MSGS:
        topic, sender, sender_seq = "beta", SENDERS[1], i - N_MSGS + 1
    else:
        topic, sender = TOPICS[i % 3], SENDERS[(i // 3) % 2]
        sender_seq = 0 if i % 13 == 12 else (i * 7) % 23 + 1  # gaps, and reuse
    return Msg(
        msg_id=hashlib.sha256(b"id" + wire).digest(),
        topic=topic,
        sender=sender,
        sender_seq=sender_seq,
        ts=10_000 + i,
        wire=wire,
    )


@dataclass
class TopicModel:
    log: dict[int, tuple[int, int]] = field(default_factory=dict)  # seq -> (i, received)
    next_seq: int = 1
    first_seq: int = 1

    def head(self, topic: str) -> TopicHead:
        return TopicHead(
            topic=topic,
            next_seq=self.next_seq,
            first_seq=self.first_seq,
            count=len(self.log),
            total_bytes=sum(len(msg(i).wire) for i, _ in self.log.values()),
        )


def stored(topic: str, seq: int, i: int, received: int) -> StoredMessage:
    m = msg(i)
    return StoredMessage(topic, seq, m.msg_id, m.sender, m.sender_seq, m.ts, received, m.wire)


def ranges_of(seqs: set[int]) -> list[tuple[int, int]]:
    return merge_ranges([(s, s) for s in seqs])


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="clawmesh-model-")
        self.path = Path(self.dir) / "store"
        self.store = self._open()
        self.now = 1_000
        self.topics: dict[str, TopicModel] = {}
        self.where: dict[int, tuple[str, int]] = {}
        self.seen: dict[tuple[bytes, str], set[int]] = {}
        self.cursors: dict[tuple[str, str], int] = {}
        self.state: dict[str, bytes] = {}
        self.outbox: dict[bytes, OutboxEntry] = {}
        self.dead: dict[bytes, DeadLetter] = {}
        self.latest: dict[tuple[str, bytes], int] = {}
        self.read_mark: dict[str, int] = {}
        self.flags: dict[str, set[int]] = {}

    def _open(self) -> MessageStore:
        return MessageStore(
            self.path, map_size=TINY_MAP, max_map_size=64 * 1024 * 1024, sync=False,
            max_seen_ranges=MAX_SEEN,
        )

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the model's own rules ---------------------------------------------------

    def _mark_seen(self, appended: list[Msg]) -> None:
        """Seen ranges grow by each run of consecutive sequences of one
        (sender, topic) in batch order; past the bound, the oldest gap goes."""
        runs: list[tuple[bytes, str, int, int]] = []
        for m in appended:
            if m.sender_seq == 0:
                continue
            last = runs[-1] if runs else None
            if last is not None and last[:2] == (m.sender, m.topic) and last[3] + 1 == m.sender_seq:
                runs[-1] = (*last[:3], m.sender_seq)
            else:
                runs.append((m.sender, m.topic, m.sender_seq, m.sender_seq))
        for sender, topic, lo, hi in runs:
            seqs = self.seen.setdefault((sender, topic), set())
            seqs.update(range(lo, hi + 1))
            ranges = ranges_of(seqs)
            if len(ranges) > MAX_SEEN:  # the store gives up on the oldest gap
                seqs.update(range(ranges[0][1] + 1, ranges[1][0]))

    # -- rules ---------------------------------------------------------------------

    @rule(batch=st.lists(st.integers(0, N_MSGS + N_RUN - 1), min_size=1, max_size=10))
    def append(self, batch: list[int]) -> None:
        self._append(batch)

    @rule(first=st.integers(0, N_RUN - 1), length=st.integers(1, 8), skip=st.integers(0, 8))
    def append_run(self, first: int, length: int, skip: int) -> None:
        """A page of one author's consecutive sequences (maybe with one left out)."""
        batch = [N_MSGS + j for j in range(first, min(first + length, N_RUN)) if j != first + skip]
        if batch:
            self._append(batch)

    def _append(self, batch: list[int]) -> None:
        stored_now: list[Msg] = []
        items = [
            AppendItem(m.msg_id, m.topic, m.sender, m.sender_seq, m.ts, m.wire, self.now)
            for m in map(msg, batch)
        ]
        results = self.store.append_batch(items)
        assert len(results) == len(batch)
        for i, result in zip(batch, results, strict=True):
            m = msg(i)
            assert result.msg_id == m.msg_id
            if i in self.where:
                assert result.duplicate
                assert (result.topic, result.seq) == self.where[i]
                continue
            assert not result.duplicate
            t = self.topics.setdefault(m.topic, TopicModel())
            if not t.log:
                t.first_seq = t.next_seq
            assert (result.topic, result.seq) == (m.topic, t.next_seq)
            t.log[t.next_seq] = (i, self.now)
            self.where[i] = (m.topic, t.next_seq)
            t.next_seq += 1
            stored_now.append(m)
            if m.sender_seq:
                key = (m.topic, m.sender)
                self.latest[key] = max(self.latest.get(key, 0), m.sender_seq)
        self._mark_seen(stored_now)

    @rule(ms=st.sampled_from((0, 1, 100, 250, 400)))
    def tick(self, ms: int) -> None:
        self.now += ms

    @rule(topic=st.sampled_from(TOPICS), after=st.integers(0, 30), limit=st.integers(1, 12))
    def read(self, topic: str, after: int, limit: int) -> None:
        t = self.topics.get(topic, TopicModel())
        want = [stored(topic, seq, i, r) for seq, (i, r) in sorted(t.log.items()) if seq > after]
        assert self.store.read(topic, after, limit) == want[:limit]

    @rule(i=st.integers(0, N_MSGS + N_RUN - 1))
    def get(self, i: int) -> None:
        m = msg(i)
        got = self.store.get(m.msg_id)
        if i not in self.where:
            assert got is None
            assert self.store.position(m.msg_id) is None
            return
        topic, seq = self.where[i]
        assert got == stored(topic, seq, i, self.topics[topic].log[seq][1])
        assert self.store.position(m.msg_id) == (topic, seq)

    @rule(sender=st.sampled_from(SENDERS), sender_seq=st.integers(1, 24))
    def by_sender(self, sender: bytes, sender_seq: int) -> None:
        want = sorted(
            (stored(topic, seq, i, self.topics[topic].log[seq][1])
             for i, (topic, seq) in self.where.items()
             if msg(i).sender == sender and msg(i).sender_seq == sender_seq),
            key=lambda s: (s.topic, s.seq),
        )
        assert self.store.by_sender(sender, sender_seq) == want

    @rule(sender=st.sampled_from(SENDERS), topic=st.sampled_from((None, *TOPICS)))
    def gaps(self, sender: bytes, topic: str | None) -> None:
        seqs: set[int] = set()
        for (s, t), found in self.seen.items():
            if s == sender and (topic is None or t == topic):
                seqs |= found
        ranges = ranges_of(seqs)
        assert self.store.sender_ranges(sender, topic) == ranges
        assert self.store.sender_gaps(sender, topic) == gaps_between(ranges)

    @rule(
        topic=st.sampled_from(TOPICS),
        max_age=st.none() | st.integers(0, 15).map(lambda k: 100 * k),
        max_bytes=st.none() | st.integers(0, 8000),
        max_count=st.none() | st.integers(0, 8),
        budget=st.integers(1, 4),
    )
    def retention(
        self, topic: str, max_age: int | None, max_bytes: int | None, max_count: int | None,
        budget: int,
    ) -> None:
        t = self.topics.get(topic, TopicModel())

        def over() -> bool:
            if not t.log:
                return False
            head = t.head(topic)
            oldest_received = t.log[t.first_seq][1]
            return (
                (max_count is not None and head.count > max_count)
                or (max_bytes is not None and head.total_bytes > max_bytes)
                or (max_age is not None and self.now - oldest_received > max_age)
            )

        deleted = freed = 0
        while deleted < budget and over():
            i, _ = t.log.pop(t.first_seq)
            self.flags.get(topic, set()).discard(t.first_seq)
            del self.where[i]
            freed += len(msg(i).wire)
            t.first_seq += 1
            deleted += 1
        if not t.log:
            t.first_seq = t.next_seq
        result = self.store.apply_retention(
            topic, now_ms=self.now, max_age_ms=max_age, max_bytes=max_bytes,
            max_count=max_count, budget=budget,
        )
        assert (result.deleted, result.freed_bytes, result.done) == (deleted, freed, not over())

    @precondition(lambda self: any(t.log for t in self.topics.values()))
    @rule(data=st.data(), delta=st.sampled_from((-1, 0, 1)), budget=st.integers(1, 4))
    def retention_at_age_boundary(self, data: st.DataObject, delta: int, budget: int) -> None:
        """Retention by age with the oldest record exactly at, just under or just over it."""
        topic = data.draw(st.sampled_from(sorted(n for n, t in self.topics.items() if t.log)))
        t = self.topics[topic]
        age = self.now - t.log[t.first_seq][1]
        self.retention(topic, max(0, age + delta), None, None, budget)

    @rule(topic=st.sampled_from(TOPICS), data=st.data())
    def seq_at(self, topic: str, data: st.DataObject) -> None:
        t = self.topics.get(topic, TopicModel())
        times = [r for _, r in t.log.values()]
        q = data.draw(st.sampled_from([0, self.now + 1, *times]) | st.integers(0, self.now))
        q = max(0, q + data.draw(st.sampled_from((-1, 0, 1))))
        want = t.first_seq - 1 if t.log else t.next_seq - 1
        for seq, (_, received) in sorted(t.log.items()):
            if received >= q:
                break
            want = seq
        assert self.store.seq_at(topic, q) == want

    @rule(
        topic=st.sampled_from(TOPICS), sender=st.sampled_from(SENDERS),
        first=st.integers(1, 24), width=st.integers(-1, 24), limit=st.integers(1, 6),
    )
    def read_sender(self, topic: str, sender: bytes, first: int, width: int, limit: int) -> None:
        t = self.topics.get(topic, TopicModel())
        found = [
            stored(topic, seq, i, r) for seq, (i, r) in t.log.items()
            if msg(i).sender == sender and first <= msg(i).sender_seq <= first + width
        ]
        found.sort(key=lambda m: (m.sender_seq, m.msg_id))
        assert self.store.read_sender(topic, sender, first, first + width, limit) == found[:limit]

    @rule(topic=st.sampled_from(TOPICS),
          seqs=st.lists(st.integers(0, 30), max_size=6))
    def mark_read(self, topic: str, seqs: list[int]) -> None:
        t = self.topics.get(topic, TopicModel())
        flags = self.flags.setdefault(topic, set())
        new = {s for s in seqs if s in t.log and s > self.read_mark.get(topic, 0)} - flags
        assert self.store.mark_read(topic, seqs) == len(new)
        flags |= new

    @rule(topic=st.sampled_from(TOPICS), seq=st.integers(0, 40) | st.just(2**64 - 1))
    def mark_read_through(self, topic: str, seq: int) -> None:
        t = self.topics.get(topic, TopicModel())
        old = self.read_mark.get(topic, 0)
        new = min(seq, t.next_seq - 1)
        flags = self.flags.setdefault(topic, set())
        newly = 0
        if new > old:
            newly = sum(1 for s in t.log if old < s <= new and s not in flags)
            flags -= set(range(old + 1, new + 1))
            self.read_mark[topic] = new
        assert self.store.mark_read_through(topic, seq) == newly

    @rule(name=st.sampled_from(NAMES), topic=st.sampled_from(TOPICS), seq=st.integers(0, 40))
    def set_cursor(self, name: str, topic: str, seq: int) -> None:
        self.store.set_cursor(name, topic, seq)
        self.cursors[(name, topic)] = seq

    @rule(name=st.sampled_from(NAMES), topic=st.sampled_from(TOPICS))
    def get_cursor(self, name: str, topic: str) -> None:
        assert self.store.get_cursor(name, topic) == self.cursors.get((name, topic), 0)
        assert self.store.cursors(name) == {
            t: seq for (n, t), seq in self.cursors.items() if n == name
        }

    @rule(name=st.sampled_from(NAMES), topic=st.sampled_from(TOPICS))
    def delete_cursor(self, name: str, topic: str) -> None:
        assert self.store.delete_cursor(name, topic) == ((name, topic) in self.cursors)
        self.cursors.pop((name, topic), None)

    @rule(key=st.sampled_from(STATE_KEYS), value=st.binary(max_size=24))
    def put_state(self, key: str, value: bytes) -> None:
        self.store.put_state(key, value)
        self.state[key] = value

    @rule(key=st.sampled_from(STATE_KEYS))
    def get_state(self, key: str) -> None:
        assert self.store.get_state(key) == self.state.get(key)
        assert self.store.state_items("unread/") == {
            k: v for k, v in self.state.items() if k.startswith("unread/")
        }

    @rule(key=st.sampled_from(STATE_KEYS))
    def delete_state(self, key: str) -> None:
        assert self.store.delete_state(key) == (key in self.state)
        self.state.pop(key, None)

    @rule(j=st.integers(0, len(OUT_IDS) - 1), wait=st.sampled_from((0, 100, 500)),
          life=st.sampled_from((0, 100, 400, 3000)))
    def outbox_add(self, j: int, wait: int, life: int) -> None:
        msg_id = OUT_IDS[j]
        fresh = msg_id not in self.outbox and msg_id not in self.dead
        wire = b"dm%d" % j
        added = self.store.outbox_add(msg_id, RECIPIENT, wire, self.now + wait, self.now + life)
        assert added == fresh
        if fresh:
            self.outbox[msg_id] = OutboxEntry(
                msg_id, RECIPIENT, wire, self.now + wait, self.now + life, 0
            )

    @rule(limit=st.integers(1, 6))
    def outbox_due(self, limit: int) -> None:
        due = sorted(
            (e for e in self.outbox.values() if e.next_try_ms <= self.now),
            key=lambda e: (e.next_try_ms, e.msg_id),
        )
        assert self.store.outbox_due(self.now, limit) == due[:limit]
        everything = sorted(self.outbox.values(), key=lambda e: (e.next_try_ms, e.msg_id))
        assert self.store.outbox(MAX_PAGE) == everything

    @rule(j=st.integers(0, len(OUT_IDS) - 1), delay=st.sampled_from((0, 100, 900)))
    def outbox_retry(self, j: int, delay: int) -> None:
        msg_id = OUT_IDS[j]
        got = self.store.outbox_retry(msg_id, self.now + delay)
        old = self.outbox.get(msg_id)
        if old is None:
            assert got is None
            return
        new = OutboxEntry(
            msg_id, old.recipient, old.wire, self.now + delay, old.deadline_ms, old.attempts + 1
        )
        assert got == new
        self.outbox[msg_id] = new

    @rule(j=st.integers(0, len(OUT_IDS) - 1))
    def outbox_done(self, j: int) -> None:
        msg_id = OUT_IDS[j]
        found = msg_id in self.outbox or msg_id in self.dead
        assert self.store.outbox_done(msg_id) == found
        self.outbox.pop(msg_id, None)
        self.dead.pop(msg_id, None)

    @rule(j=st.integers(0, len(OUT_IDS) - 1))
    def outbox_fail(self, j: int) -> None:
        msg_id = OUT_IDS[j]
        got = self.store.outbox_fail(msg_id, "recipient unknown", self.now)
        old = self.outbox.pop(msg_id, None)
        if old is None:
            assert got is None
            return
        dead = DeadLetter(msg_id, old.recipient, old.wire, old.attempts, self.now,
                          "recipient unknown")
        assert got == dead
        self.dead[msg_id] = dead

    @rule(limit=st.integers(1, 6))
    def outbox_expire(self, limit: int) -> None:
        expired = sorted(
            (e for e in self.outbox.values() if e.deadline_ms <= self.now),
            key=lambda e: (e.deadline_ms, e.msg_id),
        )[:limit]
        want = []
        for e in expired:
            del self.outbox[e.msg_id]
            dead = DeadLetter(e.msg_id, e.recipient, e.wire, e.attempts, self.now, "expired")
            self.dead[e.msg_id] = dead
            want.append(dead)
        assert self.store.outbox_expire(self.now, limit) == want

    @rule()
    def dead_letters(self) -> None:
        assert self.store.dead_letters(MAX_PAGE) == [self.dead[k] for k in sorted(self.dead)]

    @rule(j=st.integers(0, len(OUT_IDS) - 1))
    def dead_letter_remove(self, j: int) -> None:
        msg_id = OUT_IDS[j]
        assert self.store.dead_letter_remove(msg_id) == (msg_id in self.dead)
        self.dead.pop(msg_id, None)

    @rule()
    def restart(self) -> None:
        self.store.close()
        self.store = self._open()

    # -- invariants ---------------------------------------------------------------

    @invariant()
    def logs_match(self) -> None:
        assert self.store.topics() == [t.head(name) for name, t in sorted(self.topics.items())]
        for name, t in self.topics.items():
            want = [stored(name, seq, i, r) for seq, (i, r) in sorted(t.log.items())]
            assert self.store.read(name, 0, MAX_PAGE) == want

    @invariant()
    def gaps_match(self) -> None:
        for sender in SENDERS:
            for topic in (None, *TOPICS):
                self.gaps(sender, topic)

    @invariant()
    def outbox_matches(self) -> None:
        everything = sorted(self.outbox.values(), key=lambda e: (e.next_try_ms, e.msg_id))
        assert self.store.outbox(MAX_PAGE) == everything
        assert self.store.outbox_due(self.now, MAX_PAGE) == [
            e for e in everything if e.next_try_ms <= self.now
        ]
        assert self.store.dead_letters(MAX_PAGE) == [self.dead[k] for k in sorted(self.dead)]

    @invariant()
    def cursors_and_state_match(self) -> None:
        for name in NAMES:
            assert self.store.cursors(name) == {
                t: seq for (n, t), seq in self.cursors.items() if n == name
            }
        assert self.store.state_items() == self.state

    @invariant()
    def sender_heads_and_read_state_match(self) -> None:
        for topic in TOPICS:
            assert self.store.sender_heads(topic) == sorted(
                (sender, seq) for (t, sender), seq in self.latest.items() if t == topic
            )
            mark, flags = self.read_mark.get(topic, 0), self.flags.get(topic, set())
            assert self.store.read_state(topic) == (mark, flags)
            log = self.topics.get(topic, TopicModel()).log
            assert self.store.unread_count(topic) == sum(
                1 for s in log if s > mark and s not in flags
            )

    @invariant()
    def consistent(self) -> None:
        assert self.store.check() == []
        stats = self.store.stats()
        assert stats.messages == len(self.where)
        assert (stats.outbox, stats.dead_letters) == (len(self.outbox), len(self.dead))


TestStoreModel = StoreMachine.TestCase
TestStoreModel.settings = settings(
    max_examples=int(os.environ.get("STORE_MODEL_EXAMPLES", "100")),
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
