"""The audit trail: a record of every message this peer's agent sent or got
(channel posts and DMs, in and out) and of each change of an outgoing DM's
state, or, on a relay-only seed, of every envelope it carried (``relayed``:
channel posts, DMs and receipts, sealed ones without text); appended to the
store, read back with filters, and exported as JSON lines or CSV in bounded
memory.

Rules this module keeps:

* The trail follows the inbox by cursor, like a webhook: each step takes up
  to ``BATCH`` new messages and commits their records together with the
  trail's cursor (``ops/audit-cursor``) in one transaction, so after a
  crash, ``kill -9`` included, it goes on where the last commit left it:
  no record is lost or written twice.
* A record holds who, what kind, where and when, the size and the state;
  the text is kept only for what this peer's agent could read itself
  (channel posts, and DMs it sent or received: it is a party to each DM in
  its inbox); a seed's record of a DM or receipt it carried has no text (it
  is sealed to others). A seed's records wait in a bounded queue between the
  envelope hook and the next commit: a crash may lose those few (nothing
  was acknowledged for them), a full queue counts them in ``lost``.
* A seed steps again at once only after a full batch; otherwise it waits
  for ``LINGER`` (``_wait``), so its records take about one commit per
  ``LINGER`` rather than one per commit's duration (a commit's fsync each).
* Keys are ``ops/audit/<received ms, 15 digits>-<kind><number>``, so the
  trail is in time order and a time range is a key range.
* Reading never holds more than one page (``PAGE`` records) in memory: the
  export is an async generator over pages, each page read in one short
  synchronous transaction.
* Records older than the messages' retention (``--keep-days``) are deleted
  by a sweep every ``SWEEP_INTERVAL`` seconds, ``SWEEP_BUDGET`` at a time.
"""

from __future__ import annotations

import csv
import io
import json
import secrets
from collections import deque
from collections.abc import AsyncGenerator, Iterable, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import structlog
import trio

from peer.node._inbox import InboxMessage, StatusChange
from peer.node._node import Peer
from peer.wire._envelope import Envelope
from store import StoreError

from ._auditfast import relayed_json
from ._book import Book
from ._metrics import Metric, counter
from ._values import iso

PREFIX = "ops/audit/"
CURSOR_KEY = "ops/audit-cursor"
BATCH = 256
PAGE = 1000
MAX_TEXT = 4096  # characters of a message's text kept in its record
MAX_RELAYED_QUEUE = 10_000  # a seed's carried envelopes waiting to be recorded
LINGER = 0.1  # seconds the trail gathers what is new before a step writes it (one commit)
# records built between two checkpoints: a batch of 256 took ~2-3 ms of the event loop
# at once (~10 µs each), which every message a relay was carrying meanwhile waited for
YIELD_EVERY = 16
LAST_STEP_S = 1.0  # at a stop, seconds the last step may take to write what was queued
SWEEP_INTERVAL = 60.0
SWEEP_BUDGET = 1000
CSV_COLUMNS = (
    "time", "direction", "kind", "id", "sender", "recipients", "topic", "conversation",
    "size", "state", "sent", "seq", "text",
)


def record_key(time_ms: int, tag: str) -> str:
    return f"{PREFIX}{max(0, time_ms):015d}-{tag}"


def message_record(m: InboxMessage, me: str) -> dict[str, Any]:
    """The audit record of one inbox message (in or out)."""
    recipients = [f"#{m.channel}"] if m.channel is not None else [
        me if not m.outgoing else (m.peer.hex() if m.peer else "")
    ]
    # a coordination DM's conversation (request, rally, conversation, task), else the thread
    conversation = (m.meta.conv if m.meta is not None else None) or m.thread or m.reply_to
    size = len(m.body.encode())
    if m.has_payload:
        size += len(json.dumps(m.payload, default=str).encode())
    state = m.status if m.status is not None else "sent" if m.outgoing else "received"
    return {
        "time": iso(m.received_ms),
        "time_ms": m.received_ms,
        "direction": "out" if m.outgoing else "in",
        "kind": "channel" if m.channel is not None else "dm",
        "id": m.id.hex(),
        "sender": m.sender.hex(),
        "recipients": recipients,
        "topic": m.topic,
        "conversation": conversation.hex() if conversation else None,
        "size": size,
        "state": state,
        "sent": iso(m.ts),
        "seq": m.seq,
        "text": m.body[:MAX_TEXT],
    }


