"""Our own WebSocket on real sockets (peer/node/_wsconn.py): interop and refusals.

* our server with a trio-websocket client, and our client with a
  trio-websocket server (also over TLS): records both ways, text, pings
  answered, the close handshake with its code;
* the peer's listener refuses a bad upgrade with an HTTP answer and a bad
  frame with the close code the RFC asks for (1002, 1007, 1009), counts it,
  and keeps serving; a flood after a refused hello is not parsed;
* the close handshake is bounded when the other side never answers;
* a real process: two ``python -m peer`` link over it and a hostile client
  gets its close code while the peer keeps serving.
"""

from __future__ import annotations

import datetime
import socket
import ssl
import time
import types
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio_websocket
from structlog.testing import capture_logs

from peer import Identity, Peer, PeerOptions
from peer.node import _dialer, _websocket, _wsconn
from peer.node._websocket import dial_websocket, serve_ws
from peer.node._wsconn import WsClosed, WsConnection
from peer.wire._wsframes import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    FrameReader,
    encode_frame,
    parse_close,
)
from peer.wire._wsupgrade import UpgradeRefused, client_request, new_key

from ._refusals_harness import (
    CHANNEL,
    LogWatch,
    Pair,
    Snapshot,
    WatchedRouter,
    assert_still_serving,
    interest,
    serving,
    wait_linked,
)
from ._wspair import own_pair, own_server

DEADLINE = 10
SIZES = (0, 1, 125, 126, 300, 65_535, 65_536, 200_000)
MASK = b"\x11\x22\x33\x44"


async def test_our_server_with_a_trio_websocket_client() -> None:
    seen: list[bytes | str] = []
    closed: list[int] = []
    done = trio.Event()

    async def echo(conn: WsConnection) -> None:
        try:
            while True:
                message = await conn.get_message()
                seen.append(message)
                await conn.send_message(message)
        except WsClosed as exc:
            closed.append(exc.code)
            done.set()

    with trio.fail_after(DEADLINE):
        async with own_server(echo) as port:
            async with trio_websocket.open_websocket(
                "127.0.0.1", port, "/", use_ssl=False, max_message_size=1 << 20
            ) as ws:
                for size in SIZES:
                    await ws.send_message(bytes([size % 251]) * size)
                    assert await ws.get_message() == bytes([size % 251]) * size
                await ws.send_message("text é")
                assert await ws.get_message() == "text é"
                await ws.ping(b"there?")  # returns when our pong comes
            assert ws.closed is not None and ws.closed.code == 1000
            await done.wait()
    assert closed == [1000]
    assert len(seen) == len(SIZES) + 1


async def test_our_client_with_a_trio_websocket_server(monkeypatch: pytest.MonkeyPatch) -> None:
    await _client_against_trio_websocket(monkeypatch, tls=False)


async def test_our_client_over_tls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    await _client_against_trio_websocket(monkeypatch, tls=True, tmp=tmp_path)


async def _client_against_trio_websocket(
    monkeypatch: pytest.MonkeyPatch, *, tls: bool, tmp: Path | None = None
) -> None:
    server_ssl: ssl.SSLContext | None = None
    if tls:
        assert tmp is not None
        server_ssl, client_ssl = _tls_contexts(tmp)
        fake_ssl = types.SimpleNamespace(create_default_context=lambda: client_ssl)
        monkeypatch.setattr(_websocket, "ssl", fake_ssl)
    closes: list[int | None] = []
    done = trio.Event()

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                message = await ws.get_message()
                if message == "ping me":
                    await ws.ping(b"ping from the server")  # our reader answers it
                await ws.send_message(message)
        except trio_websocket.ConnectionClosed as exc:
            closes.append(exc.reason.code if exc.reason else None)
            done.set()

    async def run(conn: Any) -> int:
        assert isinstance(conn, WsConnection) and conn.is_client
        records = [bytes([n % 251]) * n for n in SIZES]
        async with trio.open_nursery() as sending:  # the echo needs us reading meanwhile
            sending.start_soon(conn.send_many, records)
            assert [await conn.receive() for _ in records] == records
        await conn.send_message("ping me")  # and echoed: ignored by receive
        await conn.send(b"after text")
        assert await conn.receive() == b"after text"  # the echoed text was skipped
        await conn.aclose()
        return 1

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(_serve_tls if tls else serve_ws, handler, "127.0.0.1", 0,
                                       nursery, *([server_ssl] if tls else []))
            scheme = "wss" if tls else "ws"
            log = types.SimpleNamespace(debug=lambda *a, **k: None, error=lambda *a, **k: None)
            assert await dial_websocket(f"{scheme}://localhost:{port}/x", run, log) == 1
            await done.wait()
            nursery.cancel_scope.cancel()
    assert closes == [1000]


