"""The blob transfer logic, sans-IO and in virtual time: ``Fetch`` against fake
carriers that answer, lie, stay silent or refuse, and ``Forwarder`` tables; the
frames' strict decoding and the content id (protocol-spec/blobs.md)."""

from __future__ import annotations

import itertools
import random

import pytest

from peer.protocols._blobs import Ask, Fetch, Forwarder, Route
from peer.wire._blobframes import (
    CHUNK_SIZE,
    MAX_WANT_HOPS,
    BlobAnswer,
    BlobChunk,
    BlobHave,
    BlobNone,
    BlobWant,
    blob_id,
    check_attachments,
    chunk_hash,
)
from peer.wire._errors import ErrorCode, ProtocolError
from peer.wire._frames import decode_frame, encode_frame

A, B, C, R = (bytes([i]) * 32 for i in (1, 2, 3, 9))


def _blob(size: int, seed: int = 1) -> tuple[bytes, bytes, bytes]:
    data = random.Random(seed).randbytes(size)
    hashes = b"".join(chunk_hash(data[i : i + CHUNK_SIZE]) for i in range(0, size, CHUNK_SIZE))
    return data, hashes, blob_id(size, hashes)


class Carrier:
    """A peer that holds a blob and answers wants: honestly, or as told."""

    def __init__(self, data: bytes, hashes: bytes, mode: str = "honest") -> None:
        self.data, self.hashes, self.mode = data, hashes, mode
        self.asked = 0

    def answer(self, want: BlobWant) -> BlobAnswer | None:
        self.asked += 1
        if self.mode == "silent":
            return None
        if self.mode == "none":
            return BlobNone(want.r, "unknown")
        if want.index is None:
            hashes = self.hashes if self.mode != "liar" else bytes(len(self.hashes))
            return BlobHave(want.r, len(self.data), hashes)
        piece = self.data[want.index * CHUNK_SIZE : (want.index + 1) * CHUNK_SIZE]
        if self.mode == "liar":
            piece = bytes(len(piece))
        return BlobChunk(want.r, piece)


def _run(fetch: Fetch, carriers: dict[bytes, Carrier], *, max_steps: int = 10_000) -> list[bytes]:
    """Drive ``fetch`` to the end in virtual time; what it handed out, in order."""
    now, out = 0.0, []
    for _ in range(max_steps):
        asks: list[Ask] = fetch.asks(now)
        assert fetch.in_flight <= fetch.window
        for ask in asks:
            answer = carriers[ask.peer].answer(ask.frame)
            if answer is not None:
                fetch.on_answer(ask.peer, answer, now)
        out += [data for _, data in fetch.ready()]
        if fetch.done or fetch.failed:
            return out
        if not asks:
            deadline = fetch.next_deadline()
            now = deadline if deadline is not None else now + 1
            fetch.handle_timer(now)
    raise AssertionError("the fetch never ended")


def _rids() -> itertools.count[int]:
    return itertools.count(1)


def test_manifest_then_chunks_in_order_within_the_window() -> None:
    data, hashes, blob = _blob(5 * CHUNK_SIZE + 77)
    carriers = {A: Carrier(data, hashes)}
    rid = _rids()
    manifest = Fetch(blob, [None], [Route(A)], lambda: next(rid))
    assert _run(manifest, carriers) == [hashes]
    chunks = Fetch(
        blob,
        list(range(6)),
        [Route(A)],
        lambda: next(rid),
        size=manifest.size,
        hashes=manifest.hashes,
        window=3,
    )
    assert b"".join(_run(chunks, carriers)) == data


def test_a_manifest_that_does_not_hash_to_the_id_is_refused() -> None:
    data, hashes, blob = _blob(3 * CHUNK_SIZE)
    rid = _rids()
    fetch = Fetch(blob, [None], [Route(A), Route(B)], lambda: next(rid))
    carriers = {A: Carrier(data, hashes, "liar"), B: Carrier(data, hashes)}
    assert _run(fetch, carriers) == [hashes]
    assert carriers[A].asked >= 1 and fetch.size == len(data)


def test_bad_chunks_move_to_another_carrier_and_the_bytes_stay_right() -> None:
    data, hashes, blob = _blob(4 * CHUNK_SIZE + 1)
    rid = _rids()
    carriers = {A: Carrier(data, hashes, "liar"), B: Carrier(data, hashes)}
    fetch = Fetch(
        blob, list(range(5)), [Route(A), Route(B)], lambda: next(rid), size=len(data), hashes=hashes
    )
    assert b"".join(_run(fetch, carriers)) == data
    assert fetch.failed is None


