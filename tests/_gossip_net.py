"""A tiny in-memory network of gossip routers, for the sans-IO gossip tests.

Several GossipRouter instances are driven against each other through a tiny
in-memory network: every ``Send`` is decoded with ``decode_frame`` and handed
to the target router's ``handle_frame``; ``Deliver`` and ``Close`` actions are
collected. Time is a number the test moves by hand.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from peer.protocols._gossip import Action, Close, Deliver, GossipRouter, Send
from peer.wire._envelope import Content, Envelope, seal_message
from peer.wire._frames import AnyFrame, decode_frame, encode_frame
from peer.wire._identity import Identity
from peer.wire._limits import GossipParams

WALL0 = 1_700_000_000_000  # wall clock at the start of every test, ms
TOPIC = "general"

Drop = Callable[[str, str, AnyFrame], bool]


def identity(name: str) -> Identity:
    return Identity.from_seed(hashlib.sha256(name.encode()).digest())


@dataclass
class Net:
    """Routers joined by perfect FIFO links, driven step by step."""

    params: GossipParams = field(default_factory=GossipParams)
    now: float = 0.0
    wall_ms: int = WALL0
    drop: Drop | None = None
    ids: dict[str, Identity] = field(default_factory=dict)
    names: dict[bytes, str] = field(default_factory=dict)
    routers: dict[str, GossipRouter] = field(default_factory=dict)
    queue: deque[tuple[str, str, bytes]] = field(default_factory=deque)
    delivered: dict[str, list[Envelope]] = field(default_factory=dict)
    closes: list[tuple[str, Close]] = field(default_factory=list)
    log: list[tuple[str, str, AnyFrame]] = field(default_factory=list)
    seq: int = 0

    def add(self, name: str, *, relay: bool = True) -> GossipRouter:
        ident = identity(name)
        rng = random.Random(name)
        router = GossipRouter(ident.peer_id, relay=relay, params=self.params, rng=rng)
        self.ids[name] = ident
        self.names[ident.peer_id] = name
        self.routers[name] = router
        self.delivered[name] = []
        return router

    def connect(self, a: str, b: str) -> None:
        ra, rb = self.routers[a], self.routers[b]
        self.apply(a, ra.add_link(self.ids[b].peer_id, relay=rb.relay, now=self.now))
        self.apply(b, rb.add_link(self.ids[a].peer_id, relay=ra.relay, now=self.now))
        self.run()

    def disconnect(self, a: str, b: str) -> None:
        self.apply(a, self.routers[a].remove_link(self.ids[b].peer_id))
        self.apply(b, self.routers[b].remove_link(self.ids[a].peer_id))
        self.run()

    def apply(self, owner: str, actions: Iterable[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.queue.append((owner, self.names[action.peer], action.frame))
            elif isinstance(action, Deliver):
                self.delivered[owner].append(action.envelope)
            elif isinstance(action, Close):
                self.closes.append((owner, action))

    def run(self, max_steps: int = 100_000) -> int:
        steps = 0
        while self.queue:
            steps += 1
            assert steps <= max_steps, "the network does not quiesce"
            src, dst, raw = self.queue.popleft()
            frame = decode_frame(raw)
            if self.drop is not None and self.drop(src, dst, frame):
                continue
            self.log.append((src, dst, frame))
            actions = self.routers[dst].handle_frame(
                self.ids[src].peer_id, frame, raw, self.now, self.wall_ms
            )
            self.apply(dst, actions)
        return steps

    def subscribe(self, name: str, topic: str = TOPIC) -> None:
        self.apply(name, self.routers[name].subscribe(topic))
        self.run()

    def unsubscribe(self, name: str, topic: str = TOPIC) -> None:
        self.apply(name, self.routers[name].unsubscribe(topic))
        self.run()

    def heartbeat(self, *names: str) -> None:
        for name in names or list(self.routers):
            self.apply(name, self.routers[name].heartbeat(self.now))
            self.run()

    def start_timers(self) -> None:
        """Start every router's heartbeat clock at ``now``."""
        for router in self.routers.values():
            router.start(self.now)

    def step(self) -> float:
        """Move ``now`` to the earliest router deadline and fire every due timer."""
        due = min(d for r in self.routers.values() if (d := r.next_deadline()) is not None)
        self.now = max(self.now, due)
        for name, router in self.routers.items():
            self.apply(name, router.handle_timer(self.now))
            self.run()
        return self.now

    def seal(
        self, name: str, body: str = "hi", topic: str = TOPIC, ts: int | None = None
    ) -> Envelope:
        self.seq += 1
        return seal_message(
            self.ids[name],
            topic=topic,
            content=Content(body),
            seq=self.seq,
            ts=self.wall_ms if ts is None else ts,
        )

    def publish(self, name: str, body: str = "hi", topic: str = TOPIC) -> Envelope:
        env = self.seal(name, body, topic)
        self.apply(name, self.routers[name].publish(env, self.now))
        self.run()
        return env

    def frames(self, kind: str, src: str | None = None, dst: str | None = None) -> list[AnyFrame]:
        return [
            f
            for s, d, f in self.log
            if kind == f.TYPE and (src is None or s == src) and (dst is None or d == dst)
        ]

    def got(self, name: str) -> list[bytes]:
        return [env.id for env in self.delivered[name]]

    def pid(self, name: str) -> bytes:
        return self.ids[name].peer_id


def line(*spec: tuple[str, bool], params: GossipParams | None = None) -> Net:
    """Routers connected in a line, in order: (name, relay) pairs."""
    net = Net(params=params or GossipParams())
    for name, relay in spec:
        net.add(name, relay=relay)
    for (a, _), (b, _) in itertools.pairwise(spec):
        net.connect(a, b)
    return net


# -- one router driven by hand ------------------------------------------------------


def feed(
    router: GossipRouter,
    peer: bytes,
    kind: str,
    *,
    now: float = 0.0,
    wall_ms: int = WALL0,
    **fields: Any,
) -> list[Action]:
    raw = encode_frame(kind, **fields)
    return router.handle_frame(peer, decode_frame(raw), raw, now, wall_ms)


def fake_peer(i: int) -> bytes:
    return hashlib.sha256(b"fake peer %d" % i).digest()


def sends(actions: list[Action], kind: str | None = None) -> list[tuple[bytes, AnyFrame]]:
    out = [(a.peer, decode_frame(a.frame)) for a in actions if isinstance(a, Send)]
    return [(p, f) for p, f in out if kind is None or kind == f.TYPE]


def closes(actions: list[Action]) -> list[Close]:
    return [a for a in actions if isinstance(a, Close)]


def delivers(actions: list[Action]) -> list[Envelope]:
    return [a.envelope for a in actions if isinstance(a, Deliver)]
