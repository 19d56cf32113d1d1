"""The RFC 6455 codec and the upgrade, sans-IO (peer/wire/_wsframes.py, _wsupgrade.py).

The reader is checked against wsproto (an independent implementation) for
what both write, split at every point; fragmentation with control frames in
between; masking rules on both sides; the size limit on the header; and each
broken rule refused with its close code, never with another exception.
"""

from __future__ import annotations

import base64
import random
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import BytesMessage, Ping, TextMessage

from peer.wire._wsframes import (
    OP_BINARY,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    WsFrameError,
    close_payload,
    encode_frame,
    parse_close,
    unmask,
)
from peer.wire._wsupgrade import (
    UpgradeFailed,
    UpgradeRefused,
    accept_key,
    accept_response,
    check_response,
    client_request,
    head_end,
    parse_request,
)

KEY = b"\x01\x02\x03\x04"
LIMIT = 1000


def _frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = KEY,
           rsv: int = 0) -> bytes:
    """A frame written by hand (what a hostile or odd peer may send)."""
    head = bytearray([(0x80 if fin else 0) | rsv | opcode])
    bit = 0x80 if mask is not None else 0
    size = len(payload)
    if size <= 125:
        head.append(bit | size)
    elif size <= 0xFFFF:
        head += bytes([bit | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + size.to_bytes(8, "big")
    if mask is None:
        return bytes(head) + payload
    return bytes(head) + mask + unmask(mask, payload)


def _all(reader: FrameReader) -> list[tuple[int, bytes]]:
    out = []
    while (event := reader.next()) is not None:
        out.append(event)
    return out


def _refused(reader: FrameReader, data: bytes) -> int:
    reader.feed(data)
    with pytest.raises(WsFrameError) as info:
        _all(reader)
    return info.value.code


def test_the_server_reads_what_wsproto_clients_write_split_anywhere() -> None:
    client = Connection(ConnectionType.CLIENT)
    messages = [b"", b"x", b"y" * 125, b"z" * 126, b"w" * 65_535, b"v" * 65_536, b"u" * 70_000]
    wire = b"".join(client.send(BytesMessage(data=m)) for m in messages)
    wire += client.send(TextMessage(data="héllo")) + client.send(Ping(payload=b"p"))
    expected = [(OP_BINARY, m) for m in messages] + [(OP_TEXT, "héllo".encode()), (OP_PING, b"p")]
    rng = random.Random(5)
    for _ in range(30):
        reader = FrameReader(server=True, limit=100_000)
        got: list[tuple[int, bytes]] = []
        at = 0
        while at < len(wire):
            step = rng.choice((1, 2, 7, 100, 4096, 70_000))
            reader.feed(wire[at : at + step])
            at += step
            got += _all(reader)
        assert got == expected
        assert reader.pending() == 0


def test_wsproto_reads_what_we_write_on_both_sides() -> None:
    payloads = [b"", b"a", b"b" * 125, b"c" * 126, b"d" * 65_536]
    as_client = Connection(ConnectionType.SERVER)  # reads what our client writes
    as_client.receive_data(b"".join(encode_frame(OP_BINARY, p, KEY) for p in payloads))
    assert [cast(BytesMessage, e).data for e in as_client.events()] == payloads
    as_server = Connection(ConnectionType.CLIENT)
    as_server.receive_data(b"".join(encode_frame(OP_BINARY, p) for p in payloads))
    assert [cast(BytesMessage, e).data for e in as_server.events()] == payloads


def test_server_frames_are_the_bytes_the_old_transport_wrote() -> None:
    assert encode_frame(OP_BINARY, b"hi") == b"\x82\x02hi"
    assert encode_frame(OP_BINARY, b"x" * 126)[:4] == b"\x82\x7e\x00\x7e"
    assert encode_frame(OP_BINARY, b"x" * 65_536)[:10] == b"\x82\x7f" + (65_536).to_bytes(8, "big")


def test_fragments_with_control_frames_in_between() -> None:
    reader = FrameReader(server=True, limit=LIMIT)
    reader.feed(
        _frame(OP_BINARY, b"ab", fin=False)
        + _frame(OP_PING, b"1")
        + _frame(OP_CONT, b"cd", fin=False)
        + _frame(OP_PONG, b"")
        + _frame(OP_CONT, b"ef")
        + _frame(OP_TEXT, b"t", fin=False)
        + _frame(OP_CONT, b"u")
    )
    assert _all(reader) == [(OP_PING, b"1"), (OP_PONG, b""), (OP_BINARY, b"abcdef"),
                            (OP_TEXT, b"tu")]


def test_the_limit_counts_every_fragment_and_is_checked_on_the_header() -> None:
    reader = FrameReader(server=True, limit=LIMIT)
    reader.feed(_frame(OP_BINARY, b"a" * LIMIT))
    assert _all(reader) == [(OP_BINARY, b"a" * LIMIT)]
    # one byte over, announced by a header alone: refused before any payload comes
    head = _frame(OP_BINARY, b"a" * (LIMIT + 1))[:8]
    assert _refused(FrameReader(server=True, limit=LIMIT), head) == 1009
    fragments = _frame(OP_BINARY, b"a" * 600, fin=False) + _frame(OP_CONT, b"a" * 401)[:8]
    assert _refused(FrameReader(server=True, limit=LIMIT), fragments) == 1009
    huge = bytes([0x82, 0x80 | 127]) + (1 << 40).to_bytes(8, "big")
    assert _refused(FrameReader(server=True, limit=LIMIT), huge) == 1009


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (_frame(OP_BINARY, b"x", rsv=0x40), 1002),  # RSV1 without an extension
        (_frame(OP_BINARY, b"x", rsv=0x10), 1002),
        (_frame(0x3, b"x"), 1002),  # reserved data opcode
        (_frame(0xB, b"x"), 1002),  # reserved control opcode
        (_frame(OP_PING, b"x", fin=False), 1002),  # fragmented control frame
        (_frame(OP_PING, b"x" * 126), 1002),  # control frame over 125 bytes
        (_frame(OP_CONT, b"x"), 1002),  # continuation of nothing
        (_frame(OP_BINARY, b"x", fin=False) + _frame(OP_TEXT, b"y"), 1002),  # new inside
        (_frame(OP_BINARY, b"x", mask=None), 1002),  # a client frame must be masked
        (bytes([0x82, 0xFF]) + (1 << 63).to_bytes(8, "big"), 1002),  # top bit of length
        (bytes([0x82, 0xFE]) + (5).to_bytes(2, "big") + b"\0" * 9, 1002),  # not shortest
        (bytes([0x82, 0xFF]) + (200).to_bytes(8, "big") + b"\0" * 204, 1002),
        (bytes([0x82, 0xFF]) + (0xFFFF).to_bytes(8, "big"), 1002),
    ],
)
def test_broken_rules_are_refused_with_their_code(data: bytes, code: int) -> None:
    assert _refused(FrameReader(server=True, limit=LIMIT), data) == code