def test_a_silent_carrier_times_out_and_the_next_one_serves() -> None:
    data, hashes, blob = _blob(2 * CHUNK_SIZE)
    rid = _rids()
    carriers = {A: Carrier(data, hashes, "silent"), B: Carrier(data, hashes)}
    fetch = Fetch(
        blob,
        [0, 1],
        [Route(A), Route(B)],
        lambda: next(rid),
        size=len(data),
        hashes=hashes,
        timeout=5.0,
    )
    assert b"".join(_run(fetch, carriers)) == data


def test_when_every_route_refuses_the_fetch_fails_and_says_so() -> None:
    data, hashes, blob = _blob(CHUNK_SIZE)
    rid = _rids()
    carriers = {A: Carrier(data, hashes, "none"), B: Carrier(data, hashes, "silent")}
    fetch = Fetch(blob, [None], [Route(A), Route(B)], lambda: next(rid), timeout=1.0)
    assert _run(fetch, carriers) == []
    assert fetch.failed is not None and fetch.in_flight == 0
    assert Fetch(blob, [None], [], lambda: next(rid)).asks(0.0) == []


def test_answers_from_peers_not_asked_are_ignored() -> None:
    data, hashes, blob = _blob(CHUNK_SIZE)
    rid = _rids()
    fetch = Fetch(blob, [0], [Route(A)], lambda: next(rid), size=len(data), hashes=hashes)
    (ask,) = fetch.asks(0.0)
    fetch.on_answer(B, BlobChunk(ask.frame.r, data), 0.0)  # right bytes, wrong peer
    fetch.on_answer(A, BlobChunk(ask.frame.r + 100, data), 0.0)  # an id never sent
    assert fetch.ready() == [] and fetch.in_flight == 1
    fetch.on_answer(A, BlobChunk(ask.frame.r, data), 0.0)
    assert fetch.ready() == [(0, data)]


def test_a_chunk_of_the_wrong_length_is_refused_even_if_it_hashes() -> None:
    data, hashes, blob = _blob(CHUNK_SIZE + 10)
    rid = _rids()
    fetch = Fetch(blob, [1], [Route(A), Route(B)], lambda: next(rid), size=len(data), hashes=hashes)
    (ask,) = fetch.asks(0.0)
    fetch.on_answer(A, BlobChunk(ask.frame.r, data[CHUNK_SIZE:] + b"x"), 0.0)
    assert fetch.ready() == []
    (retry,) = fetch.asks(0.0)
    assert retry.peer == B


# -- forwarding -----------------------------------------------------------------------------


def test_a_relay_forwards_to_the_holder_and_routes_the_first_answer_back() -> None:
    rid = _rids()
    fwd = Forwarder(lambda: next(rid))
    want = BlobWant(7, b"\x05" * 32, 3, hops=2, src=A)
    out = fwd.want(B, want, [B, A, C], 0.0)
    assert [r.peer for r in out] == [A]  # the holder is linked: it alone is asked
    onward = out[0].frame
    assert isinstance(onward, BlobWant) and onward.hops == 1 and onward.index == 3
    back = fwd.answer(A, BlobChunk(onward.r, b"data"))
    assert back[0].peer == B and back[0].frame == BlobChunk(7, b"data")
    assert fwd.answer(A, BlobChunk(onward.r, b"data")) == [] and fwd.stray == 1
    assert fwd.pending == 0


def test_without_the_holder_linked_a_want_fans_out_and_all_refusals_make_one() -> None:
    rid = _rids()
    fwd = Forwarder(lambda: next(rid), fanout=2)
    out = fwd.want(B, BlobWant(1, b"\x05" * 32, None, hops=1, src=A), [B, C, R, b"\x0a" * 32], 0.0)
    assert sorted(r.peer for r in out) == sorted([C, R])
    r_out = out[0].frame.r
    assert fwd.answer(out[0].peer, BlobNone(r_out, "unknown")) == []
    final = fwd.answer(out[1].peer, BlobNone(r_out, "busy"))
    assert final[0].peer == B and final[0].frame == BlobNone(1, "busy")


