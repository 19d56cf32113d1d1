"""The peer's persistent side: its log, inbox, outbox, receipts and catch-up.

``Storage`` is owned by a ``Peer`` that runs with a data directory. It
performs, with a ``store.StoreService``, what the protocol modules decide:

* Accepting: every new envelope the peer keeps (its channels, its inbox, and
  on a relay-only seed whatever it relays) is appended to the topic's log;
  messages for the local agent go, in the same commit, to the ``~inbox`` log,
  whose positions are the API's cursors. The agent sees a message, and a DM's
  sender gets our receipt, only after that commit.
* Own messages are stored before they are published, so the API answers
  ``/send`` after a durable commit, sequence numbers per (sender, topic)
  survive restarts, and the sender carries its own messages.
* DMs wait in the outbox until the recipient's signed receipt arrives; they
  are pushed to the recipient whenever it is linked, retried with backoff,
  and become dead letters after their deadline.
* Catch-up (``peer._catchup``): when a link to a storing peer comes up, every
  topic we keep is asked for, page by page, from a cursor kept per
  (carrier, topic), so a broken walk resumes where it stopped. The last page
  names the carrier's highest sequence per sender; what we still lack is asked
  for from every other carrier, and what nobody has is reported as missed.
* Carrying: ``cureq`` frames are answered from the log in a reader thread,
  one at a time per link.

Transactions stay inside the store's functions; nothing here holds one across
an ``await``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from store import (
    MAX_PAGE,
    AppendItem,
    AppendResult,
    Backoff,
    KeepRules,
    MessageStore,
    RetentionPolicy,
    StoreError,
    StoreService,
)

from . import _cbor
from ._catchup import (
    NOT_CARRIED,
    Page,
    PageRequest,
    build_page,
    check_page,
    missing_ranges,
)
from ._envelope import (
    MAX_RECEIPT_IDS,
    PRESENCE_TOPIC,
    Envelope,
    inbox_topic,
    open_dm,
    open_envelope,
    payload_value,
    seal_receipt,
)
from ._errors import ErrorCode, ProtocolError
from ._frames import encode_frame
from ._inbox import InboxMessage, PeerInfo
from ._limits import MAX_PAGE_MESSAGES, MAX_REQUEST_ID

if TYPE_CHECKING:
    from ._node import Peer

INBOX_LOG = "~inbox"  # the local agent's messages in arrival order (not a network topic)
_INBOX_ID_TAG = b"clawmesh/local-inbox/v1"
_NOBODY = bytes(32)
CHANNELS_KEY = "channels"
ALIVE_KEY = "alive"
ALIVE_INTERVAL = 10.0
PEER_KEY_PREFIX = "peer/"
STORE_CAP = "store"
ACCEPT_QUEUE = 65_536
ACCEPT_BATCH = 2_048
PAGE_TIMEOUT = 20.0
SINCE_MARGIN_MS = 120_000  # clocks of carriers and ours differ; duplicates are cheap
MAX_GAP_SENDERS = 64
MAX_HELD = 200_000  # live messages held per topic while its first walk runs
HOLD_AT_MOST = 30.0  # seconds after start
RECEIPT_DELAY = 0.05
OUTBOX_TICK = 1.0
RETENTION_INTERVAL = 60.0


@dataclass
class _Accept:
    """Work for the accept loop, which alone appends to the log (so the
    ``~inbox`` positions reach the inbox in order)."""

    envelopes: list[tuple[Envelope, bool, bool]]  # (envelope, member, pushed)
    done: trio.Event | None = None
    own: list[tuple[Envelope, InboxMessage | None, bytes | None]] = field(default_factory=list)
    new: int = 0
    error: Exception | None = None


@dataclass
class TopicCatchUp:
    """What catching up on one topic has found, for ``/status``."""

    received: int = 0
    duplicates: int = 0
    pages: int = 0
    carriers: set[str] = field(default_factory=set)
    missed: dict[str, int] = field(default_factory=dict)  # sender hex -> messages no one had
    last_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "duplicates": self.duplicates,
            "pages": self.pages,
            "carriers": sorted(self.carriers),
            "missed": dict(self.missed),
            "last": self.last_ms,
        }


@dataclass
class StorageCounters:
    stored: int = 0
    duplicates: int = 0
    dropped: int = 0  # accept queue full: left to catch-up
    store_errors: int = 0
    receipts_sent: int = 0
    receipts_received: int = 0
    pushes_sent: int = 0
    dead_letters: int = 0
    pages_served: int = 0
    pages_refused: int = 0
    bad_pages: int = 0


def inbox_record(message: InboxMessage, payload: bytes | None) -> bytes:
    """The ``~inbox`` log record of one message (decrypted: it is our own disk)."""
    m: dict[str, Any] = {
        "id": message.id,
        "kind": message.kind,
        "topic": message.topic,
        "from": message.sender,
        "body": message.body,
        "ts": message.ts,
        "out": message.outgoing,
        "seq": message.seq,
    }
    if message.channel is not None:
        m["ch"] = message.channel
    if message.peer is not None:
        m["peer"] = message.peer
    if payload is not None:
        m["payload"] = payload
    if message.reply_to is not None:
        m["reply_to"] = message.reply_to
    if message.thread is not None:
        m["thread"] = message.thread
    return _cbor.encode(m)


def inbox_message(cursor: int, received_ms: int, record: bytes) -> InboxMessage:
    m = _cbor.decode(record, max_items=1 << 20)
    payload = m.get("payload")
    return InboxMessage(
        cursor=cursor,
        id=m["id"],
        kind=m["kind"],
        topic=m["topic"],
        channel=m.get("ch"),
        sender=m["from"],
        peer=m.get("peer"),
        body=m["body"],
        payload=None if payload is None else payload_value(payload),
        has_payload=payload is not None,
        reply_to=m.get("reply_to"),
        thread=m.get("thread"),
        ts=m["ts"],
        received_ms=received_ms,
        outgoing=m["out"],
        read=m["out"],
        seq=m.get("seq", 0),
    )


def _inbox_item(message: InboxMessage, payload: bytes | None) -> AppendItem:
    return AppendItem(
        msg_id=hashlib.sha256(_INBOX_ID_TAG + message.id).digest(),
        topic=INBOX_LOG,
        sender=_NOBODY,
        sender_seq=0,
        ts=message.ts,
        wire=inbox_record(message, payload),
        received_ms=message.received_ms,
    )


class Storage:
    """The persistent half of a ``Peer``; see the module docstring."""

    def __init__(self, peer: Peer, service: StoreService) -> None:
        self.peer = peer
        self.service = service
        self.options = peer.options
        self.log = peer.log.bind(part="store")
        self.counters = StorageCounters()
        self.catchup: dict[str, TopicCatchUp] = defaultdict(TopicCatchUp)
        self._rng = random.Random(peer._rng.random())
        self._accept_send, self._accept_recv = trio.open_memory_channel[_Accept](ACCEPT_QUEUE)
        self._seqs: dict[str, int] = {}
        self._seq_lock = trio.Lock()
        self._receipts: dict[bytes, list[bytes]] = {}
        self._receipts_wanted = trio.Event()
        self._pending_to: dict[bytes, int] = {}  # recipient -> DMs in the outbox
        self._outbox_wake = trio.Event()
        self._requests: dict[int, tuple[bytes, trio.MemorySendChannel[Page]]] = {}
        self._next_request = 1
        self._serving: dict[bytes, trio.MemorySendChannel[PageRequest]] = {}
        self._walking: dict[tuple[bytes, str], bool] = {}  # running walks: wanted again?
        self._pinned: set[str] = set()
        self._new_peers: dict[bytes, bytes] = {}
        self._topic_locks: dict[str, trio.Lock] = {}
        self._held: dict[str, list[tuple[Envelope, bool]]] = {}  # topic -> live, waiting
        self._prev_alive = 0  # wall ms our previous run last noted it was running
        self._started_ms = 0
        self._new_peers_wanted = trio.Event()
        self.backoff = Backoff(
            base_ms=int(self.options.outbox_retry_initial * 1000),
            cap_ms=max(int(self.options.outbox_retry_initial * 1000), 300_000),
        )

    @property
    def store(self) -> MessageStore:
        return self.service.store

    # -- start ---------------------------------------------------------------------

    async def load(self) -> list[str]:
        """Read the inbox and outbox state; returns the channels we subscribed to."""
        peer = self.peer
        head = await self.service.head(INBOX_LOG)
        start = max(head.first_seq - 1, head.next_seq - 1 - self.options.inbox_capacity)
        watermark, flagged = await self.service.read(lambda s: s.read_state(INBOX_LOG))
        outbox = await self.service.read(lambda s: s.outbox(limit=MAX_PAGE))
        dead = await self.service.read(lambda s: s.dead_letters(limit=MAX_PAGE))
        pending_ids = {e.msg_id for e in outbox}
        dead_ids = {d.msg_id for d in dead}
        for entry in outbox:
            self._pending_to[entry.recipient] = self._pending_to.get(entry.recipient, 0) + 1
        loaded = 0
        while True:
            records = await self.service.read_log(INBOX_LOG, after=start, limit=5_000)
            if not records:
                break
            for record in records:
                message = inbox_message(record.seq, record.received_ms, record.wire)
                if record.seq <= watermark or record.seq in flagged:
                    message.read = True
                if message.outgoing and message.kind == "dm":
                    message.status = (
                        "pending"
                        if message.id in pending_ids
                        else "undeliverable"
                        if message.id in dead_ids
                        else "delivered"
                    )
                peer.inbox.add(message)
                loaded += 1
            start = records[-1].seq
        keys = await self.service.read(lambda s: s.state_items(PEER_KEY_PREFIX))
        for name, public_key in keys.items():
            peer_id = bytes.fromhex(name[len(PEER_KEY_PREFIX) :])
            if peer_id != peer.peer_id and len(public_key) == 32:
                peer.directory.see(peer_id, public_key, 0)
        peer.directory.on_new = self._note_peer
        alive = await self.service.read(lambda s: s.get_state(ALIVE_KEY))
        self._prev_alive = int(alive.decode()) if alive else 0
        self._started_ms = peer.wall_ms()
        raw = await self.service.read(lambda s: s.get_state(CHANNELS_KEY))
        channels = [] if raw is None else [c for c in _cbor.decode(raw) if isinstance(c, str)]
        self.log.info(
            "store opened",
            inbox=loaded,
            unread=peer.inbox.unread(),
            outbox=len(outbox),
            dead_letters=len(dead),
            channels=len(channels),
        )
        return channels

    def _note_peer(self, info: PeerInfo) -> None:
        """Remember a new peer's key, so DMs to it work after a restart."""
        self._new_peers[info.peer_id] = info.public_key
        self._new_peers_wanted.set()

    async def _peer_key_loop(self) -> None:
        while True:
            await self._new_peers_wanted.wait()
            self._new_peers_wanted = trio.Event()
            batch, self._new_peers = self._new_peers, {}

            def write(s: MessageStore, batch: dict[bytes, bytes] = batch) -> None:
                for peer_id, key in batch.items():
                    s.put_state(PEER_KEY_PREFIX + peer_id.hex(), key)

            try:
                await self.service.write(write)
            except StoreError as exc:
                self.log.error("peer keys not stored", error=str(exc))

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            if self._held:
                nursery.start_soon(self._release_all_after, HOLD_AT_MOST)
            nursery.start_soon(self._peer_key_loop)
            nursery.start_soon(self._alive_loop)
            nursery.start_soon(self._accept_loop)
            nursery.start_soon(self._receipt_loop)
            nursery.start_soon(self._outbox_loop)
            nursery.start_soon(self._retention_loop)

    # -- what we keep ------------------------------------------------------------------

    def keeps(self, topic: str) -> bool:
        return topic != PRESENCE_TOPIC and self.options.rules.keeps(topic)

    async def save_channels(self) -> None:
        value = _cbor.encode(sorted(self.peer.channels))
        await self.service.write(lambda s: s.put_state(CHANNELS_KEY, value))

    def _pin(self, topic: str) -> None:
        """A relay-only seed keeps receiving a topic it stores, subscriber or not."""
        if topic in self._pinned or len(self._pinned) >= self.options.max_kept_topics:
            return
        self._pinned.add(topic)
        peer = self.peer
        peer._perform(peer.router.subscribe(topic))
        if peer.dht is not None and topic not in peer.dht.node.providing:
            with contextlib.suppress(ValueError):  # providing as many as the DHT lets us
                peer.dht.node.start_providing(topic, peer.wall_time())

    # -- accepting ---------------------------------------------------------------------

    def accept(self, env: Envelope, *, member: bool = True, pushed: bool = False) -> None:
        """Queue a verified envelope for the log (never blocks; see ``dropped``).

        Until the first catch-up walk of a kept topic ends, its live messages
        wait in memory (bounded; a carrier has them too), so a sender's older
        messages from the walk come before its newer live ones.
        """
        held = self._held.get(env.log_topic)
        if held is not None and member and len(held) < MAX_HELD:
            held.append((env, pushed))
            return
        try:
            self._accept_send.send_nowait(_Accept([(env, member, pushed)]))
        except trio.WouldBlock:
            self.counters.dropped += 1
            if self.counters.dropped in (1, 10, 100) or self.counters.dropped % 10_000 == 0:
                self.log.warning(
                    "store queue full: left to catch-up", dropped=self.counters.dropped
                )

    def hold_live(self, topics: Iterable[str]) -> None:
        for topic in topics:
            self._held.setdefault(topic, [])

    def release(self, topic: str) -> None:
        """The first walk of ``topic`` ended: accept what waited, in arrival order."""
        held = self._held.pop(topic, None)
        if held:
            with contextlib.suppress(trio.WouldBlock):
                self._accept_send.send_nowait(
                    _Accept([(env, True, pushed) for env, pushed in held])
                )

    async def _release_all_after(self, seconds: float) -> None:
        await trio.sleep(seconds)  # no carrier answered in time: stop holding
        for topic in list(self._held):
            self.release(topic)

    async def accept_many(self, envelopes: Iterable[Envelope]) -> int:
        """Store envelopes (from catch-up); returns after their commit, with the new ones."""
        request = _Accept([(e, True, False) for e in envelopes], trio.Event())
        await self._accept_send.send(request)
        assert request.done is not None
        await request.done.wait()
        return request.new

    async def _accept_loop(self) -> None:
        while True:
            batch = [await self._accept_recv.receive()]
            size = len(batch[0].envelopes) + len(batch[0].own)
            while size < ACCEPT_BATCH:
                try:
                    more = self._accept_recv.receive_nowait()
                except trio.WouldBlock:
                    break
                batch.append(more)
                size += len(more.envelopes) + len(more.own)
            try:
                await self._commit(batch)
            except Exception as exc:  # a bug here must not end the peer: log, count, go on
                self.counters.store_errors += 1
                self.log.exception("accepting messages failed", error=repr(exc))
                for request in batch:
                    request.error = request.error or exc
            finally:
                for request in batch:
                    if request.done is not None:
                        request.done.set()

    async def _commit(self, batch: list[_Accept]) -> None:
        peer = self.peer
        now_ms = peer.wall_ms()
        items: list[AppendItem] = []
        plan: list[tuple[_Accept, Envelope, bool, int, InboxMessage | None]] = []
        outbox: list[tuple[bytes, bytes, bytes]] = []  # (id, recipient, wire)
        for request in batch:
            for env, message, payload in request.own:
                plan.append((request, env, False, len(items), message))
                items.append(AppendItem.from_envelope(env, received_ms=now_ms, topic=env.log_topic))
                if message is not None:
                    items.append(_inbox_item(message, payload))
                if env.kind == "dm" and env.recipient is not None:
                    outbox.append((env.id, env.recipient, env.wire))
            for env, member, pushed in request.envelopes:
                topic = env.log_topic
                if not member:
                    if not self.keeps(topic):
                        continue
                    self._pin(topic)
                message = payload = None
                if member and not self.options.relay_only and env.kind in ("msg", "dm"):
                    built = self._inbox_entry(env, now_ms)
                    if built is None:
                        continue
                    message, payload = built
                plan.append((request, env, pushed, len(items), message))
                items.append(AppendItem.from_envelope(env, received_ms=now_ms, topic=topic))
                if message is not None:
                    items.append(_inbox_item(message, payload))
        if not items:
            return
        first_try = now_ms + self.backoff.base_ms
        deadline = now_ms + int(self.options.dm_deadline * 1000)

        def write(s: MessageStore) -> list[AppendResult]:
            results = s.append_batch(items)
            for msg_id, recipient, wire in outbox:
                s.outbox_add(msg_id, recipient, wire, first_try, deadline)
            return results

        try:
            results = await self.service.write(write)
        except (StoreError, ValueError) as exc:
            self.counters.store_errors += 1
            self.log.error("store append failed", error=str(exc), messages=len(plan))
            for request, _, _, _, message in plan:
                if request.own:
                    request.error = exc  # not stored: the API says so, nothing is sent
                elif message is not None:
                    peer._add_inbox_message(message)  # the agent still sees it
            return
        for _, recipient, _ in outbox:
            self._pending_to[recipient] = self._pending_to.get(recipient, 0) + 1
        now = peer.now()
        for request in batch:  # publish what we signed in commit order, which is seq order
            for env, _, _ in request.own:
                peer._perform(peer.router.publish(env, now))
        for request, env, pushed, index, message in plan:
            result: AppendResult = results[index]
            if result.duplicate:
                self.counters.duplicates += 1
                if pushed and env.kind == "dm":
                    self._want_receipt(env)  # the sender retries: our receipt was lost
                continue
            self.counters.stored += 1
            request.new += 1
            if message is not None:
                message.cursor = results[index + 1].seq
                peer._add_inbox_message(message)
            if env.sender == peer.peer_id:
                continue
            if env.kind == "dm" and env.recipient == peer.peer_id:
                self._want_receipt(env)
            elif env.kind == "receipt" and env.recipient == peer.peer_id:
                await self._on_receipt(env)

    def _inbox_entry(self, env: Envelope, now_ms: int) -> tuple[InboxMessage, bytes | None] | None:
        peer = self.peer
        outgoing = env.sender == peer.peer_id
        if env.kind == "dm":
            if outgoing:
                return None  # our own DMs enter the inbox when we send them
            try:
                content = open_dm(peer.identity, env)
            except ProtocolError as exc:
                peer.counters.dm_undecryptable += 1
                self.log.warning(
                    "DM does not open", sender=env.sender.hex()[:16], reason=exc.message
                )
                return None
            return peer._inbox_message(env, content, None, env.sender, outgoing, now_ms)
        content = env.content()
        return peer._inbox_message(env, content, env.topic, None, outgoing, now_ms)

    # -- own messages ------------------------------------------------------------------

    async def next_seq(self, log_topic: str) -> int:
        """Our next sequence number in ``log_topic``: one more than any we stored."""
        if log_topic not in self._seqs:
            async with self._seq_lock:
                if log_topic not in self._seqs:
                    me = self.peer.peer_id
                    ranges = await self.service.read(lambda s: s.sender_ranges(me, log_topic))
                    self._seqs[log_topic] = max((end for _, end in ranges), default=0)
        self._seqs[log_topic] += 1
        return self._seqs[log_topic]

    async def store_own(
        self, env: Envelope, message: InboxMessage | None, payload: bytes | None
    ) -> None:
        """Keep a message we signed (and, for a DM, its outbox entry), then publish it.

        Returns after the commit; raises StoreError (nothing published) when it
        could not be stored.
        """
        request = _Accept([], trio.Event(), own=[(env, message, payload)])
        await self._accept_send.send(request)
        assert request.done is not None
        await request.done.wait()
        if isinstance(request.error, StoreError):
            raise request.error
        if request.error is not None:
            raise StoreError(f"not stored: {request.error!r}")

    # -- read state ----------------------------------------------------------------------

    async def mark_read(self, cursors: list[int]) -> None:
        for i in range(0, len(cursors), MAX_PAGE):
            chunk = cursors[i : i + MAX_PAGE]
            await self.service.write(
                functools.partial(MessageStore.mark_read, topic=INBOX_LOG, seqs=chunk)
            )

    async def mark_read_through(self, cursor: int) -> None:
        await self.service.write(lambda s: s.mark_read_through(INBOX_LOG, cursor))

    # -- receipts ------------------------------------------------------------------------

    def _want_receipt(self, env: Envelope) -> None:
        self._receipts.setdefault(env.sender, []).append(env.id)
        self._receipts_wanted.set()

    async def _receipt_loop(self) -> None:
        while True:
            await self._receipts_wanted.wait()
            await trio.sleep(RECEIPT_DELAY)  # gather the DMs of one burst into few receipts
            self._receipts_wanted = trio.Event()
            wanted, self._receipts = self._receipts, {}
            for sender, ids in wanted.items():
                for i in range(0, len(ids), MAX_RECEIPT_IDS):
                    await self._send_receipt(sender, ids[i : i + MAX_RECEIPT_IDS])

    async def _send_receipt(self, sender: bytes, ids: list[bytes]) -> None:
        peer = self.peer
        topic = inbox_topic(sender)
        env = seal_receipt(
            peer.identity,
            recipient=sender,
            ids=ids,
            seq=await self.next_seq(topic),
            ts=peer.wall_ms(),
        )
        try:
            await self.store_own(env, None, None)
        except StoreError as exc:
            self.log.error("receipt not stored", error=str(exc))
        link = peer.links.get(sender)
        if link is not None:
            link.enqueue(encode_frame("push", e=env.wire))
        self.counters.receipts_sent += 1

    async def _on_receipt(self, env: Envelope) -> None:
        sender = env.sender
        ids: list[bytes] = list(env.fields["ids"])

        def settle(s: MessageStore) -> tuple[list[bytes], list[bytes]]:
            done, late = [], []
            dead: dict[bytes, bytes] | None = None
            for msg_id in ids:
                entry = s.outbox_get(msg_id)
                if entry is not None:
                    if entry.recipient == sender and s.outbox_done(msg_id):
                        done.append(msg_id)
                    continue
                if dead is None:
                    dead = {d.msg_id: d.recipient for d in s.dead_letters(limit=MAX_PAGE)}
                if dead.get(msg_id) == sender:
                    s.dead_letter_remove(msg_id)  # it made it after all
                    late.append(msg_id)
            return done, late

        try:
            done, late = await self.service.write(settle)
        except StoreError as exc:
            self.log.error("receipt not recorded", error=str(exc))
            return
        self._pending_to[sender] = max(0, self._pending_to.get(sender, 0) - len(done))
        done += late
        for msg_id in done:
            self.counters.receipts_received += 1
            message = self.peer.inbox.get(msg_id)
            if message is not None:
                message.status = "delivered"
        if done:
            self.log.info("DMs receipted", peer=sender.hex()[:16], count=len(done))
            self.peer._notify_inbox()

    # -- outbox --------------------------------------------------------------------------

    def wake_outbox(self, peer_id: bytes) -> None:
        """``peer_id`` is back (a link, a presence): push what waits for it now."""
        if self._pending_to.get(peer_id):
            self._outbox_wake.set()

    async def _outbox_loop(self) -> None:
        while True:
            with trio.move_on_after(OUTBOX_TICK):
                await self._outbox_wake.wait()
            woken = self._outbox_wake.is_set()
            self._outbox_wake = trio.Event()
            try:
                await self._outbox_step(woken)
            except StoreError as exc:
                self.log.error("outbox step failed", error=str(exc))

    async def _outbox_step(self, woken: bool) -> None:
        peer = self.peer
        now_ms = peer.wall_ms()
        for letter in await self.service.write(lambda s: s.outbox_expire(now_ms)):
            self.counters.dead_letters += 1
            self._pending_to[letter.recipient] = max(
                0, self._pending_to.get(letter.recipient, 0) - 1
            )
            message = peer.inbox.get(letter.msg_id)
            if message is not None:
                message.status = "undeliverable"
            self.log.warning(
                "DM undeliverable",
                id=letter.msg_id.hex()[:16],
                peer=letter.recipient.hex()[:16],
                attempts=letter.attempts,
            )
            peer._notify_inbox()
        due = await self.service.read(lambda s: s.outbox_due(now_ms, 256))
        push_to = {e.recipient for e in due if e.recipient in peer.links}
        if woken:
            push_to |= {p for p, n in self._pending_to.items() if n and p in peer.links}
        if push_to:  # everything waiting for them, in their sequence order
            entries = await self.service.read(lambda s: s.outbox(limit=MAX_PAGE))
            waiting = [e for e in entries if e.recipient in push_to]
            waiting.sort(key=lambda e: (e.recipient, open_envelope(e.wire, verify=False).seq))
            for entry in waiting:
                self._push(entry.recipient, entry.wire)
        reach = {e.recipient for e in due} - push_to
        for recipient in reach:
            peer.nursery.start_soon(self._reach, recipient)
        for entry in due:
            next_try = self.backoff.next_try_ms(now_ms, entry.attempts, self._rng)
            await self.service.write(
                functools.partial(
                    MessageStore.outbox_retry, msg_id=entry.msg_id, next_try_ms=next_try
                )
            )

    def _push(self, recipient: bytes, wire: bytes) -> None:
        link = self.peer.links.get(recipient)
        if link is not None and link.enqueue(encode_frame("push", e=wire)):
            self.counters.pushes_sent += 1

    async def _reach(self, recipient: bytes) -> None:
        """Try to link to a recipient we hold DMs for (its address, or the DHT)."""
        peer = self.peer
        with trio.move_on_after(10):
            info = peer.directory.get(recipient)
            if info is not None and info.listen and peer.is_online(info):
                from dht import Contact

                await peer.connect(Contact(recipient, info.public_key, info.listen[:4]))
            elif peer.dht is not None:
                await peer.resolve_peer(recipient)
        if recipient in peer.links:
            self.wake_outbox(recipient)

    # -- carrying: answering cureq ---------------------------------------------------------

    def on_request(self, link_peer: bytes, fields: dict[str, Any]) -> None:
        request = PageRequest.from_fields(fields)
        queue = self._serving.get(link_peer)
        if queue is None:
            send, recv = trio.open_memory_channel[PageRequest](4)
            self._serving[link_peer] = send
            self.peer.nursery.start_soon(self._serve, link_peer, recv)
            queue = send
        try:
            queue.send_nowait(request)
        except trio.WouldBlock:
            self._answer(
                link_peer, Page(request.r, request.topic, [], request.after, False, [], "busy")
            )

    async def _serve(
        self, link_peer: bytes, requests: trio.MemoryReceiveChannel[PageRequest]
    ) -> None:
        try:
            while link_peer in self.peer.links:
                with trio.move_on_after(30):
                    request = await requests.receive()
                    try:
                        page = await self.service.read(
                            functools.partial(build_page, request=request, requester=link_peer)
                        )
                    except (StoreError, ValueError) as exc:
                        self.log.warning("catch-up request failed", error=str(exc))
                        page = Page(
                            request.r, request.topic, [], request.after, False, [], NOT_CARRIED
                        )
                    self._answer(link_peer, page)
                    continue
                break  # idle: the task ends, a later request starts another
        finally:
            del self._serving[link_peer]

    def _answer(self, link_peer: bytes, page: Page) -> None:
        if page.err is None:
            self.counters.pages_served += 1
        else:
            self.counters.pages_refused += 1
        link = self.peer.links.get(link_peer)
        if link is not None and not link.enqueue(encode_frame("cupage", **page.fields())):
            link.close(ErrorCode.SLOW, "not reading catch-up pages")

    # -- catching up: asking carriers ----------------------------------------------------------

    def on_page(self, link_peer: bytes, fields: dict[str, Any]) -> None:
        page = Page.from_fields(fields)
        waiting = self._requests.get(page.r)
        if waiting is None or waiting[0] != link_peer:
            self.counters.bad_pages += 1
            return  # unsolicited or late: ignored
        try:
            waiting[1].send_nowait(page)
        except (trio.WouldBlock, trio.BrokenResourceError):
            self.counters.bad_pages += 1

    async def _ask(self, carrier: bytes, request: PageRequest) -> Page | None:
        """One request/page round; None if the link went or the carrier did not answer."""
        link = self.peer.links.get(carrier)
        if link is None:
            return None
        send, recv = trio.open_memory_channel[Page](1)
        self._requests[request.r] = (carrier, send)
        try:
            if not link.enqueue(encode_frame("cureq", **request.fields())):
                return None
            page: Page | None = None
            with trio.move_on_after(PAGE_TIMEOUT):
                async with trio.open_nursery() as nursery:

                    async def link_gone() -> None:  # the request went with the link
                        await link.closed.wait()
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(link_gone)
                    page = await recv.receive()
                    nursery.cancel_scope.cancel()
            return page
        finally:
            del self._requests[request.r]

    def _request_id(self) -> int:
        r = self._next_request
        self._next_request = r % MAX_REQUEST_ID + 1
        return r

    def kept_topics(self) -> list[str]:
        if self.options.relay_only:
            return []
        return [inbox_topic(self.peer.peer_id), *sorted(self.peer.channels)]

    def on_link_up(self, peer_id: bytes, caps: tuple[str, ...]) -> None:
        self.wake_outbox(peer_id)
        if STORE_CAP in caps:
            topics = self.kept_topics()
            if topics:
                self.peer.nursery.start_soon(self.catch_up_with, peer_id, topics)

    async def catch_up_all(self, topics: list[str]) -> None:
        """Catch up ``topics`` from every linked carrier (on subscribe)."""
        carriers = [p for p, link in self.peer.links.items() if STORE_CAP in link.result.caps]
        async with trio.open_nursery() as nursery:
            for carrier in carriers:
                nursery.start_soon(self.catch_up_with, carrier, topics)

    async def catch_up_with(self, carrier: bytes, topics: list[str]) -> None:
        for topic in topics:
            key = (carrier, topic)
            if key in self._walking:
                self._walking[key] = True  # walk again when the running one ends
                continue
            self._walking[key] = False
            try:
                while True:
                    await self._walk(carrier, topic)
                    if not self._walking[key] or carrier not in self.peer.links:
                        break
                    self._walking[key] = False
            except (StoreError, ValueError) as exc:
                self.log.warning("catch-up failed", topic=topic, error=str(exc))
            finally:
                del self._walking[key]

    async def _since(self, topic: str) -> int:
        """From when, on our clock, a carrier we have no cursor with should send ``topic``:
        when we last ran (or subscribed, if later), less a margin for clock skew."""
        if topic.startswith("inbox/"):
            return 0  # everything a carrier holds for us
        raw = await self.service.read(lambda s: s.get_state("since/" + topic))
        subscribed = int(raw.decode()) if raw else self.peer.wall_ms()
        base = subscribed if subscribed >= self._started_ms else self._prev_alive or subscribed
        return max(1, base - SINCE_MARGIN_MS)

    async def _alive_loop(self) -> None:
        """Note every few seconds that we are running: a restart catches up from there."""
        while True:
            now = str(self.peer.wall_ms()).encode()
            with contextlib.suppress(StoreError):
                await self.service.write(
                    functools.partial(MessageStore.put_state, key=ALIVE_KEY, value=now)
                )
            await trio.sleep(ALIVE_INTERVAL)

    async def note_subscribed(self, topic: str) -> None:
        value = str(self.peer.wall_ms()).encode()
        key = "since/" + topic

        def write(s: MessageStore) -> None:
            if s.get_state(key) is None:
                s.put_state(key, value)

        await self.service.write(write)

    async def _walk(self, carrier: bytes, topic: str) -> None:
        """One carrier at a time per topic: each walk yields a sender's messages in order."""
        lock = self._topic_locks.setdefault(topic, trio.Lock())
        async with lock:
            try:
                await self._walk_locked(carrier, topic)
            finally:
                self.release(topic)

    async def _walk_locked(self, carrier: bytes, topic: str) -> None:
        """Page through ``carrier``'s log of ``topic`` from our cursor, then fill gaps."""
        name = "cu:" + carrier.hex()
        after = await self.service.read(lambda s: s.get_cursor(name, topic))
        since = 0 if after else await self._since(topic)  # a cursor is exact
        stats = self.catchup[topic]
        heads: list[tuple[bytes, int]] = []
        while True:
            request = PageRequest(self._request_id(), topic, after, since, MAX_PAGE_MESSAGES)
            page = await self._ask(carrier, request)
            if page is None:
                return  # resumes from the cursor on the next link
            if page.err is not None:
                return
            envelopes = await self._check(carrier, request, page)
            if envelopes is None:
                return
            new = await self.accept_many(envelopes)
            stats.pages += 1
            stats.received += new
            stats.duplicates += len(envelopes) - new
            stats.carriers.add(carrier.hex())
            stats.last_ms = self.peer.wall_ms()
            after = page.next
            await self.service.write(
                functools.partial(MessageStore.set_cursor, name=name, topic=topic, seq=after)
            )
            if not page.more:
                heads = page.heads
                break
        await self._fill_gaps(topic, heads)

    async def _check(
        self, carrier: bytes, request: PageRequest, page: Page
    ) -> list[Envelope] | None:
        verify = not self.options.bench_no_verify
        try:
            store = self.store

            def known(msg_id: bytes) -> bool:
                return store.position(msg_id) is not None

            return await trio.to_thread.run_sync(
                lambda: check_page(request, page, verify=verify, known=known)
            )
        except ProtocolError as exc:
            self.counters.bad_pages += 1
            self.log.warning("bad catch-up page", carrier=carrier.hex()[:16], reason=exc.message)
            link = self.peer.links.get(carrier)
            if link is not None:
                self.peer.counters.refuse(exc.code)
                link.close(exc.code, exc.message)
            return None

    async def _fill_gaps(self, topic: str, heads: list[tuple[bytes, int]]) -> None:
        """Ask every carrier for sender ranges we lack; count what nobody has."""
        me = self.peer.peer_id
        gaps: list[tuple[bytes, int, int]] = []
        for sender, head in heads:
            if sender == me:
                continue
            for first, last in await self._lacking(topic, sender, 0, head):
                gaps.append((sender, first, last))
            if len(gaps) >= MAX_GAP_SENDERS:
                break
        if not gaps:
            return
        carriers = [p for p, link in self.peer.links.items() if STORE_CAP in link.result.caps]
        for sender, first, last in gaps[:MAX_GAP_SENDERS]:
            for carrier in carriers:
                todo = await self._lacking(topic, sender, first, last)
                if not todo:
                    break
                for a, b in todo[:16]:
                    await self._fetch_range(carrier, topic, sender, a, b)
        stats = self.catchup[topic]
        for sender, head in heads:
            key = sender.hex()
            if sender == me or not any(g[0] == sender for g in gaps):
                continue
            still = sum(b - a + 1 for a, b in await self._lacking(topic, sender, 0, head))
            if still:
                stats.missed[key] = still
                self.log.warning("missed messages", topic=topic, sender=key[:16], missed=still)
            else:
                stats.missed.pop(key, None)

    async def _lacking(
        self, topic: str, sender: bytes, first: int, last: int
    ) -> list[tuple[int, int]]:
        """The ranges of sender's ``first..last`` in ``topic`` that we do not hold."""
        have = await self.service.read(lambda s: s.sender_ranges(sender, topic))
        out = []
        for a, b in missing_ranges(have, last):
            a = max(a, first)
            if a <= b:
                out.append((a, b))
        return out

    async def _fetch_range(
        self, carrier: bytes, topic: str, sender: bytes, first: int, last: int
    ) -> None:
        """Ask one carrier for sender's ``first..last`` of ``topic``, page by page."""
        while first <= last:
            request = PageRequest(
                self._request_id(), topic, 0, 0, MAX_PAGE_MESSAGES, sender, first, last
            )
            page = await self._ask(carrier, request)
            if page is None or page.err is not None:
                return
            envelopes = await self._check(carrier, request, page)
            if envelopes is None:
                return
            if envelopes:
                self.catchup[topic].received += await self.accept_many(envelopes)
            if not page.more:
                return
            first = page.next + 1

    # -- pushes ------------------------------------------------------------------------

    def on_push(self, link_peer: bytes, wire: bytes) -> None:
        """A DM or receipt handed to us directly by its sender."""
        try:
            env = open_envelope(wire, verify=not self.options.bench_no_verify)
        except ProtocolError as exc:
            link = self.peer.links.get(link_peer)
            self.peer.counters.refuse(exc.code)
            if link is not None:
                link.close(exc.code, exc.message)
            return
        if env.kind not in ("dm", "receipt") or env.recipient != self.peer.peer_id:
            self.peer.counters.refuse(ErrorCode.UNEXPECTED)
            return  # not ours to take
        self.peer.router.note_seen(env.id, self.peer.now())
        self.peer.directory.see(env.sender, env.sender_key, self.peer.wall_ms())
        self.accept(env, pushed=True)

    # -- retention ---------------------------------------------------------------------

    async def _retention_loop(self) -> None:
        rules = self.options.rules
        local = KeepRules(
            default=rules.default,
            topics={**rules.topics, INBOX_LOG: self._inbox_policy()},
            prefixes=rules.prefixes,
        )
        while True:
            await trio.sleep(RETENTION_INTERVAL)
            try:
                await self.service.retention_sweep(local, now_ms=self.peer.wall_ms())
            except StoreError as exc:
                self.log.error("retention failed", error=str(exc))

    def _inbox_policy(self) -> RetentionPolicy:
        return RetentionPolicy(max_count=max(self.options.inbox_capacity, 1))

    def statistics(self) -> dict[str, Any]:
        c = self.counters
        return {
            "stored": c.stored,
            "duplicates": c.duplicates,
            "dropped": c.dropped,
            "errors": c.store_errors,
            "receipts_sent": c.receipts_sent,
            "receipts_received": c.receipts_received,
            "pushes_sent": c.pushes_sent,
            "dead_letters": c.dead_letters,
            "pages_served": c.pages_served,
            "pages_refused": c.pages_refused,
            "bad_pages": c.bad_pages,
            "outbox": sum(self._pending_to.values()),
            "pinned_topics": len(self._pinned),
            "catchup": {t: s.to_json() for t, s in sorted(self.catchup.items())},
        }


__all__ = ["INBOX_LOG", "STORE_CAP", "Storage", "TopicCatchUp"]
