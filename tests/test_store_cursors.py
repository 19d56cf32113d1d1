"""``append_batch`` writes along a cursor per place (each topic's log, the sender
index, the id index twice): one batch holding many topics, senders, followers
and duplicates stores exactly what the same items store in batches of one
message (with its follower) each."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from store import AppendItem, MessageStore
from tests._fuzz import fuzz_scale

_SENDERS = [bytes([n]) * 32 for n in (3, 9)]


def _item(n: int, topic: str, sender: int) -> AppendItem:
    wire = n.to_bytes(8, "big") * (4 + n % 5)
    return AppendItem(hashlib.sha256(wire).digest(), topic, _SENDERS[sender], n, 1000 + n,
                      wire, 7)


def _ref(of: AppendItem) -> AppendItem:
    return AppendItem(hashlib.sha256(b"ref" + of.msg_id).digest(), "~refs", bytes(32), 0,
                      of.ts, b"ref" + of.msg_id, of.received_ms, True)


def _contents(s: MessageStore) -> object:
    topics = s.topics()
    logs = {t.topic: [(m.msg_id, m.seq, m.wire, m.sender_seq) for m in s.read(t.topic, 0, 1000)]
            for t in topics}
    senders = {(who, t.topic): s.sender_ranges(who, t.topic) for who in _SENDERS for t in topics}
    return topics, logs, senders, [s.by_sender(who, n) for who in _SENDERS for n in range(40)]


_MESSAGES = st.lists(
    st.tuples(st.integers(1, 30), st.sampled_from(["a", "b", "ab"]), st.integers(0, 1),
              st.booleans()),
    max_size=40,
)


@settings(max_examples=fuzz_scale(60), deadline=None)
@given(_MESSAGES, _MESSAGES)
def test_one_batch_stores_what_batches_of_one_store(
    before: list[tuple[int, str, int, bool]], batch: list[tuple[int, str, int, bool]]
) -> None:
    def groups(spec: list[tuple[int, str, int, bool]]) -> list[list[AppendItem]]:
        out = []
        for n, topic, sender, ref in spec:
            item = _item(n, topic, sender)  # the same n twice: a duplicate
            out.append([item, _ref(item)] if ref else [item])
        return out

    with tempfile.TemporaryDirectory() as home:
        one, each = (MessageStore(str(Path(home) / name), sync=False) for name in ("1", "n"))
        try:
            for s in (one, each):
                for group in groups(before):
                    s.append_batch(group)
            together = one.append_batch([i for g in groups(batch) for i in g])
            apart = [r for g in groups(batch) for r in each.append_batch(g)]
            assert together == apart
            assert _contents(one) == _contents(each)
            assert not one.check()
        finally:
            one.close()
            each.close()
