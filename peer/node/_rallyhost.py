"""Requests and rallies in the peer's Trio shell: it performs what
``peer.protocols._rally`` decides.

Rules kept here:

* A rally is written to the store (state key ``rally/<id>``) before its
  questions go out, and after every change; each question is a DM (or, for
  a channel rally, one channel message) stored and retried from the outbox
  like any other, with the idempotency key ``rally/<id>/<round>`` so a
  question sent again after a crash reaches the agent once.
* Answers are DMs whose meta says ``response`` with the rally's id as
  correlation id; ``Coordination.admit`` hands them here as they are
  stored. They also stay in the inbox, so at start the answers are rebuilt
  from it too: an initiator killed with ``kill -9`` between storing an
  answer and writing the rally loses nothing.
* A question that could not be sent (its peer's key is not known yet) is
  tried again every ``RESEND_S`` while its round is open.
* One task, ``run``, owns the timer (deadlines, resends) and the writes.
"""

from __future__ import annotations

import os
from typing import Any

import cbor2
import trio

from peer.protocols._rally import OPEN, Change, Rallies, Rally, new_rally
from peer.wire import _cbor
from peer.wire._envelope import Content
from peer.wire._meta import Meta
from store import StoreError

from ._coordhost import CoordPeer, rally_marker
from ._inbox import InboxMessage
from ._options import UnknownPeer

RALLY_PREFIX = "rally/"
RESEND_S = 5.0
MAX_RECORD = 200 * 1024
MAX_KEPT = 4096  # bytes of an answer's body and payload kept with the rally (all in the inbox)
CHANNEL_SLOT = bytes(32)  # the "peer" a channel rally's one question is sent to


def _record(rally: Rally) -> bytes:
    raw = cbor2.dumps(rally.to_record())
    if len(raw) <= MAX_RECORD:
        return raw
    record = rally.to_record()  # too big: keep answers' ids, clip their bodies
    for rnd in record["rounds"]:
        for answer in rnd["answers"]:
            answer[2] = answer[2][:512]
            answer[3] = None
    return cbor2.dumps(record)


