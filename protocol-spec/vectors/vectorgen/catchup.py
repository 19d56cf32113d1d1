"""catchup.json: a receipt, push frames, a carrier's logs and cureq/cupage
exchanges; and a chained run of one author's envelopes."""

from __future__ import annotations

from typing import Any, NamedTuple

import cbor2

from peer import (
    Content,
    Identity,
    Push,
    decode_frame,
    encode_frame,
    inbox_topic,
    open_envelope,
    seal_message,
)
from peer.protocols._antientropy import wanted
from peer.protocols._catchup import Page, PageRequest, build_page, check_page
from peer.wire._envelope import (
    MAX_RECEIPT_IDS,
    PRESENCE_TOPIC,
    seal_receipt,
)
from peer.wire._frametypes import Deposit, Deposited, Heads
from peer.wire._limits import (
    MAX_PAGE_BYTES,
    MAX_PAGE_HEADS,
    MAX_PAGE_MESSAGES,
    MAX_REQUEST_ID,
)

from .common import TS0, Json, c, hx, identity_json
from .envelope import envelope_entry

# -- catch-up and DM delivery ----------------------------------------------------------


class LogRecord(NamedTuple):
    """One record of a carrier's log (catchup.md section 2.2)."""

    name: str
    seq: int
    sender: bytes
    sender_seq: int
    received_ms: int
    wire: bytes
    msg_id: bytes


class LogHead:
    """What ``PageSource.head`` returns: the next log number and the records held."""

    def __init__(self, next_seq: int, count: int) -> None:
        self.next_seq = next_seq
        self.count = count


class CarrierLog:
    """A carrier's logs in memory, with the reads ``build_page`` uses."""

    def __init__(self) -> None:
        self.logs: dict[str, list[LogRecord]] = {}

    def add(self, name: str, env: Any, received_ms: int) -> None:
        log = self.logs.setdefault(env.log_topic, [])
        log.append(LogRecord(name, len(log) + 1, env.sender, env.seq, received_ms, env.wire,
                             env.id))

    def head(self, topic: str) -> LogHead:
        log = self.logs.get(topic, [])
        return LogHead(len(log) + 1, len(log))

    def seq_at(self, topic: str, received_ms: int) -> int:
        s = 0
        for record in self.logs.get(topic, []):
            if record.received_ms >= received_ms:
                break
            s = record.seq
        return s

    def read(self, topic: str, after: int = 0, limit: int = 100) -> list[LogRecord]:
        return [r for r in self.logs.get(topic, []) if r.seq > after][:limit]

    def read_sender(self, topic: str, sender: bytes, first: int, last: int,
                    limit: int = 100) -> list[LogRecord]:
        mine = [r for r in self.logs.get(topic, [])
                if r.sender == sender and first <= r.sender_seq <= last]
        return sorted(mine, key=lambda r: (r.sender_seq, r.msg_id))[:limit]

    def sender_heads(self, topic: str, limit: int = 256) -> list[tuple[bytes, int]]:
        heads: dict[bytes, int] = {}
        for r in self.logs.get(topic, []):
            heads[r.sender] = max(heads.get(r.sender, 0), r.sender_seq)
        return sorted(heads.items())[:limit]

    def name_of(self, wire: bytes) -> str:
        return next(r.name for log in self.logs.values() for r in log if r.wire == wire)


def receipt_for(ids: dict[str, Identity], dm_env: Any) -> Any:
    """bob's receipt for alice's DM of dm.json."""
    return seal_receipt(ids["bob"], recipient=ids["alice"].peer_id, ids=[dm_env.id], seq=1,
                        ts=TS0 + 4000)


def carrier_messages(ids: dict[str, Identity], msgs: dict[str, Any]) -> dict[str, Any]:
    """The channel messages of the carrier's log that envelope.json does not have."""
    alice, carol = ids["alice"], ids["carol"]
    return {
        "carol-1": seal_message(carol, topic="general", content=Content(body="hi alice"), seq=1,
                                ts=TS0 + 1000),
        "alice-4": seal_message(alice, topic="general", content=Content(body="anyone there?"),
                                seq=4, ts=TS0 + 5000),
        "carol-random": seal_message(carol, topic="random", content=Content(body="elsewhere"),
                                     seq=1, ts=TS0 + 1200),
        **msgs,
    }


