"""Measurement, not a test: does a flood from one peer hurt honest subscribers?

``python -m tests._flood_latency [--seconds S]`` runs in-process peers on
memory links (real links, handshakes, encryption, signatures; no store, no
DHT): a relay-only seed R; an honest publisher H and a spammer S linked to R;
two subscribers linked to R. H publishes 20 messages/s on ``lobby`` for S
seconds; each subscriber records, for every honest message, the time from
H's send to its inbox. Three runs: no flood (baseline); S flooding at 10x the
per-author limit through its router (a hostile peer skips its own check) with
the limits on (50/s, burst 200, stricter than the defaults); the same flood
with the limits off. It prints p50/p99 of the
honest latency, what the subscribers received from S and R's counters.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from dataclasses import replace

import trio

from peer import Identity, Peer, PeerOptions, memory_link_pair
from peer.node._inbox import InboxMessage
from peer.wire._envelope import Content, seal_message
from peer.wire._limits import GossipParams

CHANNEL = "lobby"
HONEST_RATE = 20.0


async def _link(a: Peer, b: Peer) -> None:
    ta, tb = memory_link_pair()
    a.start_link(ta, initiator=True)
    b.start_link(tb, initiator=False)
    with trio.fail_after(10):
        while b.peer_id not in a.links or a.peer_id not in b.links:
            await a.wait_changed()


def _carried(relay: Peer, readers: list[Peer], senders: tuple[Peer, ...]) -> bool:
    """The relay carries the channel to every reader, and every sender reaches it."""
    wanted = all(CHANNEL in relay.router.interest_of(r.peer_id) for r in readers)
    return wanted and all(s.router.reachable(CHANNEL) for s in senders)


async def _drain(reader: Peer, done: Callable[[], bool]) -> None:
    """Wait (5 s at most) for the last honest messages still on their way."""
    with trio.move_on_after(5):
        while not done():
            await reader.wait_inbox_changed()


async def run(seconds: float, flood: bool, params: GossipParams) -> dict[str, float]:
    sent: dict[str, float] = {}
    latencies: list[float] = []
    spam_got = [0]

    def recorder(peer: Peer) -> None:
        original = peer.add_inbox_message

        def record(message: InboxMessage) -> None:
            if message.body.startswith("h"):
                latencies.append(trio.current_time() - sent[message.body])
            elif message.body.startswith("s"):
                spam_got[0] += 1
            original(message)

        peer.add_inbox_message = record  # type: ignore[method-assign]

    def make(i: int, **kw: object) -> Peer:
        opts = PeerOptions(dht=False, gossip=params, seed=i, **kw)  # type: ignore[arg-type]
        return Peer(Identity.generate(), opts)

    relay = make(1, relay_only=True)
    honest, spammer = make(2), make(3)
    readers = [make(4 + i, channels=(CHANNEL,)) for i in range(2)]
    for r in readers:
        recorder(r)
    async with trio.open_nursery() as nursery:
        for p in (relay, honest, spammer, *readers):
            await nursery.start(p.run)
        for p in (honest, spammer, *readers):
            await _link(p, relay)
        with trio.fail_after(10):
            while not _carried(relay, readers, (honest, spammer)):
                await relay.wait_changed()

        async def spam() -> None:
            rate = params.sender_rate * 10 if params.sender_rate else 500.0
            n = 0
            start = trio.current_time()
            while trio.current_time() - start < seconds:
                for _ in range(10):
                    n += 1
                    env = seal_message(
                        spammer.identity, topic=CHANNEL, content=Content(f"s{n}"),
                        seq=n, ts=spammer.wall_ms(),
                    )
                    spammer.perform(spammer.router.publish(env, spammer.now()))
                await trio.sleep(10 / rate)

        if flood:
            nursery.start_soon(spam)
        for i in range(int(seconds * HONEST_RATE)):
            body = f"h{i}"
            sent[body] = trio.current_time()
            honest.publish(CHANNEL, Content(body))
            await trio.sleep(1 / HONEST_RATE)  # pacing the honest publisher
        await _drain(readers[0], lambda: len(latencies) >= len(sent) * len(readers))
        stats = relay.router.statistics()
        nursery.cancel_scope.cancel()
    expected = len(sent) * len(readers)
    lat = sorted(latencies)
    return {
        "honest_delivered": len(lat) / expected,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
        "spam_per_reader": spam_got[0] / len(readers),
        "relay_sender_limited": stats["sender_limited"],
        "relay_graylisted": stats["graylisted"],
    }


async def main(seconds: float) -> None:
    on = GossipParams(sender_rate=50.0, sender_burst=200.0)  # a strict deployment
    off = replace(on, sender_rate=0.0, link_pub_rate=0.0)
    for label, flood, params in (
        ("baseline (no flood)", False, on),
        ("flood 10x, limits on", True, on),
        ("flood 10x, limits off", True, off),
    ):
        result = await run(seconds, flood, params)
        print(f"{label:24}", "  ".join(f"{k}={v:.3g}" for k, v in result.items()), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    trio.run(main, ap.parse_args().seconds)
