"""Catch-up and DM delivery vectors (catchup.json): receipts, push frames,
cureq/cupage exchanges rebuilt by ``build_page`` from the carrier log the
vectors list (read through a small in-memory source written here from
catchup.md), and a chained run of envelopes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cbor2
import pytest

from peer import (
    Identity,
    decode_frame,
    encode_frame,
    message_id,
    open_envelope,
)
from peer.protocols._catchup import Page, PageRequest, authenticate, build_page, check_page
from peer.wire import _cbor, _limits
from peer.wire._envelope import MAX_RECEIPT_IDS, seal_receipt
from tests._vectors import (
    DM_TOPIC_TAG,
    ENVELOPE_TAG,
    MSG_ID_TAG,
    PEER_ID_TAG,
    Json,
    check_envelope_bytes,
    h,
    load,
    verify,
)

# -- catch-up and DM delivery ---------------------------------------------------------------


def test_receipt() -> None:
    doc = load("catchup.json")
    entry = doc["receipt"]
    dm = load("dm.json")
    signer = Identity.from_seed(h(entry["signer"]["seed"]))
    alice = Identity.from_seed(h(doc["identities"]["alice"]["seed"]))
    assert signer.peer_id == h(dm["recipient"]["peer_id"])  # bob receipts the DM he received
    assert h(entry["to"]) == alice.peer_id == h(dm["sender"]["peer_id"])
    assert entry["ids"] == [dm["message_id"]]
    ids = [h(i) for i in entry["ids"]]
    env = seal_receipt(signer, recipient=alice.peer_id, ids=ids, seq=entry["seq"],
                       ts=entry["ts"])
    assert env.wire == h(entry["wire"])
    # the topic is the DMs' conversation topic; route and log topic are alice's inbox
    lo, hi = sorted((signer.peer_id, alice.peer_id))
    assert entry["topic"] == "dm/" + hashlib.sha256(DM_TOPIC_TAG + lo + hi).hexdigest()
    assert entry["topic"] == dm["dm_topic"]
    assert entry["route"] == entry["log_topic"] == "inbox/" + alice.peer_id.hex()
    assert env.log_topic == env.route == entry["route"]
    assert env.fields == {"v": 1, "kind": "receipt", "topic": entry["topic"],
                          "from": signer.public_key, "seq": entry["seq"], "ts": entry["ts"],
                          "to": alice.peer_id, "ids": ids}
    # the signed map's keys in the canonical order envelope.md gives
    signed = h(entry["signed"])
    assert list(_cbor.decode(signed)) == ["v", "to", "ts", "ids", "seq", "from", "kind", "topic"]
    check_envelope_bytes({**entry, "kind": "receipt"}, signer.public_key)
    assert h(entry["push_frame"]) == encode_frame("push", e=env.wire)
    assert decode_frame(h(entry["push_frame"])).to_map() == {"t": "push", "e": env.wire}


def test_push_frames() -> None:
    doc = load("catchup.json")
    names = [p["name"] for p in doc["push"]]
    assert names == ["dm", "receipt"]
    for push in doc["push"]:
        frame = decode_frame(h(push["hex"]))
        assert frame.TYPE == "push" and set(frame.to_map()) == {"t", "e"}
        env = open_envelope(frame.to_map()["e"])
        assert env.kind == push["name"]
        assert env.id == h(push["message_id"])
        assert env.sender == h(push["from"]) and env.recipient == h(push["to"])
        assert env.route == "inbox/" + push["to"]
    assert decode_frame(h(doc["push"][0]["hex"])).to_map()["e"] == h(load("dm.json")["wire"])


@dataclass(frozen=True)
class _Record:
    seq: int
    sender: bytes
    sender_seq: int
    received_ms: int
    wire: bytes
    msg_id: bytes


@dataclass(frozen=True)
class _Head:
    next_seq: int
    count: int


class _Carrier:
    """The carrier of catchup.json: its logs, read the way catchup.md section 5 says."""

    def __init__(self, doc: Json) -> None:
        self.logs: dict[str, list[_Record]] = {}
        for log in doc["carrier"]:
            records = [
                _Record(r["seq"], h(r["sender"]), r["sender_seq"], r["received_ms"],
                        h(r["wire"]), h(r["message_id"]))
                for r in log["records"]
            ]
            assert [r.seq for r in records] == list(range(1, len(records) + 1))
            times = [r.received_ms for r in records]
            assert times == sorted(times)  # stored in receive order
            for record in records:  # each record is what it says it is
                env = open_envelope(record.wire)
                assert env.id == record.msg_id == message_id(_cbor.decode(record.wire)[0])
                assert env.log_topic == log["topic"]
                assert (env.sender, env.seq) == (record.sender, record.sender_seq)
            self.logs[log["topic"]] = records

    def head(self, topic: str) -> _Head:
        log = self.logs.get(topic, [])
        return _Head(len(log) + 1, len(log))

    def seq_at(self, topic: str, received_ms: int) -> int:
        before = [r.seq for r in self.logs.get(topic, []) if r.received_ms < received_ms]
        return max(before, default=0)

    def read(self, topic: str, after: int = 0, limit: int = 100) -> list[_Record]:
        return [r for r in self.logs.get(topic, []) if r.seq > after][:limit]

    def read_sender(
        self, topic: str, sender: bytes, first: int, last: int, limit: int = 100
    ) -> list[_Record]:
        mine = [r for r in self.logs.get(topic, [])
                if r.sender == sender and first <= r.sender_seq <= last]
        return sorted(mine, key=lambda r: (r.sender_seq, r.msg_id))[:limit]

    def sender_heads(self, topic: str, limit: int = 256) -> list[tuple[bytes, int]]:
        heads: dict[bytes, int] = {}
        for r in self.logs.get(topic, []):
            heads[r.sender] = max(heads.get(r.sender, 0), r.sender_seq)
        return sorted(heads.items())[:limit]


def test_catchup_limits() -> None:
    limits = load("catchup.json")["limits"]
    assert limits == {
        "MAX_PAGE_MESSAGES": _limits.MAX_PAGE_MESSAGES,
        "MAX_PAGE_BYTES": _limits.MAX_PAGE_BYTES,
        "MAX_PAGE_HEADS": _limits.MAX_PAGE_HEADS,
        "MAX_REQUEST_ID": _limits.MAX_REQUEST_ID,
        "MAX_RECEIPT_IDS": MAX_RECEIPT_IDS,
    }


@pytest.mark.parametrize("exchange", load("catchup.json")["exchanges"], ids=lambda e: e["name"])
def test_catchup_exchange(exchange: Json) -> None:
    carrier = _Carrier(load("catchup.json"))
    by_name = {r["name"]: h(r["wire"]) for log in load("catchup.json")["carrier"]
               for r in log["records"]}
    # the request, field by field, and as the code reads and writes it
    cureq = decode_frame(h(exchange["cureq"]))
    assert cureq.TYPE == "cureq"
    want = dict(exchange["request"])
    if "sender" in want:
        want["sender"] = h(want["sender"])
    assert cureq.to_map() == {"t": "cureq", **want}
    request = PageRequest.from_fields(cureq.to_map())
    assert encode_frame("cureq", **request.fields()) == h(exchange["cureq"])
    # the page, field by field
    spec = exchange["page"]
    cupage = decode_frame(h(exchange["cupage"]))
    assert cupage.TYPE == "cupage"
    fields: Json = {"t": "cupage", "r": spec["r"], "topic": spec["topic"],
                    "m": [by_name[n] for n in spec["m"]], "next": spec["next"],
                    "more": spec["more"], "heads": [[h(s), n] for s, n in spec["heads"]]}
    if spec["err"] is not None:
        fields["err"] = spec["err"]
    assert cupage.to_map() == fields
    # build_page over the listed log answers with exactly these bytes
    page = build_page(carrier, request, h(exchange["requester"]))
    assert encode_frame("cupage", **page.fields()) == h(exchange["cupage"])
    # and the requester accepts it (the reference hands the envelopes on in
    # (sender, seq) order, so compare them as a set)
    assert [message_id(_cbor.decode(w)[0]).hex() for w in fields["m"]] == spec["message_ids"]
    envs = check_page(request, Page.from_fields(cupage.to_map()))
    assert sorted(e.id.hex() for e in envs) == sorted(spec["message_ids"])
    # the rules of catchup.md section 5, recomputed from the log
    log = carrier.logs.get(request.topic, [])
    assert (spec["r"], spec["topic"]) == (request.r, request.topic)
    if spec["err"] is not None:
        assert spec["err"] in {"not-carried", "forbidden", "busy"}
        assert (spec["m"], spec["next"], spec["more"], spec["heads"]) == (
            [], request.after, False, [])
        return
    seq_of = {r.wire: r.seq for r in log}
    if request.sender is None:
        start = request.after
        if request.since:
            start = max(start, max((r.seq for r in log if r.received_ms < request.since),
                                   default=0))
        expected = [r.wire for r in log if r.seq > start][: request.limit]
        assert fields["m"] == expected
        assert spec["next"] == (seq_of[expected[-1]] if expected else max(start, len(log)))
        assert spec["more"] == (spec["next"] < len(log))
        heads = sorted({(r.sender, max(x.sender_seq for x in log if x.sender == r.sender))
                        for r in log})
        assert [(h(s), n) for s, n in spec["heads"]] == ([] if spec["more"] else heads)
    else:
        for env in envs:
            assert env.sender == request.sender
            assert request.first <= env.seq <= request.last
        seqs = [open_envelope(w).seq for w in fields["m"]]
        assert seqs == sorted(seqs)
        assert spec["heads"] == []
        assert spec["next"] == (seqs[-1] if seqs else request.last)


def test_catchup_chain() -> None:
    """catchup.md 6.3: each message names the one before; a page of the run is
    accepted with the newest signature alone (the others are zeroed)."""
    doc = load("catchup.json")["chain"]
    author = h(doc["author"])
    prev = None
    for i, entry in enumerate(doc["messages"], start=1):
        wire = h(entry["wire"])
        signed, sig = cbor2.loads(wire)
        fields = cbor2.loads(signed)
        assert fields["seq"] == entry["seq"] == i
        assert hashlib.sha256(MSG_ID_TAG + signed).digest() == h(entry["message_id"])
        assert fields.get("prev") == prev == (h(entry["prev"]) if entry["prev"] else None)
        verify(fields["from"], ENVELOPE_TAG + signed, sig)
        assert hashlib.sha256(PEER_ID_TAG + fields["from"]).digest() == author
        prev = h(entry["message_id"])
    cupage = decode_frame(h(doc["cupage"]))
    sigs = [cbor2.loads(w)[1] for w in cupage.to_map()["m"]]
    assert sigs[:-1] == [bytes(64)] * (len(sigs) - 1) and sigs[-1] != bytes(64)
    request = PageRequest.from_fields(decode_frame(h(doc["cureq"])).to_map())
    envs = check_page(request, Page.from_fields(cupage.to_map()))
    assert [e.id.hex() for e in envs] == doc["accepted_ids"]
    opened = [(open_envelope(w, verify=False), *cbor2.loads(w)) for w in cupage.to_map()["m"]]
    assert authenticate(opened) == doc["signatures_verified"] == 1


def test_mailbox_deposits_and_answers() -> None:
    doc = load("catchup.json")["mailbox"]
    for deposit in doc["deposits"]:
        frame = decode_frame(h(deposit["hex"]))
        assert frame.to_map()["t"] == "deposit" and frame.to_map()["r"] == deposit["r"]
        assert h(deposit["hex"]) == encode_frame("deposit", r=deposit["r"], e=frame.to_map()["e"])
        env = open_envelope(frame.to_map()["e"])
        assert env.kind == deposit["name"] and env.id == h(deposit["message_id"])
        assert env.sender == h(deposit["from"]) and env.recipient == h(deposit["to"])
        assert env.route == "inbox/" + deposit["to"]  # the log the holder keeps it in
    assert decode_frame(h(doc["deposits"][0]["hex"])).to_map()["e"] == h(load("dm.json")["wire"])
    for answer in doc["answers"]:
        fields: Json = {"r": answer["r"]}
        if answer["err"] is not None:
            fields["err"] = answer["err"]  # a refusal; without it: taken
        raw = encode_frame("deposited", **fields)
        assert raw == h(answer["hex"])
        assert decode_frame(raw).to_map() == {"t": "deposited", **fields}