def build_carrier(ids: dict[str, Identity], msgs: dict[str, Any], receipt: Any) -> CarrierLog:
    every = carrier_messages(ids, msgs)
    log = CarrierLog()
    log.add("root", every["root"], TS0 + 40)
    log.add("carol-1", every["carol-1"], TS0 + 1040)
    log.add("reply", every["reply"], TS0 + 1540)
    log.add("alice-4", every["alice-4"], TS0 + 5040)  # alice's number 3 never arrived here
    log.add("receipt", receipt, TS0 + 4040)
    return log


def request_fields(request: PageRequest) -> Json:
    out: Json = dict(request.fields())
    if request.sender is not None:
        out["sender"] = hx(request.sender)
    return out


def build_catchup(ids: dict[str, Identity], msgs: dict[str, Any], dm_env: Any) -> Json:
    alice, bob, carol = ids["alice"], ids["bob"], ids["carol"]
    receipt = receipt_for(ids, dm_env)
    opened = open_envelope(receipt.wire)
    assert opened.fields == receipt.fields and opened.log_topic == inbox_topic(alice.peer_id)
    carrier = build_carrier(ids, msgs, receipt)
    alice_inbox = inbox_topic(alice.peer_id)
    plan: list[tuple[str, Identity, PageRequest, str]] = [
        ("walk-page-1", bob, PageRequest(1, "general", 0, 0, 2),
         "the first page of a walk of general from the start, 2 envelopes a page: more follows"),
        ("walk-page-2", bob, PageRequest(2, "general", 2, 0, 2),
         "the next page, after the cursor 2: the last one, so it carries the heads"),
        ("since", bob, PageRequest(3, "general", 0, TS0 + 1500, MAX_PAGE_MESSAGES),
         "no cursor, since = TS0 + 1500: seq_at gives 2 (records 1 and 2 were received before)"),
        ("sender-range", bob,
         PageRequest(4, "general", 0, 0, MAX_PAGE_MESSAGES, alice.peer_id, 2, 3),
         "alice's numbers 2..3: the carrier has 2 only; a sender range has no heads"),
        ("sender-range-empty", bob,
         PageRequest(5, "general", 0, 0, MAX_PAGE_MESSAGES, alice.peer_id, 3, 3),
         "alice's number 3, which this carrier never received: an empty page, next = last"),
        ("inbox", alice, PageRequest(6, alice_inbox, 0, 0, MAX_PAGE_MESSAGES),
         "alice reads her inbox log: bob's receipt"),
        ("inbox-forbidden", carol, PageRequest(7, alice_inbox, 0, 0, MAX_PAGE_MESSAGES),
         "carol asks for alice's inbox: refused"),
        ("sys-forbidden", bob, PageRequest(8, PRESENCE_TOPIC, 0, 0, MAX_PAGE_MESSAGES),
         "system topics are never served"),
        ("not-carried", bob, PageRequest(9, "random", 5, 0, MAX_PAGE_MESSAGES),
         "a topic this carrier never stored: refused, next is the request's after"),
    ]
    exchanges: list[Json] = []
    for name, requester, request, note in plan:
        cureq = request.encode()
        assert cureq == encode_frame("cureq", **request.fields())
        assert decode_frame(cureq) == request
        page = build_page(carrier, request, requester.peer_id)
        cupage = page.encode()
        assert cupage == encode_frame("cupage", **page.fields())
        decoded = decode_frame(cupage)
        assert isinstance(decoded, Page) and decoded == page
        envs = check_page(request, decoded)
        assert sorted(e.wire for e in envs) == sorted(page.messages)
        exchanges.append({
            "name": name,
            "note": note,
            "requester": requester.peer_id_hex,
            "request": request_fields(request),
            "cureq": hx(cureq),
            "page": {
                "r": page.r,
                "topic": page.topic,
                "m": [carrier.name_of(w) for w in page.messages],
                "message_ids": [hx(open_envelope(w).id) for w in page.messages],
                "next": page.next,
                "more": page.more,
                "heads": [[hx(sender), seq] for sender, seq in page.heads],
                "err": page.err,
            },
            "cupage": hx(cupage),
        })
    chain_doc = build_chain(ids)
    digest_doc = build_digest(ids, carrier)
    mailbox_doc = build_mailbox(ids, dm_env, receipt)
    receipt_entry = envelope_entry("receipt", receipt, None)
    receipt_entry.update({
        "to": hx(alice.peer_id),
        "ids": [hx(dm_env.id)],
        "log_topic": receipt.log_topic,
        "push_frame": hx(Push(receipt.wire).encode()),
    })
    return {
        "description": (
            "Catch-up and DM delivery. receipt: bob tells alice that her DM of dm.json is "
            "stored on his side (topic = the DM's conversation topic, route and log topic = "
            "inbox/<alice>). push: the frames that hand the DM to bob and the receipt to "
            "alice. carrier: one carrier's logs, each record with its log number (seq), "
            "sender, sender sequence number, receive time on the carrier's clock and wire "
            "bytes. exchanges: a cureq frame from the requester (a peer id), the fields of "
            "the page build_page answers with (m by record name) and the cupage frame."
        ),
        "spec": "catchup.md",
        "identities": {name: identity_json(ident) for name, ident in ids.items()},
        "receipt": {"signer": identity_json(bob), **receipt_entry},
        "push": [
            {"name": "dm", "from": alice.peer_id_hex, "to": bob.peer_id_hex,
             "message_id": hx(dm_env.id), "hex": hx(Push(dm_env.wire).encode())},
            {"name": "receipt", "from": bob.peer_id_hex, "to": alice.peer_id_hex,
             "message_id": hx(receipt.id), "hex": receipt_entry["push_frame"]},
        ],
        "carrier": [
            {
                "topic": topic,
                "records": [
                    {"name": r.name, "seq": r.seq, "sender": hx(r.sender),
                     "sender_seq": r.sender_seq, "received_ms": r.received_ms,
                     "message_id": hx(r.msg_id), "wire": hx(r.wire)}
                    for r in records
                ],
            }
            for topic, records in carrier.logs.items()
        ],
        "limits": {"MAX_PAGE_MESSAGES": MAX_PAGE_MESSAGES, "MAX_PAGE_BYTES": MAX_PAGE_BYTES,
                   "MAX_PAGE_HEADS": MAX_PAGE_HEADS, "MAX_REQUEST_ID": MAX_REQUEST_ID,
                   "MAX_RECEIPT_IDS": MAX_RECEIPT_IDS},
        "exchanges": exchanges,
        "digest": digest_doc,
        "chain": chain_doc,
        "mailbox": mailbox_doc,
    }


