"""rejected.json, part 3: refused receipts, catch-up frames and pages."""

from __future__ import annotations

from typing import Any

import cbor2

from peer import (
    Content,
    Identity,
    dm_topic,
    encode_frame,
    inbox_topic,
    seal_message,
)
from peer.protocols._catchup import Page, PageRequest
from peer.wire._envelope import (
    MAX_RECEIPT_IDS,
    PRESENCE_TOPIC,
)
from peer.wire._limits import (
    MAX_PAGE_HEADS,
    MAX_PAGE_MESSAGES,
    MAX_REQUEST_ID,
)

from .catchup import carrier_messages, chained_messages, unsigned
from .common import TS0, Json, c, det, hx
from .rejected_wire import sign_fields, sign_signed


def receipt_fields(sender: Identity, recipient: Identity, **extra: Any) -> Json:
    fields: Json = {"v": 1, "kind": "receipt",
                    "topic": dm_topic(sender.peer_id, recipient.peer_id),
                    "from": sender.public_key, "seq": 9, "ts": TS0, "to": recipient.peer_id,
                    "ids": [det("clawmesh/test-vector/receipt-id", 32)]}
    fields.update(extra)
    return {k: v for k, v in fields.items() if v is not None}


def receipt_vectors(ids: dict[str, Identity]) -> list[Json]:
    alice, bob, carol = ids["alice"], ids["bob"], ids["carol"]
    v: list[Json] = []

    def add(name: str, data: bytes, code: str, note: str) -> None:
        v.append({"name": name, "layer": "envelope", "hex": hx(data), "code": code,
                  "note": note})

    some_ids = [det(f"clawmesh/test-vector/receipt-id/{i}", 32) for i in range(65)]
    add("receipt-no-ids", sign_fields(bob, receipt_fields(bob, alice, ids=[])), "malformed",
        "a receipt names at least one message id")
    add("receipt-65-ids", sign_fields(bob, receipt_fields(bob, alice, ids=some_ids)),
        "malformed", f"at most MAX_RECEIPT_IDS = {MAX_RECEIPT_IDS} ids (malformed, not too-large)")
    add("receipt-id-31-bytes",
        sign_fields(bob, receipt_fields(bob, alice, ids=[some_ids[0], bytes(31)])), "malformed",
        "every id is a 32-byte message id")
    add("receipt-ids-not-array", sign_fields(bob, receipt_fields(bob, alice, ids=some_ids[0])),
        "malformed", "ids is an array, even for one id")
    add("receipt-ids-missing", sign_fields(bob, receipt_fields(bob, alice, ids=None)),
        "malformed", "ids is required")
    add("receipt-wrong-topic",
        sign_fields(bob, receipt_fields(bob, alice, topic=dm_topic(bob.peer_id, carol.peer_id))),
        "malformed", "a receipt to alice on the bob/carol conversation topic, validly signed")
    add("receipt-inbox-topic",
        sign_fields(bob, receipt_fields(bob, alice, topic=inbox_topic(alice.peer_id))),
        "malformed", "the inbox is the route, not the topic: topic = dm_topic(from, to)")
    add("receipt-channel-topic", sign_fields(bob, receipt_fields(bob, alice, topic="general")),
        "malformed", "a receipt belongs to a DM conversation topic")
    add("receipt-without-to", sign_fields(bob, receipt_fields(bob, alice, to=None)),
        "malformed", "to is required")
    add("receipt-to-31-bytes", sign_fields(bob, receipt_fields(bob, alice, to=bytes(31))),
        "malformed", "to is a 32-byte peer id")
    add("receipt-with-box", sign_fields(bob, receipt_fields(bob, alice, box=bytes(40))),
        "malformed", "box is a dm field, not a receipt field")
    add("receipt-with-body", sign_fields(bob, receipt_fields(bob, alice, body="ok")),
        "malformed", "a receipt has no content fields")
    add("receipt-signed-by-someone-else",
        sign_signed(carol, c(receipt_fields(bob, alice))), "bad-signature",
        "bob's receipt signed by carol")
    return v


