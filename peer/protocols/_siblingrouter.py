"""The gossip router of one worker of a multi-process seed, sans-IO.

A relay-only seed run with ``--workers N`` is N processes sharing one
identity and one listen port; each holds the links the kernel gave it, and
each is linked to every other one by a *sibling* link (trusted: a Unix
socket in a private directory, no handshake). ``SiblingRouter`` is the
``GossipRouter`` with the rules that make N workers one seed to the outside:

* A sibling is a link keyed by ``sibling_key(i)`` (32 bytes that are not a
  peer id: ``0xff`` and a fixed tag), a relay with interest like any other.
* Full mesh, split horizon: a message is forwarded to every sibling with
  interest in its topic (mesh or not, whatever its hops), except when it came
  from a sibling: that sibling sent it to all the others itself. A topic
  learnt from a sibling is never advertised to another sibling, and costs no
  hop (the workers are one seed), so outside peers see the hops a single
  process would have advertised.
* A sibling already checked the envelope's signature and charged its author:
  its ``pub`` frames are not verified again, and no per-link budget, rate
  limit or score applies to it (it carries the traffic of many links).
* Checked hand-off: a message this worker took off a peer's link and opened
  strictly goes to its siblings as a *checked record* (``peer.wire._checked``:
  the message id and the ``pub`` frame), which ``handle_checked`` routes
  without opening the envelope strictly, hashing its id or re-running the
  first worker's decisions (author limits, age); only the seen-id dedup, the
  store and the forwarding to this worker's links remain. ``handle_checked``
  takes it from a sibling link only: from any other link it is refused and
  the link closed. Frames from the message cache (IWANT answers) and our own
  messages still go to siblings as plain frames, routed as above.

With no sibling registered it behaves exactly like ``GossipRouter``.
"""

from __future__ import annotations

from collections.abc import Iterable

from peer.wire._checked import checked_record, open_checked
from peer.wire._errors import ErrorCode, ProtocolError
from peer.wire._frametypes import AnyFrame
from peer.wire._limits import MAX_INTEREST_HOPS
from peer.wire._stats import Statistics, snapshot

from ._gossip import GossipRouter
from ._gossiptypes import Action, Close, Deliver, Send
from ._interest import Nearest, nearest, with_carrier

__all__ = [
    "Action",
    "Close",
    "Deliver",
    "GossipRouter",
    "Send",
    "SiblingRouter",
    "is_sibling",
    "sibling_key",
]

_TAG = b"\xffclawmesh-worker"
MAX_WORKERS = 64
SIBLING_TOPIC_FACTOR = 1024  # a sibling's topics: up to this many peers' caps


def sibling_key(index: int) -> bytes:
    """The link key of worker ``index``: 32 bytes no Ed25519 peer id can have by chance."""
    if not 0 <= index < MAX_WORKERS:
        raise ValueError(f"worker index {index} out of range")
    return _TAG + bytes(31 - len(_TAG)) + bytes([index])


def is_sibling(key: bytes) -> bool:
    return key.startswith(_TAG) and len(key) == 32


