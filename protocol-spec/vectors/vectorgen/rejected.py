"""rejected.json: every refused vector, each checked against the reference code."""

from __future__ import annotations

from typing import Any

from peer import (
    GossipRouter,
    Handshake,
    Identity,
    ProtocolError,
    RecordBuffer,
    decode_frame,
    open_envelope,
)
from peer.protocols._catchup import Page, PageRequest, check_page
from peer.protocols._gossip import Close
from peer.wire._envelope import MAX_RECEIPT_IDS
from peer.wire._handshake import LinkCipher
from peer.wire._limits import (
    MAX_HANDSHAKE_RECORD,
    MAX_IDS_PER_FRAME,
    MAX_PAGE_HEADS,
    MAX_PAGE_MESSAGES,
    MAX_RECORD,
    MAX_REQUEST_ID,
    MAX_TOPICS_PER_FRAME,
)

from .common import FixedRandom, Json
from .handshake import HandshakeRun
from .rejected_catchup import catchup_frame_vectors, page_vectors, receipt_vectors
from .rejected_links import (
    handshake_vectors,
    session_frame_vectors,
    session_vectors,
    stream_vectors,
)
from .rejected_wire import envelope_vectors, frame_vectors


def check_rejected(ids: dict[str, Identity], vectors: list[Json]) -> None:
    """Make sure the reference code refuses every vector with its code (or has a known bug)."""
    problems: list[str] = []
    for vec in vectors:
        data = bytes.fromhex(vec["hex"])
        got: str | None = None
        try:
            refuse(vec, data)
        except ProtocolError as exc:
            got = exc.code.value
        except Exception as exc:  # a known bug, if the vector says so
            got = f"crash: {exc!r}"
        if "known_deviation" in vec:
            if got == vec["code"]:
                problems.append(f"{vec['name']}: fixed? drop known_deviation")
        elif got != vec["code"]:
            problems.append(f"{vec['layer']}/{vec['name']}: expected {vec['code']}, got {got}")
    del ids
    if problems:
        raise AssertionError("\n".join(problems))


def refuse(vec: Json, data: bytes) -> None:
    layer = vec["layer"]
    if layer == "frame":
        decode_frame(data)
    elif layer == "envelope":
        open_envelope(data)
    elif layer == "stream-record":
        RecordBuffer().feed(data)
    elif layer == "session-record":
        cipher = LinkCipher(bytes(32), bytes.fromhex(vec["key"]))
        for before in vec["before"]:
            cipher.open(bytes.fromhex(before))
        cipher.open(data)
    elif layer == "session-frame":
        me, them = bytes(32), b"\x01" * 32
        router = GossipRouter(me)
        router.add_link(them, relay=True, now=0.0)
        actions = router.handle_frame(them, decode_frame(data), data, 0.0, vec["wall_ms"])
        closes = [a for a in actions if isinstance(a, Close)]
        if closes:
            raise ProtocolError(closes[0].code, closes[0].reason)
    elif layer == "page":
        request, page = decode_frame(bytes.fromhex(vec["request"])), decode_frame(data)
        assert isinstance(request, PageRequest) and isinstance(page, Page)
        check_page(request, page)
    elif layer == "handshake-record":
        hs = Handshake(
            Identity.from_seed(bytes.fromhex(vec["seed"])),
            initiator=vec["role"] == "initiator",
            caps=tuple(vec["caps"]),
            listen=tuple(vec["listen"]),
            versions=tuple(vec["versions"]),
            expect_peer_id=bytes.fromhex(vec["expect_peer_id"]) if "expect_peer_id" in vec
            else None,
            random=FixedRandom(bytes.fromhex(vec["random"])),
        )
        if hs.initiator:
            hs.start()
        for before in vec["before"]:
            hs.receive(bytes.fromhex(before))
        hs.receive(data)
    else:
        raise AssertionError(layer)


def build_rejected(ids: dict[str, Identity], run: HandshakeRun, msgs: dict[str, Any],
                   dm_env: Any) -> Json:
    vectors = (
        frame_vectors(ids, msgs)[:-1]
        + catchup_frame_vectors(ids)
        + envelope_vectors(ids, msgs)
        + receipt_vectors(ids)
        + handshake_vectors(ids, run)
        + stream_vectors()
        + session_vectors(run)
        + session_frame_vectors(ids, run, msgs)
        + page_vectors(ids, msgs, dm_env)
        + frame_vectors(ids, msgs)[-1:]  # the big one last
    )
    names = [(v["layer"], v["name"]) for v in vectors]
    assert len(names) == len(set(names)), "duplicate vector names"
    check_rejected(ids, vectors)
    return {
        "description": (
            "Input a peer must refuse, with the error code it must report. layer says "
            "where the bytes enter: 'frame' = a plaintext frame given to the frame "
            "decoder; 'envelope' = envelope wire bytes (the e of a pub); 'handshake-record' "
            "= a handshake record received by the given role after the records in 'before' "
            "(from the other side; an initiator has sent its hello first), with the given "
            "seed, random source, caps and listen; 'stream-record' = bytes arriving on a "
            "length-prefixed byte stream; 'session-record' = an encrypted record opened with "
            "'key' after the records in 'before'; 'session-frame' = a decodable frame received "
            "on an established link, which closes the link with 'code'; 'page' = a cupage "
            "frame answering the cureq frame in 'request', which the requester refuses with "
            "'code' (catchup.md section 6.3). A vector with 'known_deviation' states what "
            "the spec requires; the reference implementation does something else there (see "
            "the note)."
        ),
        "spec": "README.md#6-error-codes",
        "limits": {"MAX_RECORD": MAX_RECORD, "MAX_HANDSHAKE_RECORD": MAX_HANDSHAKE_RECORD,
                   "MAX_TOPICS_PER_FRAME": MAX_TOPICS_PER_FRAME,
                   "MAX_IDS_PER_FRAME": MAX_IDS_PER_FRAME,
                   "MAX_PAGE_MESSAGES": MAX_PAGE_MESSAGES, "MAX_PAGE_HEADS": MAX_PAGE_HEADS,
                   "MAX_REQUEST_ID": MAX_REQUEST_ID, "MAX_RECEIPT_IDS": MAX_RECEIPT_IDS},
        "vectors": vectors,
    }