def test_the_client_side_refuses_masked_frames_and_takes_plain_ones() -> None:
    reader = FrameReader(server=False, limit=LIMIT)
    reader.feed(_frame(OP_BINARY, b"ok", mask=None))
    assert _all(reader) == [(OP_BINARY, b"ok")]
    assert _refused(FrameReader(server=False, limit=LIMIT), _frame(OP_BINARY, b"x")) == 1002


def test_close_payloads() -> None:
    assert parse_close(b"") == (1005, "")
    assert parse_close(close_payload(1000, "bye")) == (1000, "bye")
    assert parse_close(close_payload(4000, "é" * 200))[1] == "é" * 61  # clipped whole
    assert len(close_payload(1009, "x" * 500)) == 125
    for bad in (b"\x03", (999).to_bytes(2, "big"), (1005).to_bytes(2, "big"),
                (1006).to_bytes(2, "big"), (2000).to_bytes(2, "big"), (5000).to_bytes(2, "big")):
        with pytest.raises(WsFrameError) as info:
            parse_close(bad)
        assert info.value.code == 1002
    with pytest.raises(WsFrameError) as info:
        parse_close(b"\x03\xe8\xff")
    assert info.value.code == 1007


def test_an_idle_reader_holds_no_buffer() -> None:
    reader = FrameReader(server=True, limit=LIMIT)
    data = _frame(OP_BINARY, b"x" * 300)
    reader.feed(data[:100])
    assert reader.next() is None and reader.pending() == 100
    reader.feed(data[100:])
    assert reader.next() == (OP_BINARY, b"x" * 300)
    assert reader.pending() == 0 and reader._buf == b""


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.booleans())
def test_hostile_bytes_only_raise_our_error(data: bytes, server: bool) -> None:
    reader = FrameReader(server=server, limit=200)
    reader.feed(data)
    try:
        while reader.next() is not None:
            pass
    except WsFrameError as exc:
        assert exc.code in (1002, 1009)