class SiblingRouter(GossipRouter):
    """``GossipRouter`` plus sibling links (see the module header)."""

    siblings: frozenset[bytes] = frozenset()
    _told_sib: dict[str, tuple[Nearest, Nearest]]  # topic -> what the links were last told
    _to_siblings: list[bytes] | None = None  # siblings the message being routed goes to
    _cached: tuple[bytes, bytes] | None = None  # (id, frame) of the message last cached

    def add_sibling(self, key: bytes, now: float) -> list[Action]:
        """A sibling worker is connected: register it and tell it what we reach."""
        if not is_sibling(key):
            raise ValueError("not a sibling key")
        if not self.siblings:
            self._told_sib = {}  # answers are worked out anew from the first sibling on
        self.siblings = self.siblings | {key}
        self.scores.forget_ban(key)  # never refused: a sibling is part of this seed
        return self.add_link(key, relay=True, now=now)

    def statistics(self, now: float | None = None) -> Statistics:
        """``GossipRouter.statistics``, and the sibling workers linked (``siblings``) when
        this is a worker of a seed; ``links`` counts them too."""
        stats = super().statistics(now)
        if not self.siblings:
            return stats
        return snapshot(**dict(stats), siblings=len(self.siblings))

    def remove_link(self, peer: bytes) -> list[Action]:
        if peer in self.siblings:
            self.siblings = self.siblings - {peer}
        return super().remove_link(peer)

    def handle_frame(
        self, peer: bytes, frame: AnyFrame, raw: bytes, now: float, wall_ms: int
    ) -> list[Action]:
        if peer not in self.siblings:
            self._to_siblings = None
            actions = super().handle_frame(peer, frame, raw, now, wall_ms)
            if self._to_siblings is not None:
                actions.extend(self._checked_sends(raw))
            return actions
        link = self._links.get(peer)
        if link is None:
            return []
        self._link_pubs.forget(peer)  # a fresh bucket: never over the per-link limit
        link.last_heard, link.ping_sent = now, None  # alive (no frame or byte budget)
        self.stats.frames_in += 1
        self.stats.bytes_in += len(raw)
        verify, self.verify = self.verify, False  # checked by the sibling that took it
        # a sibling speaks for all its links: their topics together may pass one
        # peer's cap, and a frame it sends is never scored (a ban would split the seed)
        cap, self.topic_cap = self.topic_cap, self.topic_cap * SIBLING_TOPIC_FACTOR
        try:
            return self._dispatch(peer, link, frame, raw, now, wall_ms)
        except ProtocolError as exc:
            self.stats.rejected += 1
            return [Close(peer, exc.code, exc.message)]
        finally:
            self.verify, self.topic_cap = verify, cap

    def _checked_sends(self, raw: bytes) -> list[Action]:
        """The sends to siblings that ``_forward_targets`` held back for the message
        just routed: as a checked record (or its plain frame, should the message
        cached last not be that one)."""
        to, self._to_siblings = self._to_siblings or [], None
        cached = self._cached
        if cached and cached[1] is raw:
            record = checked_record(cached[0], raw, self._took_free)
        else:
            record = raw
        self.stats.forwarded += len(to)
        return [Send(key, record) for key in to]

    def handle_checked(
        self, peer: bytes, mid: bytes, frame: bytes, free: bool, now: float, wall_ms: int
    ) -> list[Action]:
        """A checked record (message id ``mid``, ``pub`` frame ``frame``, ``free`` of
        its author's limit at the sibling) from the link ``peer``: routed as the frame
        would be (see the header), if ``peer`` is a sibling; from any other link it is
        refused and the link closed."""
        link = self._links.get(peer)
        if peer not in self.siblings or link is None:
            self.stats.rejected += 1
            return [Close(peer, ErrorCode.UNEXPECTED, "a checked record from a non-sibling")]
        link.last_heard, link.ping_sent = now, None
        self.stats.frames_in += 1
        self.stats.bytes_in += len(frame)
        if mid in self._seen:
            self.stats.duplicates += 1
            return []
        try:
            env = open_checked(mid, frame)
        except ProtocolError as exc:
            self.stats.rejected += 1
            return [Close(peer, exc.code, exc.message)]
        if not self._author_takes(env.sender, free, now):
            self.stats.sender_limited += 1  # a flooder held here: as for an IWANT answer
            return []
        self._remember(mid, now)
        self.scores.fulfil(mid)
        self.stats.received += 1
        route = env.route
        self._cache(mid, route, frame)
        actions: list[Action] = []
        if route in self._members:
            self.stats.delivered += 1
            actions.append(Deliver(env))
        elif self.observe_all and env.kind != "presence":
            actions.append(Deliver(env, member=False))
        if self.relay:
            actions.extend(self._fill_on_pub(route, now))  # as a pub: see ``_meshfill``
            targets = self._forward_targets(route, exclude=(peer, env.sender))
            actions.extend(Send(target, frame) for target in targets)
            self.stats.forwarded += len(targets)
        return actions

    def _author_takes(self, sender: bytes, free: bool, now: float) -> bool:
        """Whether a checked message of ``sender`` is taken here, charged as it was at
        the sibling (one seed, one bucket): one it charged is charged here too (never
        dropped: the sibling took it within the limit); one it took free (an answer to
        its IWANT) is free here as well, unless ``sender`` is held back here for
        flooding: then it meets the limit, as an answer would (never muting it)."""
        senders = self._senders
        if free and not senders.held(sender, now):
            return True
        if free and not senders.has(sender, now):
            return False
        senders.charge(sender, now)
        return True

    def _cache(self, mid: bytes, route: str, frame: bytes) -> None:
        self._cached = (mid, frame)
        super()._cache(mid, route, frame)

    def _check_graylist(self, peer: bytes, score: float | None, now: float) -> list[Action]:
        if peer in self.siblings:
            return []
        return super()._check_graylist(peer, score, now)

    def _forward_targets(self, route: str, exclude: tuple[bytes, ...]) -> set[bytes]:
        targets = super()._forward_targets(route, exclude)
        siblings = self.siblings
        if not siblings:
            return targets
        targets.difference_update(siblings)  # a sibling in the mesh: sent to below
        if exclude and exclude[0] in siblings:
            return targets
        # held back for ``handle_frame``, which sends them the checked record
        self._to_siblings = [
            key for key in siblings if key not in exclude and route in self._links[key].interest
        ]
        return targets

    def _refresh(
        self, topics: Iterable[str], only: bytes | None = None, changed: bytes | None = None
    ) -> list[Action]:
        """``GossipRouter._refresh`` with siblings: a topic heard from a sibling costs no
        hop, and a sibling is told only what the outside links reach (split horizon).

        Per topic two ``Nearest`` (over every carrier, the siblings' hops as told; over
        the outside carriers only), kept in ``_told_sib`` and moved in one step for a
        new carrier (``_on_sub``), so a subscription costs O(1) per link asked, as
        without siblings; every link is asked only when the first ``Nearest`` moved,
        else the one that changed and the siblings (whose answer is the second's)."""
        siblings = self.siblings
        if not siblings:
            return super()._refresh(topics, only, changed)
        self._told_near.clear()  # the plain router's cache: not kept while siblings exist
        known = topics if isinstance(topics, dict) else {}  # worked out in one step
        cache = self._told_sib if only is not None else {}  # current unless topics changed
        nears = {
            t: known.get(t) or cache.get(t) or self._sibling_nears(t, siblings)
            for t in sorted(topics)
        }
        peers = [only] if only is not None else list(self._links)
        if changed is not None and only is None:
            moved = any(self._told_sib.get(t) != n for t, n in nears.items())
            if not moved:
                peers = [changed, *(s for s in siblings if s != changed)]
        if only is None:
            for topic, pair in nears.items():
                if pair[0].member or pair[0].best is not None:
                    self._told_sib[topic] = pair
                else:
                    self._told_sib.pop(topic, None)  # nobody carries it: forget it
        actions: list[Action] = []
        for peer in peers:
            outside = peer not in siblings
            answers = (
                (t, (everyone if outside else out).excluding(peer, MAX_INTEREST_HOPS))
                for t, (everyone, out) in nears.items()
            )
            actions.extend(self._tell(peer, answers))
        return actions

    def _moved(self, topic: str, peer: bytes, hops: int) -> object:
        """``GossipRouter._moved`` for both ``Nearest`` of a topic with siblings."""
        if not self.siblings:
            return super()._moved(topic, peer, hops)
        pair = self._told_sib.get(topic)
        return None if pair is None else _with_carrier(pair, peer, hops, peer in self.siblings)

    def _sibling_nears(self, topic: str, siblings: frozenset[bytes]) -> tuple[Nearest, Nearest]:
        member, relay = topic in self._members, self.relay
        carriers = [(p, self._links[p].interest[topic]) for p in self._carriers.get(topic, ())]
        # nearest() counts one hop per carrier: a sibling's hops are the seed's own
        everyone = nearest(member, relay, ((p, h - 1 if p in siblings else h) for p, h in carriers))
        out = nearest(member, relay, ((p, h) for p, h in carriers if p not in siblings))
        return everyone, out


def _with_carrier(
    pair: tuple[Nearest, Nearest], peer: bytes, hops: int, sibling: bool
) -> tuple[Nearest, Nearest] | None:
    """``pair`` once ``peer`` (a sibling or not), not a carrier before, told us ``hops``."""
    everyone = with_carrier(pair[0], peer, hops - 1 if sibling else hops)
    out = pair[1] if sibling else with_carrier(pair[1], peer, hops)
    return None if everyone is None or out is None else (everyone, out)
