"""Acceptance test 5, continued: a listener refuses bad payloads and keeps serving.

The same harness as test_refusals (tests/_refusals_harness.py): a real
listening ``Peer`` on loopback and a well-behaved peer linked to it. Here a
hand-driven client sends an envelope with a forged signature, bytes that fail
AEAD after the handshake, sealed bytes that are not CBOR, garbage instead of a
hello (also followed by a flood of frames, which the listener does not
read), and plain HTTP or garbage on the TCP port. Each is refused with the
right code, counted and logged, and the well-behaved link survives.
"""


from __future__ import annotations

import random

import cbor2
import pytest
import trio
import trio_websocket

from peer import (
    Content,
    ErrorCode,
    Identity,
    encode_frame,
    seal_message,
)
from peer.node._transport import WebSocketTransport

from ._refusals_harness import (
    CHANNEL,
    DEADLINE,
    Snapshot,
    assert_still_serving,
    attacker_link,
    expect_refused_handshake,
    expect_refused_link,
    raw_client,
    serving,
    wait_in_inbox,
)

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


FLOOD = 3000  # empty frames after a refused hello
QUEUED = 64  # messages trio-websocket queues ahead of the handshake (peer/node/_websocket.py)


async def test_frames_after_a_refused_hello_are_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """The listener aborts a refused connection: the error frame still arrives,
    and of a flood that follows the bad hello it parses no more than what
    trio-websocket had queued ahead of the handshake (a graceful close read it all)."""
    parsed = [0]
    original = trio_websocket.WebSocketConnection._handle_message_event

    async def counted(ws: trio_websocket.WebSocketConnection, event: object) -> None:
        if not ws.is_client:
            parsed[0] += 1
        await original(ws, event)  # type: ignore[arg-type]

    monkeypatch.setattr(trio_websocket.WebSocketConnection, "_handle_message_event", counted)
    async with serving() as pair:
        before = Snapshot.of(pair.a)
        parsed[0] = 0
        async with raw_client(pair.port) as client:
            # one write: the whole flood is sent before the listener answers
            flood = WebSocketTransport(client.ws, "listener")
            await flood.send_many([b"\xff" * 40] + [b""] * FLOOD)
            await expect_refused_handshake(pair, client, before, ErrorCode.MALFORMED)
        assert parsed[0] <= 1 + QUEUED + 1, parsed[0]  # the hello, the queue, one in hand
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
