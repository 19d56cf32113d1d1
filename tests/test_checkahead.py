"""Check-ahead (a burst's signature checks in a worker thread) against the general path.

``peer.node._checkahead`` checks the envelopes of a burst of records in a
thread before the link manager routes the burst, and the router then skips
exactly those checks (``peer.protocols._checkahead.Vouching``). These tests
feed the same bursts to a link manager with check-ahead on and off (one
router behind each, a subscriber linked to it) and compare what the router
decides: the same forwards in the same order, the same refusal and close,
the thread path really ran, and no envelope's signature was checked twice.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from bench import check_ahead_cpu
from peer import Handshake, Identity, Peer
from peer.node._checkahead import MIN_CHECKS, CheckAhead
from peer.node._link import Link
from peer.node._linkhost import LinkConfig, LinkManager
from peer.node._logging import peer_logger
from peer.node._options import BenchOnly, PeerCounters, PeerOptions
from peer.protocols import _checkahead
from peer.protocols._checkahead import (
    NO_VOUCHES,
    Vouching,
    author_key,
    plan,
    run_checks,
)
from peer.protocols._gossip import Close, GossipRouter, Send
from peer.wire import _envelope
from peer.wire._envelope import (
    Content,
    Envelope,
    message_id,
    seal_dm,
    seal_message,
    seal_presence,
    split_wire,
)
from peer.wire._errors import ErrorCode, ProtocolError
from peer.wire._frames import decode_frame
from peer.wire._frametypes import AnyFrame, Error, Ping, Pub, Sub
from peer.wire._handshake import HandshakeResult
from peer.wire._limits import GossipParams

WALL = 1_700_000_000_000
TOPIC = "general"
SUB = hashlib.sha256(b"subscriber").digest()
AUTHORS = [Identity.from_seed(hashlib.sha256(b"author %d" % i).digest()) for i in range(3)]


def _results() -> tuple[HandshakeResult, HandshakeResult]:
    ids = [_identity(n) for n in (b"ca-i", b"ca-r")]
    ini, res = Handshake(ids[0], initiator=True), Handshake(ids[1], initiator=False)
    to_res = ini.start()
    while not (ini.done and res.done):
        to_ini = [out for record in to_res for out in res.receive(record)]
        to_res = [out for record in to_ini for out in ini.receive(record)]
    assert ini.result is not None and res.result is not None
    return ini.result, res.result


def _env(n: int, author: int = 0) -> Envelope:
    return seal_message(
        AUTHORS[author], topic=TOPIC, content=Content(f"m{n}"), seq=n + 1, ts=WALL
    )


def _forged(env: Envelope) -> bytes:
    """``env``'s wire with one bit of its signature flipped: same id, bad signature."""
    return env.wire[:-1] + bytes([env.wire[-1] ^ 1])


def _pub(wire: bytes) -> bytes:
    return Pub(wire).encode()


class FakeTransport:
    """Records already read: ``receive_nowait`` hands them out; nothing is sent."""

    remote = "fake"

    def __init__(self, records: list[bytes]) -> None:
        self.records = deque(records)

    def receive_nowait(self) -> bytes | None:
        return self.records.popleft() if self.records else None

    def backlog(self) -> tuple[int, bool]:
        return len(self.records), False

    def ready(self) -> bool:
        return False  # every frame queued: the test reads what the router decided


@dataclass
class Events:
    router: GossipRouter
    check_ahead: CheckAhead | None
    actions: list[Any] = field(default_factory=list)

    def link_up(self, link: Link) -> None:
        pass

    def link_down(self, link: Link) -> None:
        pass

    def frame(self, link: Link, frame: Any, raw: bytes) -> None:
        actions = self.router.handle_frame(link.peer_id, frame, raw, 1.0, WALL)
        self.actions.extend(actions)
        for action in actions:
            if isinstance(action, Close) and action.peer == link.peer_id:
                link.close(action.code, action.reason)


