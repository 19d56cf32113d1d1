"""The mailbox behaviours without trio or LMDB (catchup.md section 9.6).

``Mailbox`` (holding for others) is fed ``deposit`` frames and the store's
outcomes by hand; ``Depositor`` (the sender's side) is stepped through its
deadlines with a fake DHT answer. Checked: what is taken and refused (each
refusal answered and counted by reason), the quotas per sender, per
recipient and in total, refunds, expiry, and when and where a sender
deposits.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from peer.protocols._deposits import (
    LOOKUPS_PER_STEP,
    MAILBOX_CAP,
    DepositAt,
    Depositor,
    FindMailboxes,
    LinkTo,
)
from peer.protocols._mailbox import (
    BUSY,
    MAX_IN_FLIGHT,
    NOT_AUTHOR,
    NOT_CLOSE,
    NOT_DM,
    OFF,
    QUOTA_RECIPIENT,
    QUOTA_SENDER,
    QUOTA_TOTAL,
    STALE,
    STORE,
    TO_ME,
    TOO_LARGE,
    Answer,
    CloseLink,
    Command,
    Forget,
    Held,
    Keep,
    Mailbox,
    MailboxQuota,
)
from peer.wire._envelope import Content, Envelope, seal_dm, seal_message, seal_receipt
from peer.wire._errors import ErrorCode
from peer.wire._identity import Identity

NOW = 1_700_000_000_000
TTL = 3_600_000
ME = Identity.from_seed(b"\x01" * 32)
ALICE = Identity.from_seed(b"\x02" * 32)
BOB = Identity.from_seed(b"\x03" * 32)
CAROL = Identity.from_seed(b"\x04" * 32)


def near(_: bytes) -> int:
    return 0


def dm(sender: Identity, to: Identity, seq: int, body: str = "hi", ts: int = NOW) -> Envelope:
    return seal_dm(sender, recipient_key=to.public_key, content=Content(body), seq=seq, ts=ts)


def keep_all(box: Mailbox, commands: list[Command], *, duplicate: bool = False) -> list[Answer]:
    """Play the shell: commit every ``Keep``; the answers that go out."""
    out: list[Answer] = []
    for command in commands:
        if isinstance(command, Keep):
            out += [a for a in box.kept(command, duplicate=duplicate) if isinstance(a, Answer)]
        elif isinstance(command, Answer):
            out.append(command)
    return out


def deposit(
    box: Mailbox,
    env: Envelope,
    *,
    link: Identity | None = None,
    r: int = 1,
    closer: Callable[[bytes], int] = near,
    now: int = NOW,
) -> Answer:
    link_peer = (link or _author(env)).peer_id
    answers = keep_all(box, box.on_deposit(link_peer, r, env.wire, closer=closer, now_ms=now))
    assert len(answers) == 1 and answers[0].r == r and answers[0].peer == link_peer
    return answers[0]


def _author(env: Envelope) -> Identity:
    return next(i for i in (ALICE, BOB, CAROL, ME) if i.peer_id == env.sender)


# -- taking and refusing ----------------------------------------------------------------


def test_a_dm_for_a_peer_we_are_close_to_is_kept_once() -> None:
    box = Mailbox(ME.peer_id, MailboxQuota(ttl_ms=TTL))
    env = dm(ALICE, BOB, 1)
    commands = box.on_deposit(ALICE.peer_id, 5, env.wire, closer=near, now_ms=NOW)
    [keep] = commands
    assert isinstance(keep, Keep) and keep.envelope.id == env.id
    assert keep.held == Held(env.id, BOB.peer_id, ALICE.peer_id, len(env.wire), NOW)
    assert box.kept(keep, duplicate=False) == [Answer(ALICE.peer_id, 5, None)]
    assert env.id in box and len(box) == 1 and box.holds_bytes() == len(env.wire)
    # deposited again (its answer was lost): taken, charged nothing
    assert deposit(box, env, r=6) == Answer(ALICE.peer_id, 6, None)
    assert len(box) == 1 and box.holds_bytes() == len(env.wire) and box.refused == {}


def test_receipts_are_kept_too() -> None:
    box = Mailbox(ME.peer_id)
    receipt = seal_receipt(BOB, recipient=ALICE.peer_id, ids=[b"\x07" * 32], seq=1, ts=NOW)
    assert deposit(box, receipt).err is None
    assert receipt.id in box


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("off", OFF),
        ("channel message", NOT_DM),
        ("someone else's", NOT_AUTHOR),
        ("addressed to us", TO_ME),
        ("oversize", TOO_LARGE),
        ("too old", STALE),
        ("from the future", STALE),
        ("not close", NOT_CLOSE),
    ],
)
def test_refusals_are_answered_and_counted(case: str, reason: str) -> None:
    box = Mailbox(ME.peer_id, MailboxQuota(ttl_ms=TTL, max_entry_bytes=4096))
    env, link = dm(ALICE, BOB, 1), ALICE
    closer: Callable[[bytes], int] = near
    if case == "off":
        box.enabled = False
    elif case == "channel message":
        env = seal_message(ALICE, topic="general", content=Content("x"), seq=1, ts=NOW)
    elif case == "someone else's":
        link = CAROL  # replaying Alice's DM
    elif case == "addressed to us":
        env = dm(ALICE, ME, 1)
    elif case == "oversize":
        env = dm(ALICE, BOB, 1, body="x" * 5000)
    elif case == "too old":
        env = dm(ALICE, BOB, 1, ts=NOW - TTL - 1)
    elif case == "from the future":
        env = dm(ALICE, BOB, 1, ts=NOW + 121_000)
    else:
        closer = lambda recipient: 20  # noqa: E731  (20 known peers are nearer to Bob)
    answer = deposit(box, env, link=link, closer=closer)
    assert answer.err == reason
    assert box.refused == {reason: 1} and len(box) == 0 and box.holds_bytes() == 0


def test_an_envelope_that_does_not_open_closes_the_link() -> None:
    box = Mailbox(ME.peer_id)
    wire = bytearray(dm(ALICE, BOB, 1).wire)
    wire[-1] ^= 1  # the signature
    [close] = box.on_deposit(ALICE.peer_id, 1, bytes(wire), closer=near, now_ms=NOW)
    assert isinstance(close, CloseLink)
    assert (close.peer, close.code) == (ALICE.peer_id, ErrorCode.BAD_SIGNATURE)
    assert box.refused == {"bad-signature": 1}


def test_refusals_come_before_the_signature_check() -> None:
    box = Mailbox(ME.peer_id, MailboxQuota(sender_entries=1))
    assert deposit(box, dm(ALICE, BOB, 1)).err is None
    wire = bytearray(dm(ALICE, BOB, 2).wire)
    wire[-1] ^= 1  # the signature: never checked, the sender is over its quota anyway
    answers = box.on_deposit(ALICE.peer_id, 2, bytes(wire), closer=near, now_ms=NOW)
    assert answers == [Answer(ALICE.peer_id, 2, QUOTA_SENDER)]


# -- quotas ---------------------------------------------------------------------------------


def test_a_flooding_sender_is_refused_past_its_quota_and_others_still_get_in() -> None:
    box = Mailbox(ME.peer_id, MailboxQuota(sender_entries=3, recipient_entries=100))
    answers = [deposit(box, dm(ALICE, BOB, seq), r=seq) for seq in range(1, 11)]
    assert [a.err for a in answers] == [None] * 3 + [QUOTA_SENDER] * 7
    assert box.refused == {QUOTA_SENDER: 7} and len(box) == 3
    assert deposit(box, dm(CAROL, BOB, 1)).err is None  # another sender is not affected


def test_sender_bytes_recipient_and_total_quotas() -> None:
    one = len(dm(ALICE, BOB, 1).wire)
    box = Mailbox(ME.peer_id, MailboxQuota(sender_bytes=one + 10))
    assert deposit(box, dm(ALICE, BOB, 1)).err is None
    assert deposit(box, dm(ALICE, BOB, 2)).err == QUOTA_SENDER  # bytes, not entries

    box = Mailbox(ME.peer_id, MailboxQuota(recipient_entries=2))
    assert [deposit(box, dm(s, BOB, 1)).err for s in (ALICE, CAROL)] == [None, None]
    assert deposit(box, dm(CAROL, BOB, 2)).err == QUOTA_RECIPIENT
    assert deposit(box, dm(CAROL, ALICE, 1)).err is None  # another recipient

    box = Mailbox(ME.peer_id, MailboxQuota(total_entries=2))
    assert deposit(box, dm(ALICE, BOB, 1)).err is None
    assert deposit(box, dm(CAROL, ALICE, 1)).err is None
    assert deposit(box, dm(BOB, CAROL, 1)).err == QUOTA_TOTAL
    assert box.refused == {QUOTA_TOTAL: 1}


def test_deposits_waiting_for_the_store_count_and_a_failed_write_is_refunded() -> None:
    box = Mailbox(ME.peer_id, MailboxQuota(sender_entries=MAX_IN_FLIGHT + 5))
    keeps = []
    for seq in range(1, MAX_IN_FLIGHT + 1):
        [keep] = box.on_deposit(ALICE.peer_id, seq, dm(ALICE, BOB, seq).wire,
                                closer=near, now_ms=NOW)
        assert isinstance(keep, Keep)
        keeps.append(keep)
    # a link with MAX_IN_FLIGHT deposits waiting for the store gets "busy"
    assert deposit(box, dm(ALICE, BOB, 99), r=99).err == BUSY
    assert box.keep_failed(keeps[0]) == [Answer(ALICE.peer_id, 1, STORE)]
    assert box.kept(keeps[1], duplicate=True) == [Answer(ALICE.peer_id, 2, None)]
    for keep in keeps[2:]:
        box.kept(keep, duplicate=False)
    assert len(box) == MAX_IN_FLIGHT - 2
    assert box.holds_bytes() == sum(k.held.size for k in keeps[2:])  # the two refunded
    assert box.refused == {BUSY: 1, STORE: 1}


# -- expiry ---------------------------------------------------------------------------------


def test_entries_expire_after_the_ttl_and_their_quota_comes_back() -> None:
    box = Mailbox(ME.peer_id, MailboxQuota(ttl_ms=TTL, sender_entries=2))
    first, second = dm(ALICE, BOB, 1), dm(ALICE, CAROL, 1)
    assert deposit(box, first, now=NOW).err is None
    assert deposit(box, second, now=NOW + 1000).err is None
    assert deposit(box, dm(ALICE, BOB, 2), now=NOW + 2000).err == QUOTA_SENDER
    assert box.next_deadline() == NOW + TTL
    assert box.handle_timer(NOW + TTL - 1) == []
    assert box.handle_timer(NOW + TTL) == [Forget(BOB.peer_id, (first.id,), TTL)]
    assert first.id not in box and second.id in box and box.expired == 1
    assert deposit(box, dm(ALICE, BOB, 2, ts=NOW + 2000), now=NOW + TTL).err is None
    assert box.next_deadline() == NOW + 1000 + TTL


def test_the_ledger_is_loaded_within_the_total_bound() -> None:
    box = Mailbox(ME.peer_id, MailboxQuota(total_entries=2, ttl_ms=TTL))
    entries = [Held(bytes([i]) * 32, BOB.peer_id, ALICE.peer_id, 100, NOW + i) for i in range(3)]
    box.load(entries)
    assert len(box) == 2 and box.holds_bytes() == 200
    assert box.handle_timer(NOW + TTL + 10) == [
        Forget(BOB.peer_id, (entries[0].msg_id, entries[1].msg_id), TTL)
    ]
    assert len(box) == 0 and box.holds_bytes() == 0


# -- the sender's side ----------------------------------------------------------------------


Found = list[tuple[bytes, tuple[str, ...]]]


def boxes(*peers: Identity, caps: tuple[str, ...] = (MAILBOX_CAP,)) -> Found:
    return [(p.peer_id, caps) for p in peers]


def make_depositor(**kw: int) -> Depositor:
    return Depositor(ME.peer_id, random.Random(3), delay_ms=5_000, k=2, **kw)


def test_an_undelivered_dm_is_deposited_at_the_k_nearest_mailboxes() -> None:
    d = make_depositor()
    env = dm(ME, BOB, 1)
    d.track(env.id, BOB.peer_id, env.wire, "dm", NOW, until_ms=NOW + 10**9)
    assert d.next_deadline() == NOW + 5_000
    assert d.handle_timer(NOW + 4_999, linked=(), seed_linked=False) == []
    assert d.handle_timer(NOW + 5_000, linked=(), seed_linked=False) == [
        FindMailboxes(BOB.peer_id)
    ]
    # nearest first: Bob himself and peers without the capability are skipped
    found = [*boxes(BOB), *boxes(CAROL, caps=("store",)), *boxes(ALICE, CAROL), (ME.peer_id,
                                                                                  (MAILBOX_CAP,))]
    out = d.on_mailboxes(BOB.peer_id, found)
    assert out == [DepositAt(ALICE.peer_id, env.id, env.wire), DepositAt(CAROL.peer_id, env.id,
                                                                         env.wire)]
    d.on_answer(ALICE.peer_id, env.id, None)
    d.on_answer(CAROL.peer_id, env.id, "quota-sender")
    assert env.id in d and d.refused == {"quota-sender": 1}
    # the next check deposits only where it is not yet held; k places end the tracking
    due = d.next_deadline()
    assert due is not None and NOW + 5_000 + 15_000 <= due <= NOW + 5_000 + 30_000
    assert d.handle_timer(due, linked=(), seed_linked=False) == [FindMailboxes(BOB.peer_id)]
    assert d.on_mailboxes(BOB.peer_id, boxes(ALICE, CAROL)) == [
        DepositAt(CAROL.peer_id, env.id, env.wire)
    ]
    d.on_answer(CAROL.peer_id, env.id, None)
    assert env.id not in d and d.placed == 2


def test_no_deposit_while_the_recipient_or_a_seed_is_linked_and_receipts_settle() -> None:
    d = make_depositor()
    env, receipt = dm(ME, BOB, 1), seal_receipt(ME, recipient=CAROL.peer_id,
                                               ids=[b"\x09" * 32], seq=1, ts=NOW)
    d.track(env.id, BOB.peer_id, env.wire, "dm", NOW, until_ms=NOW + 10**9)
    d.track(receipt.id, CAROL.peer_id, receipt.wire, "receipt", NOW)
    linked = {BOB.peer_id, CAROL.peer_id}
    assert d.handle_timer(NOW + 5_000, linked=linked, seed_linked=False) == []
    assert receipt.id not in d and env.id in d  # a pushed receipt is done; a DM waits
    assert d.handle_timer(NOW + 10**6, linked=(), seed_linked=True) == []  # a seed has it
    d.settle([env.id])  # its receipt came
    assert len(d) == 0 and d.next_deadline() is None


def test_tracking_is_bounded_and_gives_up_at_the_deadline() -> None:
    d = make_depositor(max_tracked=2)
    envs = [dm(ME, BOB, seq) for seq in (1, 2, 3)]
    for env in envs:
        d.track(env.id, BOB.peer_id, env.wire, "dm", NOW, until_ms=NOW + 6_000)
    assert envs[0].id not in d and len(d) == 2 and d.given_up == 1
    assert d.handle_timer(NOW + 6_000, linked=(), seed_linked=False) == []
    assert len(d) == 0 and d.given_up == 3


def test_we_look_for_our_own_mailboxes_at_start_and_then_periodically() -> None:
    d = make_depositor(own_check_ms=60_000)
    d.start(NOW)
    assert d.handle_timer(NOW, linked=(), seed_linked=False) == [FindMailboxes(ME.peer_id)]
    assert d.on_mailboxes(ME.peer_id, boxes(ALICE, BOB, CAROL)) == [
        LinkTo(ALICE.peer_id), LinkTo(BOB.peer_id)
    ]
    due = d.next_deadline()
    assert due is not None and NOW + 48_000 <= due <= NOW + 72_000


def test_lookups_per_step_are_bounded_and_the_rest_come_soon_after() -> None:
    d = make_depositor()
    recipients = [Identity.generate() for _ in range(LOOKUPS_PER_STEP + 8)]
    for i, r in enumerate(recipients):
        env = dm(ME, r, 1, body=str(i))
        d.track(env.id, r.peer_id, env.wire, "dm", NOW, until_ms=NOW + 10**9)
    first = d.handle_timer(NOW + 5_000, linked=(), seed_linked=False)
    assert len(first) == LOOKUPS_PER_STEP
    assert d.next_deadline() == NOW + 6_000
    second = d.handle_timer(NOW + 6_000, linked=(), seed_linked=False)
    assert len(second) == 8 and not {f.recipient for f in first} & {f.recipient for f in second}
