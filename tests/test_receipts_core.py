"""The sans-IO parts of message semantics (peer.protocols._receipts) and the
meta map (peer.wire._meta), stepped in virtual time (``now_ms`` passed in)."""

from __future__ import annotations

import pytest

from peer import Identity
from peer.protocols._receipts import AckPlanner, ExpiryWatch, IdempotencyKeys, ReceiptBook
from peer.wire._envelope import Content, open_dm, open_envelope, seal_dm, seal_message
from peer.wire._errors import ProtocolError
from peer.wire._meta import MAX_ACK_IDS, Meta, check_meta, meta_json

A, B, C = (bytes([i]) * 32 for i in (1, 2, 3))
ID1, ID2 = b"\x11" * 32, b"\x22" * 32


def test_only_the_recipient_signs_and_the_first_proof_is_kept() -> None:
    book = ReceiptBook()
    book.track(ID1, B, now_ms=1000)
    assert book.record(C, "stored", [ID1], b"forged", 1100) == []  # not its recipient
    assert book.record(B, "stored", [ID1, b"\x99" * 32], b"w1", 1200)[0].msg_id == ID1
    assert book.record(B, "stored", [ID1], b"w2", 1300) == []  # once
    assert book.record(B, "bogus", [ID1], b"w3", 1300) == []
    entry = book.get(ID1)
    assert entry is not None and entry.states == {"stored": (1200, b"w1")}
    book.record(B, "read", [ID1], b"w4", 1400)
    assert entry.latest() == "read"
    book.record(B, "delivered", [ID1], b"w5", 1500)  # late, out of order: still recorded
    assert entry.latest() == "read" and set(entry.states) == {"stored", "delivered", "read"}


def test_receipt_book_is_bounded_oldest_first() -> None:
    book = ReceiptBook(capacity=3)
    for i in range(5):
        book.track(bytes([i]) * 32, B, i)
    assert len(book) == 3 and book.get(bytes([0]) * 32) is None
    assert book.get(bytes([4]) * 32) is not None


def test_acks_wait_their_delay_batch_and_are_owed_once() -> None:
    acks = AckPlanner(delay_ms=100)
    assert acks.next_deadline() is None
    for i in range(MAX_ACK_IDS + 6):
        assert acks.owe(A, "read", i.to_bytes(32, "big"), now_ms=1000 + i)
    assert not acks.owe(A, "read", (0).to_bytes(32, "big"), 2000)  # owed before
    assert acks.owe(B, "delivered", ID1, 1005)
    assert acks.next_deadline() == 1100
    assert acks.due(1099) == []
    due = acks.due(1100)
    assert [(s, st, len(ids)) for s, st, ids in due] == [
        (A, "read", MAX_ACK_IDS), (A, "read", 6), (B, "delivered", 1)]
    assert acks.due(5000) == [] and acks.next_deadline() is None


def test_an_idempotency_key_belongs_to_its_first_message_per_sender() -> None:
    keys = IdempotencyKeys(capacity=2)
    assert keys.claim(A, "k", ID1)
    assert keys.claim(A, "k", ID1)  # the same message again: still its key
    assert not keys.claim(A, "k", ID2)
    assert keys.claim(B, "k", ID2)  # scoped to the sender (and we are the recipient)
    assert keys.first(A, "k") == ID1
    keys.claim(C, "k", ID1)
    assert keys.first(A, "k") is None and len(keys) == 2  # bounded, oldest out


def test_expiry_watch_hands_out_in_time_order() -> None:
    watch = ExpiryWatch()
    watch.add(ID2, 2000)
    watch.add(ID1, 1000)
    assert watch.next_deadline() == 1000
    assert watch.due(999) == []
    assert watch.due(2000) == [ID1, ID2]
    assert watch.next_deadline() is None


def test_meta_round_trips_through_an_encrypted_dm() -> None:
    alice, bob = Identity.from_seed(b"a" * 32), Identity.from_seed(b"b" * 32)
    meta = Meta(kind="request", corr=b"\x01\x02", conv=b"\x03", reply_context=b"ctx",
                priority=3, expires_ms=5000, idem="key", round=2)
    env = seal_dm(alice, recipient_key=bob.public_key, content=Content("q", meta=meta), seq=1,
                  ts=1)
    opened = open_dm(bob, open_envelope(env.wire))
    assert opened.meta == meta and opened.meta.expired(5000) and not meta.expired(4999)
    view = meta_json(meta)
    assert view["priority"] == "urgent" and view["correlation_id"] == "0102"
    assert view["reply_context"] == "ctx" and view["round"] == 2
    ack = Meta(kind="ack", state="read", ids=(ID1,))
    assert check_meta(ack.to_map()) == ack
    with pytest.raises(ValueError):
        seal_message(alice, topic="general", content=Content("x", meta=meta), seq=1, ts=1)


def test_bad_meta_is_refused_when_sealing() -> None:
    alice, bob = Identity.from_seed(b"a" * 32), Identity.from_seed(b"b" * 32)
    bad = Meta(kind="ack", state="read", ids=())  # an ack names ids
    with pytest.raises(ProtocolError):
        seal_dm(alice, recipient_key=bob.public_key, content=Content("", meta=bad), seq=1, ts=1)
