"""The ``~inbox`` log's references (``peer.node._inboxlog``): a channel message's
inbox record points to its channel log record instead of copying it.

The fast path (a reference, its entry built from the channel record on read)
is compared with the general one (the full record, ``inbox_message``), and
``channel_entry`` with ``inbox_entry``; a
store written with full records (every store before references) reads the
same; channel retention keeps what the inbox refers to (after a sweep and a
restart the inbox is whole) and frees it once the inbox lets go; a reference
whose channel record is gone all the same (retention without pins, as before
them) is left out of the inbox, counted and logged; and the OCM gateway's cheap ``_note`` remembers
the id ``_remember`` would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from peer import Identity, Peer, PeerOptions, memory_link_pair
from peer.node import _inboxlog, _storage
from peer.node._inbox import InboxMessage, channel_entry, inbox_entry
from peer.node._inboxlog import (
    REF,
    entry_from_log,
    inbox_item,
    inbox_item_of,
    inbox_key,
    inbox_message,
    ref_key,
    referenced,
)
from peer.node._ocmhost import OcmGateway, _seen_key
from peer.protocols._ocmmap import message_uuid
from peer.wire._blobframes import Attachment
from peer.wire._cbor import encode
from peer.wire._envelope import Content, seal_dm, seal_message
from store import AppendItem, KeepRules, MessageStore, RetentionPolicy, StoreService
from tests._catchup_log import ALICE, BOB, TS
from tests.test_offline import running

ME = BOB.peer_id


def _content(draw: st.DrawFn) -> Content:
    payload = draw(st.none() | st.builds(
        lambda v: encode(v),
        st.recursive(st.integers(-10, 10) | st.text(max_size=5),
                     lambda c: st.lists(c, max_size=3)
                     | st.dictionaries(st.text(max_size=3), c, max_size=3), max_leaves=6),
    ))
    ids = st.none() | st.binary(min_size=32, max_size=32)
    attachments = draw(st.lists(st.builds(
        Attachment, st.binary(min_size=32, max_size=32), st.text(min_size=1, max_size=8),
        st.just("text/plain"), st.integers(0, 1000)), max_size=2))
    return Content(body=draw(st.text(max_size=40)), payload=payload, reply_to=draw(ids),
                   thread=draw(ids), attachments=tuple(attachments))


@st.composite
def _channel_messages(draw: st.DrawFn) -> tuple[Any, Content, int, int]:
    who = draw(st.sampled_from([ALICE, BOB]))
    return who, _content(draw), draw(st.integers(1, 2**40)), draw(st.integers(0, 2**45))


@settings(max_examples=150, deadline=None)
@given(_channel_messages())
def test_an_entry_built_from_the_log_is_the_full_records_entry(
    case: tuple[Any, Content, int, int],
) -> None:
    who, content, seq, received = case
    env = seal_message(who, topic="general", seq=seq, ts=TS + seq, content=content)
    outgoing = env.sender == ME
    message, payload = inbox_entry(env, env.content(), env.topic, None, outgoing, received)
    assert channel_entry(env, outgoing, received) == (message, payload)  # Storage's shortcut
    full = inbox_item(message, payload)
    general = inbox_message(7, received, full.wire)
    fast = entry_from_log(env.wire, env.id, 7, received, ME)
    assert fast == general
    assert entry_from_log(env.wire, env.id, 7, received, ME, {}) == general  # peer ids kept
    ref = inbox_item_of("msg", message, payload)
    assert referenced(ref.wire) == env.id and ref.wire.startswith(REF)
    # same topic, ts, received
    assert ref._replace(wire=b"", msg_id=b"", follows=False) == full._replace(wire=b"", msg_id=b"")
    assert ref.follows and not full.follows  # stored with its channel record, never alone
    assert ref.msg_id == ref_key(env.sender, env.topic, env.seq, env.id)
    assert referenced(full.wire) is None  # a full record is never taken for a reference


def test_dms_keep_full_records() -> None:
    env = seal_dm(ALICE, recipient_key=BOB.public_key, seq=1, ts=TS,
                  content=Content(body="secret"))
    message, payload = inbox_entry(env, Content(body="secret"), None, env.sender, False, TS)
    item = inbox_item_of("dm", message, payload)
    assert referenced(item.wire) is None
    assert inbox_message(1, TS, item.wire).body == "secret"
    assert entry_from_log(env.wire, env.id, 1, TS, ME) is None  # not a channel message


@pytest.mark.parametrize("wire", [
    b"", b"\xff", encode([b"\xa0", b"s" * 64]), encode([b"x", b"s"]), encode(5),
    encode([encode({"kind": "msg"}), b"s" * 64]),  # fields missing
    encode([encode({"kind": "msg", "from": b"k" * 32, "topic": "general", "ts": 1, "seq": 1,
                    "attachments": 5}), b"s" * 64]),  # fields of the wrong shape
])
def test_a_record_that_is_no_channel_message_gives_no_entry(wire: bytes) -> None:
    assert entry_from_log(wire, bytes(32), 1, TS, ME) is None


# -- peers with stores: what a restart reads --------------------------------------------


def _options(tmp: Path, name: str, **extra: Any) -> PeerOptions:
    return PeerOptions(store_path=str(tmp / name), dht=False, **extra)


async def _until(peer: Peer, condition: Any) -> None:
    with trio.fail_after(20):
        while not condition():
            with trio.move_on_after(0.5):
                await peer.wait_changed()


def _seen(peer: Peer) -> list[InboxMessage]:
    return list(peer.inbox.query(limit=100_000))


async def _fill(tmp: Path, ia: Identity, ib: Identity, count: int) -> list[InboxMessage]:
    """b misses ``count`` messages of a (some with payloads and replies), catches
    up, reads a few, sends one itself; returns b's inbox as it was then."""
    async with running(ia, _options(tmp, "a", channels=("lobby",))) as a:
        async with running(ib, _options(tmp, "b", channels=("lobby",))):
            pass  # b was here, and goes away
        first = None
        for i in range(count):
            payload = encode({"i": i}) if i % 3 == 0 else None
            env = await a.send_message("lobby", Content(body=f"m{i}", payload=payload,
                                                        reply_to=first))
            first = first or env.id
        async with running(ib, _options(tmp, "b", channels=("lobby",))) as b:
            ta, tb = memory_link_pair()
            a.start_link(ta, initiator=True)
            b.start_link(tb, initiator=False)
            await _until(b, lambda: len(_seen(b)) == count)
            await b.send_message("lobby", Content(body="mine"))
            await b.mark_read([m.id for m in _seen(b)[:5]])
            return _seen(b)