class RallyService:
    """See the module docstring."""

    def __init__(self, peer: CoordPeer) -> None:
        self.peer = peer
        self.rallies = Rallies()
        self._dirty: dict[bytes, None] = {}
        self._wake = trio.Event()
        self._changed = trio.Event()
        self.changes: list[Change] = []  # the last changes, for streams
        self.change_count = 0

    # -- start -------------------------------------------------------------------------

    async def load(self) -> None:
        storage = self.peer.storage
        if storage is None:
            return
        items = await storage.service.read(lambda s: s.state_items(RALLY_PREFIX))
        for raw in items.values():
            try:
                self.rallies.add(Rally.from_record(cbor2.loads(raw)))
            except (ValueError, KeyError, TypeError, IndexError, cbor2.CBORDecodeError):
                self.peer.log.warning("a rally record does not parse: skipped")
        for message in self.peer.inbox:  # answers stored before their rally was written
            meta = message.meta
            if meta is not None and meta.kind == "response" and not message.outgoing:
                self.on_response(message, message.received_ms)

    # -- starting rallies ---------------------------------------------------------------

    async def start(
        self,
        *,
        kind: str,
        targets: tuple[bytes, ...],
        channel: str | None,
        question: str,
        payload: Any,
        quorum: int,
        timeout_s: float,
        selector: dict[str, Any] | None = None,
    ) -> Rally:
        """A new rally (or request): written, then asked. ValueError for a bad shape.
        ``selector`` records how the targets were chosen (a skill rally)."""
        now_ms = self.peer.wall_ms()
        rally = new_rally(
            os.urandom(16), kind=kind, targets=targets, channel=channel, question=question,
            payload=payload, quorum=quorum, deadline_ms=now_ms + int(timeout_s * 1000),
            now_ms=now_ms, selector=selector,
        )
        self.rallies.add(rally)
        await self._write([rally.id])
        await self._ask(rally)
        self._note([Change(rally.id, "open", 1)])
        return rally

    async def next_round(
        self, rally: Rally, question: str, payload: Any, quorum: int | None, timeout_s: float
    ) -> Rally:
        now_ms = self.peer.wall_ms()
        wanted = rally.current.quorum if quorum is None else quorum
        if wanted < 1 or (rally.channel is None and wanted > len(rally.targets)):
            raise ValueError("quorum must be 1..number of peers")
        self._note(rally.next_round(question, payload, wanted, now_ms + int(timeout_s * 1000),
                                    now_ms))
        await self._write([rally.id])
        await self._ask(rally)
        return rally

    async def cancel(self, rally: Rally) -> None:
        self._note(rally.cancel(self.peer.wall_ms()))
        await self._write([rally.id])

    def _question(self, rally: Rally) -> tuple[Any, Meta]:
        rnd = rally.current
        data: Any = rnd.payload
        if rnd.number > 1:  # a follow-up carries what the last round answered
            previous = sorted(rally.rounds[-2].answers.values(), key=lambda a: a.at_ms)
            data = {
                "previous": [
                    {"from": a.peer.hex(), "body": a.body, "payload": a.payload, "late": a.late}
                    for a in previous
                ],
                "data": rnd.payload,
            }
        meta = Meta(kind="request", corr=rally.id, conv=rally.id, round=rnd.number,
                    idem=f"rally/{rally.id.hex()}/{rnd.number}")
        return data, meta

    async def _ask(self, rally: Rally) -> None:
        """Send the current round's question to everyone not asked yet."""
        rnd = rally.current
        data, meta = self._question(rally)
        if rally.channel is not None:
            if CHANNEL_SLOT not in rnd.sent:
                marker = {"id": rally.id.hex(), "round": rnd.number, "quorum": rnd.quorum,
                          "deadline": rnd.deadline_ms}
                asked = _cbor.encode({"rally": marker, "data": data})
                env = await self.peer.send_message(
                    rally.channel, Content(body=rnd.question, payload=asked)
                )
                rnd.sent[CHANNEL_SLOT] = env.id
        else:
            payload = None if data is None else _cbor.encode(data)
            for target in rally.targets:
                if target in rnd.sent:
                    continue
                try:
                    env = await self.peer.send_direct(
                        target, Content(body=rnd.question, payload=payload, meta=meta)
                    )
                except UnknownPeer:
                    continue  # asked again at the next resend
                rnd.sent[target] = env.id
        await self._write([rally.id])

    # -- answers -------------------------------------------------------------------------

    def on_response(self, message: InboxMessage, now_ms: int) -> None:
        """A response DM was stored (called from ``Coordination.admit`` or at load)."""
        meta = message.meta
        if meta is None or meta.corr is None:
            return
        rally = self.rallies.get(meta.corr)
        if rally is None:
            return
        payload = message.payload if message.has_payload else None
        if payload is not None and len(cbor2.dumps(payload)) > MAX_KEPT:
            payload = {"truncated": True, "id": message.id.hex()}  # the inbox has it all
        changes = rally.on_answer(message.sender, meta.round or 1, message.id,
                                  message.body[:MAX_KEPT], payload, now_ms)
        if changes:
            self._dirty[rally.id] = None
            self._note(changes)
            self._wake.set()

    def _note(self, changes: list[Change]) -> None:
        if not changes:
            return
        self.changes = (self.changes + changes)[-1024:]
        self.change_count += len(changes)
        self._changed.set()
        self._changed = trio.Event()
        self.peer.notify_inbox()

    async def wait_finished(self, rally: Rally, timeout_s: float) -> None:
        """Until ``rally`` is no longer open, or ``timeout_s`` passed."""
        with trio.move_on_after(timeout_s):
            while rally.state == OPEN:
                await self._changed.wait()

    # -- the task ------------------------------------------------------------------------

    async def run(self) -> None:
        for rally in list(self.rallies.by_id.values()):
            if rally.state == OPEN:
                await self._safely(self._ask(rally))  # what a crash left unasked
        while True:
            deadline = self.rallies.next_deadline()
            delay = RESEND_S if deadline is None else max(
                0.0, min(RESEND_S, (deadline - self.peer.wall_ms()) / 1000))
            with trio.move_on_after(delay):
                await self._wake.wait()
            self._wake = trio.Event()
            changes = self.rallies.handle_timer(self.peer.wall_ms())
            for change in changes:
                self._dirty[change.rally_id] = None
            self._note(changes)
            await self._safely(self._write(list(self._dirty)))
            for rally in list(self.rallies.by_id.values()):
                if rally.state == OPEN and self._unasked(rally):
                    await self._safely(self._ask(rally))

    def _unasked(self, rally: Rally) -> bool:
        if rally.channel is not None:
            return False
        return len(rally.current.sent) < len(rally.targets)

    async def _safely(self, work: Any) -> None:
        try:
            await work
        except (StoreError, ValueError) as exc:
            self.peer.log.error("rally step failed", error=str(exc))

    async def _write(self, ids: list[bytes]) -> None:
        storage = self.peer.storage
        for rally_id in ids:
            self._dirty.pop(rally_id, None)
        records = {RALLY_PREFIX + i.hex(): _record(r)
                   for i in ids if (r := self.rallies.get(i)) is not None}
        if storage is None or not records:
            return

        await storage.service.write(lambda s: s.write_states(records))

    def statistics(self) -> dict[str, int]:
        states: dict[str, int] = {}
        for rally in self.rallies.by_id.values():
            states[rally.state] = states.get(rally.state, 0) + 1
        return {"rallies": len(self.rallies), **{f"rallies_{k}": v for k, v in states.items()}}


__all__ = ["RALLY_PREFIX", "RallyService", "rally_marker"]