class Checks:
    """Counts signature checks per envelope, and those made on the event loop's thread."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reset()
        loop_thread = threading.get_ident()
        check = _envelope.check_signature

        def counting(key: bytes, signed: bytes, sig: bytes) -> None:
            self.per_sig[sig] += 1
            self.on_loop += threading.get_ident() == loop_thread
            check(key, signed, sig)

        monkeypatch.setattr(_checkahead, "check_signature", counting)

    def reset(self) -> None:
        self.per_sig: Counter[bytes] = Counter()
        self.on_loop = 0


@dataclass
class Outcome:
    actions: list[tuple[str, bytes, Any]]
    close_code: ErrorCode | None
    counters: PeerCounters


async def _run(
    bursts: list[list[bytes]],
    ahead: bool,
    seen: tuple[Envelope, ...] = (),
    params: GossipParams | None = None,
    muted: tuple[bytes, ...] = (),
) -> Outcome:
    """Feed ``bursts`` (plaintext frames) to a link manager, as the reader would
    (the router's clock stands at 1.0, the authors in ``muted`` muted until 100)."""
    ini, res = _results()
    router = GossipRouter(b"\x01" * 32, params=params)
    for author in muted:
        router._senders.mute(author, 100.0)
    router.add_link(ini.peer_id, relay=True, now=0.0)
    router.add_link(SUB, relay=False, now=0.0)
    router.handle_frame(SUB, Sub(((TOPIC, 0),)), Sub(((TOPIC, 0),)).encode(), 0.0, WALL)
    for env in seen:
        router.note_seen(env.id, 0.0)
    counters = PeerCounters()
    events = Events(router, CheckAhead(router, counters) if ahead else None)
    config = LinkConfig(_identity(b"ca-i"), PeerOptions(), lambda: (), lambda: [])
    manager = LinkManager(config, events, counters, peer_logger("00" * 32))
    manager.now = lambda: 1.0  # type: ignore[method-assign]  # the router's clock
    assert (manager.check_ahead is not None) == ahead
    transport = FakeTransport([])
    link = Link(ini, transport, initiator=True, opened=0.0)  # type: ignore[arg-type]
    for frames in bursts:
        records = [b"garbage" if f == b"garbage" else res.cipher.seal(f) for f in frames]
        transport.records.extend(records[1:])
        with trio.fail_after(10):
            if manager.check_ahead is None:
                manager._on_burst(link, records[0])
            else:
                await manager._on_checked_burst(link, records[0], manager.check_ahead)
        if link.close_code is not None:
            break
        assert not transport.records  # the whole burst was taken
    return Outcome([_describe(a) for a in events.actions], link.close_code, counters)


def _identity(seed: bytes) -> Identity:
    return Identity.from_seed(hashlib.sha256(seed).digest())


def _describe(action: Any) -> tuple[str, bytes, Any]:
    if isinstance(action, Send):
        return ("send", action.peer, action.frame)
    if isinstance(action, Close):
        return ("close", action.peer, action.code)
    return (type(action).__name__, b"", None)


@dataclass
class Compared:
    general: Outcome
    fast: Outcome
    general_checks: Counter[bytes]  # signature checks per signature, general path
    fast_checks: Counter[bytes]  # ... and with check-ahead
    fast_on_loop: int  # checks made on the event loop's thread, with check-ahead


async def _compare(
    monkeypatch: pytest.MonkeyPatch,
    bursts: list[list[bytes]],
    seen: tuple[Envelope, ...] = (),
    **kw: Any,
) -> Compared:
    checks = Checks(monkeypatch)
    general = await _run(bursts, ahead=False, seen=seen, **kw)
    general_checks = checks.per_sig
    assert checks.on_loop == sum(general_checks.values())  # the general path: all on the loop
    checks.reset()
    fast = await _run(bursts, ahead=True, seen=seen, **kw)
    assert fast.actions == general.actions
    assert fast.close_code == general.close_code
    assert general.counters.checked_ahead == 0
    return Compared(general, fast, general_checks, checks.per_sig, checks.on_loop)


def _sent(outcome: Outcome) -> list[bytes]:
    """The envelopes forwarded to the subscriber, in order."""
    out = []
    for kind, peer, frame in outcome.actions:
        if kind == "send" and peer == SUB:
            decoded = decode_frame(frame)
            if isinstance(decoded, Pub):
                out.append(decoded.envelope)
    return out


# -- the shell against the general path ------------------------------------------------


async def test_bursts_route_the_same_and_check_each_envelope_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    envs = [_env(n, author=n % 3) for n in range(30)]
    sub = Sub((("other", 0),)).encode()
    bursts = [
        [_pub(e.wire) for e in envs[:8]],
        # duplicates inside a burst and of an earlier one, other frames between
        [_pub(envs[8].wire), _pub(envs[8].wire), sub, _pub(envs[2].wire), Ping(7).encode()]
        + [_pub(e.wire) for e in envs[9:16]],
        [_pub(envs[16].wire)],  # a lone record: the latency path, no thread
        [_pub(e.wire) for e in envs[17:30]] + [_pub(e.wire) for e in envs[17:20]],
    ]
    c = await _compare(monkeypatch, bursts)
    assert _sent(c.fast) == [e.wire for e in envs]  # each once, in order
    assert c.fast.close_code is None
    assert c.fast.counters.checked_ahead_bursts == 3
    assert c.fast.counters.checked_ahead == 29 and c.fast.counters.checked_ahead_failed == 0
    # every envelope checked exactly once on each path; with check-ahead, the lone
    # record's on the loop and the rest in the thread
    assert c.general_checks == c.fast_checks == Counter(split_wire(e.wire)[1] for e in envs)
    assert c.fast_on_loop == 1


async def test_a_burst_of_fewer_than_min_checks_new_envelopes_goes_to_no_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    envs = [_env(n) for n in range(MIN_CHECKS)]
    few = [_pub(e.wire) for e in envs[: MIN_CHECKS - 1]]
    c = await _compare(monkeypatch, [few + [Ping(1).encode()] * 4, [_pub(envs[-1].wire)] * 3])
    assert _sent(c.fast) == [e.wire for e in envs]
    assert c.fast.counters.checked_ahead_bursts == 0 and c.fast_on_loop == MIN_CHECKS


async def test_already_seen_envelopes_go_to_no_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    envs = [_env(n) for n in range(6)]
    c = await _compare(monkeypatch, [[_pub(e.wire) for e in envs]], seen=tuple(envs[:5]))
    assert _sent(c.fast) == [envs[5].wire]
    assert c.fast.counters.checked_ahead_bursts == 0  # one left to check: not worth a thread
    assert sum(c.fast_checks.values()) == 1 and c.fast_on_loop == 1


@pytest.mark.parametrize("where", [0, 3, 7])
async def test_a_forged_signature_in_a_burst_is_refused_and_closes_the_link(
    monkeypatch: pytest.MonkeyPatch, where: int
) -> None:
    envs = [_env(n) for n in range(8)]
    frames = [_pub(e.wire) for e in envs]
    frames[where] = _pub(_forged(envs[where]))
    c = await _compare(monkeypatch, [frames, [_pub(_env(20).wire)] * 2])
    assert _sent(c.fast) == [e.wire for e in envs[:where]]  # those before it, and no more
    assert c.fast.close_code == ErrorCode.BAD_SIGNATURE
    assert c.fast.actions[-1][0] == "close"
    assert c.fast.counters.checked_ahead_failed == 1
    # the thread stopped at the forgery, which the router refused without a second check:
    # no more checks than without check-ahead (a burst of forgeries costs one)
    assert c.fast_on_loop == 0
    assert c.fast_checks == c.general_checks


async def test_a_forged_copy_of_a_good_envelope_is_never_vouched_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Same id, bad signature: ahead of the good copy it is refused; behind it, it is a
    duplicate (as on the general path); the good copy's vouch never covers it."""
    good = [_env(n) for n in range(5)]
    rest = [_pub(e.wire) for e in good[2:]]  # enough for a thread
    c = await _compare(
        monkeypatch, [[_pub(good[0].wire), _pub(_forged(good[1])), _pub(good[1].wire), *rest]]
    )
    assert _sent(c.fast) == [good[0].wire] and c.fast.close_code == ErrorCode.BAD_SIGNATURE
    assert c.fast.counters.checked_ahead_bursts == 1 and c.fast_on_loop == 0
    assert c.fast_checks == c.general_checks
    c = await _compare(
        monkeypatch, [[_pub(good[0].wire), _pub(good[1].wire), _pub(_forged(good[1])), *rest]]
    )
    assert _sent(c.fast) == [e.wire for e in good] and c.fast.close_code is None
    assert c.fast.counters.checked_ahead_bursts == 1 and c.fast_on_loop == 0


async def test_a_burst_that_ends_its_link_early_costs_no_more_checks_than_without(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A link's burst of forgeries, or good envelopes behind a frame that ends the link
    (an ``error``, a ``sub`` over the topic cap): the router checks at most what it would
    without check-ahead, so a hostile link cannot buy 16 checks for the price of one."""
    envs = [_env(n) for n in range(16)]
    forged = [_pub(_forged(e)) for e in envs]
    c = await _compare(monkeypatch, [forged])
    assert c.fast.close_code == ErrorCode.BAD_SIGNATURE
    assert sum(c.fast_checks.values()) == sum(c.general_checks.values()) == 1
    good = [_pub(e.wire) for e in envs[1:]]
    error = Error(ErrorCode.SHUTDOWN, "bye").encode()
    c = await _compare(monkeypatch, [[error, *good]])
    assert c.fast.close_code is not None and _sent(c.fast) == []
    assert sum(c.fast_checks.values()) == sum(c.general_checks.values()) == 0
    # a sub that takes the link over its topic cap ends the plan (the router closes there)
    router = GossipRouter(b"\x01" * 32)
    link = b"\x02" * 32
    router.add_link(link, relay=True, now=0.0)
    router.topic_cap = 3
    pubs: list[tuple[AnyFrame, int]] = [(Pub(e.wire), 400) for e in envs]
    two, four = Sub((("a", 0), ("b", 0))), Sub(tuple((t, 0) for t in "abcd"))
    assert len(plan([(two, 20), *pubs], router.seen, (), router.foresight(link, 1.0))) == 16
    assert plan([(four, 20), *pubs], router.seen, (), router.foresight(link, 1.0)) == []


async def test_a_record_that_does_not_open_is_refused_after_the_ones_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    envs = [_env(n) for n in range(5)]
    frames = [_pub(e.wire) for e in envs]
    c = await _compare(monkeypatch, [[*frames[:3], b"garbage", *frames[3:]]])
    assert _sent(c.fast) == [e.wire for e in envs[:3]]
    assert c.fast.close_code is not None
    c = await _compare(monkeypatch, [[*frames[:3], b"\xff\x00", *frames[3:]]])
    assert _sent(c.fast) == [e.wire for e in envs[:3]]
    assert c.fast.close_code is not None


# -- the sans-IO half ------------------------------------------------------------------


def test_author_key_reads_the_author_of_every_kind() -> None:
    me, you = AUTHORS[0], AUTHORS[1]
    envs = [
        _env(1),
        seal_dm(me, recipient_key=you.public_key, content=Content("x"), seq=2, ts=WALL),
        seal_presence(me, payload=b"\xa0", seq=3, ts=WALL),
    ]
    for env in envs:
        assert author_key(split_wire(env.wire)[0]) == env.sender_key == me.public_key
    assert author_key(b"\xa1\x64from\x58\x20" + b"\x00" * 31) is None  # cut short
    assert author_key(b"\xa0") is None


def test_plan_takes_each_new_envelope_once_and_nothing_else() -> None:
    envs = [_env(n) for n in range(5)]
    frames: list[AnyFrame] = [
        Pub(envs[0].wire),
        Ping(1),
        Pub(envs[1].wire),
        Pub(envs[1].wire),  # a copy in the same burst
        Pub(_forged(envs[2])),  # checked (it fails later), not its good copy behind it
        Pub(envs[2].wire),
        Pub(b"\x82\x00"),  # does not split: left to the router
        Pub(envs[3].wire),  # seen
        Pub(envs[4].wire),  # in flight for another link
    ]
    checks = plan([(f, 0) for f in frames], seen={envs[3].id}.__contains__, busy=[envs[4].id])
    assert [c.mid for c in checks] == [envs[0].id, envs[1].id, envs[2].id]
    assert all(c.key == AUTHORS[0].public_key for c in checks)
    assert run_checks(checks) == {
        e.id: (e.sender_key, split_wire(e.wire)[1]) for e in envs[:2]
    }  # the forged one vouched for nothing


def test_the_router_skips_only_the_exact_envelope_vouched_for() -> None:
    env, other = _env(1), _env(2, author=1)
    signed, sig = split_wire(env.wire)
    forged_sig = split_wire(_forged(env))[1]
    v = Vouching()
    v._seen = OrderedDict()
    v.check_envelope(env.sender_key, env.id, signed, sig)  # checked: passes
    with pytest.raises(ProtocolError):
        v.check_envelope(env.sender_key, env.id, signed, forged_sig)
    # a vouch for the good signature covers neither another signature nor another key
    v.vouched = {env.id: (env.sender_key, sig)}
    with pytest.raises(ProtocolError):
        v.check_envelope(env.sender_key, env.id, signed, forged_sig)
    with pytest.raises(ProtocolError):
        v.check_envelope(other.sender_key, env.id, signed, sig)
    # nor an envelope with another id
    o_signed, o_sig = split_wire(_forged(other))
    v.vouched = {env.id: (other.sender_key, o_sig)}
    with pytest.raises(ProtocolError):
        v.check_envelope(other.sender_key, message_id(o_signed), o_signed, o_sig)
    assert GossipRouter(b"\x02" * 32).vouched is NO_VOUCHES


def test_the_router_refuses_a_forgery_whatever_was_vouched() -> None:
    """A vouch set for the good copy's id and key but the forged signature is never made
    by ``run_checks``; even if it were for the good signature, the forged frame differs."""
    env = _env(1)
    router = GossipRouter(b"\x01" * 32)
    peer = _identity(b"ca-i").peer_id
    router.add_link(peer, relay=True, now=0.0)
    router.vouched = {env.id: (env.sender_key, split_wire(env.wire)[1])}
    raw = _pub(_forged(env))
    actions = router.handle_frame(peer, decode_frame(raw), raw, 1.0, WALL)
    assert [a.code for a in actions if isinstance(a, Close)] == [ErrorCode.BAD_SIGNATURE]


def test_the_option_and_the_bench_switch_turn_it_off() -> None:
    on = Peer(_identity(b"p1"), PeerOptions())
    assert isinstance(on.link_manager.check_ahead, CheckAhead)
    assert on.link_manager.check_ahead.router is on.router
    off = Peer(_identity(b"p2"), PeerOptions(check_ahead=False))
    assert off.link_manager.check_ahead is None
    unverified = Peer(_identity(b"p3"), PeerOptions(), bench=BenchOnly(no_verify=True))
    assert unverified.link_manager.check_ahead is None  # nothing to check ahead


@pytest.mark.parametrize("on", [False, True])
async def test_the_cpu_bench_runs(on: bool) -> None:
    loop_us, process_us, checked = await check_ahead_cpu._run(64, 16, on)
    assert loop_us > 0 and process_us >= loop_us * 0.5
    assert checked == (64 if on else 0)