async def _reopened(tmp: Path, ib: Identity) -> tuple[list[InboxMessage], int]:
    async with running(ib, _options(tmp, "b")) as b:
        assert b.storage is not None
        return _seen(b), b.storage.counters.inbox_gone


def _json(messages: list[InboxMessage]) -> list[dict[str, Any]]:
    return [m.to_json() for m in messages]


async def test_a_restart_reads_the_inbox_as_it_was(tmp_path: Path) -> None:
    ia, ib = Identity.generate(), Identity.generate()
    before = await _fill(tmp_path, ia, ib, 40)
    assert len(before) == 41 and sum(m.read for m in before) >= 5
    store = MessageStore(str(tmp_path / "b"))
    try:
        records = store.read("~inbox", after=0, limit=100)
        assert len(records) == 41
        assert all(referenced(r.wire) is not None for r in records)  # ours and theirs
        assert store.check() == []  # every reference is an ordinary, indexed record
    finally:
        store.close()
    after, gone = await _reopened(tmp_path, ib)
    assert gone == 0
    assert _json(after) == _json(before)


async def test_a_store_of_full_records_reads_the_same(tmp_path: Path) -> None:
    """Stores written before references hold full records: read as before, and a
    store holding both kinds reads both."""
    ia, ib = Identity.generate(), Identity.generate()
    with mock.patch.object(_storage, "inbox_item_of", lambda kind, m, p: inbox_item(m, p)):
        before = await _fill(tmp_path, ia, ib, 20)
    store = MessageStore(str(tmp_path / "b"))
    try:
        assert all(referenced(r.wire) is None for r in store.read("~inbox", limit=100))
    finally:
        store.close()
    after, gone = await _reopened(tmp_path, ib)
    assert gone == 0 and _json(after) == _json(before)


async def test_a_reference_retention_removed_is_left_out_and_counted(tmp_path: Path) -> None:
    """A channel record removed without pins (a store from before them)."""
    ia, ib = Identity.generate(), Identity.generate()
    before = await _fill(tmp_path, ia, ib, 30)
    store = MessageStore(str(tmp_path / "b"))
    try:
        removed = store.apply_retention("lobby", now_ms=0, max_count=21)  # 31 -> 21 kept
        assert removed.deleted == 10
    finally:
        store.close()
    with mock.patch.object(_inboxlog, "_from_ref", wraps=_inboxlog._from_ref) as built:
        after, gone = await _reopened(tmp_path, ib)
    assert built.call_count == 31
    assert gone == 10
    assert _json(after) == _json(before[10:])  # the oldest ten, and nothing else


