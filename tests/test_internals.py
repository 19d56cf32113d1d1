"""The public-API fallbacks behind the reaches into other libraries' internals.

Two modules use a dependency's private parts, for figures measured by
``python -m bench._internals`` and quoted where they are used:

* ``peer.node._transport`` writes record batches through trio-websocket's
  private connection state when ``FAST_PATH`` is on (the trio-websocket
  versions it was written against) and otherwise sends one public
  ``send_message`` per record, keeping the upgrade state; its ``abort()``
  closes the stream through the private close helpers and drops what wsproto
  has not parsed, or else cancels the public ``aclose()`` before it sends;
* ``peer.wire._handshake`` seals and opens link records through PyNaCl's
  ``nacl._sodium``, or through the public ``nacl.bindings`` when it is
  missing (``_lib`` is None).

These tests force each fallback and check that everything still works end to
end: records and batches flow both ways over a real loopback trio-websocket
pair (and between a fast end and a fallback end), the handshake completes
and its ciphers agree byte for byte with the fast path, and two peers
linked over a real WebSocket exchange messages with both fallbacks on. They
also check that the fast paths really are on with the pinned versions, so an
upgrade that renames a private attribute cannot silently slow links down.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
import trio_websocket
from wsproto import WSConnection

from peer import ErrorCode, Identity, ProtocolError
from peer.node import _transport, _websocket
from peer.node._transport import TransportClosed, WebSocketTransport
from peer.node._websocket import serve_ws
from peer.wire import _handshake
from peer.wire._handshake import Handshake, LinkCipher

from ._refusals_harness import assert_still_serving, serving

DEADLINE = 10
SIZES = (0, 1, 125, 126, 300, 65_535, 65_536, 70_000)  # around every frame-length width


class SendCounter:
    """Counts the public ``send_message`` calls, to tell which path a transport took."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = trio_websocket.WebSocketConnection.send_message

        async def counted(ws: trio_websocket.WebSocketConnection, message: bytes | str) -> None:
            self.calls += 1
            await original(ws, message)

        monkeypatch.setattr(trio_websocket.WebSocketConnection, "send_message", counted)


@asynccontextmanager
async def ws_pair(
    monkeypatch: pytest.MonkeyPatch, *, server_fast: bool, client_fast: bool
) -> AsyncIterator[tuple[WebSocketTransport, WebSocketTransport]]:
    """A client and a server ``WebSocketTransport`` over a real loopback WebSocket."""
    accepted: list[WebSocketTransport] = []
    ready = trio.Event()

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        monkeypatch.setattr(_transport, "FAST_PATH", server_fast)
        accepted.append(WebSocketTransport(await request.accept(), "client"))
        ready.set()
        await trio.sleep_forever()

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_ws, handler, "127.0.0.1", 0, nursery)
            # The test owns the client's TCP stream: trio-websocket's client leaves
            # it open when the server closes first (as abort() does).
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            try:
                async with trio.open_nursery() as client_nursery:
                    ws = await trio_websocket.wrap_client_stream(
                        client_nursery,
                        stream,
                        f"127.0.0.1:{port}",
                        "/",
                        message_queue_size=64,
                        max_message_size=1 << 20,
                    )
                    await ready.wait()
                    monkeypatch.setattr(_transport, "FAST_PATH", client_fast)
                    client = WebSocketTransport(ws, "server")
                    yield client, accepted[0]
                    await client.aclose()
            finally:
                await stream.aclose()
            nursery.cancel_scope.cancel()


async def exchange(a: WebSocketTransport, b: WebSocketTransport) -> None:
    """Single records and batches from ``a`` arrive at ``b`` whole and in order."""
    records = [bytes([n % 251]) * n for n in SIZES]
    await a.send(b"single")
    await a.send_many(records)
    await a.send_many([])
    got = [await b.receive() for _ in range(1 + len(records))]
    assert got == [b"single", *records]