async def _serve_tls(handler: Any, host: str, port: int, nursery: trio.Nursery,
                     context: ssl.SSLContext, *, task_status: Any) -> None:
    listeners = await trio.open_ssl_over_tcp_listeners(port, context, host=host)
    server = trio_websocket.WebSocketServer(handler, listeners, handler_nursery=nursery,
                                            max_message_size=1 << 20)
    tcp = cast(trio.SocketListener, listeners[0].transport_listener)
    task_status.started(tcp.socket.getsockname()[1])
    await server.run()


def _tls_contexts(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for localhost: the server's context and a client's
    that trusts it."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(cert_path))
    return server, client


async def test_the_close_handshake_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that never answers our close: ``aclose`` gives up after CLOSE_TIMEOUT."""
    monkeypatch.setattr(_wsconn, "CLOSE_TIMEOUT", 0.3)
    async with own_pair() as (client, server):
        await client.send(b"never read")
        with trio.fail_after(2):
            start = trio.current_time()
            await server.aclose()  # the client reads nothing: no close answer comes
            assert trio.current_time() - start >= 0.3
        with pytest.raises(WsClosed):
            await server.send(b"after the close")


async def test_both_ends_ours_close_cleanly() -> None:
    with trio.fail_after(DEADLINE):
        async with own_pair() as (client, server):
            await server.send(b"one")
            await client.send(b"two")
            assert await client.receive() == b"one"
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.aclose)
                assert await server.receive() == b"two"
                with pytest.raises(WsClosed) as info:
                    await server.receive()
            assert info.value.code == 1000 and client.close_code == 1000


# -- the peer's listener against hostile input ------------------------------------------------


async def _upgraded(port: int) -> tuple[trio.SocketStream, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    key = new_key(b"0123456789abcdef")
    await stream.send_all(client_request(f"127.0.0.1:{port}", "/", key))
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some(4096)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return stream, rest


async def _close_code(stream: trio.SocketStream, rest: bytes) -> int | None:
    """Read what the server sends until it closes: the code of its close frame."""
    reader = FrameReader(server=False, limit=1 << 20)
    reader.feed(rest)
    code = None
    with trio.fail_after(DEADLINE):
        while True:
            while (event := reader.next()) is not None:
                if event[0] == OP_CLOSE:
                    code = parse_close(event[1])[0]
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                return code
            reader.feed(data)


def _masked(opcode: int, payload: bytes, first: int | None = None) -> bytes:
    frame = bytearray(encode_frame(opcode, payload, MASK))
    if first is not None:
        frame[0] = first
    return bytes(frame)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (_masked(OP_BINARY, b"x", first=0xC2), 1002),  # RSV1 set
        (encode_frame(OP_BINARY, b"not masked"), 1002),
        (_masked(OP_PING, b"p", first=0x09), 1002),  # a fragmented ping
        (_masked(OP_TEXT, b"\xff\xfe"), 1007),  # text that is not UTF-8
        (_masked(0x5, b"x"), 1002),  # a reserved opcode
        (_masked(OP_BINARY, b"\x00" * (400 * 1024))[:14], 1009),  # the header says too big
    ],
    ids=["rsv", "unmasked", "fragmented-ping", "bad-utf8", "opcode", "oversize"],
)
async def test_a_bad_frame_gets_its_close_code_and_the_peer_keeps_serving(
    frame: bytes, code: int
) -> None:
    async with serving() as pair:
        before = Snapshot.of(pair.a)
        stream, rest = await _upgraded(pair.port)
        try:
            await stream.send_all(_masked(OP_PING, b"first") + frame)
            assert await _close_code(stream, rest) == code
        finally:
            await stream.aclose()
        entry = await pair.logs.wait_for("handshake did not finish", pair.a)
        assert str(code) in str(entry.get("reason"))
        assert pair.a.counters.handshakes_failed == before.handshakes_failed + 1
        await assert_still_serving(pair)


async def _http_exchange(port: int, data: bytes) -> bytes:
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


async def test_bad_upgrades_get_an_http_answer_and_are_counted() -> None:
    async with serving() as pair:
        failures = pair.a.counters.upgrade_failures
        key = new_key(b"0123456789abcdef")
        old = client_request("h", "/", key).replace(b"Version: 13", b"Version: 8")
        reply = await _http_exchange(pair.port, old)
        assert reply.startswith(b"HTTP/1.1 426") and b"Sec-WebSocket-Version: 13" in reply
        await pair.logs.wait_for("websocket upgrade failed", pair.a,
                                 error=repr(UpgradeRefused(426, "WebSocket version 13 only")))
        reply = await _http_exchange(pair.port, b"GET / HTTP/1.1\r\nX: " + b"y" * 9000)
        assert reply.startswith(b"HTTP/1.1 431")
        await pair.logs.wait_for("websocket upgrade failed", pair.a,
                                 error=repr(UpgradeRefused(431, "an HTTP head over 8192 bytes")))
        assert pair.a.counters.upgrade_failures == failures + 2
        await assert_still_serving(pair)


async def test_a_flood_after_a_refused_hello_is_not_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The refused connection is aborted: of 3000 empty frames sent with the bad hello
    in one write, the listener parses (almost) none: it parses one message per read
    of the link, and nothing after the refusal."""
    parsed = [0]
    original = FrameReader.next

    def counted(reader: FrameReader) -> tuple[int, bytes] | None:
        event = original(reader)
        if event is not None and reader._server and event[1] == b"":  # the flood's frames
            parsed[0] += 1
        return event

    monkeypatch.setattr(FrameReader, "next", counted)
    async with serving() as pair:
        stream, rest = await _upgraded(pair.port)
        try:
            flood = _masked(OP_BINARY, b"\xff" * 40) + _masked(OP_BINARY, b"") * 3000
            await stream.send_all(flood)
            assert await _close_code(stream, rest) is None  # aborted: no close handshake
        finally:
            await stream.aclose()
        await pair.logs.wait_for("handshake refused", pair.a)
        assert parsed[0] <= 1, parsed[0]
        await assert_still_serving(pair)


# -- real processes ---------------------------------------------------------------------------


def test_real_peers_link_over_our_websocket_and_shrug_off_a_bad_frame(tmp_path: Path) -> None:
    from tests._mesh_pair import start_pair
    from tests._procs import stop

    pair = start_pair(tmp_path)  # two processes linked, #lobby routed both ways
    try:
        with socket.create_connection(("127.0.0.1", pair.a.mesh_port), timeout=DEADLINE) as s:
            s.sendall(client_request("a", "/", new_key(b"0123456789abcdef")))
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(4096)
            assert data.startswith(b"HTTP/1.1 101")
            s.sendall(_masked(OP_BINARY, b"x", first=0xF2))  # every reserved bit
            reader = FrameReader(server=False, limit=1 << 20)
            reader.feed(data.partition(b"\r\n\r\n")[2])
            while (chunk := s.recv(4096)):
                reader.feed(chunk)
            event = reader.next()
            assert event is not None and event[0] == OP_CLOSE
            assert parse_close(event[1])[0] == 1002
        sent = pair.a.post("/send", {"channel": "lobby", "body": "still here"}).json()
        end = time.monotonic() + DEADLINE
        while True:  # each call waits for news (up to 2 s): no sleeping here
            got = pair.b.get("/messages", channel="lobby", wait="2", after="0", limit="1000")
            if sent["id"] in [m["id"] for m in got.json()]:
                break
            assert time.monotonic() < end, "the message never reached b"
    finally:
        stop(pair.b)
        stop(pair.a)


async def test_too_many_connections_from_one_address_get_503(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past ``max_links_per_ip`` (loopback counted here as any address) the upgrade
    is refused with 503 before it is read; the links already there stay."""
    async with serving() as pair:
        monkeypatch.setattr(_dialer, "is_loopback", lambda ip: False)
        monkeypatch.setattr(pair.a.dialer.options, "max_links_per_ip", 1)
        # b's link holds the one connection allowed from 127.0.0.1
        reply = await _http_exchange(pair.port, client_request("h", "/", new_key(b"k" * 16)))
        assert reply.startswith(b"HTTP/1.1 503") and b"too many connections" in reply
        monkeypatch.setattr(pair.a.dialer.options, "max_links_per_ip", 0)  # off again
        await assert_still_serving(pair)


@pytest.mark.parametrize(
    ("own_listener", "own_dialer"), [(True, False), (False, True)],
    ids=["old-dials-new", "new-dials-old"],
)
async def test_peers_on_either_websocket_link_and_talk(
    monkeypatch: pytest.MonkeyPatch, own_listener: bool, own_dialer: bool
) -> None:
    """A peer of an earlier release (links on trio-websocket, ``OWN_WEBSOCKET`` off)
    and one on our own WebSocket link both ways round and exchange messages."""
    watch = LogWatch()
    with capture_logs(processors=[watch]), trio.fail_after(DEADLINE * 2):
        a = Peer(Identity.generate(), PeerOptions(channels=(CHANNEL,), seed=1))
        b = Peer(Identity.generate(), PeerOptions(channels=(CHANNEL,), seed=2))
        a.router, b.router = WatchedRouter(a), WatchedRouter(b)
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            monkeypatch.setattr(_websocket, "OWN_WEBSOCKET", own_listener)
            port = await a.serve_websocket("127.0.0.1", 0)
            monkeypatch.setattr(_websocket, "OWN_WEBSOCKET", own_dialer)  # read when b dials
            b.nursery.start_soon(b.dial_forever, f"ws://127.0.0.1:{port}", a.peer_id)
            await wait_linked(a, b.peer_id)
            await wait_linked(b, a.peer_id)
            assert isinstance(a.links[b.peer_id].transport, WsConnection) == own_listener
            assert isinstance(b.links[a.peer_id].transport, WsConnection) == own_dialer
            await a.router.wait_until(lambda: interest(a, b).get(CHANNEL) == 0)
            await b.router.wait_until(lambda: interest(b, a).get(CHANNEL) == 0)
            pair = Pair(a, b, port, watch, a.links[b.peer_id], b.links[a.peer_id])
            await assert_still_serving(pair)
            nursery.cancel_scope.cancel()


async def test_links_run_on_our_own_websocket_by_default() -> None:
    assert _websocket.OWN_WEBSOCKET
    async with serving() as pair:
        for link in (pair.a_to_b, pair.b_to_a):
            transport = getattr(link, "transport", None)
            assert isinstance(transport, WsConnection)
        assert pair.a.links[pair.b.peer_id].transport.is_client is False  # type: ignore[attr-defined]
