"""Conversations in the peer's Trio shell: it performs what
``peer.protocols._conversations`` decides.

Every conversation message is a DM whose meta names the conversation
(``conv``) and whose payload says what it is (envelope.md section 12.1):
``{"conversation": {...}, "data": ...}`` opens it (owner to each
participant), ``{"post": {"vote": ...}, "data": ...}`` is a post (a member
to every other member), ``{"verdict": {...}}`` and ``{"closed": "timed_out"}``
end it (owner to each participant). A reply to the opening (``reply_to``)
counts as a post too. Only the owner's verdict or close is applied; each
is kept with the signed envelope that carried it, so every participant
can check it. Rules kept here:

* Records live under state keys ``conv/<id>``, written after every change
  by the one task, ``run``, which also runs the owner's timers (deadline,
  idle timeout) and publishes computed verdicts.
* Sends are DMs, stored and retried from the outbox like any other.
* A remote owner has at most ``MAX_OPEN_PER_OWNER`` unfinished conversations
  here; remote ones leave ``RESERVED_LOCAL`` of ``MAX_CONVERSATIONS`` to this
  agent; at the cap the oldest finished are forgotten (``_roomcap``).
"""

from __future__ import annotations

import os
from typing import Any

import cbor2
import trio

from peer.protocols._conversations import (
    DEFAULT_IDLE_MS,
    MAX_PARTICIPANTS,
    MAX_VOTE,
    RULES,
    TYPES,
    Conversation,
    new_conversation,
)
from peer.protocols._roomcap import make_room
from peer.wire import _cbor
from peer.wire._envelope import Content, open_dm, open_envelope
from peer.wire._errors import ProtocolError
from peer.wire._meta import Meta
from store import StoreError

from ._coordhost import CoordPeer
from ._inbox import InboxMessage
from ._options import UnknownPeer

CONV_PREFIX = "conv/"
MAX_CONVERSATIONS = 10_000
MAX_OPEN_PER_OWNER = 256  # unfinished conversations one remote peer may open here
RESERVED_LOCAL = 1000  # of MAX_CONVERSATIONS, never taken by other peers' conversations
TICK_S = 5.0
MAX_RECORD = 200 * 1024
MAX_KEPT = 4096  # characters of a post kept with the conversation (all in the inbox)


def _vote_of(value: Any) -> str | None:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        text = str(value)
        return text if 0 < len(text.encode()) <= MAX_VOTE else None
    return None


def _record_bytes(conv: Conversation) -> bytes:
    """The stored record; past ``MAX_RECORD`` the posts' bodies are clipped (the full
    posts stay in the inbox, by id)."""
    record = conv.to_record()
    raw = cbor2.dumps(record)
    if len(raw) <= MAX_RECORD:
        return raw
    for post in record["posts"]:
        post[2] = post[2][:128]
    raw = cbor2.dumps(record)
    if len(raw) > MAX_RECORD:
        record["posts"] = record["posts"][-500:]
        raw = cbor2.dumps(record)
    return raw


def _opening(payload: Any, sender: bytes) -> Conversation | None:
    """The conversation an opening payload describes, if it is well formed."""
    try:
        info = payload["conversation"]
        conv = Conversation(
            bytes.fromhex(info["id"]), str(info["type"]), bytes.fromhex(info["owner"]),
            tuple(bytes.fromhex(p) for p in info["participants"]), str(info["subject"]),
            None if info.get("rule") is None else str(info["rule"]),
            float(info.get("threshold", 0.5)), int(info["created"]), int(info["deadline"]),
            int(info["idle"]), last_ms=int(info["created"]),
        )
    except (KeyError, ValueError, TypeError):
        return None
    fits = (
        conv.owner == sender and 1 <= len(conv.id) <= 32 and conv.type in TYPES
        and 1 <= len(conv.participants) <= MAX_PARTICIPANTS and conv.owner not in
        conv.participants and (conv.rule is None or conv.rule in RULES)
        and 0 < conv.threshold <= 1 and conv.idle_ms > 0 and len(conv.subject) <= MAX_KEPT * 16
    )
    return conv if fits else None