def test_forwarding_is_bounded_by_hops_per_link_and_time() -> None:
    rid = _rids()
    fwd = Forwarder(lambda: next(rid), per_link=2, max_pending=3, timeout=4.0)
    assert fwd.want(B, BlobWant(1, b"\x05" * 32, hops=0), [A], 0.0)[0].frame == BlobNone(
        1, "unknown"
    )
    assert fwd.want(B, BlobWant(2, b"\x05" * 32, hops=1), [B], 0.0)[0].frame == BlobNone(
        2, "unknown"
    )
    for r in (3, 4):
        assert isinstance(
            fwd.want(B, BlobWant(r, b"\x05" * 32, hops=1), [A], 0.0)[0].frame, BlobWant
        )
    assert fwd.want(B, BlobWant(5, b"\x05" * 32, hops=1), [A], 0.0)[0].frame == BlobNone(5, "busy")
    assert isinstance(fwd.want(C, BlobWant(6, b"\x05" * 32, hops=1), [A], 0.0)[0].frame, BlobWant)
    assert fwd.want(R, BlobWant(7, b"\x05" * 32, hops=1), [A], 0.0)[0].frame == BlobNone(7, "busy")
    assert fwd.next_deadline() == 4.0
    expired = fwd.handle_timer(4.0)
    assert sorted((r.peer, r.frame.r) for r in expired) == [(B, 3), (B, 4), (C, 6)]
    assert all(r.frame == BlobNone(r.frame.r, "timeout") for r in expired)
    assert fwd.pending == 0 and fwd.next_deadline() is None


def test_a_link_going_down_ends_what_waits_on_it() -> None:
    rid = _rids()
    fwd = Forwarder(lambda: next(rid))
    fwd.want(B, BlobWant(1, b"\x05" * 32, hops=1, src=A), [A], 0.0)
    fwd.want(A, BlobWant(2, b"\x05" * 32, hops=1), [C], 0.0)
    out = fwd.link_down(A)
    assert [(r.peer, r.frame) for r in out] == [(B, BlobNone(1, "unknown"))]
    assert fwd.pending == 0


def test_a_flood_of_wants_never_grows_the_table_past_its_bound() -> None:
    rid = _rids()
    fwd = Forwarder(lambda: next(rid), max_pending=64, per_link=16)
    peers = [bytes([i]) * 32 for i in range(20, 40)]
    for n in range(5000):
        fwd.want(peers[n % len(peers)], BlobWant(n, b"\x05" * 32, hops=2), [A, C], 0.0)
    assert fwd.pending == 64 and fwd.refused == 5000 - 64


# -- frames and ids -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "fields", "code"),
    [
        ("blob-chunk", {"r": 1, "d": b"x" * (CHUNK_SIZE + 1)}, ErrorCode.TOO_LARGE),
        ("blob-chunk", {"r": 1, "d": b""}, ErrorCode.MALFORMED),
        ("blob-have", {"r": 1, "size": CHUNK_SIZE + 1, "h": b"\x00" * 32}, ErrorCode.MALFORMED),
        ("blob-want", {"r": 1, "id": b"\x00" * 31, "hops": 0}, ErrorCode.MALFORMED),
        ("blob-want", {"r": 1, "id": b"\x00" * 32, "hops": MAX_WANT_HOPS + 1}, ErrorCode.MALFORMED),
        ("blob-want", {"r": 1, "id": b"\x00" * 32, "hops": 0, "i": 8192}, ErrorCode.MALFORMED),
        ("blob-want", {"r": 1, "id": b"\x00" * 32, "hops": 0, "x": 1}, ErrorCode.MALFORMED),
        ("blob-none", {"r": 2**32, "err": "unknown"}, ErrorCode.MALFORMED),
    ],
)
def test_bad_blob_frames_are_refused(kind: str, fields: dict[str, object], code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_frame(encode_frame(kind, **fields))
    assert info.value.code == code


def test_the_content_id_covers_the_size_and_every_chunk() -> None:
    _, hashes, blob = _blob(2 * CHUNK_SIZE + 5)
    assert blob_id(2 * CHUNK_SIZE + 5, hashes) == blob
    assert blob_id(2 * CHUNK_SIZE + 6, hashes) != blob
    assert blob_id(2 * CHUNK_SIZE + 5, hashes[:-1] + b"\x00") != blob
    assert blob_id(0, b"") == blob_id(0, b"")  # the empty blob has an id too


def test_attachments_are_checked_strictly() -> None:
    good = {"id": b"\x01" * 32, "name": "a.png", "type": "image/png", "size": 5}
    assert check_attachments({"attachments": [good]})[0].name == "a.png"
    for bad in (
        [],
        [good] * 33,
        [{**good, "id": b"\x01"}],
        [{**good, "extra": 1}],
        [{**good, "size": -1}],
        ["x"],
    ):
        with pytest.raises(ProtocolError):
            check_attachments({"attachments": bad})
