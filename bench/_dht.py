"""Scenario 4: Kademlia lookups among simulated nodes, ``python -m bench._dht``.

The real sans-IO DHT (``dht.DhtNode``, its routing tables and ``Lookup`` state
machines) runs for every node in one process; only the network is simulated:
every RPC is encoded to bytes, carried after a random one-way delay (virtual
time, an event heap, nothing sleeps), decoded and answered by the other
node's ``handle_request``. Routing-table pings are carried the same way.

1. Build: nodes join one after another, each meeting a few random nodes that
   already joined, looking itself up, storing its peer record at the k
   closest nodes it found and refreshing its buckets.
2. Measure: lookups from random nodes, half FIND_NODE for a random key
   (success: how many of the true k closest live nodes it returned), half
   FIND_PEER for a random node's record (success: the record was found).

Prints one JSON line: latency in virtual milliseconds, hops (the longest chain
of replies that led to a result), queries and bytes per lookup, and the real
CPU time the whole simulated network spent per lookup.
"""

from __future__ import annotations

import argparse
import functools
import heapq
import itertools
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from dht import (
    Contact,
    DhtConfig,
    DhtNode,
    ErrorReply,
    Lookup,
    PeerLookup,
    Request,
    Response,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from peer import Identity


class Sim:
    def __init__(self, seed: int, latency: tuple[float, float], config: DhtConfig) -> None:
        self.rng = random.Random(seed)
        self.latency = latency
        self.config = config
        self.now = time.time()  # records carry Unix times; the virtual clock starts now
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._tie = itertools.count()
        self.nodes: list[DhtNode] = []
        self.by_id: dict[bytes, DhtNode] = {}
        self.alive: set[bytes] = set()
        self.rpcs = 0
        self.bytes = 0
        self.error_replies = 0
        self.events = 0

    # -- virtual time --

    def after(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (self.now + delay, next(self._tie), fn))

    def run(self, max_events: int) -> None:
        """Run events in time order until none is left (or ``max_events``)."""
        for _ in range(max_events):
            if not self._queue:
                return
            when, _, fn = heapq.heappop(self._queue)
            self.now = max(self.now, when)
            self.events += 1
            fn()
        raise RuntimeError(f"simulation did not settle within {max_events} events")

    def _delay(self) -> float:
        return self.rng.uniform(*self.latency)

    # -- nodes and RPCs --

    def add_node(self, index: int) -> DhtNode:
        identity = Identity.from_seed(self.rng.getrandbits(256).to_bytes(32, "big"))
        node = DhtNode(
            identity, rng=random.Random(self.rng.getrandbits(64)), now=self.now,
            config=self.config, addrs=(f"ws://10.{index >> 8 & 255}.{index & 255}.1:7433",),
            caps=("relay",),
        )
        self.nodes.append(node)
        self.by_id[node.id] = node
        self.alive.add(node.id)
        return node

    def send(self, src: DhtNode, dst: Contact, req: Request,
             on_reply: Callable[[Response], None]) -> None:
        data = encode_request(req)
        self.rpcs += 1
        self.bytes += len(data)
        sender = src.contact()

        def arrive() -> None:
            if dst.id not in self.alive:
                return  # a dead node never answers; the caller's timeout handles it
            server = self.by_id[dst.id]
            reply = encode_response(server.handle_request(sender, decode_request(data), self.now))
            self.bytes += len(reply)
            self._pings(server)
            self.after(self._delay(), lambda: back(reply))

        def back(reply: bytes) -> None:
            resp = decode_response(reply)
            if isinstance(resp, ErrorReply):
                self.error_replies += 1
            on_reply(resp)
            self._pings(src)

        self.after(self._delay(), arrive)

    def _pings(self, node: DhtNode) -> None:
        for contact in node.take_pings():
            answered = [False]

            def reply(_resp: Response, node: DhtNode = node, contact: Contact = contact,
                      answered: list[bool] = answered) -> None:
                if not answered[0]:
                    answered[0] = True
                    node.ping_result(contact.id, True, self.now)

            def timeout(node: DhtNode = node, contact: Contact = contact,
                        answered: list[bool] = answered) -> None:
                if not answered[0]:
                    answered[0] = True
                    node.ping_result(contact.id, False, self.now)
                    self._pings(node)

            self.send(node, contact, node.ping_request(), reply)
            self.after(self.config.rpc_timeout, timeout)

    # -- lookups --

    def start(self, node: DhtNode, lookup: Lookup,
              on_done: Callable[[Lookup], None] | None = None) -> None:
        finished = False
        timer: float | None = None

        def pump() -> None:
            nonlocal finished, timer
            if finished:
                return
            for contact in node.step(lookup, self.now):
                self.send(node, contact, node.request_for(lookup), reply_from(contact))
            if lookup.done:
                finished = True
                if on_done is not None:
                    on_done(lookup)
                return
            deadline = lookup.next_deadline()
            if deadline is not None and deadline != timer:
                timer = deadline
                self.after(max(0.0, deadline - self.now), pump)

        def reply_from(contact: Contact) -> Callable[[Response], None]:
            def handle(resp: Response) -> None:
                if not finished:
                    node.on_reply(lookup, contact, resp, self.now)
                    pump()

            return handle

        pump()

    def join(self, node: DhtNode, seeds: Sequence[DhtNode]) -> None:
        for seed in seeds:
            node.add_contact(seed.contact(), self.now)

        def joined(lookup: Lookup) -> None:
            for pub in node.due_publications(self.now):
                if pub.key == node.id:
                    for contact in lookup.result():
                        self.send(node, contact, node.publish_request(pub), lambda _r: None)
            for target in node.refresh_targets(self.now):
                self.start(node, node.lookup_node(target, self.now))

        self.start(node, node.lookup_node(node.id, self.now), joined)

    def true_closest(self, target: bytes, k: int) -> set[bytes]:
        t = int.from_bytes(target, "big")
        return set(sorted(self.alive, key=lambda i: int.from_bytes(i, "big") ^ t)[:k])


def _pct(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def _summary(kind: str, rows: list[dict[str, float]]) -> dict[str, Any]:
    if not rows:
        return {"kind": kind, "lookups": 0}
    lat = [r["ms"] for r in rows]
    hops = [r["hops"] for r in rows]
    queries = [r["queries"] for r in rows]
    hist: dict[str, int] = {}
    for h in hops:
        hist[str(int(h))] = hist.get(str(int(h)), 0) + 1
    return {
        "kind": kind,
        "lookups": len(rows),
        "latency_ms": {f"p{p:g}": round(_pct(lat, p), 1) for p in (50, 90, 99, 100)},
        "latency_mean_ms": round(sum(lat) / len(lat), 1),
        "hops_mean": round(sum(hops) / len(hops), 2),
        "hops": {f"p{p:g}": _pct(hops, p) for p in (50, 90, 100)},
        "hops_histogram": dict(sorted(hist.items(), key=lambda kv: int(kv[0]))),
        "queries_mean": round(sum(queries) / len(queries), 1),
        "queries_p90": _pct(queries, 90),
        "success": round(sum(r["success"] for r in rows) / len(rows), 4),
        "timeouts": int(sum(r["timeouts"] for r in rows)),
        "latency_values_ms": [round(x, 1) for x in lat],
    }


def simulate(nodes: int, lookups: int, seed: int, latency_ms: tuple[float, float],
             dead: float, join_interval: float) -> dict[str, Any]:
    config = DhtConfig()
    sim = Sim(seed, (latency_ms[0] / 1000, latency_ms[1] / 1000), config)
    budget = 200_000_000
    cpu0 = time.process_time()
    t0 = sim.now
    for i in range(nodes):
        node = sim.add_node(i)
        if i:
            seeds = sim.rng.sample(sim.nodes[:i], min(3, i))
            sim.after(i * join_interval, functools.partial(sim.join, node, seeds))
    sim.run(budget)
    build_cpu = time.process_time() - cpu0
    build_virtual = sim.now - t0
    rpcs_build = sim.rpcs
    for node in sim.rng.sample(sim.nodes, int(dead * nodes)):
        sim.alive.discard(node.id)
    live = [n for n in sim.nodes if n.id in sim.alive]
    results: dict[str, list[dict[str, float]]] = {"node": [], "peer": []}
    rpcs0, bytes0 = sim.rpcs, sim.bytes
    cpu0 = time.process_time()
    for i in range(lookups):
        origin = sim.rng.choice(live)
        if i % 2 == 0:
            target = sim.rng.getrandbits(256).to_bytes(32, "big")
            truth = sim.true_closest(target, config.k)

            def node_done(lk: Lookup, truth: set[bytes] = truth) -> None:
                found = {c.id for c in lk.result()}
                results["node"].append(_row(lk, len(found & truth) / max(1, len(truth))))

            sim.after(i * 0.2, functools.partial(_start_node, sim, origin, target, node_done))
        else:
            wanted = sim.rng.choice([n for n in live if n is not origin] or live)

            def peer_done(lk: Lookup, wanted: DhtNode = wanted) -> None:
                ok = isinstance(lk, PeerLookup) and lk.record is not None
                results["peer"].append(_row(lk, 1.0 if ok else 0.0))

            sim.after(i * 0.2, functools.partial(_start_peer, sim, origin, wanted.id, peer_done))
    sim.run(budget)
    cpu = time.process_time() - cpu0
    done = len(results["node"]) + len(results["peer"])
    return {
        "nodes": nodes,
        "dead_fraction": dead,
        "one_way_latency_ms": list(latency_ms),
        "k": config.k,
        "alpha": config.alpha,
        "build_cpu_s": round(build_cpu, 2),
        "build_virtual_s": round(build_virtual, 1),
        "build_rpcs": rpcs_build,
        "lookups_done": done,
        "rpcs_per_lookup": round((sim.rpcs - rpcs0) / max(1, done), 1),
        "bytes_per_lookup": round((sim.bytes - bytes0) / max(1, done)),
        "cpu_ms_per_lookup": round(1000 * cpu / max(1, done), 2),
        "error_replies": sim.error_replies,
        "contacts_per_node_mean": round(sum(len(n.table) for n in live) / max(1, len(live)), 1),
        "results": [_summary("FIND_NODE", results["node"]),
                    _summary("FIND_PEER", results["peer"])],
    }


def _start_node(sim: Sim, origin: DhtNode, target: bytes,
                done: Callable[[Lookup], None]) -> None:
    sim.start(origin, origin.lookup_node(target, sim.now), done)


def _start_peer(sim: Sim, origin: DhtNode, target: bytes,
                done: Callable[[Lookup], None]) -> None:
    sim.start(origin, origin.lookup_peer(target, sim.now), done)


def _row(lookup: Lookup, success: float) -> dict[str, float]:
    return {
        "ms": 1000 * (lookup.duration or 0.0),
        "hops": float(lookup.hops),
        "queries": float(lookup.stats.queries),
        "timeouts": float(lookup.stats.timeouts),
        "success": success,
    }


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench._dht", description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=500)
    p.add_argument("--lookups", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--latency-ms", default="10,100", help="one-way delay range, ms")
    p.add_argument("--dead", type=float, default=0.0, help="fraction of nodes dead at lookup time")
    p.add_argument("--join-interval", type=float, default=0.05, help="virtual s between joins")
    args = p.parse_args(argv)
    low, high = (float(x) for x in args.latency_ms.split(","))
    try:
        out = simulate(args.nodes, args.lookups, args.seed, (low, high), args.dead,
                       args.join_interval)
    except Exception as exc:  # the DHT is young: report, do not hide, whatever broke
        print(json.dumps({"ev": "error", "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        raise SystemExit(1) from None
    print(json.dumps({"ev": "done", **out}), flush=True)


if __name__ == "__main__":
    main()
