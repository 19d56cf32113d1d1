"""Review item 8: a linked peer could break a blob fetch with a guessed request id
(the want was dropped before checking who answered); request ids were sequential."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

from peer import Identity, Peer, PeerOptions
from peer.node._blobhost import _Running
from peer.protocols._blobs import Fetch, Route
from peer.wire._blobframes import CHUNK_SIZE, BlobHave, BlobNone, blob_id, chunk_hash

A, B = bytes([1]) * 32, bytes([2]) * 32


async def test_an_answer_from_a_peer_not_asked_leaves_the_want_pending() -> None:
    host = Peer(Identity.generate(), PeerOptions(seed=1)).blobs
    hashes = chunk_hash(b"x" * CHUNK_SIZE)
    blob = blob_id(CHUNK_SIZE, hashes)
    core = Fetch(blob, [None], [Route(A)], host._next_rid)
    running = _Running(core)
    (ask,) = core.asks(0.0)
    host._fetching[ask.frame.r] = running
    forged = BlobNone(ask.frame.r, "none")
    host.on_frame(SimpleNamespace(peer_id=B), forged, forged.encode())  # type: ignore[arg-type]
    assert ask.frame.r in host._fetching and core.in_flight == 1 and host.stray == 1
    have = BlobHave(ask.frame.r, CHUNK_SIZE, hashes)
    host.on_frame(SimpleNamespace(peer_id=A), have, have.encode())  # type: ignore[arg-type]
    assert ask.frame.r not in host._fetching and core.in_flight == 0 and core.size == CHUNK_SIZE


def test_request_ids_are_not_sequential() -> None:
    host = Peer(Identity.generate(), PeerOptions(seed=1)).blobs
    rids = [host._next_rid() for _ in range(50)]
    assert len(set(rids)) == 50
    assert {b - a for a, b in itertools.pairwise(rids)} != {1}