def catchup_frame_vectors(ids: dict[str, Identity]) -> list[Json]:
    alice = ids["alice"]
    v: list[Json] = []

    def add(name: str, data: bytes, code: str, note: str) -> None:
        v.append({"name": name, "layer": "frame", "hex": hx(data), "code": code, "note": note})

    req: Json = {"r": 1, "topic": "general", "after": 0, "since": 0, "limit": 10}
    ranged: Json = {**req, "sender": alice.peer_id, "first": 2, "last": 5}
    page: Json = {"r": 1, "topic": "general", "m": [], "next": 0, "more": False, "heads": []}
    head = [alice.peer_id, 3]

    def drop(fields: Json, key: str) -> Json:
        return {k: val for k, val in fields.items() if k != key}

    add("cureq-limit-0", encode_frame("cureq", **{**req, "limit": 0}), "malformed",
        "a page holds at least one envelope")
    add("cureq-limit-513", encode_frame("cureq", **{**req, "limit": MAX_PAGE_MESSAGES + 1}),
        "malformed", f"limit is at most MAX_PAGE_MESSAGES = {MAX_PAGE_MESSAGES} "
        "(malformed, not too-large)")
    add("cureq-r-2-32", encode_frame("cureq", **{**req, "r": MAX_REQUEST_ID + 1}), "malformed",
        f"r is at most MAX_REQUEST_ID = {MAX_REQUEST_ID}")
    add("cureq-after-negative", encode_frame("cureq", **{**req, "after": -1}), "malformed",
        "after is an unsigned integer")
    add("cureq-since-missing", encode_frame("cureq", **drop(req, "since")), "malformed",
        "since is required (0 for no time bound)")
    add("cureq-sys-like-topic", encode_frame("cureq", **{**req, "topic": "~inbox"}),
        "malformed", "not a topic")
    add("cureq-sender-without-range", encode_frame("cureq", **{**req, "sender": alice.peer_id}),
        "malformed", "sender, first and last come together")
    add("cureq-range-without-sender", encode_frame("cureq", **drop(ranged, "sender")),
        "malformed", "sender, first and last come together")
    add("cureq-first-after-last", encode_frame("cureq", **{**ranged, "first": 6}), "malformed",
        "first <= last")
    add("cureq-sender-31-bytes", encode_frame("cureq", **{**ranged, "sender": bytes(31)}),
        "malformed", "sender is a 32-byte peer id")
    add("cureq-unknown-field", encode_frame("cureq", **{**req, "until": 9}), "malformed",
        "no field until")
    add("cupage-513-messages",
        encode_frame("cupage", **{**page, "m": [b""] * (MAX_PAGE_MESSAGES + 1)}), "too-large",
        f"m has at most MAX_PAGE_MESSAGES = {MAX_PAGE_MESSAGES} entries")
    add("cupage-message-text", encode_frame("cupage", **{**page, "m": ["82"]}), "malformed",
        "m holds envelopes as byte strings")
    add("cupage-more-integer", encode_frame("cupage", **{**page, "more": 1}), "malformed",
        "more is true or false")
    add("cupage-heads-missing", encode_frame("cupage", **drop(page, "heads")), "malformed",
        "heads is required (empty but on the last page of a walk)")
    add("cupage-head-not-pair", encode_frame("cupage", **{**page, "heads": [[alice.peer_id]]}),
        "malformed", "a head is [peer id, seq]")
    add("cupage-head-short-id",
        encode_frame("cupage", **{**page, "heads": [[alice.peer_id[:31], 3]]}), "malformed",
        "a head's sender is a 32-byte peer id")
    add("cupage-head-negative", encode_frame("cupage", **{**page, "heads": [[alice.peer_id, -1]]}),
        "malformed", "a head's seq is an unsigned integer")
    add("cupage-257-heads",
        encode_frame("cupage", **{**page, "heads": [head] * (MAX_PAGE_HEADS + 1)}), "too-large",
        f"at most MAX_PAGE_HEADS = {MAX_PAGE_HEADS} heads")
    add("cupage-err-33-bytes", encode_frame("cupage", **{**page, "err": "e" * 33}), "too-large",
        "err is at most 32 UTF-8 bytes")
    add("cupage-err-not-text", encode_frame("cupage", **{**page, "err": 1}), "malformed",
        "err is text")
    add("cupage-r-2-32", encode_frame("cupage", **{**page, "r": MAX_REQUEST_ID + 1}),
        "malformed", f"r is at most MAX_REQUEST_ID = {MAX_REQUEST_ID}")
    digest: Json = {"topic": "general", "h": [head]}
    add("heads-257", encode_frame("heads", **{**digest, "h": [head] * (MAX_PAGE_HEADS + 1)}),
        "too-large", f"h has at most MAX_PAGE_HEADS = {MAX_PAGE_HEADS} pairs")
    add("heads-h-missing", encode_frame("heads", **drop(digest, "h")), "malformed",
        "h is required (it may be empty)")
    add("heads-head-short-id", encode_frame("heads", **{**digest, "h": [[alice.peer_id[:31], 3]]}),
        "malformed", "a head's sender is a 32-byte peer id")
    add("heads-more-integer", encode_frame("heads", **{**digest, "more": 1}), "malformed",
        "more is true or false")
    add("heads-dm-like-topic", encode_frame("heads", **{**digest, "topic": "~inbox"}),
        "malformed", "not a topic")
    add("heads-unknown-field", encode_frame("heads", **{**digest, "r": 1}), "malformed",
        "heads has the fields t, topic, h and more only")
    add("push-envelope-text", c({"t": "push", "e": "00"}), "malformed",
        "e must be a byte string")
    add("push-unknown-field", c({"t": "push", "e": b"", "to": alice.peer_id}), "malformed",
        "push has the fields t and e only")
    add("deposit-r-too-large", c({"t": "deposit", "r": MAX_REQUEST_ID + 1, "e": b""}),
        "malformed", "r is at most MAX_REQUEST_ID")
    add("deposit-r-missing", c({"t": "deposit", "e": b""}), "malformed", "r is required")
    add("deposit-envelope-text", c({"t": "deposit", "r": 1, "e": "00"}), "malformed",
        "e must be a byte string")
    add("deposited-err-long", c({"t": "deposited", "r": 1, "err": "q" * 33}), "too-large",
        "a refusal reason is at most 32 bytes")
    add("deposited-unknown-field", c({"t": "deposited", "r": 1, "ok": True}), "malformed",
        "deposited has the fields t, r and err only")
    return v


