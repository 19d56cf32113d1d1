"""The one router of a peer's Trio shell: between its links and its protocols.

``Swarm`` is what the ``LinkManager`` tells about links and frames
(``LinkEvents``), and it performs what the sans-IO behaviours decide. Rules
kept here:

* Each frame type has one owner (``_frame_owners``): the gossip router, the
  DHT, catch-up or delivery. A frame is charged to its link's budget, then
  handed to its owner; a ``ProtocolError`` there refuses it and closes the
  link (the ``LinkManager`` does that, and contains any other exception).
* Every decision goes through ``perform``; a link that cannot keep up with
  its send queue is closed as ``SLOW``, never waited for.
* One timer task (``run_timers``) serves every behaviour's
  ``next_deadline()``: the gossip heartbeat and presence; nothing sleeps a
  fixed heartbeat.
* What gossip delivers goes to the store (with one) or straight to the
  inbox; a DM that does not open is counted and dropped; a presence
  announcement updates the directory and wakes the outbox for its sender.

It reaches its peer only through the ``SwarmPeer`` protocol, which mypy
checks where the peer makes its swarm.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import trio

from peer.protocols._gossip import Close, Deliver, Send
from peer.protocols._owntail import OwnTail
from peer.protocols._presence import (
    MAX_PRESENCE_PAYLOAD,
    Presence,
    parse_presence,
    presence_name,
    presence_payload,
    presence_skills,
)
from peer.wire import _cbor
from peer.wire._envelope import (
    PRESENCE_TOPIC,
    Content,
    Envelope,
    open_dm,
    open_envelope,
    payload_value,
    seal_presence,
)
from peer.wire._errors import ErrorCode, ProtocolError
from peer.wire._frametypes import (
    AnyFrame,
    BlobChunk,
    BlobHave,
    BlobNone,
    BlobWant,
    CuPage,
    CuReq,
    Deposit,
    Deposited,
    Dht,
    Error,
    Graft,
    Heads,
    IHave,
    IWant,
    Ping,
    Pong,
    Prune,
    Pub,
    Push,
    Sub,
    Unsub,
)

from ._agents import AgentDirectory
from ._blobhost import BlobHost
from ._checkahead import CheckAhead
from ._dhthost import DhtBridge
from ._host import PeerCore
from ._inbox import PeerInfo
from ._link import Link
from ._storage import Storage

PRESENCE_DEBOUNCE = 5.0
# the gossip router's frames (a set: the swarm tests membership once per frame)
GOSSIP_FRAMES: frozenset[type[AnyFrame]] = frozenset(
    {Pub, Sub, Unsub, Graft, Prune, IHave, IWant, Ping, Pong, Error}
)

BLOB_ANSWERS: frozenset[type[AnyFrame]] = frozenset({BlobHave, BlobChunk, BlobNone})
BLOB_FRAMES = BLOB_ANSWERS | {BlobWant}

# A handler takes the frame class it is registered for.
FrameHandler = Callable[[Link, Any, bytes], None]


class SideLink(Protocol):
    """A link that is not a peer's (a sibling worker's, ``peer.node._siblings``):
    the swarm only sends to it and closes it."""

    peer_id: bytes

    def enqueue(self, frame: bytes) -> bool: ...

    def close(self, code: ErrorCode, reason: str) -> None: ...


class SwarmPeer(PeerCore, Protocol):
    """What the swarm needs from its peer, besides ``PeerCore``."""

    @property
    def storage(self) -> Storage | None: ...
    @property
    def bridge(self) -> DhtBridge | None: ...
    @property
    def listen_urls(self) -> list[str]: ...
    @property
    def caps(self) -> tuple[str, ...]: ...
    @property
    def blobs(self) -> BlobHost: ...
    @property
    def agents(self) -> AgentDirectory: ...
    @property
    def presence_extras(self) -> list[Callable[[], dict[str, Any]]]: ...
    @property
    def presence_hooks(self) -> list[Callable[[Envelope, Any], None]]: ...
    @property
    def envelope_hooks(self) -> list[Callable[[Envelope, bool], None]]: ...
    def notify_changed(self) -> None: ...
    def add_to_inbox(
        self,
        env: Envelope,
        content: Content,
        *,
        channel: str | None,
        peer: bytes | None,
        outgoing: bool,
    ) -> None: ...


class Swarm:
    """Routes link events and frames to the behaviours, and performs their decisions."""

    def __init__(self, peer: SwarmPeer, presence_interval: float) -> None:
        self.peer = peer
        self.presence = Presence(presence_interval, PRESENCE_DEBOUNCE)
        self.own_tail = OwnTail()  # ours that may not have left: sent again ahead of the next
        self._timers_changed = trio.Event()
        self.side_links: dict[bytes, SideLink] = {}  # sibling workers of a seed, by key
        # bursts' signature checks in a worker thread (the link manager uses it)
        on = peer.options.check_ahead and peer.verify
        self.check_ahead = CheckAhead(peer.router, peer.counters) if on else None
        # each frame type has one owner; adding a type adds its class and owner here
        self._frame_owners: dict[type[AnyFrame], FrameHandler] = {
            **dict.fromkeys(GOSSIP_FRAMES, self._on_gossip_frame),
            Dht: self._on_dht_frame,
            CuReq: self._on_cureq_frame,
            CuPage: self._on_cupage_frame,
            Heads: self._on_heads_frame,
            Push: self._on_push_frame,
            Deposit: self._on_deposit_frame,
            Deposited: self._on_deposited_frame,
            **dict.fromkeys(BLOB_FRAMES, self._on_blob_frame),
        }

    def start(self, now: float) -> None:
        self.peer.router.start(now)
        self.presence.start(now)

    # -- links: what the link manager tells us (LinkEvents) ------------------------

    def link_up(self, link: Link) -> None:
        result = link.result
        directory = self.peer.directory
        info = directory.see(link.peer_id, result.public_key, self.peer.wall_ms(), linking=True)
        info.times_linked += 1
        info.listen, info.caps, info.agent = result.listen, result.caps, result.agent
        info.remote = link.transport.remote
        self.perform(self.peer.router.add_link(link.peer_id, relay=link.relay, now=self.peer.now()))
        if self.peer.bridge is not None:
            self.peer.bridge.link_up(link.peer_id)
        if self.peer.storage is not None:
            self.peer.storage.on_link_up(link.peer_id, result.caps)
        self.peer.notify_changed()

    def link_down(self, link: Link) -> None:
        self.peer.directory.unlink(link.peer_id)
        self.perform(self.peer.router.remove_link(link.peer_id))
        if self.peer.bridge is not None:
            self.peer.bridge.link_down(link.peer_id)
        if self.peer.storage is not None:
            self.peer.storage.on_link_down(link.peer_id)
        self.peer.blobs.link_down(link.peer_id)
        self.peer.notify_changed()

    def frame(self, link: Link, frame: AnyFrame, raw: bytes) -> None:
        """One decoded frame: charged to the link, then handed to the behaviour owning it."""
        owner = self._frame_owners.get(type(frame))
        if owner is None:
            raise ProtocolError(ErrorCode.UNEXPECTED, f"{frame.TYPE!r} frame after the handshake")
        # the gossip router charges its own frames; blob answers are charged only
        # when unasked for (a peer's wants bound what it is sent)
        if type(frame) not in GOSSIP_FRAMES and type(frame) not in BLOB_ANSWERS:
            refused = self.peer.router.admit(link.peer_id, len(raw), self.peer.now())
            if refused:
                self.perform(refused)
                return
        owner(link, frame, raw)

    def _on_blob_frame(self, link: Link, frame: Any, raw: bytes) -> None:
        self.peer.blobs.on_frame(link, frame, raw)

    def _on_gossip_frame(self, link: Link, frame: AnyFrame, raw: bytes) -> None:
        peer = self.peer
        self.perform(peer.router.handle_frame(link.peer_id, frame, raw, peer.now(), peer.wall_ms()))
        if isinstance(frame, Sub | Unsub):
            peer.notify_changed()
            if isinstance(frame, Sub) and any(t == PRESENCE_TOPIC for t, _ in frame.topics):
                self.want_presence()  # the link now carries presence: announce ourselves

    def _on_dht_frame(self, link: Link, frame: Dht, raw: bytes) -> None:
        if self.peer.bridge is not None:  # DHT off: requests go unanswered, time out at the asker
            self.peer.bridge.on_message(link.peer_id, frame.message)

    def _on_cureq_frame(self, link: Link, frame: CuReq, raw: bytes) -> None:
        if self.peer.storage is not None:
            self.peer.storage.on_request(link.peer_id, frame)
        else:
            refusal = CuPage(frame.r, frame.topic, (), frame.after, False, (), "not-carried")
            link.enqueue(refusal.encode())

    def _on_cupage_frame(self, link: Link, frame: CuPage, raw: bytes) -> None:
        if self.peer.storage is not None:
            self.peer.storage.on_page(link.peer_id, frame)

    def _on_heads_frame(self, link: Link, frame: Heads, raw: bytes) -> None:
        if self.peer.storage is not None:  # without a store: nothing to compare, ignored
            self.peer.storage.on_heads(link.peer_id, frame)

    def _on_push_frame(self, link: Link, frame: Push, raw: bytes) -> None:
        if self.peer.storage is not None:
            self.peer.storage.on_push(link.peer_id, frame.envelope)
        else:
            self._on_push_memory(link.peer_id, frame.envelope)

    def _on_deposit_frame(self, link: Link, frame: Deposit, raw: bytes) -> None:
        if self.peer.storage is not None:
            self.peer.storage.delivery.mailbox.on_deposit(link.peer_id, frame)
        else:  # no store, no mailbox duty: answered all the same, never silent
            self.peer.counters.refuse(ErrorCode.UNEXPECTED)
            link.enqueue(Deposited(frame.r, "off").encode())

    def _on_deposited_frame(self, link: Link, frame: Deposited, raw: bytes) -> None:
        if self.peer.storage is not None:
            self.peer.storage.delivery.mailbox.on_deposited(link.peer_id, frame)

    # -- performing decisions ------------------------------------------------------

    def publish_own(self, env: Envelope, now: float) -> None:
        """Publish a stored message of ours, after those of its topic that may not have
        left (``OwnTail``: after a start, or after one that had no carrier)."""
        router, route = self.peer.router, env.route
        routed = router.reachable(route)
        ahead = self.own_tail.before(env.log_topic, env.seq, env.wire, routed=routed)
        if ahead:
            carriers = [p for p in router.links() if route in router.interest_of(p)]
            self.perform([Send(p, Pub(w).encode()) for w in ahead for p in carriers])
        self.perform(router.publish(env, now))

    def perform(self, actions: list[Send | Deliver | Close]) -> None:
        for action in actions:
            if isinstance(action, Send):
                link: Link | SideLink | None = self.peer.links.get(action.peer)
                if link is None:
                    link = self.side_links.get(action.peer)
                if link is not None and not link.enqueue(action.frame):
                    self.peer.counters.refuse(ErrorCode.SLOW)
                    self.peer.log.warning("link too slow", link=link.peer_id.hex()[:16])
                    link.close(ErrorCode.SLOW, "not reading fast enough")
            elif isinstance(action, Deliver):
                self._deliver(action.envelope, action.member)
            else:
                link = self.peer.links.get(action.peer) or self.side_links.get(action.peer)
                if link is not None:
                    self.peer.counters.refuse(action.code)
                    self.peer.log.warning(
                        "closing link",
                        link=action.peer.hex()[:16],
                        code=action.code.value,
                        reason=action.reason,
                    )
                    link.close(action.code, action.reason)

    # -- timers --------------------------------------------------------------------

    def _rearm(self) -> None:
        self._timers_changed.set()

    async def run_timers(self) -> None:
        """Call each behaviour's ``handle_timer`` at its ``next_deadline``."""
        while True:
            deadlines = [
                d
                for d in (self.peer.router.next_deadline(), self.presence.next_deadline())
                if d is not None
            ]
            with trio.move_on_at(min(deadlines, default=trio.current_time() + 3600)):
                await self._timers_changed.wait()
            self._timers_changed = trio.Event()
            try:
                self._fire(self.peer.now())
            except Exception as exc:  # a bug: log and count it, keep the timers running
                self.peer.counters.task_errors += 1
                self.peer.log.error("timer crashed", error=repr(exc), exc_info=exc)
                await trio.sleep(1)  # not a hot loop if it keeps failing

    def _fire(self, now: float) -> None:
        self.perform(self.peer.router.handle_timer(now))
        if self.presence.handle_timer(now):
            self._announce_presence()

    def want_presence(self) -> None:
        self.presence.want(self.peer.now())
        self._rearm()

    def _announce_presence(self) -> None:
        base = presence_payload(self.peer.listen_urls, self.peer.caps, self.peer.options.name,
                                self.peer.agents.declared_skills(self.peer.options.skills))
        data = dict(base)
        for extra in self.peer.presence_extras:
            data.update(extra())
        payload = _cbor.encode(data)
        if len(payload) > MAX_PRESENCE_PAYLOAD:  # never let an extra break presence itself
            payload = _cbor.encode(base)
        # presence is not stored: its sequence is the clock, which outlives restarts
        now_ms = self.peer.wall_ms()
        env = seal_presence(self.peer.identity, payload=payload, seq=now_ms, ts=now_ms)
        self.perform(self.peer.router.publish(env, self.peer.now()))

    def _deliver(self, env: Envelope, member: bool = True) -> None:
        now_ms = self.peer.wall_ms()
        info = self.peer.directory.see(env.sender, env.sender_key, now_ms)
        if env.kind == "presence":
            self._on_presence(env, info)
            return
        for hook in self.peer.envelope_hooks:
            hook(env, member)
        if self.peer.storage is not None:
            self.peer.storage.accept(env, member=member)
            return
        if env.kind == "receipt" or not member:
            return
        outgoing = env.sender == self.peer.peer_id
        if env.kind == "dm":
            try:
                content = open_dm(self.peer.identity, env)
            except ProtocolError as exc:
                self.peer.counters.dm_undecryptable += 1
                self.peer.log.warning(
                    "DM does not open", sender=env.sender.hex()[:16], reason=exc.message
                )
                return
            self.peer.add_to_inbox(env, content, channel=None, peer=env.sender, outgoing=outgoing)
        else:
            self.peer.add_to_inbox(
                env, env.content(), channel=env.topic, peer=None, outgoing=outgoing
            )

    def _on_push_memory(self, link_peer: bytes, wire: bytes) -> None:
        """A pushed DM without a store: deliver it once, like one from gossip."""
        try:
            env = open_envelope(wire, verify=self.peer.verify)
        except ProtocolError as exc:
            link = self.peer.links.get(link_peer)
            if link is not None:
                self.peer.counters.refuse(exc.code)
                self.peer.log.warning("push refused", link=link_peer.hex()[:16], reason=exc.message)
                link.close(exc.code, exc.message)
            return
        if (
            env.kind == "dm"
            and env.recipient == self.peer.peer_id
            and not self.peer.router.seen(env.id)
        ):
            self.peer.router.note_seen(env.id, self.peer.now())
            self._deliver(env)

    def _on_presence(self, env: Envelope, info: PeerInfo) -> None:
        if env.sender == self.peer.peer_id:
            return
        try:
            data = payload_value(env.fields["payload"])
        except ProtocolError:
            return
        listen, caps = parse_presence(data)
        for hook in self.peer.presence_hooks:
            hook(env, data)
        info.name = presence_name(data) or ""
        info.extra["skills"] = presence_skills(data)
        if listen is not None:
            info.listen = listen
        if caps is not None:
            info.caps = caps
        if self.peer.storage is not None:
            self.peer.storage.wake_outbox(env.sender)
        if info.extra.get("presence_seq", -1) < env.seq:
            first = "presence_seq" not in info.extra
            info.extra["presence_seq"] = env.seq
            self.peer.notify_changed()
            if first:
                self.want_presence()  # let a newcomer learn of us soon
