"""Message semantics in the peer's Trio shell: receipts, acks, idempotency, expiry.

``Coordination`` performs what the sans-IO parts of
``peer.protocols._receipts`` decide (envelope.md section 12):

* A DM for us passes ``admit`` (called by ``Storage`` when it plans the
  commit that stores it): an ``ack`` is recorded against what we sent and
  never reaches the agent; an expired message, or one whose idempotency key
  an earlier message of the same sender holds, is stored (so its sender gets
  its ``stored`` receipt and stops retrying) but never handed to the agent,
  and an expired one is answered with a signed ``expired`` ack.
* States we sign for a sender: ``delivered`` when the agent is first handed
  the message (``/messages``, a stream, a webhook), ``read`` when it marks
  it read, ``replied`` when it sends a DM with ``reply_to`` naming it. Acks
  go only to peers that announced the capability ``coord`` (a revision 1.3
  peer would drop them), as DMs without an inbox entry, so they are retried
  from the outbox until their own receipt like any DM.
* States signed for us (a ``receipt`` envelope for ``stored``, acks for the
  rest) are kept with the signed envelope, under state keys ``rcpt/<id>``,
  and shown as the DM's ``receipt`` (its furthest state) in the inbox, and as
  ``receipt`` events on its streams (``status`` keeps its meaning: pending,
  delivered to the recipient's peer, undeliverable).
* Idempotency keys live in the inbox records they came with (same commit)
  and under state keys ``idem/...`` (written after), so a ``kill -9`` at any
  point keeps them.
* An expired message leaves the agent's inbox at its expiry.

One task, ``run``, owns the timer (acks owed, expiries) and the writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import cbor2
import trio

from peer.protocols._alerts import AlertDedup
from peer.protocols._receipts import (
    AckPlanner,
    ExpiryWatch,
    IdempotencyKeys,
    ReceiptBook,
    Tracked,
)
from peer.wire._envelope import Content, Envelope, inbox_topic, open_dm, open_envelope, seal_dm
from peer.wire._errors import ProtocolError
from peer.wire._frametypes import Push
from peer.wire._meta import Meta
from store import StoreError

from ._host import StoragePeer
from ._inbox import Admitted, InboxMessage, inbox_entry
from ._options import COORD_CAP


def rally_marker(payload: Any) -> tuple[bytes, int] | None:
    """(rally id, round) of a channel message that asks a rally's question:
    its payload is ``{"rally": {"id": <hex>, "round": <n>, ...}, ...}``."""
    if not isinstance(payload, dict):
        return None
    info = payload.get("rally")
    if not isinstance(info, dict):
        return None
    try:
        rally_id, rnd = bytes.fromhex(str(info["id"])), int(info["round"])
    except (KeyError, ValueError, TypeError):
        return None
    return (rally_id, rnd) if 1 <= len(rally_id) <= 32 and 1 <= rnd <= 64 else None

RCPT_PREFIX = "rcpt/"
IDEM_PREFIX = "idem/"


class CoordPeer(StoragePeer, Protocol):
    @property
    def storage(self) -> Any: ...
    async def send_direct(self, peer_id: bytes, content: Content) -> Envelope: ...
    async def send_message(self, channel: str, content: Content) -> Envelope: ...


def _idem_key(sender: bytes, key: str) -> str:
    return IDEM_PREFIX + sender.hex() + "/" + hashlib.sha256(key.encode()).hexdigest()[:32]


def _tracked_record(entry: Tracked) -> bytes:
    states = {s: [ms, wire] for s, (ms, wire) in entry.states.items()}
    return cbor2.dumps({"to": entry.recipient, "sent": entry.sent_ms, "states": states})


def _tracked_of(msg_id: bytes, raw: bytes) -> Tracked | None:
    try:
        m = cbor2.loads(raw)
        states = {s: (int(v[0]), bytes(v[1])) for s, v in m["states"].items()}
        return Tracked(msg_id, bytes(m["to"]), int(m["sent"]), states)
    except (ValueError, KeyError, TypeError, IndexError, cbor2.CBORDecodeError):
        return None


class Coordination:
    """See the module docstring."""

    def __init__(self, peer: CoordPeer) -> None:
        self.peer = peer
        self.book = ReceiptBook(capacity=10_000)
        self.acks = AckPlanner()
        self.keys = IdempotencyKeys()
        self.expiry = ExpiryWatch()
        self.alerts = AlertDedup()  # what POST /alerts sends (new, escalate, recovery)
        self._deadlines: dict[bytes, int] = {}  # our DM id -> its expiry, until planned
        self._dirty: dict[bytes, None] = {}  # receipt entries to write
        self._new_keys: dict[str, bytes] = {}  # idempotency keys to write
        self._wake = trio.Event()
        self.changes: list[tuple[bytes, bytes, str]] = []  # (id, recipient, state): streams
        self.change_count = 0
        self.on_response: Callable[[InboxMessage, int], None] | None = None  # rallies
        self.on_conv: Callable[[InboxMessage, bytes, int], None] | None = None  # conversations
        self.on_task: Callable[[InboxMessage, int], None] | None = None  # tasks
        self.counters = {"expired_refused": 0, "idempotent_dropped": 0, "acks_sent": 0,
                         "acks_received": 0, "expired_purged": 0}

    # -- start -------------------------------------------------------------------------

    async def load(self) -> None:
        """Receipts and idempotency keys from the store, expiries from the inbox."""
        storage = self.peer.storage
        if storage is not None:
            items = await storage.service.read(
                lambda s: {**s.state_items(RCPT_PREFIX), **s.state_items(IDEM_PREFIX)}
            )
            tracked = []
            for name, raw in items.items():
                if name.startswith(RCPT_PREFIX):
                    entry = _tracked_of(bytes.fromhex(name[len(RCPT_PREFIX) :]), raw)
                    if entry is not None:
                        tracked.append(entry)
                else:
                    sender_hex, _, digest = name[len(IDEM_PREFIX) :].partition("/")
                    self.keys.claim(bytes.fromhex(sender_hex), "#" + digest, raw)
            for entry in sorted(tracked, key=lambda e: e.sent_ms):
                self.book.restore(entry)
        for message in self.peer.inbox:
            self._note_kept(message)
            mine = self.book.get(message.id) if message.outgoing else None
            if mine is not None and mine.states:
                message.receipt = mine.latest()
        self.peer.inbox.on_handed = self.on_handed

    def _note_kept(self, message: InboxMessage) -> None:
        meta = message.meta
        if meta is None or message.outgoing:
            return
        if meta.idem is not None:
            self.keys.claim(message.sender, _hashed(meta.idem), message.id)
        if meta.expires_ms is not None:
            self.expiry.add(message.id, meta.expires_ms)

    # -- DMs for us ----------------------------------------------------------------------

    def admit(self, env: Envelope, content: Content, now_ms: int) -> Admitted:
        """The inbox entry of a DM for us, (None, None) to store it without one."""
        meta = content.meta
        if meta is None:
            return inbox_entry(env, content, None, env.sender, False, now_ms)
        if meta.kind == "ack":
            self._on_ack(env, meta, now_ms)
            return None, None
        if meta.expired(now_ms):
            self.counters["expired_refused"] += 1
            self._owe(env.sender, "expired", env.id, now_ms)
            return None, None
        if meta.idem is not None:
            key = _hashed(meta.idem)
            if not self.keys.claim(env.sender, key, env.id):
                self.counters["idempotent_dropped"] += 1
                return None, None
            self._new_keys[_idem_key(env.sender, meta.idem)] = env.id
            self._wake.set()
        if meta.expires_ms is not None:
            self.expiry.add(env.id, meta.expires_ms)
            self._wake.set()
        entry = inbox_entry(env, content, None, env.sender, False, now_ms)
        if meta.kind == "response" and self.on_response is not None:
            self.on_response(entry[0], now_ms)
        if meta.conv is not None and self.on_conv is not None:
            self.on_conv(entry[0], env.wire, now_ms)
        if meta.corr is not None and self.on_task is not None:
            self.on_task(entry[0], now_ms)
        return entry

    def _on_ack(self, env: Envelope, meta: Meta, now_ms: int) -> None:
        assert meta.state is not None
        self.counters["acks_received"] += 1
        self._recorded(self.book.record(env.sender, meta.state, meta.ids, env.wire, now_ms),
                       meta.state)

    def on_stored_receipt(self, sender: bytes, ids: Sequence[bytes], wire: bytes) -> None:
        """A ``receipt`` envelope from ``sender`` naming ``ids`` was stored here."""
        now_ms = self.peer.wall_ms()
        self._recorded(self.book.record(sender, "stored", list(ids), wire, now_ms), "stored")

    def _recorded(self, changed: list[Tracked], state: str) -> None:
        for entry in changed:
            self._dirty[entry.msg_id] = None
            message = self.peer.inbox.get(entry.msg_id)
            if message is not None:
                message.receipt = entry.latest()
            self.changes = [*self.changes, (entry.msg_id, entry.recipient, state)][-1024:]
            self.change_count += 1
        if changed:
            self.peer.notify_inbox()
            self._wake.set()

    # -- what our agent does with them ------------------------------------------------

    def on_handed(self, message: InboxMessage) -> None:
        if message.kind == "dm" and not _bookkeeping(message):
            self._owe(message.sender, "delivered", message.id, self.peer.wall_ms())

    def on_read(self, messages: Iterable[InboxMessage]) -> None:
        now_ms = self.peer.wall_ms()
        for message in messages:
            if message.kind == "dm" and not message.outgoing and not _bookkeeping(message):
                self._owe(message.sender, "delivered", message.id, now_ms)
                self._owe(message.sender, "read", message.id, now_ms)

    def _owe(self, sender: bytes, state: str, msg_id: bytes, now_ms: int) -> None:
        info = self.peer.directory.get(sender)
        if info is None or COORD_CAP not in info.caps:
            return  # it would drop an ack (revision 1.3)
        if self.acks.owe(sender, state, msg_id, now_ms):
            self._wake.set()

    # -- DMs of ours ---------------------------------------------------------------------

    def outgoing(self, peer_id: bytes, content: Content) -> Content:
        """A reply to a request becomes its response: correlation and conversation ids
        and the reply context are copied from the request, untouched."""
        if content.reply_to is None:
            return content
        request = self.peer.inbox.get(content.reply_to)
        if request is None or request.outgoing or request.sender != peer_id:
            return content
        asked = request.meta
        if asked is None and request.kind == "msg":  # a rally asked on a channel
            marker = rally_marker(request.payload)
            if marker is not None:
                asked = Meta(kind="request", corr=marker[0], conv=marker[0], round=marker[1])
        if asked is None or asked.kind != "request":
            return content
        meta = content.meta or Meta(kind="response")
        if meta.kind != "response":
            return content
        meta = Meta(
            kind="response",
            corr=meta.corr or asked.corr or request.id,
            conv=meta.conv or asked.conv,
            reply_context=asked.reply_context,
            priority=meta.priority,
            expires_ms=meta.expires_ms,
            idem=meta.idem,
            round=meta.round or asked.round,
        )
        return dataclasses.replace(content, meta=meta)

    def sealed(self, env: Envelope, content: Content) -> None:
        """``env`` is about to be stored: its outbox deadline is its expiry, if sooner."""
        if content.meta is not None and content.meta.expires_ms is not None:
            self._deadlines[env.id] = content.meta.expires_ms

    def deadline_for(self, msg_id: bytes) -> int | None:
        return self._deadlines.pop(msg_id, None)

    def sent(self, peer_id: bytes, env: Envelope, content: Content) -> None:
        """Our DM ``env`` to ``peer_id`` is stored: follow its receipts; a reply marks
        what it answers ``replied``."""
        now_ms = self.peer.wall_ms()
        self.book.track(env.id, peer_id, now_ms)
        self._dirty[env.id] = None
        self._wake.set()
        if content.reply_to is not None:
            answered = self.peer.inbox.get(content.reply_to)
            if answered is not None and not answered.outgoing and answered.sender == peer_id:
                self._owe(peer_id, "replied", answered.id, now_ms)

    def receipts(self, msg_id: bytes) -> dict[str, Any] | None:
        """The states signed for our DM ``msg_id``, each checked again: the envelope's
        signature verifies, its author is the recipient, and an ack names this id."""
        entry = self.book.get(msg_id)
        if entry is None:
            return None
        states: dict[str, Any] = {}
        for state, (ms, wire) in entry.states.items():
            states[state] = {
                "at_ms": ms,
                "signed_by": entry.recipient.hex(),
                "verified": self._verify(entry, state, wire),
                "envelope": wire.hex(),
            }
        return {
            "id": msg_id.hex(),
            "to": entry.recipient.hex(),
            "sent_ms": entry.sent_ms,
            "state": entry.latest(),
            "states": states,
        }

    def _verify(self, entry: Tracked, state: str, wire: bytes) -> bool:
        try:
            env = open_envelope(wire, verify=True)
            if env.sender != entry.recipient or env.recipient != self.peer.peer_id:
                return False
            if state == "stored":
                return env.kind == "receipt" and entry.msg_id in env.fields["ids"]
            meta = open_dm(self.peer.identity, env).meta
        except ProtocolError:
            return False
        return meta is not None and meta.state == state and entry.msg_id in meta.ids

    # -- the task ------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            times = [t for t in (self.acks.next_deadline(), self.expiry.next_deadline()) if t]
            delay = None if not times else max(0.0, (min(times) - self.peer.wall_ms()) / 1000)
            with trio.move_on_after(3600 if delay is None else delay):
                await self._wake.wait()
            self._wake = trio.Event()
            try:
                await self.step(self.peer.wall_ms())
            except (StoreError, ValueError) as exc:
                self.peer.log.error("coordination step failed", error=str(exc))
                await trio.sleep(1)

    async def step(self, now_ms: int) -> None:
        self._purge(self.expiry.due(now_ms))
        await self._write()
        for sender, state, ids in self.acks.due(now_ms):
            await self._send_ack(sender, state, ids)

    def _purge(self, ids: list[bytes]) -> None:
        gone = 0
        for msg_id in ids:
            message = self.peer.inbox.get(msg_id)
            if message is not None and not message.outgoing:
                self.peer.inbox.remove(msg_id)
                gone += 1
        if gone:
            self.counters["expired_purged"] += gone
            self.peer.notify_inbox()

    async def _write(self) -> None:
        storage = self.peer.storage
        if storage is None or not (self._dirty or self._new_keys):
            return
        records = {RCPT_PREFIX + i.hex(): _tracked_record(e)
                   for i in self._dirty if (e := self.book.get(i)) is not None}
        records.update(self._new_keys)
        self._dirty, self._new_keys = {}, {}

        await storage.service.write(lambda s: s.write_states(records))

    async def _send_ack(self, sender: bytes, state: str, ids: tuple[bytes, ...]) -> None:
        """A signed ack, as a DM with no inbox entry (retried from the outbox)."""
        peer = self.peer
        info = peer.directory.get(sender)
        if info is None or peer.storage is None:
            return
        content = Content(body="", meta=Meta(kind="ack", state=state, ids=ids))
        env = peer.seal(
            inbox_topic(sender),
            lambda seq, prev: seal_dm(
                peer.identity, recipient_key=info.public_key, content=content, seq=seq,
                ts=peer.wall_ms(), prev=prev,
            ),
        )
        try:
            await peer.storage.store_own(env, None, None)
        except StoreError as exc:
            peer.unseal(env)
            peer.log.error("ack not stored", error=str(exc))
            return
        link = peer.links.get(sender)
        if link is not None:
            link.enqueue(Push(env.wire).encode())
        self.counters["acks_sent"] += 1

    def statistics(self) -> dict[str, int]:
        return {**self.counters, "tracked": len(self.book), "idempotency_keys": len(self.keys)}


def _bookkeeping(message: InboxMessage) -> bool:
    """A DM that is itself a receipt (an ack, or a read receipt of catchup.md 9.7):
    acknowledging it would only make more traffic."""
    if message.meta is not None and message.meta.kind == "ack":
        return True
    return isinstance(message.payload, dict) and "clawmesh" in message.payload


def _hashed(key: str) -> str:
    """How a key is held: hashed, so the state keys and memory stay bounded."""
    return "#" + hashlib.sha256(key.encode()).hexdigest()[:32]


__all__ = ["Coordination"]
