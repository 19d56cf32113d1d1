"""The gossip pub/sub router, sans-IO: frames and time in, decisions out.

Rules kept here (protocol-spec/gossip.md):

* Interest. Each link tells us the topics it wants as ``[topic, hops]``:
  hops 0 means the peer itself subscribes, hops n means a subscriber is n
  relays beyond it. A relay advertises every topic it can reach within
  ``MAX_INTEREST_HOPS``, with split horizon (never back over the link it
  learned it from); a non-relay advertises only its own subscriptions. This
  is what lets a relay-only seed in the middle of a line carry a channel.
* Forwarding. A message is verified once (or checked ahead by the shell,
  ``_checkahead``: ``Vouching``). Its own author floods it to every
  link with interest. A relay forwards the received bytes to its direct
  subscribers (hops 0) and to its transit mesh for the topic: a bounded set
  (``mesh_low``..``mesh_high``) of relays with interest, kept with GRAFT and
  PRUNE at each heartbeat. Non-relays forward nothing.
* Repair. Each heartbeat a peer sends IHAVE with recent message ids to a few
  interested links outside the mesh; they ask with IWANT for what they miss.
* Dedup. A message id is remembered (bounded count and age); a message older
  than ``max_age`` by its author's clock is not relayed by gossip.
* Budgets. Each link has a frame and byte budget; overrunning it, sending a
  frame that does not parse, or an envelope that does not verify closes it.
* Spam (``_score.py``). New envelopes are limited per author (checked before
  the signature; only the author's own link is penalised; not what we asked
  for, ``_asked.py``) and ``pub`` frames per link; our own too (``check_publish``).
  A decaying score per peer: below thresholds no IHAVE, no mesh, closed, banned.

Nothing here performs I/O: every method returns a list of actions (``Send``,
``Deliver``, ``Close``) for the Trio shell to carry out, in order.
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from collections.abc import Iterable

from peer.wire._envelope import Envelope, message_id, open_envelope, split_wire
from peer.wire._errors import ErrorCode, ProtocolError
from peer.wire._frametypes import (
    AnyFrame,
    Error,
    Graft,
    IHave,
    IWant,
    Ping,
    Pong,
    Prune,
    Pub,
    Sub,
    Unsub,
)
from peer.wire._limits import (
    MAX_IDS_PER_FRAME,
    MAX_INTEREST_HOPS,
    MAX_TOPICS_PER_FRAME,
    MAX_TOPICS_PER_PEER,
    GossipParams,
)
from peer.wire._stats import Statistics, snapshot

from ._asked import AskBook, Asking
from ._checkahead import Vouching
from ._gossiptypes import Action, Close, Deliver, GossipCounters, LinkState, Send
from ._interest import Nearest, nearest, to_tell, with_carrier
from ._meshfill import MeshFill
from ._score import Buckets, Scoreboard

__all__ = ["Action", "Close", "Deliver", "GossipCounters", "GossipRouter", "Send"]


class GossipRouter(Vouching, Asking, MeshFill):
    """Routing state of one peer. ``now`` is monotonic seconds from the shell."""

    def __init__(
        self,
        me: bytes,
        *,
        relay: bool = True,
        params: GossipParams | None = None,
        rng: random.Random | None = None,
        keepalive: float = 5.0,
        idle_timeout: float = 15.0,
        verify: bool = True,
        observe_all: bool = False,
    ) -> None:
        self.me = me
        self.verify, self.topic_cap = verify, MAX_TOPICS_PER_PEER  # verify: off for benches
        self.observe_all = observe_all  # report relayed envelopes too (a storing seed)
        self.relay = relay
        self.params = params or GossipParams()
        self._rng = rng or random.Random()
        self._keepalive, self._idle_timeout = keepalive, idle_timeout
        self._links: dict[bytes, LinkState] = {}
        self._members: set[str] = set()
        self._carriers: dict[str, set[bytes]] = {}  # topic -> links with interest
        self._told_near: dict[str, Nearest] = {}  # topic -> what every link was last told
        self._mesh: dict[str, set[bytes]] = {}
        self._no_transit: set[str] = set()  # topics with no transit relay (``MeshFill``)
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._mcache: dict[bytes, tuple[str, bytes]] = {}
        self._windows: deque[list[bytes]] = deque([[]])
        self._ping_n, self._last_beat = 0, 0.0
        self._next_heartbeat: float | None = None
        self.stats, p = GossipCounters(), self.params
        self._senders = Buckets.for_authors(p, me)
        self._link_pubs = Buckets(p.link_pub_rate, p.link_pub_burst, p.score_max_peers)
        self.scores, self._asked = Scoreboard(p), AskBook.of(p)
        self._took_free = False  # the last pub taken was an answer free of its limit
        self._prune, self._graylist = p.prune_threshold, p.graylist_threshold

    # -- queries ---------------------------------------------------------------

    @property
    def subscriptions(self) -> frozenset[str]:
        return frozenset(self._members)

    def links(self) -> list[bytes]:
        return list(self._links)

    def interest_of(self, peer: bytes) -> dict[str, int]:
        return dict(self._links[peer].interest)

    def mesh_of(self, topic: str) -> frozenset[bytes]:
        return frozenset(self._mesh.get(topic, ()))

    def reachable(self, topic: str) -> bool:
        """True if some link carries ``topic`` (a publish would go somewhere)."""
        return bool(self._carriers.get(topic))

    def note_seen(self, msg_id: bytes, now: float) -> None:
        """A message that reached us another way (catch-up, a push): drop its gossip copies."""
        self._remember(msg_id, now)

    def statistics(self, now: float | None = None) -> Statistics:
        """Counters and sizes, and each link's score (at ``now``, or the last heartbeat)."""
        scores = self.scores.snapshot(list(self._links), self._last_beat if now is None else now)
        return snapshot(
            self.stats,
            links=len(self._links),
            subscriptions=len(self._members),
            topics_known=len(self._carriers),
            seen_cache=len(self._seen),
            message_cache=len(self._mcache),
            senders_tracked=len(self._senders),
            **self.scores.sizes(),
            scores=scores,
        )

    # -- links -----------------------------------------------------------------

    def add_link(self, peer: bytes, *, relay: bool, now: float) -> list[Action]:
        """A link finished its handshake: tell it what we carry."""
        if peer in self._links:
            raise ValueError("link already open")
        p = self.params
        self._links[peer] = LinkState(
            relay=relay,
            opened=now,
            frame_tokens=p.frame_burst,
            byte_tokens=p.byte_burst,
            refilled=now,
            iwant_budget=p.iwant_per_heartbeat,
            last_heard=now,
        )
        if self.scores.banned(peer, now):
            self._links[peer].graylisted = True
            self.stats.banned_refused += 1
            return [Close(peer, ErrorCode.RATE, "banned for a low score; try later")]
        topics = set(self._members) | set(self._carriers)
        return self._refresh(topics, only=peer)

    def remove_link(self, peer: bytes) -> list[Action]:
        link = self._links.pop(peer, None)
        if link is None:
            return []
        self._link_pubs.forget(peer)
        for topic in link.interest:
            self._drop_carrier(topic, peer)
        for members in self._mesh.values():
            members.discard(peer)
        return self._refresh(set(link.interest))

    # -- local API -------------------------------------------------------------

    def subscribe(self, topic: str) -> list[Action]:
        if topic in self._members:
            return []
        self._members.add(topic)
        return self._refresh({topic})

    def unsubscribe(self, topic: str) -> list[Action]:
        if topic not in self._members:
            return []
        self._members.discard(topic)
        return self._refresh({topic})

    def check_publish(self, now: float) -> None:
        """Raise ``ProtocolError(RATE)`` if our own publishing is over the per-author
        limit; call it before signing (and storing) a message of the agent's."""
        if not self._senders.has(self.me, now):
            rate = self.params.sender_rate
            raise ProtocolError(ErrorCode.RATE, f"over the publishing limit of {rate:g}/s")

    def held_back(self, sender: bytes, now: float) -> bool:  # dropped over its limit lately
        return self._senders.held(sender, now)  # (over_limit_mute_s): its repairs wait

    def publish(self, env: Envelope, now: float) -> list[Action]:
        """Our own message: remember it, deliver it locally, flood it. It is charged
        to our author bucket but never refused here (it may be stored already)."""
        if env.id in self._seen:
            return []
        self._senders.charge(env.sender, now)
        self._remember(env.id, now)
        frame = Pub(env.wire).encode()
        self._cache(env.id, env.route, frame)
        self.stats.published += 1
        actions: list[Action] = []
        if env.route in self._members:
            actions.append(Deliver(env))
        actions.extend(Send(p, frame) for p in self._carriers.get(env.route, ()))
        return actions

    # -- network ---------------------------------------------------------------

    def handle_frame(
        self, peer: bytes, frame: AnyFrame, raw: bytes, now: float, wall_ms: int
    ) -> list[Action]:
        """One decoded frame from ``peer``. ``raw`` is its plaintext bytes."""
        link = self._links.get(peer)
        if link is None or link.graylisted:
            return []
        try:
            self._admit(link, len(raw), now)
            return self._dispatch(peer, link, frame, raw, now, wall_ms)
        except ProtocolError as exc:
            self.stats.rejected += 1
            if self.scores.penalize(peer, self.params.invalid_penalty, now) < self._graylist:
                self.scores.ban(peer, now)
            return [Close(peer, exc.code, exc.message)]

    def _score_ok(self, peer: bytes, threshold: str, now: float) -> bool:
        """``peer``'s score is at least the ``gossip`` or ``prune`` threshold."""
        floor = self.params.gossip_threshold if threshold == "gossip" else self._prune
        return self.scores.score(peer, now) >= floor

    def _penalize(self, peer: bytes, amount: float, now: float) -> list[Action]:
        return self._check_graylist(peer, self.scores.penalize(peer, amount, now), now)

    def _check_graylist(self, peer: bytes, score: float | None, now: float) -> list[Action]:
        link = self._links.get(peer)
        if score is None or score >= self._graylist or link is None:
            return []
        link.graylisted = True
        self.scores.ban(peer, now)
        self.stats.graylisted += 1
        for members in self._mesh.values():
            members.discard(peer)
        return [Close(peer, ErrorCode.RATE, f"score {score:.0f} below the graylist threshold")]

    def admit(self, peer: bytes, size: int, now: float) -> list[Action]:
        """A frame that another behaviour owns came from ``peer``: charge it to the
        link's budget and note the link alive; a ``Close`` if over budget."""
        if (link := self._links.get(peer)) is None:
            return []
        try:
            self._admit(link, size, now)
        except ProtocolError as exc:
            self.stats.rejected += 1
            return [Close(peer, exc.code, exc.message)]
        return []

    def _admit(self, link: LinkState, size: int, now: float) -> None:
        self._charge(link, size, now)
        link.last_heard = now
        link.ping_sent = None

    def _charge(self, link: LinkState, size: int, now: float) -> None:
        p = self.params
        elapsed = max(0.0, now - link.refilled)
        link.refilled = now
        link.frame_tokens = min(p.frame_burst, link.frame_tokens + elapsed * p.frames_per_second)
        link.byte_tokens = min(p.byte_burst, link.byte_tokens + elapsed * p.bytes_per_second)
        link.frame_tokens -= 1
        link.byte_tokens -= size
        self.stats.frames_in += 1
        self.stats.bytes_in += size
        if link.frame_tokens < 0 or link.byte_tokens < 0:
            raise ProtocolError(ErrorCode.RATE, "frame or byte budget exceeded")

    def _dispatch(
        self, peer: bytes, link: LinkState, frame: AnyFrame, raw: bytes, now: float, wall_ms: int
    ) -> list[Action]:
        match frame:
            case Pub():
                return self._on_pub(peer, frame.envelope, raw, now, wall_ms)
            case Sub():
                return self._on_sub(peer, link, frame.topics)
            case Unsub():
                return self._on_unsub(peer, link, frame.topics)
            case Graft():
                return self._on_graft(peer, frame.topic, now)
            case Prune():
                self._mesh.get(frame.topic, set()).discard(peer)
                return []
            case IHave():
                return self._on_ihave(peer, frame.ids, now)
            case IWant():
                return self._on_iwant(peer, link, frame.ids)
            case Ping():
                return [Send(peer, Pong(frame.n).encode())]
            case Pong():
                return []
            case Error():
                return [Close(peer, ErrorCode.SHUTDOWN, f"peer said {frame.code}: {frame.msg}")]
        raise ProtocolError(ErrorCode.UNEXPECTED, f"{frame.TYPE!r} frame after the handshake")

    def _on_pub(
        self, peer: bytes, wire: bytes, raw: bytes, now: float, wall_ms: int
    ) -> list[Action]:
        p = self.params
        if not self._link_pubs.take(peer, now):
            self.stats.link_limited += 1
            return self._penalize(peer, p.over_limit_penalty, now)
        signed, sig = split_wire(wire)
        mid = message_id(signed)
        if mid in self._seen:
            self.stats.duplicates += 1
            return self._check_graylist(peer, self.scores.duplicate(peer, now), now)
        env = open_envelope(wire, signed=signed, sig=sig, verify=False, mid=mid)
        asked = self._asked.answered(peer, mid, now)  # we asked: not the author's doing,
        free = asked and not self._senders.held(env.sender, now)  # unless it flooded lately
        self._took_free = free  # what a sibling worker is told (``_siblingrouter``)
        if not free and not self._senders.has(env.sender, now):  # dropped unverified:
            self.stats.sender_limited += 1  # a forged copy must not hide the real one
            self.scores.fulfil(mid)  # an IWANT answered with it was a promise kept
            if peer != env.sender or asked:  # a relay is not charged: its buckets fill at
                return []  # its pace; an answer we asked for is not its link's doing
            self._senders.mute(peer, now + p.over_limit_mute_s)  # over it itself: muted here
            return self._penalize(peer, p.over_limit_penalty, now)
        if self.verify:
            self.check_envelope(env.sender_key, mid, signed, sig)
        if env.ts < wall_ms - p.max_age * 1000:
            self.stats.stale += 1
            self._remember(mid, now)  # it can only get older: skip verifying its copies
            return []
        if env.ts > wall_ms + p.max_skew * 1000:
            self.stats.stale += 1  # from the future: not remembered, it may be in time later
            return []
        self._remember(mid, now)
        self.scores.fulfil(mid)
        if not free:
            self._senders.charge(env.sender, now)
        self.stats.received += 1
        route = env.route
        self._cache(mid, route, raw)
        actions: list[Action] = []
        if route in self._members:
            self.stats.delivered += 1
            self.scores.reward(peer, now)
            actions.append(Deliver(env))
        elif self.observe_all and env.kind != "presence":
            actions.append(Deliver(env, member=False))
        if self.relay:
            # before the heartbeat built this topic's mesh? graft now, not at gossip repair
            actions.extend(self._fill_on_pub(route, now))
            targets = self._forward_targets(route, exclude=(peer, env.sender))
            actions.extend(Send(target, raw) for target in targets)
            self.stats.forwarded += len(targets)
        return actions

    def _forward_targets(self, route: str, exclude: tuple[bytes, ...]) -> set[bytes]:
        targets = set(self._mesh.get(route, ()))
        for p in self._carriers.get(route, ()):
            if self._links[p].interest.get(route) == 0:
                targets.add(p)
        targets.difference_update(exclude)
        return targets

    def _on_sub(
        self, peer: bytes, link: LinkState, entries: tuple[tuple[str, int], ...]
    ) -> list[Action]:
        changed: dict[str, object] = {}  # topic -> its Nearest now, if known (_moved)
        for topic, hops in entries:
            if topic not in link.interest and len(link.interest) >= self.topic_cap:
                raise ProtocolError(ErrorCode.TOO_LARGE, "too many topics from one peer")
            if link.interest.get(topic) != hops:
                moved = self._moved(topic, peer, hops) if topic not in link.interest else None
                link.interest[topic] = hops
                self._interest_changed(topic)
                self._carriers.setdefault(topic, set()).add(peer)
                changed[topic] = moved
        return self._refresh(changed, changed=peer)

    def _moved(self, topic: str, peer: bytes, hops: int) -> object:  # a subclass: its own
        return with_carrier(self._told_near.get(topic), peer, hops)  # (new carrier, 1 step)

    def _on_unsub(self, peer: bytes, link: LinkState, topics: tuple[str, ...]) -> list[Action]:
        changed: set[str] = set()
        for topic in topics:
            if link.interest.pop(topic, None) is not None:
                self._drop_carrier(topic, peer)
                changed.add(topic)
        return self._refresh(changed, changed=peer)

    def _on_graft(self, peer: bytes, topic: str, now: float) -> list[Action]:
        # a non-relay keeps no mesh: never create an entry it would not clean up
        mesh = self._mesh.setdefault(topic, set()) if self.relay else set()
        if peer in mesh:
            return []
        low = not self._score_ok(peer, "prune", now)
        if len(mesh) >= self.params.mesh_high or not self.relay or low:
            self.stats.prunes += 1
            return [Send(peer, Prune(topic).encode())]
        mesh.add(peer)
        return []

    def _on_iwant(self, peer: bytes, link: LinkState, ids: tuple[bytes, ...]) -> list[Action]:
        actions: list[Action] = []
        for i in ids:
            if link.iwant_budget <= 0:
                break
            cached = self._mcache.get(i)
            if cached is not None:
                link.iwant_budget -= 1
                actions.append(Send(peer, cached[1]))
        self.stats.iwant_served += len(actions)
        return actions

    # -- interest --------------------------------------------------------------

    def _drop_carrier(self, topic: str, peer: bytes) -> None:
        if (carriers := self._carriers.get(topic)) is not None:
            carriers.discard(peer)
            if not carriers:
                del self._carriers[topic]

    def _near(self, topic: str) -> Nearest:
        hops = ((p, self._links[p].interest[topic]) for p in self._carriers.get(topic, ()))
        return nearest(topic in self._members, self.relay, hops)

    def _refresh(
        self, topics: Iterable[str], only: bytes | None = None, changed: bytes | None = None
    ) -> list[Action]:
        """Re-advertise ``topics`` to every link (or one) where the answer changed."""
        known = topics if isinstance(topics, dict) else {}  # Nearest already worked out
        cache = self._told_near if only is not None else {}  # current unless topics changed
        nears = {t: known.get(t) or cache.get(t) or self._near(t) for t in sorted(topics)}
        actions: list[Action] = []
        for peer in to_tell(self._told_near, nears, list(self._links), only, changed):
            answers = ((t, near.excluding(peer, MAX_INTEREST_HOPS)) for t, near in nears.items())
            actions.extend(self._tell(peer, answers))
        return actions

    def _tell(self, peer: bytes, answers: Iterable[tuple[str, int | None]]) -> list[Action]:
        """``sub``/``unsub`` frames for the answers (topic, hops) ``peer`` was not told."""
        actions: list[Action] = []
        link = self._links[peer]
        subs: list[tuple[str, int]] = []
        unsubs: list[str] = []
        for topic, hops in answers:
            if link.told.get(topic) == hops:
                continue
            if hops is None:
                del link.told[topic]
                unsubs.append(topic)
            else:
                link.told[topic] = hops
                subs.append((topic, hops))
        for i in range(0, len(subs), MAX_TOPICS_PER_FRAME):
            actions.append(Send(peer, Sub(tuple(subs[i : i + MAX_TOPICS_PER_FRAME])).encode()))
        for i in range(0, len(unsubs), MAX_TOPICS_PER_FRAME):
            actions.append(Send(peer, Unsub(tuple(unsubs[i : i + MAX_TOPICS_PER_FRAME])).encode()))
        return actions

    # -- caches ----------------------------------------------------------------

    def _remember(self, mid: bytes, now: float) -> None:
        seen = self._seen
        seen[mid] = now + self.params.seen_ttl
        while seen:
            oldest, expiry = next(iter(seen.items()))
            if expiry > now and len(seen) <= self.params.seen_max:
                break
            del seen[oldest]

    def _cache(self, mid: bytes, route: str, frame: bytes) -> None:
        self._mcache[mid] = (route, frame)
        self._windows[-1].append(mid)

    # -- time ------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Start the heartbeat clock: the first one is due ``heartbeat`` seconds after ``now``."""
        self._next_heartbeat = now + self.params.heartbeat

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must be called next (None before :meth:`start`)."""
        return self._next_heartbeat

    def handle_timer(self, now: float) -> list[Action]:
        """Run the heartbeat if it is due; the next one is due a ``heartbeat`` later."""
        if self._next_heartbeat is None or now < self._next_heartbeat:
            return []
        self._next_heartbeat = now + self.params.heartbeat
        return self.heartbeat(now)

    def heartbeat(self, now: float) -> list[Action]:
        """Mesh maintenance, gossip, cache shift and keepalive; call every ``heartbeat`` s."""
        self._last_beat = now
        actions = self._police(now)
        actions.extend(self._maintain_mesh(now))
        actions.extend(self._gossip(now))
        self._windows.append([])
        while len(self._windows) > self.params.history_windows:
            for mid in self._windows.popleft():
                self._mcache.pop(mid, None)
        for peer, link in self._links.items():
            link.iwant_budget = self.params.iwant_per_heartbeat
            silent = now - link.last_heard
            if silent > self._idle_timeout:
                actions.append(Close(peer, ErrorCode.TIMEOUT, f"silent for {silent:.0f}s"))
            elif silent > self._keepalive and link.ping_sent is None:
                self._ping_n += 1
                link.ping_sent = now
                actions.append(Send(peer, Ping(self._ping_n).encode()))
        return actions

    def _police(self, now: float) -> list[Action]:
        """Broken promises; links below graylist are closed, below prune leave meshes."""
        self.stats.broken_promises += len(self.scores.expire_promises(now))
        actions = []
        for peer in sorted(self._links):
            score = self.scores.score(peer, now)
            actions.extend(self._check_graylist(peer, score, now))
            if score < self._prune:
                for topic in sorted(t for t, m in self._mesh.items() if peer in m):
                    self._mesh[topic].discard(peer)
                    self.stats.prunes += 1
                    actions.append(Send(peer, Prune(topic).encode()))
        return actions

    def _maintain_mesh(self, now: float) -> list[Action]:
        if not self.relay:
            return []
        p = self.params
        actions: list[Action] = []
        for topic in sorted(set(self._carriers) | set(self._mesh)):
            mesh = self._mesh.setdefault(topic, set())
            mesh.intersection_update(q for q in mesh if topic in self._links[q].interest)
            if len(mesh) > p.mesh_high:
                for q in self._rng.sample(sorted(mesh), len(mesh) - p.mesh_degree):
                    mesh.discard(q)
                    self.stats.prunes += 1
                    actions.append(Send(q, Prune(topic).encode()))
            else:
                actions.extend(self._fill_mesh(topic, now))
            if not mesh and topic not in self._carriers:
                del self._mesh[topic]
        return actions

    def _gossip(self, now: float) -> list[Action]:
        recent: dict[str, list[bytes]] = {}
        for window in self._windows:
            for mid in window:
                cached = self._mcache.get(mid)
                if cached is not None:
                    recent.setdefault(cached[0], []).append(mid)
        actions: list[Action] = []
        for topic, ids in sorted(recent.items()):
            mesh = self._mesh.get(topic, set())
            ok = [q for q in self._carriers.get(topic, ()) if q not in mesh]
            candidates = sorted(q for q in ok if self._score_ok(q, "gossip", now))
            if not candidates:
                continue
            chosen = self._rng.sample(candidates, min(len(candidates), self.params.gossip_degree))
            frame = IHave(topic, tuple(ids[-MAX_IDS_PER_FRAME:])).encode()
            for q in chosen:
                self.stats.ihave_sent += 1
                actions.append(Send(q, frame))
        return actions