class ConversationService:
    """See the module docstring."""

    def __init__(self, peer: CoordPeer) -> None:
        self.peer = peer
        self.by_id: dict[bytes, Conversation] = {}
        self._dirty: dict[bytes, None] = {}
        self._wake = trio.Event()
        self._changed = trio.Event()
        self.changes: list[tuple[bytes, str]] = []  # (id, what): the last ones, for streams
        self.change_count = 0

    async def load(self) -> None:
        storage = self.peer.storage
        if storage is None:
            return
        items = await storage.service.read(lambda s: s.state_items(CONV_PREFIX))
        for raw in items.values():
            try:
                conv = Conversation.from_record(cbor2.loads(raw))
            except (ValueError, KeyError, TypeError, IndexError, cbor2.CBORDecodeError):
                continue
            self.by_id[conv.id] = conv

    # -- the agent's side -------------------------------------------------------------

    async def start(self, *, type_: str, participants: tuple[bytes, ...], subject: str,
                    payload: Any, rule: str | None, threshold: float, timeout_s: float,
                    idle_s: float | None) -> Conversation:
        now_ms = self.peer.wall_ms()
        if not self._room(self.peer.peer_id):
            raise ValueError(f"at most {MAX_CONVERSATIONS} conversations are kept "
                             "and none is finished")
        conv = new_conversation(
            os.urandom(16), type_=type_, owner=self.peer.peer_id, participants=participants,
            subject=subject, rule=rule, threshold=threshold,
            deadline_ms=now_ms + int(timeout_s * 1000),
            idle_ms=DEFAULT_IDLE_MS if idle_s is None else int(idle_s * 1000), now_ms=now_ms,
        )
        self.by_id[conv.id] = conv
        info = {
            "id": conv.id.hex(), "type": conv.type, "owner": conv.owner.hex(),
            "participants": [p.hex() for p in participants], "subject": subject,
            "rule": rule, "threshold": threshold, "created": now_ms,
            "deadline": conv.deadline_ms, "idle": conv.idle_ms,
        }
        kind = "notification" if type_ == "broadcast" else "request"
        await self._write([conv.id])
        await self._send(conv, participants, subject, {"conversation": info, "data": payload},
                         kind)
        self._record(conv, ["open"])
        return conv

    async def post(self, conv: Conversation, body: str, vote: Any, payload: Any) -> None:
        """Our post: to every other member; recorded here at once."""
        if conv.finished:
            raise ValueError(f"the conversation is {conv.state}")
        me = self.peer.peer_id
        if me not in conv.members():
            raise ValueError("this peer is not in the conversation")
        vote_text = None if vote is None else _vote_of(vote)
        if vote is not None and vote_text is None:
            raise ValueError(f"a vote is a string, number or boolean of 1..{MAX_VOTE} bytes")
        others = tuple(m for m in conv.members() if m != me)
        sent = await self._send(conv, others, body,
                                {"post": {"vote": vote_text}, "data": payload}, "notification")
        self._record(conv, conv.on_post(me, sent or os.urandom(32), body, vote_text,
                                        self.peer.wall_ms()))

    async def set_verdict(self, conv: Conversation, decision: str, summary: str) -> None:
        if conv.owner != self.peer.peer_id:
            raise ValueError("only the initiator sets the verdict")
        if conv.finished:
            raise ValueError(f"the conversation is {conv.state}")
        verdict = {"decision": decision, "summary": summary, "rule": None,
                   "votes": {p.hex(): v for p, v in conv.votes.items()},
                   "by": conv.owner.hex(), "at": self.peer.wall_ms()}
        await self._publish_verdict(conv, verdict)

    async def _publish_verdict(self, conv: Conversation, verdict: dict[str, Any]) -> None:
        conv.apply_verdict(verdict, None, self.peer.wall_ms())
        self._record(conv, ["verdict"])
        await self._send(conv, conv.participants, f"verdict: {verdict['summary']}",
                         {"verdict": verdict}, "notification")

    def _room(self, owner: bytes) -> bool:
        """Whether a conversation opened by ``owner`` is taken (``_roomcap``), oldest
        finished ones forgotten to make room."""
        take, evict = make_room(
            self.by_id, me=self.peer.peer_id, requester=owner, owner=lambda c: c.owner,
            finished=lambda c: c.finished, age=lambda c: c.ended_ms or c.last_ms,
            cap=MAX_CONVERSATIONS, per_requester=MAX_OPEN_PER_OWNER, reserved=RESERVED_LOCAL)
        for conv_id in evict:
            del self.by_id[conv_id]
            self._dirty[conv_id] = None  # its record is deleted by the writer
        if evict:
            self._wake.set()
        return take

    # -- what arrives ------------------------------------------------------------------

    def on_dm(self, message: InboxMessage, wire: bytes, now_ms: int) -> None:
        """A DM with a conversation id in its meta was stored (``Coordination.admit``)."""
        meta = message.meta
        if meta is None or meta.conv is None:
            return
        payload = message.payload if message.has_payload else None
        conv = self.by_id.get(meta.conv)
        if conv is None:
            opened = _opening(payload, message.sender) if isinstance(payload, dict) else None
            if opened is None or opened.id != meta.conv or not self._room(opened.owner):
                return
            self.by_id[opened.id] = conv = opened
            self._record(conv, ["open"])
            return
        if not isinstance(payload, dict):
            payload = {}
        if message.sender == conv.owner and "verdict" in payload:
            if isinstance(payload["verdict"], dict) and conv.apply_verdict(
                payload["verdict"], wire, now_ms
            ):
                self._record(conv, ["verdict"])
            return
        if message.sender == conv.owner and payload.get("closed") == "timed_out":
            if conv.close(now_ms):
                self._record(conv, ["closed"])
            return
        post = payload.get("post") if isinstance(payload.get("post"), dict) else {}
        vote = _vote_of(post.get("vote")) if post else None
        self._record(conv, conv.on_post(message.sender, message.id, message.body[:MAX_KEPT],
                                        vote, now_ms))

    def _record(self, conv: Conversation, changes: list[str]) -> None:
        if not changes:
            return
        self._dirty[conv.id] = None  # a computed verdict is published by the task
        self.changes = (self.changes + [(conv.id, c) for c in changes if c != "decided"])[-1024:]
        self.change_count += sum(c != "decided" for c in changes)
        self._changed_now()
        self._wake.set()

    def _changed_now(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
        self.peer.notify_inbox()

    async def wait_changed(self, timeout_s: float) -> None:
        with trio.move_on_after(timeout_s):
            await self._changed.wait()

    def verdict_check(self, conv: Conversation) -> bool | None:
        """Whether the verdict's envelope verifies as the owner's (None: ours, unsent)."""
        if conv.verdict_wire is None:
            return None
        try:
            env = open_envelope(conv.verdict_wire, verify=True)
            if env.sender != conv.owner:
                return False
            content = open_dm(self.peer.identity, env)
        except ProtocolError:
            return False
        payload = None if content.payload is None else cbor2.loads(content.payload)
        return isinstance(payload, dict) and payload.get("verdict") == conv.verdict

    # -- sending -----------------------------------------------------------------------

    async def _send(self, conv: Conversation, to: tuple[bytes, ...], body: str, payload: Any,
                    kind: str) -> bytes | None:
        meta = Meta(kind=kind, conv=conv.id, corr=conv.id)
        data = _cbor.encode(payload)
        last = None
        for peer_id in to:
            try:
                env = await self.peer.send_direct(peer_id, Content(body, data, meta=meta))
            except UnknownPeer:
                self.peer.log.warning("conversation member unknown", peer=peer_id.hex()[:16])
                continue
            last = env.id
        return last

    # -- the task ------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            times = [t for c in self.by_id.values() if c.owner == self.peer.peer_id
                     and (t := c.next_deadline()) is not None]
            delay = TICK_S if not times else max(
                0.0, min(TICK_S, (min(times) - self.peer.wall_ms()) / 1000))
            with trio.move_on_after(delay):
                await self._wake.wait()
            self._wake = trio.Event()
            try:
                await self._step(self.peer.wall_ms())
            except (StoreError, ValueError) as exc:
                self.peer.log.error("conversation step failed", error=str(exc))

    async def _step(self, now_ms: int) -> None:
        mine = [c for c in self.by_id.values() if c.owner == self.peer.peer_id]
        for conv in mine:
            if conv.finished:
                continue
            verdict = conv.verdict_from_votes(now_ms)
            if verdict is not None:
                await self._publish_verdict(conv, verdict)
            elif conv.due(now_ms) and conv.close(now_ms):
                self._record(conv, ["closed"])
                await self._send(conv, conv.participants, "conversation timed out",
                                 {"closed": "timed_out"}, "notification")
        await self._write(list(self._dirty))

    async def _write(self, ids: list[bytes]) -> None:
        for conv_id in ids:
            self._dirty.pop(conv_id, None)
        storage = self.peer.storage
        records = {CONV_PREFIX + i.hex(): (None if c is None else _record_bytes(c))
                   for i in ids for c in [self.by_id.get(i)]}  # None: evicted
        if storage is None or not records:
            return

        await storage.service.write(lambda s: s.write_states(records))


__all__ = ["CONV_PREFIX", "ConversationService"]