def build_mailbox(ids: dict[str, Identity], dm_env: Any, receipt: Any) -> Json:
    """Alice deposits her DM to bob with carol (a mailbox peer), and bob his receipt;
    carol's answers: taken, and a refusal."""
    alice, bob, carol = ids["alice"], ids["bob"], ids["carol"]
    return {
        "description": (
            "Mailboxes (catchup.md section 9.6): deposit frames from each envelope's author "
            "to the mailbox peer carol, and carol's deposited answers (no err: taken; err: "
            "refused, the link stays up)."
        ),
        "holder": carol.peer_id_hex,
        "deposits": [
            {"name": "dm", "from": alice.peer_id_hex, "to": bob.peer_id_hex, "r": 1,
             "message_id": hx(dm_env.id), "hex": hx(Deposit(1, dm_env.wire).encode())},
            {"name": "receipt", "from": bob.peer_id_hex, "to": alice.peer_id_hex, "r": 2,
             "message_id": hx(receipt.id), "hex": hx(Deposit(2, receipt.wire).encode())},
        ],
        "answers": [
            {"r": 1, "err": None, "hex": hx(Deposited(1).encode())},
            {"r": 2, "err": "quota-sender", "hex": hx(Deposited(2, "quota-sender").encode())},
        ],
    }


