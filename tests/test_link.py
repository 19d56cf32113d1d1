"""A link's send queue and how a link closes (peer/node/_link.py), without a network.

Waiting is checked with ``wait_all_tasks_blocked``: a writer parked in
``SendQueue.get`` stays parked until a frame or the end arrives.
"""

from __future__ import annotations

import hashlib

import pytest
import trio
import trio.testing

from peer import Error, ErrorCode, Handshake, Identity, decode_frame, memory_link_pair
from peer.node._link import SEND_QUEUE, Link, SendQueue, Tail


async def test_frames_come_out_in_order_and_the_queue_is_bounded() -> None:
    queue = SendQueue(3)
    assert queue.get_nowait() is None
    assert [queue.put(f) for f in (b"a", b"b", b"c", b"d")] == [True, True, True, False]
    assert await queue.get() == b"a"
    assert queue.put(b"d")  # room again
    assert [queue.get_nowait() for _ in range(4)] == [b"b", b"c", b"d", None]


async def test_close_hands_out_what_is_queued_then_none() -> None:
    queue = SendQueue(8)
    queue.put(b"a")
    queue.close()
    assert queue.closed
    assert queue.put(b"late")  # a closing queue drops frames without refusing them
    assert await queue.get() == b"a"
    assert await queue.get() is None
    assert await queue.get() is None


async def test_a_parked_get_wakes_for_a_frame_and_for_the_end() -> None:
    queue = SendQueue(8)
    got: list[bytes | Tail | None] = []

    async def writer() -> None:
        while True:
            frame = await queue.get()
            got.append(frame)
            if frame is None:
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        queue.put(b"a")
        await trio.testing.wait_all_tasks_blocked()
        assert got == [b"a"]
        queue.close()
    assert got == [b"a", None]


async def test_a_cancelled_get_leaves_the_queue_usable() -> None:
    queue = SendQueue(8)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.get)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    queue.put(b"a")
    assert await queue.get() == b"a"


def _handshake_pair() -> tuple[Handshake, Handshake]:
    ids = [Identity.from_seed(hashlib.sha256(n).digest()) for n in (b"i", b"r")]
    ini = Handshake(ids[0], initiator=True)
    res = Handshake(ids[1], initiator=False)
    to_res = ini.start()
    while not (ini.done and res.done):
        to_ini = [out for record in to_res for out in res.receive(record)]
        to_res = [out for record in to_ini for out in ini.receive(record)]
    return ini, res


def _link() -> Link:
    ini, _ = _handshake_pair()
    assert ini.result is not None
    return Link(ini.result, memory_link_pair()[0], initiator=True, opened=trio.current_time())


async def test_a_slow_link_refuses_frames_beyond_its_queue() -> None:
    link = _link()
    assert all(link.enqueue(b"x") for _ in range(SEND_QUEUE))
    assert not link.enqueue(b"x")


async def test_close_queues_an_error_frame_and_sets_a_deadline() -> None:
    link = _link()
    link.enqueue(b"x")
    link.scope = trio.CancelScope()
    link.close(ErrorCode.SLOW, "not reading fast enough")
    link.close(ErrorCode.SHUTDOWN, "a second close changes nothing")
    assert link.scope.deadline == pytest.approx(trio.current_time() + 2.0)
    assert link.close_code is ErrorCode.SLOW
    assert await link.queue.get() == b"x"
    error = await link.queue.get()
    assert isinstance(error, bytes)
    frame = decode_frame(error)
    assert isinstance(frame, Error) and frame.code == ErrorCode.SLOW.value
    assert await link.queue.get() is None


async def test_a_link_closed_before_it_is_served_still_queues_its_error() -> None:
    link = _link()
    link.close(ErrorCode.DUPLICATE, "already linked")
    error = await link.queue.get()
    assert isinstance(error, bytes) and isinstance(decode_frame(error), Error)
    assert not link.closed.is_set()
