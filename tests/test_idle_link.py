"""What an idle link keeps (issue 14, item 6): no writer task, no empty deques.

* ``Link.kick`` starts the writer only when something is queued; the writer
  ends once the queue is empty, and a close still flushes the error frame and
  ends the link (peer/node/_link.py, peer/node/_linkhost.py);
* ``LazyDeque`` behaves as the ``deque`` it replaces, and ``slim_websocket``
  swaps the two empty queues of an upgraded connection (peer/node/_slim.py),
  after which the connection still carries messages both ways.
"""

from __future__ import annotations

import functools
import random
import socket
from collections import deque
from typing import Any, cast

import trio
import trio.testing

from peer import ErrorCode, decode_frame, memory_link_pair
from peer.node import _slim
from peer.node._link import Link, Outbox
from peer.node._linkhost import LinkManager
from peer.wire._frametypes import Error
from tests.test_directwrite import _results, _ws_pair

DEADLINE = 10.0


def _lazy_outbox() -> Outbox:
    return Outbox(functools.partial(LinkManager._writer, cast(Any, None)))


async def test_an_idle_served_link_has_no_writer_task() -> None:
    ini, res = _results()
    a, b = memory_link_pair()  # a stream transport: every frame goes through the writer
    link = Link(ini, a, initiator=True, opened=trio.current_time(), outbox=_lazy_outbox())
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            link.scope = nursery.cancel_scope
            link.nursery = nursery
            link.kick()  # nothing queued: nothing started
            assert nursery.child_tasks == frozenset() and not link.writer_on
            for frame in (b"one", b"two", b"three"):
                assert link.enqueue(frame)
            assert link.writer_on and len(nursery.child_tasks) == 1  # one writer, not three
            got = [res.cipher.open(await b.receive()) for _ in range(3)]
            await trio.testing.wait_all_tasks_blocked()
            assert got == [b"one", b"two", b"three"]
            assert nursery.child_tasks == frozenset() and not link.writer_on  # it ended
            assert link.enqueue(b"four")  # and a later frame starts another
            assert res.cipher.open(await b.receive()) == b"four"
            link.close(ErrorCode.SLOW, "not reading fast enough")
            error = decode_frame(res.cipher.open(await b.receive()))
            assert isinstance(error, Error) and error.code == ErrorCode.SLOW.value
        # the writer flushed the error frame and ended the link's nursery itself
        assert nursery.cancel_scope.cancel_called


async def test_lazy_writer_and_direct_writes_keep_every_frame_in_order() -> None:
    """A random mix of direct writes, held bursts and queued frames over a real
    WebSocket with a tiny send buffer, the writer starting and ending as it goes."""
    rng = random.Random(7)
    frames = [bytes([i % 256]) * rng.randint(1, 3000) for i in range(150)]
    ini, res = _results()
    got: list[bytes] = []
    with trio.fail_after(DEADLINE):
        async with _ws_pair() as (client, server):
            raw = getattr(server, "_raw", None)
            if raw is not None:
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            outbox = _lazy_outbox()
            link = Link(ini, server, initiator=True, opened=trio.current_time(), outbox=outbox)
            started = 0
            async with trio.open_nursery() as nursery:
                link.scope = nursery.cancel_scope
                link.nursery = nursery

                done = trio.Event()

                async def receive() -> None:
                    while len(got) < len(frames):
                        got.append(res.cipher.open(await client.receive()))
                    done.set()

                nursery.start_soon(receive)
                i = 0
                while i < len(frames):
                    if rng.random() < 0.4:
                        outbox.hold()
                        for frame in frames[i : i + rng.randint(1, 20)]:
                            assert link.enqueue(frame)
                            i += 1
                        outbox.flush()
                    else:
                        assert link.enqueue(frames[i])
                        i += 1
                    started += link.writer_on
                    if rng.random() < 0.3:
                        await trio.lowlevel.checkpoint()
                await done.wait()
                await trio.testing.wait_all_tasks_blocked()
                assert not link.writer_on  # idle again: no writer
                nursery.cancel_scope.cancel()
    assert got == frames
    assert started > 0, "the writer never ran"


def test_lazy_deque_behaves_as_a_deque() -> None:
    rng = random.Random(3)
    lazy: _slim.LazyDeque[int] = _slim.LazyDeque()
    real: deque[int] = deque()
    for step in range(2000):
        op = rng.random()
        if op < 0.5:
            lazy.append(step)
            real.append(step)
        elif op < 0.9:
            if real:
                assert lazy.popleft() == real.popleft()
            else:
                try:
                    lazy.popleft()
                except IndexError:
                    pass
                else:
                    raise AssertionError("popleft of an empty LazyDeque returned")
        else:
            lazy.clear()
            real.clear()
        assert len(lazy) == len(real) and bool(lazy) == bool(real)
        assert list(lazy) == list(real)
    lazy.clear()
    assert lazy._items is None  # empty: no buffer held


async def test_an_upgraded_websocket_keeps_no_empty_deques_and_still_works() -> None:
    with trio.fail_after(DEADLINE):
        async with _ws_pair() as (client, server):
            for transport in (client, server):
                ws: Any = transport.connection
                if _slim._VERSIONS_OK:  # the pinned versions: both swapped
                    assert isinstance(ws._wsproto._events, _slim.LazyDeque)
                    assert isinstance(ws._recv_channel._state.data, _slim.LazyDeque)
            records = [bytes([n]) * 200 for n in range(100)]
            await client.send_many(records)
            assert [await server.receive() for _ in records] == records
            await server.send(b"back")
            assert await client.receive() == b"back"
            ws = server.connection
            assert not cast(Any, ws)._recv_channel._state.data  # drained: empty again


def test_slim_leaves_a_queue_that_holds_something_alone() -> None:
    class Owner:
        def __init__(self) -> None:
            self.full: deque[int] = deque([1])
            self.empty: deque[int] = deque()
            self.other: list[int] = []

    owner = Owner()
    assert not _slim._swap(owner, "full") and list(owner.full) == [1]
    assert not _slim._swap(owner, "other") and not _slim._swap(owner, "missing")
    assert _slim._swap(owner, "empty") and isinstance(owner.empty, _slim.LazyDeque)
