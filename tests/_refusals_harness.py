"""The refusal tests' harness: a listening peer, a well-behaved peer, raw clients.

``serving()`` starts listener ``a`` on loopback and a well-behaved ``b``
linked to it; ``raw_client()`` is a hand-driven WebSocket client whose
records the test writes itself; ``expect_refused_*`` check what the client
sees, what the listener counted and logged, and ``assert_still_serving`` that
``b`` kept its very link. Everything is awaited through events under
``trio.fail_after``; nothing sleeps. Used by test_refusals and
test_refusals_payload.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio
import trio_websocket
from structlog.testing import capture_logs
from structlog.typing import EventDict, WrappedLogger

from peer import (
    AnyFrame,
    Content,
    Error,
    ErrorCode,
    GossipRouter,
    Handshake,
    HandshakeResult,
    Identity,
    LinkCipher,
    Peer,
    PeerOptions,
    Pong,
    decode_frame,
    encode_frame,
)
from peer.protocols._gossip import Action
from peer.wire._limits import (
    MAX_RECORD,
)

CHANNEL = "lobby"
DEADLINE = 10.0  # seconds of real time for any single awaited event
# What protocol-spec says is hashed and signed in the handshake (see peer/wire/_handshake.py).
TRANSCRIPT_TAG = b"clawmesh/handshake/v1"
INITIATOR_AUTH_TAG = b"clawmesh/auth/initiator/v1"


# -- observing the listener ---------------------------------------------------------


class WatchedRouter(GossipRouter):
    """A gossip router that signals each frame it handles, so tests can await state."""

    def __init__(self, peer: Peer) -> None:
        super().__init__(
            peer.peer_id,
            relay=peer.options.relay,
            params=peer.options.gossip,
            rng=random.Random(0),
            keepalive=peer.options.keepalive,
            idle_timeout=peer.options.idle_timeout,
        )
        self._handled = trio.Event()

    def handle_frame(
        self, peer: bytes, frame: AnyFrame, raw: bytes, now: float, wall_ms: int
    ) -> list[Action]:
        try:
            return super().handle_frame(peer, frame, raw, now, wall_ms)
        finally:
            self._handled.set()
            self._handled = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        with trio.fail_after(DEADLINE):
            while not predicate():
                await self._handled.wait()


class LogWatch:
    """A structlog processor that lets a test await a log line."""

    def __init__(self) -> None:
        self.entries: list[EventDict] = []
        self._logged = trio.Event()

    def __call__(self, _logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        self.entries.append({**event_dict, "log_level": method})
        self._logged.set()
        self._logged = trio.Event()
        return event_dict

    def find(self, event: str, peer: Peer, **fields: object) -> EventDict | None:
        for entry in self.entries:
            if (
                entry.get("event") == event
                and entry.get("peer") == peer.identity.peer_id_hex[:16]
                and all(entry.get(k) == v for k, v in fields.items())
            ):
                return entry
        return None

    async def wait_for(self, event: str, peer: Peer, **fields: object) -> EventDict:
        with trio.fail_after(DEADLINE):
            while (entry := self.find(event, peer, **fields)) is None:
                await self._logged.wait()
        return entry


@dataclass
class Snapshot:
    handshakes_failed: int
    refused: dict[str, int]
    links_opened: int

    @classmethod
    def of(cls, peer: Peer) -> Snapshot:
        c = peer.counters
        return cls(c.handshakes_failed, dict(c.refused), c.links_opened)

    def refused_since(self, peer: Peer) -> dict[str, int]:
        now = peer.counters.refused
        old = self.refused
        return {k: v - old.get(k, 0) for k, v in now.items() if v != old.get(k, 0)}


# -- the two well-behaved peers --------------------------------------------------------


@dataclass
class Pair:
    """Listener ``a`` and well-behaved ``b`` linked to it over a real WebSocket."""

    a: Peer
    b: Peer
    port: int
    logs: LogWatch
    a_to_b: object  # the link objects, to prove the link was never replaced
    b_to_a: object
    sent: int = field(default=0)

    @property
    def router(self) -> WatchedRouter:
        assert isinstance(self.a.router, WatchedRouter)
        return self.a.router


def interest(p: Peer, q: Peer | bytes) -> dict[str, int]:
    q_id = q.peer_id if isinstance(q, Peer) else q
    return p.router.interest_of(q_id) if q_id in p.router.links() else {}


async def wait_linked(p: Peer, q_id: bytes, linked: bool = True) -> None:
    with trio.fail_after(DEADLINE):
        while (q_id in p.links) != linked:
            await p.wait_links_changed()


async def wait_in_inbox(p: Peer, msg_id: bytes) -> None:
    with trio.fail_after(DEADLINE):
        while p.inbox.get(msg_id) is None:
            await p.wait_inbox_changed()


@asynccontextmanager
async def serving() -> AsyncIterator[Pair]:
    watch = LogWatch()
    with capture_logs(processors=[watch]):
        a = Peer(Identity.generate(), PeerOptions(channels=(CHANNEL,), seed=1))
        b = Peer(Identity.generate(), PeerOptions(channels=(CHANNEL,), seed=2))
        a.router = WatchedRouter(a)
        b.router = WatchedRouter(b)
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            port = await a.serve_websocket("127.0.0.1", 0)
            b.nursery.start_soon(b.dial_forever, f"ws://127.0.0.1:{port}", a.peer_id)
            await wait_linked(a, b.peer_id)
            await wait_linked(b, a.peer_id)
            assert isinstance(a.router, WatchedRouter) and isinstance(b.router, WatchedRouter)
            await a.router.wait_until(lambda: interest(a, b).get(CHANNEL) == 0)
            await b.router.wait_until(lambda: interest(b, a).get(CHANNEL) == 0)
            pair = Pair(a, b, port, watch, a.links[b.peer_id], b.links[a.peer_id])
            await assert_still_serving(pair)
            yield pair
            nursery.cancel_scope.cancel()


async def assert_still_serving(pair: Pair) -> None:
    """B is on the same link as before, and messages still flow both ways."""
    a, b = pair.a, pair.b
    assert a.links.get(b.peer_id) is pair.a_to_b, "the well-behaved link was dropped"
    assert b.links.get(a.peer_id) is pair.b_to_a, "the well-behaved link was dropped"
    for sender, receiver in ((a, b), (b, a)):
        pair.sent += 1
        body = f"still serving {pair.sent}"
        env = sender.publish(CHANNEL, Content(body))
        await wait_in_inbox(receiver, env.id)
        got = receiver.inbox.get(env.id)
        assert got is not None and got.body == body and got.sender == sender.peer_id


# -- a hand-driven client ---------------------------------------------------------


class RawClient:
    """One WebSocket connection whose records the test writes and reads itself."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.cipher: LinkCipher | None = None

    async def send(self, record: bytes) -> None:
        await self.ws.send_message(record)

    async def receive(self) -> bytes:
        with trio.fail_after(DEADLINE):
            while True:
                message = await self.ws.get_message()
                if isinstance(message, bytes):
                    return message

    async def send_sealed(self, frame: bytes) -> None:
        assert self.cipher is not None
        await self.send(self.cipher.seal(frame))

    async def receive_frame(self) -> AnyFrame:
        record = await self.receive()
        plain = record if self.cipher is None else self.cipher.open(record)
        return decode_frame(plain)

    async def expect_error(self) -> str:
        """Skip frames until the listener's error frame; return its code."""
        while True:
            frame = await self.receive_frame()
            if isinstance(frame, Error):
                return frame.code

    async def send_refused(self, record: bytes) -> trio_websocket.CloseReason:
        """Send a record the other side closes for; returns the close reason. The
        close may come while the record is still being sent (our own WebSocket
        refuses an oversize message on its frame header)."""
        try:
            await self.send(record)
        except trio_websocket.ConnectionClosed as exc:
            assert isinstance(exc.reason, trio_websocket.CloseReason)
            return exc.reason
        return await self.expect_closed()

    async def expect_closed(self) -> trio_websocket.CloseReason:
        """Everything after the error is the close; returns the close reason."""
        with pytest.raises(trio_websocket.ConnectionClosed) as info:
            while True:
                await self.receive()
        reason = info.value.reason
        assert isinstance(reason, trio_websocket.CloseReason)
        return reason

    async def handshake(self, identity: Identity) -> tuple[HandshakeResult, list[bytes]]:
        """Complete an honest handshake; returns the result and the records we sent."""
        hs = Handshake(identity, initiator=True, caps=())
        sent = hs.start()
        for record in sent:
            await self.send(record)
        while not hs.done:
            for reply in hs.receive(await self.receive()):
                sent.append(reply)
                await self.send(reply)
        assert hs.result is not None
        self.cipher = hs.result.cipher
        return hs.result, sent


