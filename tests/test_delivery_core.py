"""The DM-delivery behaviour without trio or LMDB: two ``Delivery`` cores on a fake link.

A sender core and a recipient core exchange pushes over a link the test
brings up, takes down, and makes lose frames; time is stepped from one
deadline to the next. The shell's part (sealing receipts, storing, knowing
duplicates) is played by ``Side`` with a set of stored ids.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from peer.protocols._delivery import (
    RECEIPT_DELAY_MS,
    Command,
    Delivery,
    Expire,
    Pending,
    PushDm,
    Reach,
    Refuse,
    Reschedule,
    SealReceipt,
    Settle,
    Take,
)
from peer.wire._envelope import (
    MAX_RECEIPT_IDS,
    Content,
    Envelope,
    seal_dm,
    seal_message,
    seal_receipt,
)
from peer.wire._errors import ErrorCode
from peer.wire._identity import Identity
from store import Backoff

BASE_MS = 200
CAP_MS = 5_000
DEADLINE_MS = 60_000
START_MS = 1_700_000_000_000
C = TypeVar("C")


@dataclass
class Side:
    identity: Identity
    core: Delivery
    stored: set[bytes] = field(default_factory=set)  # ids in this side's log
    seq: dict[bytes, int] = field(default_factory=dict)  # our next seq per peer
    commands: list[Command] = field(default_factory=list)  # everything the core asked for
    settled: list[bytes] = field(default_factory=list)

    @property
    def peer_id(self) -> bytes:
        return self.identity.peer_id

    def of(self, kind: type[C]) -> list[C]:
        return [c for c in self.commands if isinstance(c, kind)]


class Net:
    """Two sides, a link between them that may be down or lose frames, and a clock."""

    def __init__(self, seed: int = 7) -> None:
        self.now = START_MS
        self.up = False
        self.lose: Callable[[Side, Envelope], bool] = lambda side, env: False
        self.frames: list[tuple[bytes, Envelope]] = []  # (from, envelope) that arrived
        self.a = self._side(seed)
        self.b = self._side(seed + 1)

    def _side(self, seed: int) -> Side:
        identity = Identity.generate()
        core = Delivery(
            identity.peer_id,
            Backoff(base_ms=BASE_MS, cap_ms=CAP_MS),
            random.Random(seed),
            deadline_ms=DEADLINE_MS,
        )
        return Side(identity, core)

    def other(self, side: Side) -> Side:
        return self.b if side is self.a else self.a

    # -- the shells' part ----------------------------------------------------------

    def send_dm(self, body: str) -> Envelope:
        """``a`` seals and stores a DM to ``b``."""
        a, b = self.a, self.b
        seq = a.seq.get(b.peer_id, 1)
        a.seq[b.peer_id] = seq + 1
        env = seal_dm(
            a.identity,
            recipient_key=b.identity.public_key,
            content=Content(body=body),
            seq=seq,
            ts=self.now,
        )
        a.stored.add(env.id)
        a.core.on_own_dm_stored(a.core.plan_dm(env.id, b.peer_id, env.seq, env.wire, self.now))
        return env

    def link_up(self) -> None:
        self.up = True
        self.perform(self.a, self.a.core.on_link_up(self.b.peer_id))
        self.perform(self.b, self.b.core.on_link_up(self.a.peer_id))

    def link_down(self) -> None:
        self.up = False
        self.a.core.on_link_down(self.b.peer_id)
        self.b.core.on_link_down(self.a.peer_id)

    def perform(self, side: Side, commands: Sequence[Command]) -> None:
        side.commands += commands
        for command in commands:
            if isinstance(command, PushDm):
                self.push(side, command.wire)
            elif isinstance(command, SealReceipt):
                receipt = self.seal_receipt(side, command)
                self.push(side, receipt.wire)
            elif isinstance(command, Settle):
                side.settled += command.ids

    def seal_receipt(self, side: Side, command: SealReceipt) -> Envelope:
        seq = side.seq.get(command.sender, 1)
        side.seq[command.sender] = seq + 1
        return seal_receipt(
            side.identity, recipient=command.sender, ids=list(command.ids), seq=seq, ts=self.now
        )

    def push(self, side: Side, wire: bytes) -> None:
        to = self.other(side)
        if not self.up:
            return
        commands = to.core.on_push(side.peer_id, wire)
        to.commands += commands
        for command in commands:
            if isinstance(command, Take) and not self.lose(side, command.envelope):
                self.frames.append((side.peer_id, command.envelope))
                self.store(to, command.envelope, pushed=True)

    def store(self, side: Side, env: Envelope, *, pushed: bool) -> None:
        duplicate = env.id in side.stored
        side.stored.add(env.id)
        if env.kind == "dm":
            side.core.on_dm_stored(
                env.sender,
                env.recipient,
                env.id,
                pushed=pushed,
                duplicate=duplicate,
                now_ms=self.now,
            )
        elif env.kind == "receipt" and not duplicate:
            self.perform(side, side.core.on_receipt(env.sender, env.fields["ids"]))

    def run_until(self, until_ms: int) -> None:
        """Step from deadline to deadline up to ``until_ms``."""
        while True:
            deadlines = [d for d in (s.core.next_deadline() for s in (self.a, self.b)) if d]
            if not deadlines or min(deadlines) > until_ms:
                break
            self.now = max(self.now, min(deadlines))
            for side in (self.a, self.b):
                deadline = side.core.next_deadline()
                if deadline is not None and deadline <= self.now:
                    self.perform(side, side.core.handle_timer(self.now))
        self.now = until_ms

    def arrived(self, sender: Side, kind: str) -> list[Envelope]:
        return [env for frm, env in self.frames if frm == sender.peer_id and env.kind == kind]


def test_a_dm_for_an_offline_recipient_is_reached_for_then_pushed_when_it_links() -> None:
    net = Net()
    a, b = net.a, net.b
    dms = [net.send_dm(f"m{i}") for i in range(3)]
    assert a.core.next_deadline() == START_MS + BASE_MS  # the first try, one base later
    net.run_until(START_MS + 1_000)
    assert a.of(PushDm) == []  # not linked: nothing to push to
    assert a.of(Reach) and {c.recipient for c in a.of(Reach)} == {b.peer_id}
    entries = [a.core.get(d.id) for d in dms]
    assert all(e is not None and e.attempts >= 1 for e in entries)
    net.link_up()  # pushed at once, in sequence order
    assert [env.id for env in net.arrived(a, "dm")] == [d.id for d in dms]
    assert b.of(SealReceipt) == []  # the receipt waits for company...
    net.run_until(net.now + RECEIPT_DELAY_MS)
    assert b.of(SealReceipt) == [SealReceipt(a.peer_id, tuple(d.id for d in dms))]  # ...one for all
    assert sorted(a.settled) == sorted(d.id for d in dms)
    assert len(a.core) == 0 and a.core.next_deadline() is None


def test_push_order_follows_the_sender_sequence() -> None:
    net = Net()
    a, b = net.a, net.b
    rng = random.Random(3)
    entries = [
        Pending(
            rng.randbytes(32),
            b.peer_id,
            seq,
            b"w%d" % seq,
            0,
            START_MS + rng.randint(1, 9),
            START_MS + 10**6,
        )
        for seq in range(1, 21)
    ]
    shuffled = entries[:]
    rng.shuffle(shuffled)
    a.core.load(shuffled, [])
    a.core.on_link_up(b.peer_id)  # not performed: only the order matters here
    pushes = a.core.on_seen(b.peer_id)
    assert [p.wire for p in pushes] == [e.wire for e in entries]
    commands = a.core.handle_timer(START_MS + 10)  # all due: pushed in seq order, each counted
    assert [c.wire for c in commands if isinstance(c, PushDm)] == [e.wire for e in entries]
    assert sorted(c.msg_id for c in commands if isinstance(c, Reschedule)) == sorted(
        e.msg_id for e in entries
    )
    assert a.core.on_seen(rng.randbytes(32)) == []  # someone not linked: nothing


def test_lost_receipts_mean_retries_with_backoff_and_a_late_receipt_settles() -> None:
    net = Net()
    a, b = net.a, net.b
    net.link_up()
    net.lose = lambda side, env: env.kind == "receipt"  # every receipt is lost
    dm = net.send_dm("hello")
    net.run_until(START_MS + 20_000)
    pushes = net.arrived(a, "dm")
    assert len(pushes) >= 4 and all(env.id == dm.id for env in pushes)
    tries = [c for c in a.commands if isinstance(c, Reschedule)]
    gaps = [later.next_try_ms - earlier.next_try_ms for earlier, later in itertools.pairwise(tries)]
    assert all(BASE_MS <= g <= CAP_MS for g in gaps)
    assert max(gaps) > 2 * BASE_MS  # it backs off
    entry = a.core.get(dm.id)
    assert entry is not None and entry.attempts == len(tries)
    # every push of the stored DM is receipted again (the sender did not get ours)
    assert [c.ids for c in b.of(SealReceipt)] == [(dm.id,)] * len(pushes)
    assert a.settled == []
    stranger = Identity.generate().peer_id
    assert a.core.on_receipt(stranger, [dm.id]) == []  # only its recipient settles it
    assert a.core.get(dm.id) is not None
    net.lose = lambda side, env: False
    net.run_until(net.now + CAP_MS + RECEIPT_DELAY_MS)
    assert a.settled == [dm.id]
    assert a.core.get(dm.id) is None and a.core.next_deadline() is None


def test_after_its_deadline_a_dm_is_a_dead_letter_until_a_late_receipt() -> None:
    net = Net()
    a, b = net.a, net.b
    dm = net.send_dm("for later")
    net.run_until(START_MS + DEADLINE_MS - 1)
    assert a.of(Expire) == []
    net.run_until(START_MS + DEADLINE_MS)
    (letter,) = a.of(Expire)
    assert letter == Expire(dm.id, b.peer_id, len(a.of(Reschedule)))
    assert len(a.core) == 0 and a.core.next_deadline() is None
    net.link_up()
    assert net.arrived(a, "dm") == []  # a dead letter is not pushed
    stranger = Identity.generate().peer_id
    assert a.core.on_receipt(stranger, [dm.id]) == []  # only its recipient settles it
    assert a.core.on_receipt(b.peer_id, [dm.id]) == [Settle(b.peer_id, (dm.id,))]
    assert a.core.on_receipt(b.peer_id, [dm.id]) == []  # once


def test_receipts_batch_within_the_delay_and_split_at_the_id_limit() -> None:
    net = Net()
    a, b = net.a, net.b
    ids = [random.Random(i).randbytes(32) for i in range(MAX_RECEIPT_IDS * 2 + 5)]
    for i, msg_id in enumerate(ids):  # a burst: stored within the delay
        b.core.on_dm_stored(
            a.peer_id, b.peer_id, msg_id, pushed=False, duplicate=False, now_ms=START_MS + i % 10
        )
    assert b.core.next_deadline() == START_MS + RECEIPT_DELAY_MS
    assert b.core.handle_timer(START_MS + RECEIPT_DELAY_MS - 1) == []
    commands = b.core.handle_timer(START_MS + RECEIPT_DELAY_MS)
    receipts = [c for c in commands if isinstance(c, SealReceipt)]
    assert receipts == commands and {r.sender for r in receipts} == {a.peer_id}
    assert [len(r.ids) for r in receipts] == [MAX_RECEIPT_IDS, MAX_RECEIPT_IDS, 5]
    assert [i for r in receipts for i in r.ids] == ids
    assert b.core.next_deadline() is None
    late = random.Random(99).randbytes(32)
    b.core.on_dm_stored(
        a.peer_id, b.peer_id, late, pushed=False, duplicate=False, now_ms=START_MS + 500
    )
    assert b.core.next_deadline() == START_MS + 500 + RECEIPT_DELAY_MS  # a new batch


def test_a_duplicate_is_receipted_again_only_when_pushed() -> None:
    net = Net()
    a, b = net.a, net.b
    msg_id = random.Random(1).randbytes(32)
    b.core.on_dm_stored(a.peer_id, b.peer_id, msg_id, pushed=False, duplicate=True, now_ms=START_MS)
    assert b.core.next_deadline() is None  # a gossip copy of what we have: receipted before
    b.core.on_dm_stored(
        b.peer_id, a.peer_id, msg_id, pushed=False, duplicate=False, now_ms=START_MS
    )
    assert b.core.next_deadline() is None  # our own DM: not ours to receipt
    b.core.on_dm_stored(a.peer_id, b.peer_id, msg_id, pushed=True, duplicate=True, now_ms=START_MS)
    assert b.core.handle_timer(START_MS + RECEIPT_DELAY_MS) == [SealReceipt(a.peer_id, (msg_id,))]


def test_a_push_not_addressed_to_us_is_refused() -> None:
    net = Net()
    a, b = net.a, net.b
    c = Identity.generate()
    to_c = seal_dm(
        a.identity, recipient_key=c.public_key, content=Content(body="x"), seq=1, ts=START_MS
    )
    assert b.core.on_push(a.peer_id, to_c.wire) == [
        Refuse(a.peer_id, ErrorCode.UNEXPECTED, "not ours to take", close=False)
    ]
    channel = seal_message(a.identity, topic="lobby", content=Content(body="x"), seq=1, ts=START_MS)
    (refused,) = b.core.on_push(a.peer_id, channel.wire)
    assert isinstance(refused, Refuse) and refused.code == ErrorCode.UNEXPECTED
    (broken,) = b.core.on_push(a.peer_id, b"\xa1" + to_c.wire[1:])
    assert isinstance(broken, Refuse) and broken.close  # does not open: the link goes
    to_b = seal_dm(
        a.identity,
        recipient_key=b.identity.public_key,
        content=Content(body="y"),
        seq=2,
        ts=START_MS,
    )
    assert b.core.on_push(a.peer_id, to_b.wire) == [Take(to_b)]
    (not_ours,) = a.core.on_push(b.peer_id, to_b.wire)  # a does not take b's own DMs
    assert isinstance(not_ours, Refuse) and not_ours.code == ErrorCode.UNEXPECTED


def test_a_recipient_whose_link_went_down_is_reached_not_pushed_to() -> None:
    net = Net()
    a, b = net.a, net.b
    net.link_up()
    net.link_down()
    net.send_dm("while away")
    net.run_until(START_MS + BASE_MS)
    assert a.of(PushDm) == [] and a.of(Reach) == [Reach(b.peer_id)]
    assert a.core.on_seen(b.peer_id) == []  # a presence of an unlinked peer pushes nothing
