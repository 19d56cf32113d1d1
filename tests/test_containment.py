"""A bug while handling one link's frame closes that link only.

Real WebSocket links on loopback, inbound and dialled: an exception injected
into the peer's frame handling closes the link it came on, is counted in
``link_errors`` (which ``/status`` shows), and the peer keeps serving its
other links and new ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from peer import Identity, Peer, PeerOptions, memory_link_pair
from peer.node import _catchuphost
from peer.node._link import Link
from peer.wire._envelope import Content, Envelope
from peer.wire._errors import ErrorCode, ProtocolError
from peer.wire._frametypes import AnyFrame, Dht, Ping, Sub


@asynccontextmanager
async def running(seed: int, *, listen: bool = True) -> AsyncIterator[tuple[Peer, str]]:
    peer = Peer(Identity.from_seed(bytes([seed]) * 32), PeerOptions(dht=False, seed=seed))
    url = ""

    async def listener(nursery: trio.Nursery) -> None:
        nonlocal url
        if listen:
            port = await peer.serve_websocket("127.0.0.1", 0)
            url = f"ws://127.0.0.1:{port}/"
            peer.listen_urls[:] = [url]

    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: peer.run(extra=listener, task_status=task_status))
        yield peer, url
        nursery.cancel_scope.cancel()


async def until(peer: Peer, condition: Callable[[], bool]) -> None:
    with trio.fail_after(10):
        while not condition():
            await peer.wait_changed()


def wants(peer: Peer, other: Peer, topic: str) -> bool:
    """``other`` is linked to ``peer`` and has told it that it wants ``topic``."""
    return other.peer_id in peer.router.links() and topic in peer.router.interest_of(other.peer_id)


def booby_trap(peer: Peer, topic: str) -> None:
    """Make ``peer`` crash on a ``sub`` frame naming ``topic``."""
    handle = peer.swarm._frame_owners[Sub]

    def trapped(link: Link, frame: AnyFrame, raw: bytes) -> None:
        if isinstance(frame, Sub) and any(t == topic for t, _ in frame.topics):
            raise RuntimeError("injected bug")
        handle(link, frame, raw)

    peer.swarm._frame_owners[Sub] = trapped


async def test_a_bug_on_an_inbound_link_closes_only_that_link() -> None:
    async with (
        running(1) as (hub, url),
        running(2, listen=False) as (bad, _),
        running(3, listen=False) as (good, _),
    ):
        booby_trap(hub, "boom")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(good.dial_once, url)
            nursery.start_soon(bad.dial_once, url)
            await until(hub, lambda: len(hub.links) == 2)
            bad.subscribe("boom")  # its sub frame makes the hub's handler raise
            await until(hub, lambda: bad.peer_id not in hub.links)
            assert hub.counters.link_errors == 1
            assert good.peer_id in hub.links  # the other link is untouched
            good.subscribe("chat")
            await until(hub, lambda: wants(hub, good, "chat"))
            # and the listener still takes new links
            nursery.start_soon(bad.dial_once, url)
            await until(hub, lambda: bad.peer_id in hub.links)
            nursery.cancel_scope.cancel()


def deliver_trap(peer: Peer, body: str) -> None:
    """Make ``peer`` crash while delivering a message whose body is ``body``."""
    deliver = peer.swarm._deliver

    def trapped(env: Envelope, member: bool = True) -> None:
        if env.kind == "msg" and env.content().body == body:
            raise RuntimeError("injected bug")
        deliver(env, member)

    peer.swarm._deliver = trapped  # type: ignore[method-assign]


async def test_a_bug_on_a_dialled_link_closes_only_that_link() -> None:
    async with (
        running(4) as (far, far_url),
        running(5) as (other, other_url),
        running(6, listen=False) as (dialler, _),
    ):
        # the dialler's own handling is the buggy part, while it performs a decision
        deliver_trap(dialler, "boom")
        dialler.subscribe("chat")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dialler.dial_once, far_url)
            nursery.start_soon(dialler.dial_once, other_url)
            await until(dialler, lambda: len(dialler.links) == 2)
            await until(far, lambda: wants(far, dialler, "chat"))
            far.publish("chat", Content(body="boom"))
            await until(dialler, lambda: far.peer_id not in dialler.links)
            assert dialler.counters.link_errors == 1
            assert other.peer_id in dialler.links
            # the dialler still delivers on its other link
            await until(other, lambda: wants(other, dialler, "chat"))
            other.publish("chat", Content(body="still here"))
            await until(dialler, lambda: any(m.body == "still here" for m in dialler.inbox))
            nursery.cancel_scope.cancel()


async def test_every_frame_is_charged_to_its_link_once() -> None:
    """Gossip frames are charged by the gossip router, others by the swarm: once each."""
    async with (
        running(7) as (hub, url),
        running(8, listen=False) as (client, _),
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(client.dial_once, url)
        await until(hub, lambda: client.peer_id in hub.links)
        link = hub.links[client.peer_id]
        charged: list[int] = []
        charge = hub.router._charge

        def counting(state: object, size: int, now: float) -> None:
            charged.append(size)
            charge(state, size, now)  # type: ignore[arg-type]

        hub.router._charge = counting  # type: ignore[method-assign,assignment]
        for frame in (Ping(n=7), Sub(topics=(("chat", 0),)), Dht(message=b"\x80")):
            raw = frame.encode()
            charged.clear()
            with contextlib.suppress(ProtocolError):  # the DHT refuses that message: fine
                hub.swarm.frame(link, frame, raw)
            assert charged == [len(raw)], frame
        nursery.cancel_scope.cancel()


async def test_a_bug_in_catch_up_work_ends_that_link_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Work started by a link's frames (here: checking a catch-up page) is
    contained like frame handling: that link closes, the peer goes on."""

    def opts(name: str) -> PeerOptions:
        return PeerOptions(store_path=str(tmp_path / name), dht=False, channels=("lobby",))

    carrier = Peer(Identity.from_seed(b"\x09" * 32), opts("carrier"))
    returning = Peer(Identity.from_seed(b"\x0a" * 32), opts("returning"))
    calls: list[int] = []

    def broken(*args: object, **kwargs: object) -> object:
        calls.append(1)
        raise RuntimeError("injected bug")

    async with trio.open_nursery() as nursery:
        await nursery.start(carrier.run)
        await nursery.start(returning.run)
        for i in range(3):
            await carrier.send_message("lobby", Content(body=f"m{i}"))
        with monkeypatch.context() as patch:
            patch.setattr(_catchuphost, "check_page", broken)
            ta, tb = memory_link_pair()
            returning.start_link(ta, initiator=True)
            carrier.start_link(tb, initiator=False)
            await until(returning, lambda: returning.counters.link_errors == 1)
            await until(returning, lambda: carrier.peer_id not in returning.links)
        assert calls and not [m for m in returning.inbox if m.body.startswith("m")]
        # the peer still works: a new link catches up all of it
        ta, tb = memory_link_pair()
        returning.start_link(ta, initiator=True)
        carrier.start_link(tb, initiator=False)
        with trio.fail_after(15):
            while len([m for m in returning.inbox if m.body.startswith("m")]) < 3:
                await returning.wait_inbox_changed()
        nursery.cancel_scope.cancel()