# -- the upgrade -------------------------------------------------------------------------


def test_the_rfc_example_key() -> None:
    assert accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_a_request_is_accepted_and_the_answer_checks() -> None:
    key = base64.b64encode(b"k" * 16)
    head = client_request("127.0.0.1:9", "/", key)
    assert head_end(head) == len(head)
    request = parse_request(head)
    assert (request.resource, request.key, request.host) == ("/", key, "127.0.0.1:9")
    answer = accept_response(request)
    check_response(answer, key)
    with pytest.raises(UpgradeFailed):
        check_response(answer, base64.b64encode(b"j" * 16))
    with pytest.raises(UpgradeFailed):
        check_response(b"HTTP/1.1 400 Bad Request\r\n\r\n", key)
    with pytest.raises(UpgradeFailed):
        check_response(answer[:-2] + b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n", key)
    with pytest.raises(UpgradeFailed, match="subprotocol"):
        check_response(answer[:-2] + b"Sec-WebSocket-Protocol: chat\r\n\r\n", key)


GOOD = (b"GET /x HTTP/1.1\r\nHost: h\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + base64.b64encode(b"0" * 16) + b"\r\n")


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (GOOD.replace(b"GET", b"POST"), 400),
        (GOOD.replace(b"HTTP/1.1", b"HTTP/1.0"), 400),
        (GOOD.replace(b"Upgrade: WebSocket", b"Upgrade: h2c"), 400),
        (GOOD.replace(b"keep-alive, Upgrade", b"keep-alive"), 400),
        (GOOD.replace(b"Version: 13", b"Version: 8"), 426),
        (GOOD.replace(base64.b64encode(b"0" * 16), b"short"), 400),
        (GOOD + b"bad header line\r\n", 400),
        (GOOD.replace(b"Host: h\r\n", b""), 400),  # HTTP/1.1 requires a Host
        (GOOD.replace(b"Host: h\r\n", b"Host: \r\n"), 400),
        (GOOD + b"Host: other\r\n", 400),  # two of them
    ],
)
def test_bad_requests_are_refused_with_a_status(head: bytes, status: int) -> None:
    assert parse_request(GOOD + b"\r\n").resource == "/x"
    with pytest.raises(UpgradeRefused) as info:
        parse_request(head + b"\r\n")
    assert info.value.status == status and info.value.body


def test_a_reader_waiting_for_a_frame_keeps_only_that_frame() -> None:
    reader = FrameReader(server=True, limit=100_000)
    big, small = _frame(OP_BINARY, b"b" * 50_000), _frame(OP_BINARY, b"s" * 10)
    reader.feed(big + small[:3])
    assert reader.next() == (OP_BINARY, b"b" * 50_000)
    assert reader.next() is None
    assert len(reader._buf) == 3 and reader.pending() == 3
    reader.feed(small[3:])
    assert reader.next() == (OP_BINARY, b"s" * 10) and reader.pending() == 0
