"""Shared by the catch-up tests: an in-memory carrier log and signed envelopes.

``LogSource`` is a small in-memory stand-in for the store's reads, written
from the ``PageSource`` contract (independent of ``store/``). The envelopes
are real ones, signed with fixed identities, so ``check_page`` verifies them
as it would on the wire.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field

from peer.protocols._catchup import (
    Page,
    PageRequest,
    build_page,
    check_page,
)
from peer.wire._envelope import (
    Content,
    Envelope,
    seal_dm,
    seal_message,
)
from peer.wire._frames import decode_frame, encode_frame
from peer.wire._identity import Identity

ALICE = Identity.from_seed(b"\x21" * 32)
BOB = Identity.from_seed(b"\x22" * 32)
CAROL = Identity.from_seed(b"\x23" * 32)
TS = 1_767_225_600_000


# -- an in-memory carrier log ------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    seq: int  # position in the carrier's log of this topic
    sender: bytes
    sender_seq: int
    received_ms: int  # the carrier's clock when it stored the envelope
    wire: bytes


@dataclass(frozen=True)
class Head:
    next_seq: int
    count: int


@dataclass
class LogSource:
    """The store reads ``build_page`` uses, over plain lists (see catchup.md section 2)."""

    logs: dict[str, list[Record]] = field(default_factory=dict)
    next_seqs: dict[str, int] = field(default_factory=dict)
    heads: dict[str, dict[bytes, int]] = field(default_factory=dict)
    ids: set[bytes] = field(default_factory=set)

    def append(self, env: Envelope, received_ms: int) -> Record | None:
        """File ``env`` under its log topic; None for a duplicate (same message id)."""
        if env.id in self.ids:
            return None
        self.ids.add(env.id)
        topic = env.log_topic
        seq = self.next_seqs.get(topic, 1)
        self.next_seqs[topic] = seq + 1
        record = Record(seq, env.sender, env.seq, received_ms, env.wire)
        self.logs.setdefault(topic, []).append(record)
        senders = self.heads.setdefault(topic, {})
        senders[env.sender] = max(senders.get(env.sender, 0), env.seq)
        return record

    def drop_oldest(self, topic: str, count: int) -> None:
        """Retention: remove the oldest records (log numbers and heads stay)."""
        del self.logs[topic][:count]

    def head(self, topic: str) -> Head:
        return Head(self.next_seqs.get(topic, 1), len(self.logs.get(topic, [])))

    def seq_at(self, topic: str, received_ms: int) -> int:
        log = self.logs.get(topic, [])
        if not log:
            return self.next_seqs.get(topic, 1) - 1
        s = log[0].seq - 1
        for record in log:
            if record.received_ms >= received_ms:
                break
            s = record.seq
        return s

    def read(self, topic: str, after: int = 0, limit: int = 100) -> list[Record]:
        log = self.logs.get(topic, [])
        start = bisect.bisect_right([r.seq for r in log], after)
        return log[start : start + limit]

    def read_sender(
        self, topic: str, sender: bytes, first: int, last: int, limit: int = 100
    ) -> list[Record]:
        mine = [
            r
            for r in self.logs.get(topic, [])
            if r.sender == sender and first <= r.sender_seq <= last
        ]
        return sorted(mine, key=lambda r: r.sender_seq)[:limit]

    def sender_heads(self, topic: str, limit: int = 256) -> list[tuple[bytes, int]]:
        return sorted(self.heads.get(topic, {}).items())[:limit]


def msg(who: Identity, seq: int, body: str = "", *, topic: str = "general",
        payload: bytes | None = None) -> Envelope:
    content = Content(body=body or f"{who.peer_id_hex[:4]} #{seq}", payload=payload)
    return seal_message(who, topic=topic, content=content, seq=seq, ts=TS + seq)


def dm(sender: Identity, recipient: Identity, seq: int) -> Envelope:
    return seal_dm(sender, recipient_key=recipient.public_key,
                   content=Content(body=f"dm {seq}"), seq=seq, ts=TS + seq,
                   nonce=bytes([seq]) * 24)


def over_the_wire(request: PageRequest, page: Page) -> tuple[PageRequest, Page]:
    """Both through encode_frame/decode_frame, as a link would carry them."""
    req = decode_frame(encode_frame("cureq", **request.fields()))
    got = decode_frame(encode_frame("cupage", **page.fields()))
    assert isinstance(req, PageRequest) and isinstance(got, Page)
    return req, got


def walk(source: LogSource, request: PageRequest, requester: bytes) -> Iterator[Page]:
    """Every page of a log walk, the requester moving its cursor to ``next``."""
    while True:
        page = build_page(source, request, requester)
        request, page = over_the_wire(request, page)
        check_page(request, page)
        yield page
        if not page.more:
            return
        request = PageRequest(request.r + 1, request.topic, page.next, 0, request.limit)