def relayed_record(env: Envelope, now_ms: int) -> dict[str, Any]:
    """The audit record of an envelope a seed carried for others: who, where, how
    big; the text of channel posts only (DMs and receipts are sealed)."""
    fields = env.fields
    kind = {"msg": "channel", "dm": "dm"}.get(env.kind, env.kind)
    recipient = env.recipient
    conversation = fields.get("thread") or fields.get("reply_to")
    body = fields.get("body") if env.kind == "msg" else None
    return {
        "time": iso(now_ms),
        "time_ms": now_ms,
        "direction": "relayed",
        "kind": kind,
        "id": env.id.hex(),
        "sender": env.sender.hex(),
        "recipients": [f"#{env.topic}"] if env.kind == "msg" else (
            [recipient.hex()] if recipient is not None else []
        ),
        "topic": env.topic,
        "conversation": conversation.hex() if isinstance(conversation, bytes) else None,
        "size": len(env.wire),
        "state": "relayed",
        "sent": iso(env.ts),
        "seq": env.seq,
        "text": body[:MAX_TEXT] if isinstance(body, str) else None,
    }


def status_record(change: StatusChange, m: InboxMessage | None, now_ms: int) -> dict[str, Any]:
    """The audit record of an outgoing DM's new state."""
    return {
        "time": iso(now_ms),
        "time_ms": now_ms,
        "direction": "out",
        "kind": "state",
        "id": change.id.hex(),
        "sender": None if m is None else m.sender.hex(),
        "recipients": [change.peer.hex()] if change.peer else [],
        "topic": None if m is None else m.topic,
        "conversation": None,
        "size": 0,
        "state": change.status,
        "sent": None if m is None else iso(m.ts),
        "seq": None if m is None else m.seq,
        "text": None,
    }


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which records a query wants; every field given must match."""

    agent: str | None = None  # a peer id: as sender or recipient
    kind: str | None = None
    topic: str | None = None
    conversation: str | None = None
    direction: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None  # exclusive

    def matches(self, r: dict[str, Any]) -> bool:
        if self.agent is not None and r["sender"] != self.agent and (
            self.agent not in r["recipients"]
        ):
            return False
        return all(
            want is None or r[field] == want
            for field, want in (
                ("kind", self.kind), ("topic", self.topic),
                ("conversation", self.conversation), ("direction", self.direction),
            )
        )

    def start_key(self) -> str | None:
        """The key to read after (None: from the start)."""
        return None if self.since_ms is None else record_key(self.since_ms, "")[:-1]

    def past_end(self, key: str) -> bool:
        return self.until_ms is not None and key >= record_key(self.until_ms, "")


def csv_rows(records: Iterable[dict[str, Any]]) -> str:
    """CSV lines of ``records`` (recipients joined by spaces, None empty)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    for r in records:
        row = dict(r, recipients=" ".join(r["recipients"]))
        writer.writerow(["" if row[c] is None else row[c] for c in CSV_COLUMNS])
    return buf.getvalue()


def csv_header() -> str:
    buf = io.StringIO()
    csv.writer(buf).writerow(CSV_COLUMNS)
    return buf.getvalue()


