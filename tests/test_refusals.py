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
nothing sleeps to wait. The harness is in tests/_refusals_harness.py; the
forged signature, undecodable bytes and non-WebSocket cases are in
test_refusals_payload.
"""


from __future__ import annotations

import gc
import os

import pytest
import trio_websocket

from peer import (
    ErrorCode,
    Identity,
    decode_frame,
    encode_frame,
)
from peer.node import _websocket
from peer.wire._limits import (
    MAX_ENVELOPE,
    MAX_FRAME_ITEMS,
    MAX_HANDSHAKE_RECORD,
    MAX_RECORD,
)

from ._refusals_harness import (
    INITIATOR_AUTH_TAG,
    Snapshot,
    assert_still_serving,
    attacker_link,
    expect_refused_handshake,
    expect_refused_link,
    hello_frame,
    raw_client,
    serving,
    transcript,
    wait_linked,
)

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


async def test_a_served_link_keeps_no_upgrade_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    """trio-websocket keeps each upgrade request for the link's life; the peer empties it
    (links on trio-websocket: the old path; our own keeps no request at all)."""
    monkeypatch.setattr(_websocket, "OWN_WEBSOCKET", False)
    async with serving() as pair:
        requests = [o for o in gc.get_objects() if isinstance(o, trio_websocket.WebSocketRequest)]
        assert requests, "the served link's request is gone: nothing to check"
        assert [r.headers for r in requests] == [[] for _ in requests]
        await assert_still_serving(pair)


async def test_websocket_message_over_the_record_limit() -> None:
    """The WebSocket itself closes with 1009 before the peer sees the record."""
    async with serving() as pair:
        before = Snapshot.of(pair.a)
        async with raw_client(pair.port) as client:
            reason = await client.send_refused(b"\x00" * (MAX_RECORD + 2048))
            assert reason.code == 1009
            assert reason.name == "MESSAGE_TOO_BIG"
        entry = await pair.logs.wait_for("handshake did not finish", pair.a)
        assert "1009" in str(entry.get("reason"))
        assert pair.a.counters.handshakes_failed == before.handshakes_failed + 1
        assert pair.a.counters.links_opened == before.links_opened
        await assert_still_serving(pair)


async def test_websocket_message_over_the_record_limit_on_a_link() -> None:
    async with serving() as pair, attacker_link(pair) as (attacker, client):
        reason = await client.send_refused(b"\x00" * (MAX_RECORD + 2048))
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