@asynccontextmanager
async def raw_client(port: int) -> AsyncIterator[RawClient]:
    # The client owns the TCP stream: trio-websocket's client leaves the socket
    # open when the server closes first (ResourceWarning later), so close it here.
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        async with trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(
                nursery,
                stream,
                f"127.0.0.1:{port}",
                "/",
                message_queue_size=64,
                max_message_size=2 * MAX_RECORD,
            )
            try:
                yield RawClient(ws)
            finally:
                with trio.move_on_after(2):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        await stream.aclose()


def hello_frame(*, claimed_id: bytes, public_key: bytes, eph: bytes | None = None) -> bytes:
    """A hello written field by field, so it can claim anything."""
    return encode_frame(
        "hello",
        versions=[1],
        id=claimed_id,
        pk=public_key,
        eph=os.urandom(32) if eph is None else eph,
        nonce=os.urandom(32),
        caps=[],
        listen=[],
        agent="refusal-test/1",
    )


def transcript(initiator_hello: bytes, responder_hello: bytes) -> bytes:
    h = hashlib.sha256(TRANSCRIPT_TAG)
    for part in (initiator_hello, responder_hello):
        h.update(struct.pack(">I", len(part)))
        h.update(part)
    return h.digest()


async def expect_refused_handshake(
    pair: Pair, client: RawClient, before: Snapshot, code: ErrorCode
) -> None:
    """The listener sent ``code`` in plaintext, closed, counted and logged it."""
    assert await client.expect_error() == code.value
    await client.expect_closed()
    entry = await pair.logs.wait_for("handshake refused", pair.a, code=code.value)
    assert entry["log_level"] == "warning"
    assert pair.a.counters.handshakes_failed == before.handshakes_failed + 1
    assert before.refused_since(pair.a) == {code.value: 1}
    assert pair.a.counters.links_opened == before.links_opened


