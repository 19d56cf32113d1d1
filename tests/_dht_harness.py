"""A sans-IO DHT network in one process: virtual clock, message queue, latencies.

``SimNet`` plays the part the Trio service will play for real: it carries
every RPC as bytes (``encode_*`` -> ``decode_message``) from one ``DhtNode``
to another after a random one-way latency, drives lookups with
``step``/``on_reply``/``next_deadline``, performs the pings routing tables ask
for, and publishes records. A dead node never answers; its requests simply
time out. Nothing sleeps: events are popped from a heap in time order.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from dht import (
    Contact,
    DhtConfig,
    DhtNode,
    ErrorReply,
    Lookup,
    Mode,
    Op,
    Publication,
    Relay,
    Request,
    Response,
    answers,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from peer.wire._identity import Identity

T0 = 1_700_000_000.0  # virtual wall clock at the start (record expiries are Unix times)


@dataclass
class LookupRun:
    lookup: Lookup
    node: DhtNode
    on_done: Callable[[LookupRun], None] | None = None
    finished: bool = False
    timer_at: float | None = None


@dataclass
class SimStats:
    rpcs: int = 0
    bytes: int = 0
    pings: int = 0
    lost: int = 0  # requests to dead nodes
    errors: int = 0  # error replies received
    publish_refused: int = 0
    lookups: list[Lookup] = field(default_factory=list)


class SimNet:
    def __init__(
        self,
        rng: random.Random,
        config: DhtConfig,
        *,
        latency: tuple[float, float] = (0.01, 0.1),
        record_lookups: bool = False,
    ) -> None:
        self.rng = rng
        self.config = config
        self.latency = latency
        self.now = T0
        self.nodes: dict[bytes, DhtNode] = {}
        self.order: list[bytes] = []
        self.alive: set[bytes] = set()
        self.stats = SimStats()
        self.record_lookups = record_lookups
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._tie = itertools.count()

    # -- clock --

    def at(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (when, next(self._tie), fn))

    def after(self, delay: float, fn: Callable[[], None]) -> None:
        self.at(self.now + delay, fn)

    def run(self) -> None:
        while self._queue:
            when, _, fn = heapq.heappop(self._queue)
            self.now = max(self.now, when)
            fn()

    def _hop(self) -> float:
        return self.rng.uniform(*self.latency)

    # -- nodes --

    def add_node(
        self,
        index: int,
        mode: Mode = Mode.SERVER,
        relays: tuple[Relay, ...] = (),
        caps: tuple[str, ...] | None = None,
    ) -> DhtNode:
        identity = Identity.from_seed(self.rng.getrandbits(256).to_bytes(32, "big"))
        addr = f"ws://10.{index >> 8 & 255}.{index & 255}.1:7433"
        node = DhtNode(
            identity,
            rng=random.Random(self.rng.getrandbits(64)),
            now=self.now,
            config=self.config,
            mode=mode,
            addrs=(addr,),
            caps=caps if caps is not None else ("relay",) if mode is Mode.SERVER else (),
            relays=relays,
        )
        self.nodes[node.id] = node
        self.order.append(node.id)
        self.alive.add(node.id)
        return node

    def kill(self, node_id: bytes) -> None:
        self.alive.discard(node_id)

    # -- RPCs, as bytes, with latency --

    def send(
        self, src: DhtNode, dst: Contact, req: Request, on_reply: Callable[[Response], None]
    ) -> None:
        data = encode_request(req)
        self.stats.rpcs += 1
        self.stats.bytes += len(data)
        sender = src.contact()

        def arrive() -> None:
            if dst.id not in self.alive or src.id not in self.alive:
                self.stats.lost += 1
                return
            server = self.nodes[dst.id]
            msg = decode_request(data)
            assert msg == req
            reply = encode_response(server.handle_request(sender, msg, self.now))
            self.stats.bytes += len(reply)
            self._service_pings(server)
            self.after(self._hop(), lambda: back(reply))

        def back(reply: bytes) -> None:
            if src.id not in self.alive:
                return
            resp = decode_response(reply)
            assert answers(req, resp)
            if isinstance(resp, ErrorReply):
                self.stats.errors += 1
            on_reply(resp)
            self._service_pings(src)

        self.after(self._hop(), arrive)

    def _service_pings(self, node: DhtNode) -> None:
        for contact in node.take_pings():
            self.ping(node, contact)

    def ping(self, node: DhtNode, contact: Contact) -> None:
        self.stats.pings += 1
        answered = [False]

        def reply(_resp: Response) -> None:
            if not answered[0]:
                answered[0] = True
                node.ping_result(contact.id, True, self.now)

        def timeout() -> None:
            if not answered[0] and node.id in self.alive:
                answered[0] = True
                node.ping_result(contact.id, False, self.now)
                self._service_pings(node)

        self.send(node, contact, node.ping_request(), reply)
        self.after(node.config.rpc_timeout, timeout)

    # -- lookups --

    def start_lookup(
        self, node: DhtNode, lookup: Lookup, on_done: Callable[[LookupRun], None] | None = None
    ) -> LookupRun:
        run = LookupRun(lookup, node, on_done)
        if self.record_lookups:
            self.stats.lookups.append(lookup)
        self._pump(run)
        return run

    def _pump(self, run: LookupRun) -> None:
        if run.finished or run.node.id not in self.alive:
            return
        node, lookup = run.node, run.lookup
        for contact in node.step(lookup, self.now):
            self.send(node, contact, node.request_for(lookup), self._on_reply(run, contact))
        if lookup.done:
            run.finished = True
            if run.on_done is not None:
                run.on_done(run)
            return
        deadline = lookup.next_deadline()
        if deadline is not None and deadline != run.timer_at:
            run.timer_at = deadline
            self.at(deadline, lambda: self._pump(run))

    def _on_reply(self, run: LookupRun, contact: Contact) -> Callable[[Response], None]:
        def handle(resp: Response) -> None:
            if run.finished:
                return
            run.node.on_reply(run.lookup, contact, resp, self.now)
            self._pump(run)

        return handle

    # -- publications --

    def _refused(self, resp: Response) -> None:
        if isinstance(resp, ErrorReply):
            self.stats.publish_refused += 1

    def publish(self, node: DhtNode, pub: Publication) -> None:
        def store(run: LookupRun) -> None:
            for contact in run.lookup.result():
                self.send(node, contact, node.publish_request(pub), self._refused)

        lookup: Lookup
        if pub.op is Op.PUT_CARD:  # cards go to card-serving nodes only
            lookup = node.lookup_card_nodes(pub.key, self.now)
        else:
            lookup = node.lookup_node(pub.key, self.now)
        self.start_lookup(node, lookup, store)

    def publish_due(self, node: DhtNode) -> None:
        for pub in node.due_publications(self.now):
            self.publish(node, pub)

    # -- joining --

    def join(
        self, node: DhtNode, seeds: list[DhtNode], *, publish: bool = True, refresh: bool = False
    ) -> None:
        """Meet the seeds (as after their handshakes), look ourselves up, publish our record.

        With ``refresh`` also refresh every bucket at once (the classic join);
        without, buckets fill from the traffic that reaches us.
        """
        for seed in seeds:
            if seed.id != node.id and seed.id in self.alive:
                node.add_contact(seed.contact(), self.now)

        def joined(run: LookupRun) -> None:
            if refresh:
                for target in node.refresh_targets(self.now):
                    self.start_lookup(node, node.lookup_node(target, self.now))
            if publish:
                for pub in node.due_publications(self.now):
                    if pub.key == node.id:  # our self-lookup found where our record goes
                        for contact in run.lookup.result():
                            self.send(node, contact, node.publish_request(pub), self._refused)
                    else:
                        self.publish(node, pub)

        self.start_lookup(node, node.lookup_node(node.id, self.now), joined)

    def refresh_all(self, spread: float) -> None:
        """Every live node refreshes its stale buckets, starting at random times."""
        for node_id in self.order:
            if node_id in self.alive:
                node = self.nodes[node_id]

                def go(node: DhtNode = node) -> None:
                    for target in node.refresh_targets(self.now):
                        self.start_lookup(node, node.lookup_node(target, self.now))

                self.after(self.rng.uniform(0, spread), go)

    # -- oracles --

    def true_closest(self, target: bytes, n: int, exclude: bytes | None = None) -> list[bytes]:
        t = int.from_bytes(target, "big")
        live = [i for i in self.alive if i != exclude and self.nodes[i].serving]
        return sorted(live, key=lambda i: int.from_bytes(i, "big") ^ t)[:n]
