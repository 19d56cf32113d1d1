"""Catch-up's fast paths give what the general paths give (as test_fastpath.py does
for the relay's): opening a page's envelopes at once (``peer.wire._openmany``),
``check_page`` built on it, the store's log record encoder and its field check,
the inbox order's in-order shortcut, and the shell's early page checks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from unittest import mock

import cbor2
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.protocols import _catchup
from peer.protocols._catchup import Page, PageRequest, check_page
from peer.protocols._order import SenderOrder
from peer.wire._cbor import encode
from peer.wire._envelope import (
    Content,
    Envelope,
    open_envelope,
    seal_message,
    seal_presence,
    seal_receipt,
    split_wire,
)
from peer.wire._errors import ProtocolError
from peer.wire._openmany import _decode_all, open_many
from store._records import (
    U64_MAX,
    AppendItem,
    _check_id,
    _check_u64,
    _encode_record,
    _encode_record_cbor2,
)
from tests._catchup_log import ALICE, BOB, CAROL, TS, dm, msg
from tests._fuzz import fuzz_scale


def _chain(who: Any, count: int, topic: str = "general", body: str = "") -> list[Envelope]:
    out: list[Envelope] = []
    prev = None
    for seq in range(1, count + 1):
        env = seal_message(who, topic=topic, seq=seq, ts=TS + seq, prev=prev,
                           content=Content(body=body or f"m{seq}"))
        prev = env.id
        out.append(env)
    return out


def _page_envelopes() -> list[Envelope]:
    """Envelopes of every kind a page may hold, a payload and a long one included."""
    envs = _chain(ALICE, 5) + _chain(BOB, 3)
    envs.append(msg(CAROL, 1, "x" * 5000))  # its signed part is over the short bound
    envs.append(msg(CAROL, 2, payload=encode({"n": [1, 2, 3], "t": "x"})))
    envs.append(dm(ALICE, BOB, 1))
    envs.append(seal_receipt(BOB, recipient=ALICE.peer_id, ids=[envs[0].id], seq=1,
                             ts=TS))
    envs.append(seal_presence(CAROL, payload=b"hi", seq=1, ts=TS))
    return envs


def _general(wires: Sequence[bytes], parts: Sequence[tuple[bytes, bytes]],
             ids: Sequence[bytes] | None = None) -> Iterator[Envelope]:
    for wire, (signed, sig) in zip(wires, parts, strict=True):
        yield open_envelope(wire, signed=signed, sig=sig, verify=False)


def _run(envelopes: Iterable[Envelope]) -> tuple[list[Envelope], object]:
    """What a consumer sees: the envelopes yielded, then the error code, if any."""
    got: list[Envelope] = []
    try:
        for env in envelopes:
            got.append(env)
    except ProtocolError as exc:
        return got, exc.code
    return got, None


def _resigned(signed: bytes) -> bytes:
    """A wire holding ``signed`` (the signature does not matter to opening)."""
    return encode([signed, b"\x01" * 64])


@st.composite
def _mutated_signed(draw: st.DrawFn, signed: bytes) -> bytes:
    data = bytearray(signed)
    kind = draw(st.integers(0, 6))
    pos = draw(st.integers(0, len(data) - 1))
    if kind == 1:
        data[pos] = draw(st.integers(0, 255))
    elif kind == 2:
        data.insert(pos, draw(st.integers(0, 255)))
    elif kind == 3:
        del data[pos]
    elif kind == 4:
        data = data[: draw(st.integers(0, len(data)))]
    elif kind == 5:
        data += draw(st.binary(min_size=1, max_size=3))
    elif kind == 6:  # re-encoded with a float, unsorted keys, or a nested depth
        fields = cbor2.loads(signed)
        fields[draw(st.sampled_from(["ts", "zz", "body"]))] = draw(
            st.sampled_from([1.5, {"b": 1, "a": 2}, [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]], -1])
        )
        data = bytearray(cbor2.dumps(fields))
    return bytes(data)


_ENVS = _page_envelopes()


@settings(max_examples=fuzz_scale(300), deadline=None)
@given(st.data())
def test_open_many_matches_open_envelope_one_by_one(data: st.DataObject) -> None:
    envs = data.draw(st.lists(st.sampled_from(_ENVS), min_size=1, max_size=12))
    wires = [e.wire for e in envs]
    if data.draw(st.booleans()):  # one of them mutated
        i = data.draw(st.integers(0, len(wires) - 1))
        wires[i] = _resigned(data.draw(_mutated_signed(split_wire(wires[i])[0])))
    parts = [split_wire(w) for w in wires]
    assert _run(open_many(wires, parts)) == _run(_general(wires, parts))


def test_open_many_takes_the_fast_way_for_a_plain_page_only() -> None:
    envs = _chain(ALICE, 6)
    parts = [split_wire(e.wire) for e in envs]
    assert _decode_all([s for s, _ in parts]) is not None
    assert list(open_many([e.wire for e in envs], parts)) == envs
    long = msg(CAROL, 1, "x" * 5000)  # over the short bound: one by one
    assert _decode_all([s for s, _ in parts] + [split_wire(long.wire)[0]]) is None
    fields = cbor2.loads(parts[0][0])
    fields["ts"] = 1.5  # a float needs the canonical encoder: one by one
    assert _decode_all([cbor2.dumps(fields), parts[1][0]]) is None


@settings(max_examples=fuzz_scale(200), deadline=None)
@given(st.data())
def test_check_page_matches_the_general_opening(data: st.DataObject) -> None:
    envs = data.draw(st.permutations(_chain(ALICE, 4) + _chain(BOB, 3)))
    wires = [e.wire for e in envs]
    if data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(wires) - 1))
        wires[i] = _resigned(data.draw(_mutated_signed(split_wire(wires[i])[0])))
    if data.draw(st.booleans()):
        wires.append(msg(CAROL, 1, topic="other").wire)  # another topic
    request = PageRequest(1, "general", 0, 0, 512)
    page = Page(1, "general", wires, 9, False, [])
    known = data.draw(st.sets(st.sampled_from([e.id for e in envs]), max_size=3))

    def outcome(opener: Callable[..., Iterator[Envelope]]) -> object:
        with mock.patch.object(_catchup, "open_many", opener):
            try:
                return check_page(request, page, known=lambda ids: known & set(ids))
            except ProtocolError as exc:
                return exc.code

    assert outcome(open_many) == outcome(_general)


_U64S = st.one_of(
    st.sampled_from([0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, U64_MAX]),
    st.integers(0, U64_MAX),
)


@settings(max_examples=fuzz_scale(400), deadline=None)
@given(_U64S, _U64S, _U64S, st.sampled_from([0, 1, 23, 24, 255, 256, 65535, 65536, 70000]))
def test_log_records_encode_as_cbor2_does(seq: int, ts: int, received: int, size: int) -> None:
    item = AppendItem(b"\x01" * 32, "t", b"\x02" * 32, seq, ts, b"w" * size, received)
    assert _encode_record(item) == _encode_record_cbor2(item)


def _check_fields_reference(item: AppendItem, max_record: int) -> None:
    _check_id(item.msg_id, "msg_id")
    _check_id(item.sender, "sender")
    _check_u64(item.sender_seq, "sender_seq")
    _check_u64(item.ts, "ts")
    _check_u64(item.received_ms, "received_ms")
    if not isinstance(item.wire, bytes):
        raise ValueError("wire must be bytes")
    if len(item.wire) > max_record:
        raise ValueError(f"record of {len(item.wire)} bytes over {max_record}")


class _Bytes(bytes):
    pass


_IDS = st.sampled_from([b"\x01" * 32, b"\x01" * 31, b"\x01" * 33, bytearray(32), "x" * 32,
                        _Bytes(b"\x01" * 32), None])
_INTS = st.sampled_from([0, 5, U64_MAX, U64_MAX + 1, -1, True, 1.0, None])


@settings(max_examples=fuzz_scale(400), deadline=None)
@given(_IDS, _IDS, _INTS, _INTS, _INTS, st.sampled_from([b"w" * 10, b"w" * 11, bytearray(3), "w"]))
def test_check_fields_matches_the_checks_one_by_one(
    msg_id: Any, sender: Any, seq: Any, ts: Any, received: Any, wire: Any
) -> None:
    item = AppendItem(msg_id, "t", sender, seq, ts, wire, received)

    def outcome(check: Callable[[], None]) -> str | None:
        try:
            check()
        except ValueError as exc:
            return str(exc)
        return None

    assert outcome(lambda: item.check_fields(10)) == outcome(
        lambda: _check_fields_reference(item, 10)
    )


_KEYS = [("t", b"a"), ("t", b"b")]


@settings(max_examples=fuzz_scale(300), deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_KEYS), st.integers(1, 12)), max_size=40))
def test_in_order_shortcut_matches_offer(offers: list[tuple[tuple[str, bytes], int]]) -> None:
    general: SenderOrder[int] = SenderOrder(hold=5.0, max_held=6)
    fast: SenderOrder[int] = SenderOrder(hold=5.0, max_held=6)
    for n, (key, seq) in enumerate(offers):
        now = n * 0.5
        expected = general.offer(key, seq, n, now)
        if fast.next_in_order(key, seq):
            got = [n]
            assert expected.items == [n] and not expected.opened and not expected.skipped
            assert not expected.jumped
        else:
            got = fast.offer(key, seq, n, now).items
        assert got == expected.items
        assert general.expire(now).items == fast.expire(now).items
    assert (general.held, general.late, general.duplicates, general.skipped) == (
        fast.held, fast.late, fast.duplicates, fast.skipped
    )
    assert general.next_deadline() == fast.next_deadline()
    for key in _KEYS:
        assert general.waiting(key) == fast.waiting(key)


async def test_early_checks_are_taken_once_and_bounded() -> None:
    from peer.node._earlycheck import MAX_EARLY, EarlyChecks

    early = EarlyChecks()
    assert await early.take(1, 1) == (False, None)  # none: the store checks itself
    assert early.register(1, 1) and not early.register(1, 1)
    result = [msg(ALICE, 1)]
    release = trio.Event()

    async def check() -> list[Envelope] | None:
        await release.wait()
        return result

    async with trio.open_nursery() as nursery:
        taken: list[object] = []

        async def take() -> None:
            taken.append(await early.take(1, 1))  # registered, not yet run: waits

        nursery.start_soon(take)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(early.run, 1, 1, check)
        await trio.testing.wait_all_tasks_blocked()
        assert taken == []
        release.set()
    assert taken == [(True, result)] and len(early) == 0 and early.taken == 1
    # forgotten (its task could not start): a waiting store checks the page itself
    assert early.register(1, 2)
    async with trio.open_nursery() as nursery:
        taken.clear()

        async def take_two() -> None:
            taken.append(await early.take(1, 2))

        nursery.start_soon(take_two)
        await trio.testing.wait_all_tasks_blocked()
        early.forget(1, 2)
    await early.run(1, 2, check)  # too late: nothing to do
    assert taken == [(False, None)] and len(early) == 0 and early.taken == 1
    # a failed store drops its walk's entries; the bound holds
    assert early.register(2, 1) and early.register(2, 2) and early.register(3, 1)
    early.drop_walk(2)
    assert len(early) == 1
    for r in range(MAX_EARLY + 5):
        early.register(4, r)
    assert len(early) == MAX_EARLY


@pytest.mark.parametrize("count", [1, 2, 3])
def test_open_many_is_open_envelope_on_small_pages(count: int) -> None:
    envs = _chain(BOB, count)
    parts = [split_wire(e.wire) for e in envs]
    ids = [e.id for e in envs]
    assert list(open_many([e.wire for e in envs], parts, ids)) == list(
        _general([e.wire for e in envs], parts)
    )


def _plain_variants() -> list[dict[str, Any]]:
    """A plain message's fields, and each way ``_plain_msg`` must leave it to the checks."""
    base = cbor2.loads(split_wire(_chain(ALICE, 2)[1].wire)[0])
    out: list[dict[str, Any]] = [base]
    for key, value in [("v", 2), ("v", True), ("kind", "dm"), ("kind", ["msg"]),
                       ("from", b"\x01" * 31), ("from", "x" * 32), ("seq", -1), ("seq", True),
                       ("seq", 2**64), ("seq", 1), ("ts", 2**64), ("ts", 1.5),
                       ("prev", b"\x01" * 31), ("prev", None), ("topic", "other"),
                       ("topic", "a/b"), ("topic", b"general"), ("body", b"x"),
                       ("body", "é" * 40_000), ("body", "x" * 70_000), ("zz", 1),
                       ("payload", encode(1)), ("reply_to", b"\x01" * 32), ("meta", {})]:
        out.append({**base, key: value})
    out.append({k: v for k, v in base.items() if k != "body"})
    out.append({k: v for k, v in base.items() if k != "prev"})
    return out


