"""Acceptance test 5: a listening peer refuses bad input and keeps serving.

A real ``Peer`` listens on loopback (``serve_websocket("127.0.0.1", 0)``, real
Trio clock) and a well-behaved second peer dials it. Hand-driven WebSocket
clients then misbehave in one way each: a hello whose id does not match its
key, an impersonation without the key, a replayed handshake, records and
frames over the limits, a forged envelope signature, undecodable bytes before
and after the handshake, and plain HTTP or garbage on the TCP port.

For each, the test checks what the misbehaving client sees (the error code,
then the close), that the listener counted and logged the refusal, and that
the well-behaved peer is still on the very same link and still exchanges
messages afterwards. Everything is awaited through events (link, inbox and
router changes, log lines, the connection closing) under ``trio.fail_after``;
nothing sleeps to wait.
"""

from __future__ import annotations

import gc
import hashlib
import os
import random
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import cbor2
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
    seal_message,
)
from peer.protocols._gossip import Action
from peer.wire._limits import (
    MAX_ENVELOPE,
    MAX_FRAME_ITEMS,
    MAX_HANDSHAKE_RECORD,
    MAX_RECORD,
)

CHANNEL = "lobby"
DEADLINE = 10.0  # seconds of real time for any single awaited event
# What protocol-spec says is hashed and signed in the handshake (see peer/_handshake.py).
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


# -- (a) wrong key for a claimed id ---------------------------------------------------------


async def test_hello_whose_id_is_not_its_key() -> None:
    async with serving() as pair:
        # Claim B's peer id with our own key: the id is not derived from that key.
        before = Snapshot.of(pair.a)
        async with raw_client(pair.port) as client:
            mallory = Identity.generate()
            await client.send(hello_frame(claimed_id=pair.b.peer_id, public_key=mallory.public_key))
            await expect_refused_handshake(pair, client, before, ErrorCode.AUTH)
        # An id that belongs to no key at all.
        before = Snapshot.of(pair.a)
        async with raw_client(pair.port) as client:
            mallory = Identity.generate()
            await client.send(hello_frame(claimed_id=os.urandom(32), public_key=mallory.public_key))
            await expect_refused_handshake(pair, client, before, ErrorCode.AUTH)
        await assert_still_serving(pair)


async def test_impersonation_without_the_private_key() -> None:
    """Claim B's id and B's (public) key; sign the right transcript with another key."""
    async with serving() as pair:
        before = Snapshot.of(pair.a)
        mallory = Identity.generate()
        async with raw_client(pair.port) as client:
            ours = hello_frame(claimed_id=pair.b.peer_id, public_key=pair.b.identity.public_key)
            await client.send(ours)
            theirs = await client.receive()
            assert decode_frame(theirs).TYPE == "hello"
            assert (await client.receive_frame()).TYPE == "auth"
            signed = INITIATOR_AUTH_TAG + transcript(ours, theirs)
            await client.send(encode_frame("auth", sig=mallory.sign(signed)))
            await expect_refused_handshake(pair, client, before, ErrorCode.AUTH)
        await assert_still_serving(pair)


# -- (b) replayed handshake --------------------------------------------------------------


async def test_replayed_handshake_transcript() -> None:
    async with serving() as pair:
        honest = Identity.generate()
        async with raw_client(pair.port) as client:
            _, recorded = await client.handshake(honest)
            await wait_linked(pair.a, honest.peer_id)
        await wait_linked(pair.a, honest.peer_id, linked=False)
        assert [decode_frame(r).TYPE for r in recorded] == ["hello", "auth"]

        before = Snapshot.of(pair.a)
        async with raw_client(pair.port) as client:
            await client.send(recorded[0])
            fresh_hello = await client.receive()
            assert decode_frame(fresh_hello).TYPE == "hello"
            assert (await client.receive_frame()).TYPE == "auth"
            await client.send(recorded[1])  # signs the old transcript, not this one
            await expect_refused_handshake(pair, client, before, ErrorCode.AUTH)
        assert honest.peer_id not in pair.a.links
        await assert_still_serving(pair)


# -- (c) over the limits -----------------------------------------------------------------


async def test_oversize_handshake_record() -> None:
    async with serving() as pair:
        before = Snapshot.of(pair.a)
        async with raw_client(pair.port) as client:
            await client.send(b"\xa0" * (MAX_HANDSHAKE_RECORD + 1))
            await expect_refused_handshake(pair, client, before, ErrorCode.TOO_LARGE)
        await assert_still_serving(pair)


async def test_a_served_link_keeps_no_upgrade_headers() -> None:
    """trio-websocket keeps each upgrade request for the link's life; the peer empties it."""
    async with serving() as pair:
        requests = [o for o in gc.get_objects() if isinstance(o, trio_websocket.WebSocketRequest)]
        assert requests, "the served link's request is gone: nothing to check"
        assert [r.headers for r in requests] == [[] for _ in requests]
        await assert_still_serving(pair)


async def test_websocket_message_over_the_record_limit() -> None:
    """trio-websocket itself closes with 1009 before the peer sees the record."""
    async with serving() as pair:
        before = Snapshot.of(pair.a)
        async with raw_client(pair.port) as client:
            await client.send(b"\x00" * (MAX_RECORD + 2048))
            reason = await client.expect_closed()
            assert reason.code == 1009
            assert reason.name == "MESSAGE_TOO_BIG"
        entry = await pair.logs.wait_for("handshake did not finish", pair.a)
        assert "1009" in str(entry.get("reason"))
        assert pair.a.counters.handshakes_failed == before.handshakes_failed + 1
        assert pair.a.counters.links_opened == before.links_opened
        await assert_still_serving(pair)