async def test_websocket_fallback_sends_through_the_public_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counter = SendCounter(monkeypatch)
    async with ws_pair(monkeypatch, server_fast=False, client_fast=False) as (client, server):
        await exchange(server, client)
        await exchange(client, server)
        # one public send_message per record: 2 singles + 2 * len(SIZES) batched
        assert counter.calls == 2 * (1 + len(SIZES))
        await client.aclose()
        with trio.fail_after(DEADLINE), pytest.raises(TransportClosed):
            await server.receive()
        with pytest.raises(TransportClosed):
            await server.send_many([b"after the close"])


async def test_fast_and_fallback_ends_understand_each_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for server_fast, client_fast in ((True, False), (False, True)):
        async with ws_pair(
            monkeypatch, server_fast=server_fast, client_fast=client_fast
        ) as (client, server):
            await exchange(server, client)
            await exchange(client, server)


async def test_fast_path_is_on_with_the_pinned_trio_websocket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert trio_websocket.__version__.startswith(_transport.PRIVATE_API_VERSIONS)
    assert _transport.FAST_PATH
    counter = SendCounter(monkeypatch)
    async with ws_pair(monkeypatch, server_fast=True, client_fast=True) as (client, server):
        await server.send_many([b"a", b"b" * 300])
        await client.send_many([b"c", b"d" * 70_000])
        assert [await client.receive() for _ in range(2)] == [b"a", b"b" * 300]
        assert [await server.receive() for _ in range(2)] == [b"c", b"d" * 70_000]
        assert counter.calls == 0  # batches went past send_message: the fast path ran


async def test_the_fallback_keeps_the_upgrade_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """With FAST_PATH off, no private attribute is touched: wsproto keeps its
    upgrade wrapper (the fast path swaps it for the frame-level Connection)."""
    async with ws_pair(monkeypatch, server_fast=False, client_fast=False) as (client, server):
        for end in (client, server):
            wsproto_state: object = end._ws._wsproto
            assert isinstance(wsproto_state, WSConnection)
        await exchange(client, server)