class AuditTrail:
    """One peer's audit trail: written from its inbox, read in pages."""

    def __init__(self, peer: Peer, book: Book) -> None:
        self.peer = peer
        self.book = book
        self.me = peer.identity.peer_id_hex
        self.cursor = 0
        self.status_seen = 0
        self.written = 0
        self.lost = 0  # inbox messages evicted before they were recorded
        self.deleted = 0
        self.session = secrets.token_hex(4)  # status change numbers start again each run
        # a relay-only seed has no inbox: it records what it carries for others, from a
        # bounded queue (a record the queue has no room for is counted in ``lost``)
        self.relayed: deque[tuple[Envelope, int]] = deque()  # (envelope, carried at ms)
        self.relayed_count = 0
        self._wake = trio.Event()
        self._stopped = False  # after the last step: what is carried is counted lost
        if peer.options.relay_only:
            peer.envelope_hooks.append(self._carried)
        self.log = structlog.get_logger("clawmesh.audit")

    def _carried(self, env: Envelope, member: bool) -> None:
        """The envelope hook, on the relay's hot path: only queue it (the record is
        built by the next step, with many others)."""
        if len(self.relayed) >= MAX_RELAYED_QUEUE or self._stopped:
            self.lost += 1  # no room, or the trail has stopped: counted, not silent
            return
        self.relayed.append((env, self.peer.wall_ms()))
        self._wake.set()

    async def _wait(self) -> None:
        """Until the inbox changes, or, on a seed (no inbox), until it carried something;
        then ``LINGER`` more, so that one commit takes what came meanwhile (at a few
        messages a second the trail would otherwise commit once per message, a second
        commit beside the message's own)."""
        if self.peer.options.relay_only:
            await self._wake.wait()
            self._wake = trio.Event()
        else:
            await self.peer.wait_inbox_changed()
        await trio.sleep(LINGER)  # gathering a batch, not waiting for an event

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        stored = await self.book.get(CURSOR_KEY)
        self.cursor = 0 if stored is None else int(stored.decode())
        task_status.started()
        try:
            await self._steps()
        finally:
            await self._last_step()

    async def _last_step(self) -> None:
        """At a stop: one more step, bounded, for what was queued meanwhile (a seed
        holds up to ``LINGER`` of its traffic); what still could not be written is
        counted in ``lost``, never dropped silently."""
        self._stopped = True
        inbox = self.peer.inbox
        with trio.CancelScope(shield=True, deadline=trio.current_time() + LAST_STEP_S):
            try:  # carried envelopes, and DM state changes (kept in memory only)
                while self.relayed or inbox.status_since(self.status_seen):
                    await self.step()
            except Exception as exc:
                self.log.info("audit records not written at the stop", error=repr(exc))
        if self.relayed:
            self.lost += len(self.relayed)
            self.log.warning("audit records lost at the stop", lost=len(self.relayed))
            self.relayed.clear()

    async def _steps(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sweep_loop)
            while True:
                try:
                    wrote = await self.step()
                except StoreError as exc:
                    self.log.error("audit records not stored", error=str(exc))
                    await trio.sleep(1.0)
                    continue
                except Exception as exc:  # a bug: logged, retried, the peer goes on
                    self.log.error("audit step crashed", error=repr(exc), exc_info=exc)
                    await trio.sleep(1.0)
                    continue
                if not wrote or (self.peer.options.relay_only and wrote < BATCH):
                    await self._wait()  # a seed: one commit per LINGER unless batches fill

    async def step(self) -> int:
        """Record what is new in the inbox (and DM state changes); how many records."""
        inbox = self.peer.inbox
        if inbox.first_cursor > self.cursor + 1 and inbox.last_cursor > self.cursor:
            self.lost += inbox.first_cursor - 1 - self.cursor
            self.log.warning("audit fell behind the inbox", lost=self.lost)
            self.cursor = inbox.first_cursor - 1
        batch = inbox.since(self.cursor, BATCH)
        changes = inbox.status_since(self.status_seen)[:BATCH]
        if not batch and not changes and not self.relayed:
            return 0
        carried = [self.relayed.popleft() for _ in range(min(BATCH, len(self.relayed)))]
        unbuilt: set[int] = set()  # indexes in ``carried`` of records lost (counted)
        try:
            items = await self._records(carried, batch, changes, unbuilt)
            cursor = batch[-1].cursor if batch else self.cursor
            items[CURSOR_KEY] = str(cursor).encode()
            # once handed to the store's writer the batch commits (or fails) whatever we
            # do: a stop waits for the answer, so the last step never writes it again
            with trio.CancelScope(shield=True):
                await self.book.put(items)
        except BaseException:
            again = [c for n, c in enumerate(carried) if n not in unbuilt]
            self.relayed.extendleft(reversed(again))  # tried again with the next step
            raise
        self.cursor = cursor
        if changes:
            self.status_seen = changes[-1].number
        self.written += len(items) - 1
        return len(items) - 1

    async def _records(
        self,
        carried: list[tuple[Envelope, int]],
        batch: list[InboxMessage],
        changes: list[StatusChange],
        unbuilt: set[int],
    ) -> dict[str, bytes | None]:
        """The records of one step, by key; a checkpoint every ``YIELD_EVERY`` (a relay's
        event loop carries messages meanwhile)."""
        items: dict[str, bytes | None] = {}
        for n, (env, carried_ms) in enumerate(carried, 1):
            self.relayed_count += 1
            key = record_key(carried_ms, f"r{self.session}{self.relayed_count:012d}")
            try:
                data = relayed_json(env, carried_ms, MAX_TEXT)  # the same bytes, cheaper
                items[key] = _dump(relayed_record(env, carried_ms)) if data is None else data
            except Exception as exc:
                unbuilt.add(n - 1)
                self._not_built(exc)
            if n % YIELD_EVERY == 0:
                await trio.lowlevel.checkpoint()
        for n, m in enumerate(batch, 1):
            try:
                record = _dump(message_record(m, self.me))
                items[record_key(m.received_ms, f"m{m.cursor:012d}")] = record
            except Exception as exc:
                self._not_built(exc)
            if n % YIELD_EVERY == 0:
                await trio.lowlevel.checkpoint()
        now = self.peer.wall_ms()
        inbox = self.peer.inbox
        for c in changes:
            try:
                record = _dump(status_record(c, inbox.get(c.id), now))
                items[record_key(now, f"s{self.session}{c.number:09d}")] = record
            except Exception as exc:
                self._not_built(exc)
        return items

    def _not_built(self, exc: Exception) -> None:
        """A record that could not be built (a bug): lost and counted, so that the
        next step does not meet it again and the trail goes on."""
        self.lost += 1
        self.log.error("audit record not built", error=repr(exc), lost=self.lost, exc_info=exc)

    async def _sweep_loop(self) -> None:
        while True:
            await trio.sleep(SWEEP_INTERVAL)
            try:
                await self.sweep(self.peer.wall_ms())
            except StoreError as exc:
                self.log.error("audit retention failed", error=str(exc))

    async def sweep(self, now_ms: int) -> int:
        """Delete records older than the messages' retention; how many went."""
        policy = self.peer.options.rules.default
        max_age = None if policy is None else policy.max_age_ms
        if max_age is None:
            return 0
        before = record_key(now_ms - max_age, "")
        total = 0
        while True:
            n = await self.book.delete_before(PREFIX, before, SWEEP_BUDGET)
            total += n
            if n < SWEEP_BUDGET:
                break
        self.deleted += total
        return total

    async def pages(self, wanted: AuditFilter, after: str | None = None) -> AsyncGenerator[
        list[tuple[str, dict[str, Any]]], None
    ]:
        """The matching records after the key ``after``, a store page at a time
        (a page may match nothing: it is not yielded)."""
        mark = after if after is not None else wanted.start_key()
        while True:
            page = await self.book.page(PREFIX, mark, PAGE)
            out: list[tuple[str, dict[str, Any]]] = []
            for key, raw in page:
                if wanted.past_end(key):
                    if out:
                        yield out
                    return
                record = json.loads(raw)
                if wanted.matches(record):
                    out.append((key, record))
            if out:
                yield out
            if len(page) < PAGE:
                return
            mark = page[-1][0]

    async def records(self, wanted: AuditFilter, after: str | None = None) -> AsyncGenerator[
        tuple[str, dict[str, Any]], None
    ]:
        """Every matching record after the key ``after``, one by one."""
        async with aclosing(self.pages(wanted, after)) as pages:
            async for page in pages:
                for item in page:
                    yield item

    def statistics(self) -> dict[str, int]:
        """For /status (``audit``) and /metrics."""
        return {"written": self.written, "lost": self.lost, "deleted": self.deleted,
                "cursor": self.cursor}

    def metrics(self) -> Iterator[Metric]:
        stats = self.statistics()
        yield counter("clawmesh_audit_records", "audit records written", stats["written"])
        yield counter("clawmesh_audit_lost", "inbox messages evicted before they were audited",
                      stats["lost"])
        yield counter("clawmesh_audit_expired", "audit records deleted by retention",
                      stats["deleted"])


def _dump(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def lines(records: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


__all__ = ["CSV_COLUMNS", "PREFIX", "AuditFilter", "AuditTrail", "csv_header", "csv_rows"]
