"""The counting sink against the general path: the same counts, the same other records.

The fan-out sinks count measured records by their exact shape and check one in
K fully (bench._count, bench._sink). These tests feed the counter streams of
WebSocket, NATS and Redis records split at random points and compare what it
counts and hands out with what a record-by-record parse gives; they check that
a clawmesh link cipher opens a record after skipped ones (the one private reach,
with its fallback), that a sampled check verifies the signature, and that the
ceiling of a cell is a saturated forwarder.
"""

from __future__ import annotations

import random

import pytest

from bench import _ws
from bench._brokers import NatsConn, RedisConn
from bench._ceiling import apply_ceilings, ceilings
from bench._clients import ClawmeshConn, WsConn, can_skip, skip_records
from bench._conn import make_body
from bench._count import CHECK, OTHER, SKIP, Event, RecordCounter, Shape, run_length
from bench._drive import bound_of
from peer.wire._envelope import Content, seal_message
from peer.wire._frametypes import Ping, Pub
from peer.wire._handshake import Handshake
from peer.wire._identity import Identity
from tests.test_handshake import results, shuttle

SIZE = 300


def _ws_split(buf: bytearray, pos: int, end: int) -> int | None:
    return _ws.record_length(buf, pos, end, 1 << 20)


def _ws_shape(size: int) -> Shape:
    head = _ws.header(size)
    return Shape(len(head) + size, head)


def _stream(rng: random.Random, measured: int) -> tuple[bytes, list[bytes], list[bytes]]:
    """WebSocket records: ``measured`` bodies of SIZE among others; (stream, measured, others)."""
    records: list[bytes] = []
    wanted: list[bytes] = []
    others: list[bytes] = []
    for i in range(measured):
        if rng.random() < 0.1:  # a warm-up (bigger), a ping, or a short text message
            other = rng.choice([
                _ws.encode(make_body(b"W", i, 0, SIZE + 97)),
                _ws.encode(b"hello", _ws.OP_PING),
                _ws.encode(b"x" * rng.randrange(1, 200), _ws.OP_TEXT),
            ])
            records.append(other)
            others.append(other)
        record = _ws.encode(make_body(b"M", i, 0, SIZE))
        records.append(record)
        wanted.append(record)
    return b"".join(records), wanted, others


def _feed_split(counter: RecordCounter, data: bytes, rng: random.Random) -> list[Event]:
    events: list[Event] = []
    pos = 0
    while pos < len(data):
        step = rng.choice([1, 2, 3, 17, 301, 4096, 70_000])
        events += counter.feed(data[pos : pos + step])
        pos += step
    return events


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("every", [1, 7, 1000])
def test_counts_what_the_general_path_counts(seed: int, every: int) -> None:
    rng = random.Random(seed)
    data, wanted, others = _stream(rng, 2000)
    counter = RecordCounter(_ws_split, every, 1 << 22)
    counter.expect([_ws_shape(SIZE)])
    events = _feed_split(counter, data, rng)

    skipped = sum(v for k, v in events if k == SKIP and isinstance(v, int))
    checked = [v for k, v in events if k == CHECK]
    assert skipped + len(checked) == len(wanted) == counter.measured
    # the checked ones are exactly the measured records number 0, every, 2 * every, ...
    assert checked == wanted[::every]
    assert counter.checked == len(checked)
    assert [v for k, v in events if k == OTHER] == others
    # in stream order: the events replay the measured records' numbering
    index = 0
    for kind, value in events:
        if kind == SKIP:
            assert isinstance(value, int)
            index += value
        elif kind == CHECK:
            assert value == wanted[index]
            index += 1
    assert index == len(wanted)


def test_nothing_is_measured_before_the_shapes_are_known() -> None:
    data, wanted, others = _stream(random.Random(1), 50)
    counter = RecordCounter(_ws_split, 10, 1 << 22)
    events = counter.feed(data)
    assert all(k == OTHER for k, _ in events) and counter.measured == 0
    values = [v for _, v in events if isinstance(v, bytes)]
    assert b"".join(values) == data and len(values) == len(wanted) + len(others)


def test_a_run_ends_at_the_first_record_that_differs_in_any_mark_byte() -> None:
    shape = Shape(10, b"AB", b"\r\n")
    good = b"AB123456\r\n"
    buf = bytearray(good * 3 + b"AB123456\r!" + good)
    assert run_length(buf, 0, len(buf), shape) == 3
    assert run_length(buf, 0, 25, shape) == 2  # only whole records count
    assert run_length(bytearray(b"AX123456\r\n"), 0, 10, shape) == 0


def _nats_conn() -> NatsConn:
    conn = NatsConn.__new__(NatsConn)
    conn._subject = b"bench"
    conn._buf = bytearray()
    return conn


def test_nats_and_redis_records_of_the_measured_shape() -> None:
    body = make_body(b"M", 1, 0, SIZE)
    nats = _nats_conn()
    shape = nats.shape(SIZE)
    msg = b"MSG bench 1 %d\r\n%s\r\n" % (SIZE, body)
    assert shape.length == len(msg) and nats.check(msg, shape) is None
    stream = bytearray(b"PING\r\n" + msg * 3 + b"+OK\r\n")
    counter = RecordCounter(nats.split, 2, 1 << 20)
    counter.expect([shape])
    events = counter.feed(bytes(stream))
    assert events == [(OTHER, b"PING\r\n"), (CHECK, msg), (SKIP, 1), (CHECK, msg),
                      (OTHER, b"+OK\r\n")]

    redis = RedisConn.__new__(RedisConn)
    redis._channel = b"bench"
    shape = redis.shape(SIZE)
    push = b"*3\r\n$7\r\nmessage\r\n$5\r\nbench\r\n$%d\r\n%s\r\n" % (SIZE, body)
    assert shape.length == len(push) and redis.check(push, shape) is None
    assert redis.split(bytearray(push), 0, len(push) - 1) is None
    warm = push.replace(b"@@cb:M", b"@@cb:W")
    assert redis.check(warm, shape) is not None  # a check reads the body, not just the size