async def test_websocket_message_over_the_record_limit_on_a_link() -> None:
    async with serving() as pair, attacker_link(pair) as (attacker, client):
        await client.send(b"\x00" * (MAX_RECORD + 2048))
        reason = await client.expect_closed()
        assert reason.code == 1009
        await wait_linked(pair.a, attacker.peer_id, linked=False)
        entry = await pair.logs.wait_for("link down", pair.a, link=attacker.peer_id.hex()[:16])
        assert entry["links"] == 1
        await assert_still_serving(pair)


async def test_decrypted_frame_over_the_record_limit() -> None:
    """Fits in a WebSocket message, but the plaintext is over MAX_RECORD."""
    async with serving() as pair:
        before = Snapshot.of(pair.a)
        async with attacker_link(pair) as (attacker, client):
            await client.send_sealed(b"\x00" * (MAX_RECORD + 1))
            await expect_refused_link(
                pair, client, attacker, before, ErrorCode.TOO_LARGE, "frame refused"
            )
        await assert_still_serving(pair)


async def test_pub_with_an_envelope_over_the_limit() -> None:
    async with serving() as pair:
        before = Snapshot.of(pair.a)
        async with attacker_link(pair) as (attacker, client):
            frame = encode_frame("pub", e=b"\x00" * (MAX_ENVELOPE + 1))
            assert len(frame) < MAX_RECORD
            await client.send_sealed(frame)
            await expect_refused_link(
                pair, client, attacker, before, ErrorCode.TOO_LARGE, "frame refused"
            )
        await assert_still_serving(pair)


async def test_frame_with_too_many_cbor_items() -> None:
    async with serving() as pair:
        before = Snapshot.of(pair.a)
        async with attacker_link(pair) as (attacker, client):
            frame = encode_frame("iwant", ids=[bytes(32)] * (MAX_FRAME_ITEMS + 1))
            assert len(frame) < MAX_RECORD
            await client.send_sealed(frame)
            await expect_refused_link(
                pair, client, attacker, before, ErrorCode.TOO_LARGE, "frame refused"
            )
        await assert_still_serving(pair)


# -- (d) forged signature -------------------------------------------------------------------


async def test_forged_envelope_signature() -> None:
    async with serving() as pair:
        author = Identity.generate()
        env = seal_message(
            author, topic=CHANNEL, content=Content("forged"), seq=1, ts=pair.a.wall_ms()
        )
        signed, sig = cbor2.loads(env.wire)
        bad_sig = bytes([sig[0] ^ 0x01]) + sig[1:]
        forged = cbor2.dumps([signed, bad_sig], canonical=True)

        before = Snapshot.of(pair.a)
        async with attacker_link(pair) as (attacker, client):
            await client.send_sealed(encode_frame("pub", e=forged))
            await expect_refused_link(
                pair, client, attacker, before, ErrorCode.BAD_SIGNATURE, "closing link"
            )
        assert pair.a.inbox.get(env.id) is None
        assert pair.b.inbox.get(env.id) is None
        assert not pair.a.router.seen(env.id), "a forgery must not poison the seen cache"
        await assert_still_serving(pair)

        # The genuine envelope, with the same id, still goes through to both peers.
        async with attacker_link(pair) as (_, client):
            await client.send_sealed(encode_frame("pub", e=env.wire))
            await wait_in_inbox(pair.a, env.id)
            await wait_in_inbox(pair.b, env.id)
        for p in (pair.a, pair.b):
            got = p.inbox.get(env.id)
            assert got is not None and got.body == "forged" and got.sender == author.peer_id
        assert pair.b.inbox.get(env.id) is not None


# -- (e) undecodable bytes --------------------------------------------------------------------


async def test_bytes_that_fail_aead_after_the_handshake() -> None:
    async with serving() as pair:
        before = Snapshot.of(pair.a)
        async with attacker_link(pair) as (attacker, client):
            await client.send(random.Random(5).randbytes(64))
            await expect_refused_link(
                pair, client, attacker, before, ErrorCode.DECRYPT, "frame refused"
            )
        await assert_still_serving(pair)


async def test_sealed_bytes_that_are_not_cbor() -> None:
    async with serving() as pair:
        before = Snapshot.of(pair.a)
        async with attacker_link(pair) as (attacker, client):
            await client.send_sealed(b"\xff\xfe this is not CBOR")
            await expect_refused_link(
                pair, client, attacker, before, ErrorCode.MALFORMED, "frame refused"
            )
        await assert_still_serving(pair)


async def test_garbage_instead_of_a_hello() -> None:
    async with serving() as pair:
        before = Snapshot.of(pair.a)
        async with raw_client(pair.port) as client:
            await client.send(b"\xff" * 40)
            await expect_refused_handshake(pair, client, before, ErrorCode.MALFORMED)
        await assert_still_serving(pair)


# -- not WebSocket at all -----------------------------------------------------------------------


async def _raw_tcp_exchange(port: int, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        await stream.send_all(data)
        reply = b""
        with trio.fail_after(DEADLINE):
            while chunk := await stream.receive_some():
                reply += chunk
        return reply
    finally:
        await stream.aclose()


async def test_http_and_garbage_on_the_tcp_port() -> None:
    async with serving() as pair:
        reply = await _raw_tcp_exchange(pair.port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 400")
        reply = await _raw_tcp_exchange(pair.port, b"\x16\x03\x01\x02\x00\x01 not http\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 400")
        # The listener still accepts and completes handshakes.
        async with attacker_link(pair) as (newcomer, _):
            assert newcomer.peer_id in pair.a.links
        await assert_still_serving(pair)