class ServerParseCounter:
    """Counts the messages trio-websocket's reader parses on the server end."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.parsed = 0
        original = trio_websocket.WebSocketConnection._handle_message_event

        async def counted(ws: trio_websocket.WebSocketConnection, event: object) -> None:
            if not ws.is_client:
                self.parsed += 1
            await original(ws, event)  # type: ignore[arg-type]

        monkeypatch.setattr(trio_websocket.WebSocketConnection, "_handle_message_event", counted)


@pytest.mark.parametrize("server_fast", [True, False], ids=["fast-path", "fallback"])
async def test_abort_closes_at_once_and_parses_nothing_more(
    monkeypatch: pytest.MonkeyPatch, server_fast: bool
) -> None:
    """A flood queued behind the first record: ``abort()`` closes the connection
    without reading on. The fast path parses none of what wsproto still holds;
    the fallback (public API only) at most one receive buffer of it."""
    counter = ServerParseCounter(monkeypatch)
    flood = 20_000  # 6-byte frames: more than one 64 KiB receive buffer
    if not server_fast:
        def no_private_access(state: object) -> None:
            raise AssertionError("the fallback reached into wsproto")

        monkeypatch.setattr(_transport, "_drop_unparsed", no_private_access)
    async with ws_pair(monkeypatch, server_fast=server_fast, client_fast=True) as (client, server):
        await client.send_many([b"first"] + [b""] * flood)
        with trio.fail_after(DEADLINE):
            assert await server.receive() == b"first"
            await trio.testing.wait_all_tasks_blocked()  # the reader has filled its queue
        parsed_before = counter.parsed
        assert parsed_before < 100  # the queue (64) bounds what is parsed ahead
        await server.abort()
        with trio.fail_after(DEADLINE), pytest.raises(TransportClosed):
            await client.receive()  # the other side sees the connection end
        with pytest.raises(TransportClosed):  # nothing queued is left to read
            await server.receive()
        await trio.testing.wait_all_tasks_blocked()
        after = counter.parsed - parsed_before
        assert after <= (0 if server_fast else _transport.RECEIVE_BUFFER // 6 + 1), after
        await server.abort()  # twice is harmless


# -- the link cipher without nacl._sodium -------------------------------------------------


def _handshake_pair() -> tuple[LinkCipher, LinkCipher]:
    alice, bob = Identity.from_seed(b"\x01" * 32), Identity.from_seed(b"\x02" * 32)
    init = Handshake(alice, initiator=True)
    resp = Handshake(bob, initiator=False)
    to_resp: list[bytes] = list(init.start())
    to_init: list[bytes] = []
    while to_resp or to_init:
        if to_resp:
            to_init.extend(resp.receive(to_resp.pop(0)))
        else:
            to_resp.extend(init.receive(to_init.pop(0)))
    assert init.done and resp.done
    assert init.result is not None and resp.result is not None
    assert init.result.peer_id == bob.peer_id and resp.result.peer_id == alice.peer_id
    assert init.result.transcript_hash == resp.result.transcript_hash
    return init.result.cipher, resp.result.cipher


def test_handshake_and_cipher_without_nacl_sodium(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_handshake, "_lib", None)
    a, b = _handshake_pair()
    for n in SIZES:
        plain = bytes([n % 251]) * n
        assert b.open(a.seal(plain)) == plain
        assert a.open(b.seal(plain)) == plain
    sealed = bytearray(a.seal(b"tampered"))
    sealed[-1] ^= 1
    with pytest.raises(ProtocolError) as info:
        b.open(bytes(sealed))
    assert info.value.code is ErrorCode.DECRYPT
    with pytest.raises(ProtocolError) as info:
        b.open(b"short")  # shorter than the tag
    assert info.value.code is ErrorCode.DECRYPT


def test_cipher_fallback_is_byte_for_byte_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    assert vars(_handshake)["_lib"] is not None  # the fast path is on with the pinned PyNaCl
    key_a, key_b = bytes(range(32)), bytes(range(32, 64))
    plains = [bytes([n % 251]) * n for n in SIZES]
    fast = LinkCipher(key_a, key_b)
    fast_records = [fast.seal(p) for p in plains]
    monkeypatch.setattr(_handshake, "_lib", None)
    slow = LinkCipher(key_a, key_b)
    assert [slow.seal(p) for p in plains] == fast_records
    opener = LinkCipher(key_b, key_a)
    assert [opener.open(r) for r in fast_records] == plains


async def test_peers_link_and_talk_with_both_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: two peers over a real WebSocket, the handshake and the link
    cipher without nacl._sodium, records without trio-websocket's internals
    (links on trio-websocket: the old path, ``OWN_WEBSOCKET`` off)."""
    monkeypatch.setattr(_websocket, "OWN_WEBSOCKET", False)
    monkeypatch.setattr(_transport, "FAST_PATH", False)
    monkeypatch.setattr(_handshake, "_lib", None)
    counter = SendCounter(monkeypatch)
    async with serving() as pair:
        await assert_still_serving(pair)
    assert counter.calls > 0  # every record went through the public send_message


async def test_the_listener_works_when_upgrade_headers_cannot_be_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The listener empties trio-websocket's list of upgrade headers; where
    ``headers`` is an immutable copy instead, it leaves it and links work
    (links on trio-websocket: the old path, ``OWN_WEBSOCKET`` off)."""
    monkeypatch.setattr(_websocket, "OWN_WEBSOCKET", False)
    seen: list[object] = []
    real = trio_websocket.WebSocketRequest.headers

    def frozen_headers(request: trio_websocket.WebSocketRequest) -> tuple[object, ...]:
        headers = tuple(real.fget(request))  # type: ignore[attr-defined]
        seen.append(headers)
        return headers

    monkeypatch.setattr(trio_websocket.WebSocketRequest, "headers", property(frozen_headers))
    async with serving() as pair:
        await assert_still_serving(pair)
    assert seen and all(isinstance(h, tuple) and h for h in seen)