async def test_without_the_dht_a_dm_dials_its_recipient(tmp_path: Path) -> None:
    """The outbox reaches a recipient whose address it knows by dialling it,
    with the DHT off too (connect is the dialler's, not the DHT's)."""

    def opts(name: str) -> PeerOptions:
        return PeerOptions(store_path=str(tmp_path / name), dht=False, outbox_retry_initial=0.2)

    sender = Peer(Identity.from_seed(b"\x0b" * 32), opts("sender"))
    recipient = Peer(Identity.from_seed(b"\x0c" * 32), opts("recipient"))

    async def listener(peer: Peer) -> None:
        port = await peer.serve_websocket("127.0.0.1", 0)
        peer.listen_urls[:] = [f"ws://127.0.0.1:{port}/"]

    async with trio.open_nursery() as nursery:
        for p in (sender, recipient):
            await nursery.start(
                lambda task_status, p=p: p.run(
                    extra=lambda _n, p=p: listener(p), task_status=task_status
                )
            )
        # they met once: the sender knows the recipient's key and address
        async with trio.open_nursery() as once:
            once.start_soon(recipient.dial_once, sender.listen_urls[0])
            await until(sender, lambda: recipient.peer_id in sender.links)
            sender.links[recipient.peer_id].close(ErrorCode.SHUTDOWN, "bye")
            await until(sender, lambda: recipient.peer_id not in sender.links)
        env = await sender.send_direct(recipient.peer_id, Content(body="find me"))
        with trio.fail_after(15):
            while recipient.inbox.get(env.id) is None:
                await recipient.wait_inbox_changed()
        nursery.cancel_scope.cancel()
