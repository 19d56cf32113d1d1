"""Sibling links between two workers' peers in one process (``peer.node._siblings``)."""

from __future__ import annotations

import struct
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio.testing

import peer
from peer.node._node import Peer
from peer.node._siblings import (
    HELLO,
    SIBLING_QUEUE,
    SIBLING_QUEUE_BYTES,
    SiblingLink,
    Siblings,
    socket_path,
)
from peer.protocols._gossiptypes import Send
from peer.protocols._siblingrouter import sibling_key
from peer.wire._errors import ErrorCode
from peer.wire._frametypes import CuReq
from peer.wire._identity import Identity
from peer.wire._limits import MAX_RECORD


@asynccontextmanager
async def two_workers(tmp: Path) -> AsyncIterator[tuple[Siblings, Siblings]]:
    # a short directory: a Unix socket's name is at most about 107 bytes
    with tempfile.TemporaryDirectory(prefix="cmw-") as sockets:
        options = peer.PeerOptions(relay_only=True, dht=False)
        async with (
            peer.open_peer(tmp / "seed", options=options, store=False) as a,
            peer.open_peer(tmp / "seed", options=options, store=False, listen=None) as b,
            trio.open_nursery() as nursery,
        ):
            sa = Siblings(a, 0, 2, Path(sockets))
            sb = Siblings(b, 1, 2, Path(sockets))
            await nursery.start(sa.run)
            await nursery.start(sb.run)
            yield sa, sb
            nursery.cancel_scope.cancel()


async def until(check: Callable[[], bool], deadline: float = 10.0) -> None:
    """Poll ``check`` until it holds, within ``deadline`` seconds."""
    with trio.fail_after(deadline):
        while True:
            if check():
                return
            await trio.sleep(0.01)


async def linked(*workers: Siblings) -> None:
    await until(lambda: all(len(w.links) == 1 for w in workers))


async def test_siblings_link_and_share_interest(tmp_path: Path) -> None:
    async with two_workers(tmp_path) as (a, b):
        await linked(a, b)
        pa: Peer = a.peer
        pb: Peer = b.peer
        assert sibling_key(1) in pa.swarm.side_links
        assert sibling_key(0) in pb.swarm.side_links
        pb.perform(pb.router.subscribe("news"))
        await until(lambda: "news" in pa.router.interest_of(sibling_key(1)))
        assert pa.statistics()["gossip"]["siblings"] == 1
        assert a.status()["siblings"] == [1]
        assert a.status()["queued_bytes"] == {1: 0}


async def test_a_bad_sibling_is_closed_and_the_real_one_relinks(tmp_path: Path) -> None:
    async with two_workers(tmp_path) as (a, b):
        await linked(a, b)
        made = b.linked_total
        # something claiming to be worker 1 sends a record that is not a frame
        rogue = await trio.open_unix_socket(str(socket_path(a.worker_dir, 0)))
        await rogue.send_all(HELLO + bytes([1]) + struct.pack(">I", 3) + b"\xff\x00\x01")
        await until(lambda: a.errors > 0)
        # the real worker 1 lost its link to the one the rogue replaced: it redials
        await until(lambda: b.linked_total > made and len(a.links) == 1)
        await rogue.aclose()
        # an oversize length, and a frame that is not gossip, are refused the same way
        for record in (struct.pack(">I", 1 << 30), _record(_not_gossip())):
            errors = a.errors
            rogue = await trio.open_unix_socket(str(socket_path(a.worker_dir, 0)))
            await rogue.send_all(HELLO + bytes([1]) + record)

            def grew(before: int = errors) -> bool:
                return a.errors > before

            await until(grew)
            await rogue.aclose()
        await linked(a, b)
        # a wrong hello is dropped without touching the links
        rogue = await trio.open_unix_socket(str(socket_path(a.worker_dir, 0)))
        errors = a.errors
        await rogue.send_all(b"NOPE\x01")
        await until(lambda: a.errors > errors)
        await rogue.aclose()
        # and gossip still flows between the real workers
        b.peer.perform(b.peer.router.subscribe("after"))
        await until(lambda: "after" in a.peer.router.interest_of(sibling_key(1)))


def _record(frame: bytes) -> bytes:
    return struct.pack(">I", len(frame)) + frame


def _not_gossip() -> bytes:
    return CuReq(1, "news").encode()


def test_a_sibling_queue_is_bounded_in_bytes_and_a_full_one_is_closed_as_slow() -> None:
    """Large frames fill the queue's bytes long before its frame count: the send that
    would go over is refused, and the swarm closes the sibling link as ``SLOW``."""
    stream_a, _stream_b = trio.testing.memory_stream_pair()
    link = SiblingLink(1, stream_a)  # no writer: nothing leaves the queue
    big = b"\x00" * (MAX_RECORD - 16)
    fit = SIBLING_QUEUE_BYTES // (len(big) + 4)
    assert fit < SIBLING_QUEUE  # the byte bound comes first for such frames
    for _ in range(fit):
        assert link.enqueue(big)
    assert link.queued_bytes == fit * (len(big) + 4) <= SIBLING_QUEUE_BYTES
    assert not link.enqueue(big)  # over the byte bound: refused, nothing queued
    assert link.queued_bytes == fit * (len(big) + 4)
    host = Peer(Identity.from_seed(b"\x05" * 32), peer.PeerOptions(relay_only=True, dht=False))
    host.swarm.side_links[link.peer_id] = link
    refused = host.counters.refused.get(ErrorCode.SLOW.value, 0)
    host.perform([Send(link.peer_id, big)])
    assert link.close_code is ErrorCode.SLOW
    assert host.counters.refused.get(ErrorCode.SLOW.value, 0) == refused + 1


async def test_the_writer_gives_the_queue_bytes_back() -> None:
    stream_a, stream_b = trio.testing.memory_stream_pair()
    link = SiblingLink(1, stream_a)
    for n in range(10):
        assert link.enqueue(bytes([n]) * 1000)
    assert link.queued_bytes == 10 * 1004
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.writer)
        got = bytearray()
        with trio.fail_after(5):
            while len(got) < 10 * 1004:
                got += await stream_b.receive_some()
        assert link.queued_bytes == 0 and link.frames_out == 10
        nursery.cancel_scope.cancel()
