"""Catch-up, sans-IO: what a carrier answers, and how a returning peer checks it.

protocol-spec/catchup.md is the contract. A returning peer sends ``cureq``
for one topic to a carrier: "what follows ``after`` in your log, or what you
received since ``since``" (or, to fill a gap, "sender X's sequence numbers
``first..last``"). The carrier answers with one ``cupage`` of envelopes in its
log order; ``next`` is the cursor to ask from for the following page and
``more`` says whether there is one. The last page of a log walk carries the
carrier's highest sequence number per sender (``heads``), which is how the
returning peer finds what it is still missing and asks elsewhere.

Rules kept here:

* No trio, no sockets, no lmdb: :func:`build_page` runs on anything with the
  ``PageSource`` reads (a ``store.MessageStore`` in a reader thread), and
  :func:`check_page` and :func:`missing_ranges` are pure.
* A page is bounded in envelopes and bytes; one envelope larger than the byte
  bound still goes, alone, so a log walk always advances.
* A peer's inbox log (``inbox/<id>``, its DMs and receipts) is served to that
  peer only.
* Every envelope in a page is checked like one from gossip (fields, and
  authorship: its signature, or a later envelope of its author in the page
  whose ``prev`` names it) and must belong to the requested topic (and
  sender range), or the whole page is refused; the envelope's age is not
  checked, catch-up is for old messages.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Protocol

from peer.wire._envelope import (
    Envelope,
    check_signature,
    inbox_topic,
    message_id,
    split_wire,
)
from peer.wire._errors import ErrorCode, ProtocolError
from peer.wire._frametypes import CuPage, CuReq
from peer.wire._limits import MAX_PAGE_BYTES, MAX_PAGE_HEADS, MAX_PAGE_MESSAGES
from peer.wire._openmany import open_many

NOT_CARRIED = "not-carried"
FORBIDDEN = "forbidden"
BUSY = "busy"
ERRORS = frozenset({NOT_CARRIED, FORBIDDEN, BUSY})


Stored = Callable[[str, list[tuple[bytes, int, bytes]]], Collection[bytes]]
"""``MessageStore.held_in``: which of (sender, seq, id), all of one topic, are stored."""


class _Head(Protocol):
    @property
    def next_seq(self) -> int: ...
    @property
    def count(self) -> int: ...


class _Stored(Protocol):
    @property
    def seq(self) -> int: ...
    @property
    def sender_seq(self) -> int: ...
    @property
    def wire(self) -> bytes: ...


class PageSource(Protocol):
    """The store reads a carrier needs (``store.MessageStore`` has them)."""

    def head(self, topic: str) -> _Head: ...
    def seq_at(self, topic: str, received_ms: int) -> int: ...
    def read(self, topic: str, after: int = 0, limit: int = 100) -> Sequence[_Stored]: ...
    def read_sender(
        self, topic: str, sender: bytes, first: int, last: int, limit: int = 100
    ) -> Sequence[_Stored]: ...
    def sender_heads(self, topic: str, limit: int = 256) -> list[tuple[bytes, int]]: ...


# The fields of a ``cureq`` and a ``cupage`` frame: the frame classes themselves.
PageRequest = CuReq
Page = CuPage


def refusal(request: PageRequest, err: str) -> Page:
    return Page(request.r, request.topic, [], request.after, False, [], err)


def may_serve(topic: str, requester: bytes) -> bool:
    """Inbox logs go to their owner only; system topics are never stored."""
    if topic.startswith("inbox/"):
        return topic == inbox_topic(requester)
    return not topic.startswith("sys/")


def _fill(records: Sequence[_Stored]) -> list[_Stored]:
    """The longest prefix of ``records`` within the page's byte bound (at least one)."""
    out: list[_Stored] = []
    size = 0
    for record in records:
        size += len(record.wire)
        if out and size > MAX_PAGE_BYTES:
            break
        out.append(record)
    return out


def build_page(source: PageSource, request: PageRequest, requester: bytes) -> Page:
    """The carrier's answer to ``request`` from ``requester``."""
    topic = request.topic
    if not may_serve(topic, requester):
        return refusal(request, FORBIDDEN)
    head = source.head(topic)
    if head.next_seq <= 1:
        return refusal(request, NOT_CARRIED)
    limit = min(request.limit, MAX_PAGE_MESSAGES)
    if request.sender is not None:
        read = source.read_sender(topic, request.sender, request.first, request.last, limit)
        records = _fill(read)
        nxt = records[-1].sender_seq if records else request.last
        more = nxt < request.last and (len(records) < len(read) or len(read) == limit)
        return Page(request.r, topic, [r.wire for r in records], nxt, more, [])
    start = request.after
    if request.since:
        start = max(start, source.seq_at(topic, request.since))
    last = head.next_seq - 1
    records = _fill(source.read(topic, after=start, limit=limit)) if start < last else []
    nxt = records[-1].seq if records else max(start, last)
    more = nxt < last
    heads = [] if more else source.sender_heads(topic, MAX_PAGE_HEADS)
    return Page(request.r, topic, [r.wire for r in records], nxt, more, heads)