def test_skipped_records_keep_the_link_cipher_in_step() -> None:
    init = Handshake(Identity.from_seed(b"\x01" * 32), initiator=True)
    resp = Handshake(Identity.from_seed(b"\x02" * 32), initiator=False)
    shuttle(init, resp)
    a, b = results(init, resp)
    records = [a.cipher.seal(b"frame %d" % i) for i in range(10)]
    assert can_skip(b.cipher)
    assert b.cipher.open(records[0]) == b"frame 0"
    skip_records(b.cipher, 8)
    assert b.cipher.open(records[9]) == b"frame 9"

    class Sealed:  # a cipher without the counter: the sink must decrypt every record
        pass

    assert not can_skip(Sealed())  # type: ignore[arg-type]
    assert can_skip(None)  # plaintext links: nothing to keep in step


def test_a_sampled_clawmesh_check_verifies_the_signature() -> None:
    conn = ClawmeshConn.__new__(ClawmeshConn)
    author = Identity.from_seed(b"\x03" * 32)
    body = make_body(b"M", 7, 0, SIZE).decode()
    env = seal_message(author, topic="bench", content=Content(body=body), seq=1, ts=1)
    frame = Pub(env.wire).encode()
    assert conn.check_payload(frame) is None
    forged = bytearray(frame)
    forged[-20] ^= 1  # inside the signature
    assert "bad envelope" in str(conn.check_payload(bytes(forged)))
    assert conn.check_payload(Ping(1).encode()) == "a Ping frame, not a pub"


def test_ws_take_pending_hands_over_a_partial_frame() -> None:
    conn = WsConn.__new__(WsConn)
    conn._parser = _ws.FrameParser()
    record = _ws.encode(b"abc")
    conn._ready = conn._parser.feed(record + record[:2])
    assert conn.take_pending() == record + record[:2]


def _row(system: str, n: int, rate: float, saturated: bool) -> dict[str, object]:
    return {"system": system, "n": n, "size": SIZE, "deliveries_per_s": rate,
            "saturated": saturated, "hub_cpu_pct": 99.0 if saturated else 20.0,
            "deliveries_per_server_cpu_s": rate}


def test_the_ceiling_is_the_fastest_saturated_forwarder() -> None:
    rows = [_row("ws-raw", 10, 200_000, True), _row("tcp-raw", 10, 300_000, False),
            _row("nats", 10, 3_000_000, True), _row("clawmesh", 10, 50_000, True),
            _row("ws-raw", 100, 30_000, False), _row("ws-trio", 100, 20_000, False)]
    top = ceilings(rows)
    assert top[(10, SIZE)]["system"] == "ws-raw"  # not the faster unsaturated one, not NATS
    assert top[(100, SIZE)]["system"] == "ws-raw"
    notes = apply_ceilings(rows)
    assert rows[3]["vs_ceiling"] == 0.25 and rows[3]["ceiling"] == "ws-raw"
    assert rows[2]["vs_ceiling"] == 15.0
    assert "N=100" in notes[2] and "NOT SATURATED" in notes[2]
    assert "NOT SATURATED" not in notes[1]


def test_a_starved_hub_bound_forwarder_beats_a_faster_unbound_one() -> None:
    rows = [_row("ws-raw", 10, 20_000, False), _row("tcp-raw", 10, 30_000, False),
            _row("ws-trio", 10, 5_000, True)]
    rows[0].update(hub_bound=True, hub_wait_pct=55.0)
    # hub-bound beats unbound; among hub-bound ones, starved or not, the fastest
    assert ceilings(rows)[(10, SIZE)]["system"] == "ws-raw"
    notes = apply_ceilings(rows)
    assert "hub-bound" in notes[1] and "waited 55%" in notes[1]


def test_what_bound_a_cell() -> None:
    assert bound_of(None) == "too short"
    assert bound_of({"server0": 97.0, "pub": 90.0}) == "hub"
    # runnable all along but given half a core: still the hub, starved by the machine
    assert bound_of({"server0": 45.0, "server0-wait": 50.0, "x-sink0": 95.0}) == "hub, starved"
    assert bound_of({"server0": 45.0, "server0-wait": 10.0, "x-sink0": 95.0}) == "sinks"
    assert bound_of({"server0": 40.0, "pub": 90.0}) == "publisher"
    assert bound_of({"server0": 40.0, "pub": 10.0, "x-sink0": 95.0}) == "sinks"
    assert bound_of({"server0": 40.0, "pub": 10.0, "x-sink0": 15.0}) == "unclear"


def test_the_sink_waits_longer_while_reads_stay_small() -> None:
    from bench._sink import BUSY_READ, IDLE_TICK, TICK, next_tick

    assert next_tick(IDLE_TICK, BUSY_READ) == 0.0  # more is waiting: read again at once
    assert next_tick(IDLE_TICK, 20_000) == TICK
    tick = TICK
    for _ in range(20):
        tick = next_tick(tick, 300)
    assert tick == IDLE_TICK  # grows, and stops at its bound
    assert next_tick(0.0, 300) > 0.0
