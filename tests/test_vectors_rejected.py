"""The CBOR profile and refused input (cbor.json, rejected.json): every refused
vector must raise ``ProtocolError`` with exactly its code (or close the link
with it, for session frames)."""

from __future__ import annotations

from typing import Any

import pytest

from peer import (
    ErrorCode,
    GossipRouter,
    Handshake,
    Identity,
    LinkCipher,
    ProtocolError,
    RecordBuffer,
    decode_frame,
    frame_record,
    open_envelope,
)
from peer.protocols._catchup import Page, PageRequest, check_page
from peer.protocols._gossip import Close
from peer.wire import _cbor, _limits
from tests._vectors import FixedRandom, Json, h, load, u32

# -- the CBOR profile and refused input --------------------------------------------------


@pytest.mark.parametrize("entry", load("cbor.json")["accepted"], ids=lambda e: e["name"])
def test_cbor_accepted(entry: Json) -> None:
    data = h(entry["hex"])
    value = _cbor.decode(data, max_items=load("cbor.json")["max_items"])
    assert _cbor.encode(value) == data


def _params(vectors: list[Json]) -> list[Any]:
    out: list[Any] = []
    for vec in vectors:
        marks: list[pytest.MarkDecorator] = []
        if "known_deviation" in vec:
            reason = "known deviation of the reference code (remove once fixed): "
            marks.append(pytest.mark.xfail(strict=True, reason=reason + vec["known_deviation"]))
        out.append(pytest.param(vec, id=f"{vec['layer']}/{vec['name']}", marks=marks))
    return out


@pytest.mark.parametrize("vec", _params(load("cbor.json")["rejected"]))
def test_cbor_rejected(vec: Json) -> None:
    with pytest.raises(ProtocolError) as info:
        _cbor.decode(h(vec["hex"]), max_items=load("cbor.json")["max_items"])
    assert info.value.code.value == vec["code"]


def _refuse(vec: Json) -> None:
    """Feed a refused vector to the layer it names; must raise ProtocolError."""
    data = h(vec["hex"])
    layer = vec["layer"]
    if layer == "frame":
        decode_frame(data)
    elif layer == "envelope":
        open_envelope(data)
    elif layer == "stream-record":
        RecordBuffer().feed(data)
    elif layer == "session-record":
        cipher = LinkCipher(bytes(32), h(vec["key"]))
        for before in vec["before"]:
            cipher.open(h(before))
        cipher.open(data)
    elif layer == "session-frame":
        me, them = bytes(32), b"\x01" * 32
        router = GossipRouter(me)
        router.add_link(them, relay=True, now=0.0)
        frame = decode_frame(data)  # the frame itself is well formed
        actions = router.handle_frame(them, frame, data, 0.0, vec["wall_ms"])
        closes = [a for a in actions if isinstance(a, Close)]
        assert len(closes) == 1 and closes[0].peer == them
        assert router.stats.rejected == 1
        raise ProtocolError(closes[0].code, closes[0].reason)
    elif layer == "page":
        request = decode_frame(h(vec["request"]))  # both frames are well formed
        page = decode_frame(data)
        assert (request.TYPE, page.TYPE) == ("cureq", "cupage")
        check_page(PageRequest.from_fields(request.to_map()), Page.from_fields(page.to_map()))
    elif layer == "handshake-record":
        hs = Handshake(
            Identity.from_seed(h(vec["seed"])),
            initiator=vec["role"] == "initiator",
            caps=tuple(vec["caps"]),
            listen=tuple(vec["listen"]),
            versions=tuple(vec["versions"]),
            expect_peer_id=h(vec["expect_peer_id"]) if "expect_peer_id" in vec else None,
            random=FixedRandom(h(vec["random"])),
        )
        if hs.initiator:
            hs.start()
        for before in vec["before"]:
            hs.receive(h(before))  # must be accepted
        hs.receive(data)
    else:
        raise AssertionError(f"unknown layer {layer!r}")


@pytest.mark.parametrize("vec", _params(load("rejected.json")["vectors"]))
def test_rejected(vec: Json) -> None:
    with pytest.raises(ProtocolError) as info:
        _refuse(vec)
    assert info.value.code.value == vec["code"]


def test_rejected_covers_the_required_cases() -> None:
    names = {(v["layer"], v["name"]) for v in load("rejected.json")["vectors"]}
    required = {
        ("frame", "semantic-tag"),
        ("frame", "indefinite-length-array"),
        ("frame", "duplicate-map-key"),
        ("frame", "integer-map-key"),
        ("frame", "non-canonical-integer"),
        ("frame", "non-canonical-map-order"),
        ("frame", "trailing-bytes"),
        ("frame", "depth-17"),
        ("frame", "unknown-frame-type"),
        ("frame", "unknown-field"),
        ("frame", "wrong-field-type"),
        ("frame", "oversize-frame"),
        ("stream-record", "oversize-length-prefix"),
        ("envelope", "bad-signature"),
        ("envelope", "dm-topic-mismatch"),
        ("handshake-record", "hello-id-does-not-match-pk"),
        ("envelope", "receipt-no-ids"),
        ("envelope", "receipt-65-ids"),
        ("envelope", "receipt-id-31-bytes"),
        ("envelope", "receipt-wrong-topic"),
        ("frame", "cureq-limit-513"),
        ("frame", "cureq-first-after-last"),
        ("frame", "cupage-513-messages"),
        ("frame", "cupage-257-heads"),
        ("frame", "push-envelope-text"),
        ("page", "page-for-another-request"),
        ("page", "page-foreign-topic-envelope"),
        ("page", "page-bad-signature"),
        ("page", "page-outside-sender-range"),
    }
    assert required <= names
    codes = {v["code"] for v in load("rejected.json")["vectors"]}
    assert codes <= {c.value for c in ErrorCode}
    big = next(v for v in load("rejected.json")["vectors"] if v["name"] == "oversize-frame")
    assert len(h(big["hex"])) == _limits.MAX_RECORD + 1
    prefix = next(v for v in load("rejected.json")["vectors"]
                  if v["name"] == "oversize-length-prefix")
    assert h(prefix["hex"]) == u32(_limits.MAX_RECORD + 1)


def test_stream_record_boundary() -> None:
    """A record of exactly MAX_RECORD bytes is accepted; the refused vector is one more."""
    buf = RecordBuffer()
    record = bytes(_limits.MAX_RECORD)
    assert buf.feed(frame_record(record)[:100]) == []
    assert buf.feed(frame_record(record)[100:]) == [record]
    assert buf.pending == 0
