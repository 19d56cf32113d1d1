"""What a catch-up page holds that is stored already, found by (sender, seq) first:
``MessageStore.held_in`` against ``held``, and ``check_page`` with ``stored``
against ``check_page`` with ``known`` alone (the general path)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.protocols._catchup import Page, PageRequest, check_page
from peer.wire._envelope import Content, Envelope, seal_message
from peer.wire._errors import ProtocolError
from store import AppendItem, MessageStore
from store._held import _seen_ranges
from tests._catchup_log import ALICE, BOB, CAROL, TS, msg
from tests._fuzz import fuzz_scale

TOPIC = "general"


def _chain(who: object, count: int, topic: str = TOPIC) -> list[Envelope]:
    out: list[Envelope] = []
    prev = None
    for seq in range(1, count + 1):
        env = seal_message(who, topic=topic, seq=seq, ts=TS + seq, prev=prev,  # type: ignore[arg-type]
                           content=Content(body=f"m{seq}"))
        prev = env.id
        out.append(env)
    return out


_ALICE = _chain(ALICE, 12)
_BOB = _chain(BOB, 6)
_ELSEWHERE = _chain(CAROL, 3, topic="random")


def _item(env: Envelope, topic: str | None = None, seq: int | None = None) -> AppendItem:
    item = AppendItem.from_envelope(env, received_ms=TS, topic=topic)
    return item if seq is None else item._replace(sender_seq=seq)


@pytest.fixture
def store() -> Iterator[MessageStore]:
    with tempfile.TemporaryDirectory() as home:
        s = MessageStore(str(Path(home) / "s"), sync=False)
        try:
            yield s
        finally:
            s.close()


@settings(max_examples=fuzz_scale(60), deadline=None)
@given(
    st.sets(st.integers(0, len(_ALICE) - 1)),
    st.sets(st.integers(0, len(_BOB) - 1)),
    st.booleans(),
)
def test_held_in_answers_what_held_answers(alice: set[int], bob: set[int], other: bool) -> None:
    with tempfile.TemporaryDirectory() as home:
        s = MessageStore(str(Path(home) / "s"), sync=False, max_seen_ranges=3)
        try:
            items = [_item(_ALICE[i]) for i in sorted(alice)] + [_item(_BOB[i]) for i in bob]
            if other:  # one of alice's stored under another topic: held finds it, not held_in
                items.append(_item(_ALICE[0], topic="random"))
            for i in range(0, len(items), 4):  # several commits: ranges merged and bounded
                s.append_batch(items[i:i + 4])
            asked = [(e.sender, e.seq, e.id) for e in _ALICE + _BOB + _ELSEWHERE]
            got = s.held_in(TOPIC, asked)
            in_topic = {m.msg_id for m in s.read(TOPIC, 0, 1000)}
            assert got == s.held([m for _, _, m in asked]) & in_topic
            assert got == {_ALICE[i].id for i in alice} | {_BOB[i].id for i in bob}
            assert not s.check()
        finally:
            s.close()


def test_held_in_looks_up_only_seen_seqs_and_unsequenced_ones(store: MessageStore) -> None:
    store.append_batch([_item(e) for e in _ALICE[:3]])
    unsequenced = _item(_BOB[0], seq=0)  # stored without sender indexes or seen ranges
    store.append_batch([unsequenced])

    def asked() -> set[bytes]:
        return store.held_in(TOPIC, [(e.sender, e.seq, e.id) for e in _ALICE[:5]]
                             + [(BOB.peer_id, 0, _BOB[0].id)])

    assert asked() == {e.id for e in _ALICE[:3]} | {_BOB[0].id}
    # a seq inside the seen ranges whose id is another's is not held
    forked = seal_message(ALICE, topic=TOPIC, seq=2, ts=TS, content=Content(body="fork"))
    assert store.held_in(TOPIC, [(forked.sender, 2, forked.id)]) == set()
    with pytest.raises(ValueError):
        store.held_in(TOPIC, [(b"short", 1, _ALICE[0].id)])
    with pytest.raises(ValueError):
        store.held_in(TOPIC, [(ALICE.peer_id, -1, _ALICE[0].id)])


def test_seen_ranges_stop_at_their_prefix(store: MessageStore) -> None:
    store.append_batch([_item(e) for e in _ALICE[:2] + _ALICE[4:6]])
    store.append_batch([_item(e) for e in _chain(ALICE, 2, topic="generalx")])

    def ranges() -> tuple[list[int], list[int]]:
        def read(txn: lmdb.Transaction[bytes]) -> tuple[list[int], list[int]]:
            cur = txn.cursor(db=store._seen)
            return _seen_ranges(cur, ALICE.peer_id + TOPIC.encode() + b"\x00")
        return store._read(read)

    assert ranges() == ([1, 5], [2, 6])


def _page(wires: list[bytes]) -> tuple[PageRequest, Page]:
    return PageRequest(1, TOPIC, 0, 0, 512), Page(1, TOPIC, wires, 30, False, [])


def _outcome(request: PageRequest, page: Page, known: Callable[[list[bytes]], Collection[bytes]],
             stored: Callable[[str, list[tuple[bytes, int, bytes]]], Collection[bytes]] | None
             ) -> object:
    try:
        return [e.id for e in check_page(request, page, known=known, stored=stored)]
    except ProtocolError as exc:
        return exc.code


@settings(max_examples=fuzz_scale(150), deadline=None)
@given(st.data())
def test_check_page_with_stored_matches_the_general_path(data: st.DataObject) -> None:
    envs = data.draw(st.permutations(_ALICE[:5] + _BOB[:3]))
    wires = [e.wire for e in envs]
    pool = [*envs, msg(CAROL, 1, topic="random")]
    ids = data.draw(st.sets(st.sampled_from([e.id for e in pool]), max_size=4))
    topic_of = {e.id: e.log_topic for e in pool}
    if data.draw(st.booleans()):  # a held message of another topic, on this page
        wires.append(pool[-1].wire)
    if data.draw(st.booleans()):  # a held message whose signature is broken
        i = data.draw(st.integers(0, len(wires) - 1))
        raw = bytearray(wires[i])
        raw[-1] ^= 1
        wires[i] = bytes(raw)
    if data.draw(st.booleans()):  # one that does not open at all
        wires.insert(data.draw(st.integers(0, len(wires))), b"\xa0")
    request, page = _page(wires)

    def known(asked: list[bytes]) -> set[bytes]:
        return ids & set(asked)

    def stored(topic: str, asked: list[tuple[bytes, int, bytes]]) -> set[bytes]:
        return {m for _, _, m in asked if m in ids and topic_of[m] == topic}

    assert _outcome(request, page, known, stored) == _outcome(request, page, known, None)


def test_a_good_page_never_asks_the_id_index(store: MessageStore) -> None:
    store.append_batch([_item(e) for e in _ALICE[:4]])
    request, page = _page([e.wire for e in _ALICE[:8]])

    def known(asked: list[bytes]) -> set[bytes]:
        raise AssertionError("the general path was taken")

    got = check_page(request, page, known=known, stored=store.held_in)
    assert [e.id for e in got] == [e.id for e in _ALICE[4:8]]
    assert got == check_page(request, page, known=store.held)
    # a page that fails a check goes the general way, which says what is wrong
    forged = bytearray(_ALICE[7].wire)
    forged[-1] ^= 1  # the newest of the run: its signature is verified
    request, page = _page([e.wire for e in _ALICE[4:7]] + [bytes(forged)])
    asked: list[list[bytes]] = []

    def counted(ids: list[bytes]) -> set[bytes]:
        asked.append(ids)
        return store.held(ids)

    with pytest.raises(ProtocolError):
        check_page(request, page, known=counted, stored=store.held_in)
    assert len(asked) == 1


def test_a_lane_whose_page_overlapped_is_checked_ids_first() -> None:
    from peer.node._overlap import Overlaps

    lanes = Overlaps(max_lanes=2)
    assert lanes.opens_whole(b"c1", TOPIC)
    lanes.checked(b"c1", TOPIC, messages=512, fresh=512)
    assert lanes.opens_whole(b"c1", TOPIC) and len(lanes) == 0
    lanes.checked(b"c1", TOPIC, messages=512, fresh=100)  # a second carrier's page
    assert not lanes.opens_whole(b"c1", TOPIC)
    assert lanes.opens_whole(b"c1", "random") and lanes.opens_whole(b"c2", TOPIC)
    lanes.checked(b"c1", TOPIC, messages=512, fresh=512)  # past the overlap
    assert lanes.opens_whole(b"c1", TOPIC)
    for carrier in (b"c1", b"c2", b"c3"):  # bounded: past the limit all are forgotten
        lanes.checked(carrier, TOPIC, messages=2, fresh=0)
    assert len(lanes) == 1 and not lanes.opens_whole(b"c3", TOPIC)