async def test_channel_retention_keeps_what_the_inbox_shows(tmp_path: Path) -> None:
    """A sweep keeping channels for 0 ms, with an inbox of 20: the 11 references
    the inbox drops free their records at the next sweep; the 20 it holds stay,
    and a restart reads them all (none gone)."""
    ia, ib = Identity.generate(), Identity.generate()
    before = await _fill(tmp_path, ia, ib, 30)  # 31 in lobby and in the inbox
    sweeps: list[int] = []
    sweep = StoreService.retention_sweep

    async def counted(self: StoreService, *args: Any, **kwargs: Any) -> int:
        sweeps.append(await sweep(self, *args, **kwargs))
        return sweeps[-1]

    nothing = KeepRules(default=RetentionPolicy(max_age_ms=0))
    with (mock.patch.object(_storage, "RETENTION_INTERVAL", 0),
          mock.patch.object(StoreService, "retention_sweep", counted)):
        options = _options(tmp_path, "b", keep_rules=nothing, inbox_capacity=20)
        async with running(ib, options) as b:
            await _until(b, lambda: len(sweeps) >= 3)
    assert sweeps[:3] == [11, 11, 0]  # the inbox's 11, then their channel records
    store = MessageStore(str(tmp_path / "b"))
    try:
        lobby = [m.msg_id for m in store.read("lobby", limit=100)]
        assert lobby == [m.id for m in before[11:]]
        assert store.check() == []
    finally:
        store.close()
    after, gone = await _reopened(tmp_path, ib)
    assert gone == 0
    assert _json(after) == _json(before[11:])


async def test_references_of_an_older_store_still_pin_their_records(tmp_path: Path) -> None:
    """References written before ``ref_key`` are in the id index by ``inbox_key``:
    channel retention keeps their records all the same."""
    ia, ib = Identity.generate(), Identity.generate()
    with mock.patch.object(_inboxlog, "ref_key", lambda s, t, q, i: inbox_key(i)):
        before = await _fill(tmp_path, ia, ib, 10)
    store = MessageStore(str(tmp_path / "b"))
    try:
        assert store.position(inbox_key(before[0].id)) is not None  # the old key
        pins = _inboxlog.inbox_pins("lobby")
        kept = store.apply_retention("lobby", now_ms=2**62, max_age_ms=0, pinned=pins)
        assert (kept.deleted, kept.pinned) == (0, 11)  # each one the inbox shows
        swept = store.apply_retention("lobby", now_ms=2**62, max_age_ms=0)
        assert swept.deleted == 11  # without pins, all of them go
    finally:
        store.close()


async def test_new_references_pin_by_their_own_key(tmp_path: Path) -> None:
    ia, ib = Identity.generate(), Identity.generate()
    before = await _fill(tmp_path, ia, ib, 10)
    store = MessageStore(str(tmp_path / "b"))
    try:
        first = store.read("lobby", limit=1)[0]
        assert first.msg_id == before[0].id
        key = ref_key(first.sender, "lobby", first.sender_seq, first.msg_id)
        assert store.position(key) == ("~inbox", 1)
        assert store.position(inbox_key(first.msg_id)) is None  # no second, random entry
        pins = _inboxlog.inbox_pins("lobby")
        kept = store.apply_retention("lobby", now_ms=2**62, max_age_ms=0, pinned=pins)
        assert (kept.deleted, kept.pinned) == (0, 11)  # each one the inbox shows
    finally:
        store.close()


# -- the OCM gateway's note -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["plain", "payload", "ocm", "dm", "dm-ocm"])
def test_the_ocm_note_remembers_what_export_would(kind: str) -> None:
    ocm = {"ocm": {"message_id": "m-1", "sender_id": "s", "timestamp": "t", "from": "x",
                   "to": "y", "channel_id": "general", "verified": True}}
    payload = {"plain": None, "payload": encode([1]), "ocm": encode(ocm), "dm": None,
               "dm-ocm": encode(ocm)}[kind]
    content = Content(body="b", payload=payload)
    if kind.startswith("dm"):
        env = seal_dm(ALICE, recipient_key=BOB.public_key, seq=1, ts=TS, content=content)
        message, _ = inbox_entry(env, content, None, ALICE.peer_id, False, TS)
    else:
        env = seal_message(ALICE, topic="general", seq=1, ts=TS, content=content)
        message, _ = inbox_entry(env, content, "general", None, False, TS)
    peer = mock.MagicMock()
    full, fast = OcmGateway(peer), OcmGateway(peer)
    full._remember(message)
    fast._fan_out(message)  # no links: only noted
    assert list(fast._seen) == list(full._seen)
    assert kind in ("dm",) or fast._seen  # something was remembered but for a plain DM
    if kind == "plain":  # an OCM peer echoing it back is known to be on the mesh already
        echoed = message_uuid(env.id)
        assert _seen_key(echoed) in fast._seen and _seen_key(echoed.upper()) in fast._seen
    assert _seen_key("m-1") == "m-1" and _seen_key("x" * 36) == "x" * 36


def test_get_many_is_get_of_each(tmp_path: Path) -> None:
    envs = [seal_message(ALICE, topic="general", seq=i, ts=TS, content=Content(body=f"{i}"))
            for i in range(1, 6)]
    store = MessageStore(str(tmp_path / "s"))
    try:
        store.append_batch([AppendItem.from_envelope(e, received_ms=TS) for e in envs[:4]])
        ids = [envs[4].id, envs[0].id, envs[2].id, envs[0].id, bytes(32)]
        assert store.get_many(ids) == [store.get(i) for i in ids]
        assert [m is None for m in store.get_many(ids)] == [True, False, False, False, True]
        with pytest.raises(ValueError):
            store.get_many([b"short"])
    finally:
        store.close()