@pytest.mark.parametrize("fields", _plain_variants())
def test_the_plain_message_check_accepts_what_the_checks_accept(fields: dict[str, Any]) -> None:
    """Behind a message that passed every check (so the fast check may run), each
    variant opens, or fails with the same error, as ``open_envelope`` has it."""
    first = _chain(ALICE, 1)[0].wire
    wires = [first, _resigned(cbor2.dumps(fields, canonical=True))]
    parts = [split_wire(w) for w in wires]
    assert _run(open_many(wires, parts)) == _run(_general(wires, parts))


def test_the_plain_message_check_leaves_a_non_map_to_the_checks() -> None:
    first = _chain(ALICE, 1)[0].wire
    wires = [first, _resigned(cbor2.dumps([1, 2]))]
    parts = [split_wire(w) for w in wires]
    assert _run(open_many(wires, parts))[1] is not None
    assert _run(open_many(wires, parts)) == _run(_general(wires, parts))


def test_a_plain_page_is_checked_in_full_once() -> None:
    from peer.wire import _envelope, _openmany

    envs = _chain(ALICE, 6)
    parts = [split_wire(e.wire) for e in envs]
    with mock.patch.object(_openmany, "_check_shape", wraps=_envelope._check_shape) as full:
        assert list(open_many([e.wire for e in envs], parts)) == envs
    assert full.call_count == 1  # the first; the rest in one expression each