def build_digest(ids: dict[str, Identity], carrier: CarrierLog) -> Json:
    """The carrier's heads frame for general, and what a member that holds alice's 1..2
    and none of carol's does with it (catchup.md section 7.5.2)."""
    alice = ids["alice"]
    heads = carrier.sender_heads("general")
    frame = Heads("general", heads)
    raw = frame.encode()
    assert raw == encode_frame("heads", topic="general", h=[[s, n] for s, n in heads])
    assert decode_frame(raw) == frame
    held = {alice.peer_id: [(1, 2)]}
    member = {hx(s): wanted(held.get(s, []), n, whole=False) for s, n in heads}
    seed = {hx(s): wanted(held.get(s, []), n, whole=True) for s, n in heads}
    return {
        "note": (
            "the carrier's digest of general (its heads: the highest seq it stored of each "
            "sender), and what a receiver holding alice's 1..2 and nothing else asks for by "
            "sender range: a member the missing ranges of the senders it holds some of (a "
            "sender it never heard from gets a log walk instead), a relay-only seed also "
            "1..head of the others"
        ),
        "topic": "general",
        "h": [[hx(s), n] for s, n in heads],
        "hex": hx(raw),
        "receiver_holds": {hx(s): [list(r) for r in rs] for s, rs in held.items()},
        "member_asks": {k: [list(r) for r in v] for k, v in member.items()},
        "seed_asks": {k: [list(r) for r in v] for k, v in seed.items()},
    }


def chained_messages(ident: Identity, topic: str, count: int) -> list[Any]:
    """``count`` messages of ``ident`` in ``topic``, seq 1.., each naming the one before."""
    out: list[Any] = []
    prev: bytes | None = None
    for seq in range(1, count + 1):
        env = seal_message(ident, topic=topic, content=Content(body=f"link {seq}"), seq=seq,
                           ts=TS0 + 10_000 + seq, prev=prev)
        out.append(env)
        prev = env.id
    return out


def unsigned(wire: bytes) -> bytes:
    """An envelope with its signature replaced by 64 zero bytes."""
    signed, _ = cbor2.loads(wire)
    return c([signed, bytes(64)])


def build_chain(ids: dict[str, Identity]) -> Json:
    """catchup.md section 6.3: a run of one author's envelopes costs one signature."""
    alice = ids["alice"]
    run = chained_messages(alice, "chained", 3)
    request = PageRequest(20, "chained", 0, 0, MAX_PAGE_MESSAGES)
    wires = [unsigned(run[0].wire), unsigned(run[1].wire), run[2].wire]
    page = Page(request.r, request.topic, wires, 3, False, [(alice.peer_id, 3)])
    envs = check_page(request, page)
    assert [e.id for e in envs] == [e.id for e in run]
    for env in run:
        assert open_envelope(env.wire).prev == (None if env.seq == 1 else run[env.seq - 2].id)
    return {
        "note": (
            "alice's messages 1..3 of the channel chained, each naming the one before in "
            "prev. In the page, messages 1 and 2 carry 64 zero bytes as signature: 3 is "
            "verified, its prev vouches for 2, and 2's for 1, so the page is accepted with "
            "one signature checked. A vouch counts only between envelopes of the same "
            "author (rejected.json: page-chain-other-author)."
        ),
        "author": alice.peer_id_hex,
        "messages": [
            {"seq": env.seq, "message_id": hx(env.id), "prev": hx(env.prev) if env.prev else None,
             "wire": hx(env.wire)}
            for env in run
        ],
        "request": request_fields(request),
        "cureq": hx(request.encode()),
        "cupage": hx(page.encode()),
        "accepted_ids": [hx(e.id) for e in envs],
        "signatures_verified": 1,
    }