def page_vectors(ids: dict[str, Identity], msgs: dict[str, Any], dm_env: Any) -> list[Json]:
    alice, carol = ids["alice"], ids["carol"]
    every = carrier_messages(ids, msgs)
    root, carol1, reply = every["root"], every["carol-1"], every["reply"]
    signed, sig = cbor2.loads(root.wire)
    flipped = bytearray(sig)
    flipped[5] ^= 0x10
    forged = c([signed, bytes(flipped)])
    walk = PageRequest(1, "general", 0, 0, 2)
    resume = PageRequest(2, "general", 2, 0, 2)
    ranged = PageRequest(4, "general", 0, 0, MAX_PAGE_MESSAGES, alice.peer_id, 2, 3)
    inbox = PageRequest(6, inbox_topic(alice.peer_id), 0, 0, MAX_PAGE_MESSAGES)
    presence = PageRequest(8, PRESENCE_TOPIC, 0, 0, MAX_PAGE_MESSAGES)
    v: list[Json] = []

    def add(name: str, request: PageRequest, page: Page, code: str, note: str) -> None:
        v.append({"name": name, "layer": "page",
                  "request": hx(request.encode()),
                  "hex": hx(page.encode()), "code": code,
                  "note": note})

    def good(request: PageRequest, wires: list[bytes], nxt: int, **kw: Any) -> Page:
        fields: Json = {"r": request.r, "topic": request.topic, "messages": wires,
                        "next": nxt, "more": False, "heads": []}
        fields.update(kw)
        return Page(**fields)

    add("page-for-another-request", walk, good(walk, [root.wire, carol1.wire], 2, r=2),
        "unexpected", "the page of catchup.json's walk-page-1 with r = 2")
    add("page-for-another-topic", walk, good(walk, [], 0, topic="random"), "unexpected",
        "a page whose topic is not the request's")
    add("page-foreign-topic-envelope", walk,
        good(walk, [root.wire, every["carol-random"].wire], 2), "malformed",
        "a message of the channel random in a page of general")
    add("page-dm-in-channel", walk, good(walk, [dm_env.wire], 1), "malformed",
        "a DM's log topic is its recipient's inbox, not a channel")
    add("page-dm-of-another-inbox", inbox, good(inbox, [dm_env.wire], 1), "malformed",
        "alice asked for her inbox; the DM of dm.json is in bob's")
    add("page-presence", presence, good(presence, [msgs["presence"].wire], 1), "malformed",
        "presence is never stored, so never served")
    add("page-bad-signature", walk, good(walk, [forged], 1), "bad-signature",
        "alice's root message with one signature bit flipped")
    add("page-envelope-not-cbor", walk, good(walk, [b"\xff"], 1), "malformed",
        "an element of m that is not an envelope")
    add("page-outside-sender-range", ranged, good(ranged, [root.wire], 1), "malformed",
        "alice's number 1 in answer to a request for her numbers 2..3")
    add("page-other-sender", ranged, good(ranged, [reply.wire, carol1.wire], 2), "malformed",
        "carol's message in answer to a request for alice's numbers")
    add("page-over-limit", walk, good(walk, [root.wire, carol1.wire, reply.wire], 3, more=True),
        "too-large", "three envelopes for a request with limit 2")
    add("page-cursor-does-not-advance", resume, good(resume, [reply.wire], 2), "malformed",
        "envelopes, but next is not after the request's after (2)")
    run = chained_messages(alice, "chained", 2)
    chained = PageRequest(21, "chained", 0, 0, MAX_PAGE_MESSAGES)
    add("page-chain-head-forged", chained,
        good(chained, [run[0].wire, unsigned(run[1].wire)], 2), "bad-signature",
        "alice's chained 1 and 2 (catchup.json chain) with 2's signature zeroed: "
        "nothing vouches for the newest")
    carols = seal_message(carol, topic="chained", content=Content(body="vouching"), seq=2,
                          ts=TS0 + 10_100, prev=run[0].id)
    add("page-chain-other-author", chained,
        good(chained, [unsigned(run[0].wire), carols.wire], 2), "bad-signature",
        "carol's valid message 2 names alice's message 1 as prev; a vouch counts only "
        "within one author, so alice's 1 (signature zeroed) must verify, and does not")
    add("page-refusal-with-messages", walk,
        good(walk, [root.wire], 0, err="not-carried"), "malformed",
        "a refusal carries no envelopes")
    add("page-refusal-with-more", walk, good(walk, [], 0, more=True, err="busy"), "malformed",
        "a refusal has more = false")
    return v