def check_page(
    request: PageRequest,
    page: Page,
    *,
    verify: bool = True,
    known: Callable[[list[bytes]], Collection[bytes]] | None = None,
    stored: Stored | None = None,
) -> list[Envelope]:
    """The envelopes of ``page``, each verified and inside what was asked, in
    (sender, sequence) order within the page.

    Raises ProtocolError (and nothing else) for a page that does not answer
    ``request`` or holds anything that does not belong to it. ``known`` is
    given the ids of the page at once and returns those already stored;
    their envelopes are left out unverified: a message is verified once.
    ``stored`` (``MessageStore.held_in``), when given, is asked instead once
    every envelope of the page has opened, by topic, sender and seq (no look
    into the id index for a seq never seen); a page that fails any check that
    way is checked again the general way, with ``known``, so what is refused,
    and what is left out unchecked, is exactly what ``known`` alone gives.
    """
    if page.r != request.r or page.topic != request.topic:
        raise ProtocolError(ErrorCode.UNEXPECTED, "page does not answer the request")
    if page.err is not None:
        if page.messages or page.more:
            raise ProtocolError(ErrorCode.MALFORMED, "a refusal carries no messages")
        return []
    if len(page.messages) > request.limit:
        raise ProtocolError(ErrorCode.TOO_LARGE, "page over the requested limit")
    if request.sender is None and page.messages and page.next <= request.after:
        raise ProtocolError(ErrorCode.MALFORMED, "page cursor does not advance")
    split = [split_wire(wire) for wire in page.messages]
    ids = [message_id(signed) for signed, _ in split]
    if stored is not None and ids:
        with contextlib.suppress(ProtocolError):  # the general path says what is wrong
            return _check_opened(request, page, split, ids, stored, verify)
    held = known(ids) if known is not None and ids else ()
    fresh = [i for i in range(len(split)) if ids[i] not in held] if held else range(len(split))
    parts = [split[i] for i in fresh]
    envelopes = open_many([page.messages[i] for i in fresh], parts, [ids[i] for i in fresh])
    return _accepted(request, envelopes, parts, verify)


def _check_opened(
    request: PageRequest,
    page: Page,
    split: list[tuple[bytes, bytes]],
    ids: list[bytes],
    stored: Stored,
    verify: bool,
) -> list[Envelope]:
    """``check_page`` with every envelope opened first, then what is stored left out."""
    envelopes = list(open_many(page.messages, split, ids))
    held = stored(request.topic, [(env.sender, env.seq, env.id) for env in envelopes])
    if held:
        fresh = [i for i, env in enumerate(envelopes) if env.id not in held]
        envelopes = [envelopes[i] for i in fresh]
        split = [split[i] for i in fresh]
    return _accepted(request, envelopes, split, verify)


def _accepted(
    request: PageRequest,
    envelopes: Iterable[Envelope],
    parts: Sequence[tuple[bytes, bytes]],
    verify: bool,
) -> list[Envelope]:
    """The checks of each envelope not stored yet, their authorship, the page order."""
    opened: list[tuple[Envelope, bytes, bytes]] = []
    for env, (signed, sig) in zip(envelopes, parts, strict=True):
        if env.kind == "presence" or env.log_topic != request.topic:
            raise ProtocolError(ErrorCode.MALFORMED, "page holds a message of another topic")
        if request.sender is not None and (
            env.sender != request.sender or not request.first <= env.seq <= request.last
        ):
            raise ProtocolError(ErrorCode.MALFORMED, "page holds a message outside the range")
        opened.append((env, signed, sig))
    if verify:
        authenticate(opened)
    out = [env for env, _, _ in opened]
    out.sort(key=lambda e: (e.sender, e.seq))  # undo reordering on the carrier's way in
    return out


def authenticate(opened: Sequence[tuple[Envelope, bytes, bytes]]) -> int:
    """Check that every ``(envelope, signed, sig)`` is its author's; returns the
    number of signatures verified.

    An author's envelope names the id of its previous one in the log topic
    (``prev``). When an authentic envelope of the same author in the page
    names an envelope's id, that envelope is authentic too: the author's
    signature covers ``prev``, and the id is a hash of the signed bytes,
    ``from`` included. So a run of an author's envelopes costs one signature
    (the newest), checked first by going from the highest ``seq`` down; any
    envelope nothing vouches for has its signature verified. Raises
    ProtocolError ``bad-signature``.
    """
    vouched: set[tuple[bytes, bytes]] = set()
    verified = 0
    for env, signed, sig in sorted(opened, key=lambda o: o[0].seq, reverse=True):
        if (env.sender_key, env.id) not in vouched:
            check_signature(env.sender_key, signed, sig)
            verified += 1
        prev = env.prev
        if prev is not None:
            vouched.add((env.sender_key, prev))
    return verified


def missing_ranges(have: Sequence[tuple[int, int]], head: int) -> list[tuple[int, int]]:
    """Sequence ranges of one sender missing from ``have`` (sorted inclusive ranges)
    up to ``head``. Nothing before the first range counts: that is before we
    followed the sender."""
    if not have:
        return []
    out: list[tuple[int, int]] = []
    prev_end = have[0][1]
    for start, end in have[1:]:
        if start > prev_end + 1:
            out.append((prev_end + 1, min(start - 1, head)))
        prev_end = max(prev_end, end)
    if head > prev_end:
        out.append((prev_end + 1, head))
    return [(a, b) for a, b in out if a <= b]