async def expect_refused_link(
    pair: Pair, client: RawClient, attacker: Identity, before: Snapshot, code: ErrorCode, event: str
) -> None:
    """After a good handshake: a sealed error ``code``, close, count, log, link gone."""
    assert await client.expect_error() == code.value
    await client.expect_closed()
    entry = await pair.logs.wait_for(event, pair.a, code=code.value)
    assert entry["log_level"] == "warning"
    await wait_linked(pair.a, attacker.peer_id, linked=False)
    assert pair.a.counters.handshakes_failed == before.handshakes_failed
    assert before.refused_since(pair.a) == {code.value: 1}
    assert pair.a.counters.links_opened == before.links_opened + 1


@asynccontextmanager
async def attacker_link(pair: Pair) -> AsyncIterator[tuple[Identity, RawClient]]:
    """A raw client with a completed, working handshake and link at the listener."""
    attacker = Identity.generate()
    async with raw_client(pair.port) as client:
        result, _ = await client.handshake(attacker)
        assert result.peer_id == pair.a.peer_id
        await wait_linked(pair.a, attacker.peer_id)
        # Positive control: the link works before we break it.
        await client.send_sealed(encode_frame("ping", n=4242))
        while not isinstance(frame := await client.receive_frame(), Pong):
            pass
        assert frame.n == 4242
        yield attacker, client
