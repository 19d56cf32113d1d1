"""CPU of one hop between a seed's workers: ``python -m bench.sibling_hop [N] [BURST] [store]``.

Two relay-only peers in this process are linked as workers 0 and 1 of a
seed (``peer.node._siblings``, a real Unix socket). N pre-signed 300-byte
messages are handed to worker 0's router as if read from a peer's link, in
bursts of BURST (the direct writes they cause held and flushed once, as the
link reader does); a subscriber linked to worker 1 wants their topic
(what worker 1 sends it goes nowhere: only routing is measured). Printed: this
process's CPU per message with worker 1 interested (routing on worker 0, the
sibling write, read, decode and routing on worker 1) and without (worker 0's
routing alone), signature checks off on both so that the hop is what
differs. ``process_time`` counts only this process, so the figure holds on
a busy machine; the wall clock does not. With ``store`` both workers keep
what they relay in their own store (as a storing seed does), and the clock
stops once every message is committed (the store's thread counts too).
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import trio

import peer
from peer.node._siblings import Siblings
from peer.wire._envelope import Content, seal_message
from peer.wire._frames import decode_frame
from peer.wire._frametypes import AnyFrame, Pub, Sub
from peer.wire._identity import Identity

TOPIC = "hop"


def _frames(n: int) -> list[tuple[AnyFrame, bytes]]:
    author = Identity.from_seed(hashlib.sha256(b"sibling-hop author").digest())
    now_ms = int(time.time() * 1000)
    out = []
    for i in range(n):
        env = seal_message(author, topic=TOPIC, content=Content("x" * 300), seq=i + 1, ts=now_ms)
        raw = Pub(env.wire).encode()
        out.append((decode_frame(raw), raw))
    return out


async def _until(check: object) -> None:
    with trio.fail_after(60):
        while True:
            if check():  # type: ignore[operator]
                return
            await trio.sleep(0.001)


async def measure(n: int, burst: int, hop: bool, store: bool = False) -> float:
    """CPU microseconds per message, this process (see the module header)."""
    frames = _frames(n)
    gossip = dataclasses.replace(peer.PeerOptions().gossip, sender_rate=0, link_pub_rate=0)
    options = peer.PeerOptions(relay_only=True, dht=False, gossip=gossip)
    with tempfile.TemporaryDirectory(prefix="cmw-") as sockets, \
            tempfile.TemporaryDirectory() as home:  # fmt: skip
        keys = Path(home) / "seed"
        async with (
            peer.open_peer(keys, options=options, store=store, data_dir=Path(home) / "w0") as a,
            peer.open_peer(keys, options=options, store=store, data_dir=Path(home) / "w1",
                           listen=None) as b,  # fmt: skip
            trio.open_nursery() as nursery,
        ):
            sa, sb = Siblings(a, 0, 2, Path(sockets)), Siblings(b, 1, 2, Path(sockets))
            await nursery.start(sa.run)
            await nursery.start(sb.run)
            await _until(lambda: sa.links and sb.links)
            outside = Identity.from_seed(hashlib.sha256(b"sibling-hop link").digest()).peer_id
            a.perform(a.router.add_link(outside, relay=False, now=a.now()))
            if hop:  # a subscriber on worker 1 (its sends go nowhere: it has no socket)
                sub = Identity.from_seed(hashlib.sha256(b"sibling-hop sub").digest()).peer_id
                b.perform(b.router.add_link(sub, relay=False, now=b.now()))
                raw_sub = Sub(((TOPIC, 0),)).encode()
                b.perform(b.router.handle_frame(sub, decode_frame(raw_sub), raw_sub, b.now(),
                                                b.wall_ms()))  # fmt: skip
                key = next(iter(a.swarm.side_links))
                await _until(lambda: TOPIC in a.router.interest_of(key))
            a.router.verify = b.router.verify = False
            base = b.router.stats.received
            outbox = a.link_manager.outbox
            start = time.process_time()
            for i in range(0, n, burst):
                outbox.hold()
                for frame, raw in frames[i : i + burst]:
                    a.perform(a.router.handle_frame(outside, frame, raw, a.now(), a.wall_ms()))
                outbox.flush()
                await trio.lowlevel.checkpoint()
            if hop:
                await _until(lambda: b.router.stats.received - base >= n)
            if store:
                holders = (a, b) if hop else (a,)
                await _until(lambda: all(_stored(p) >= n for p in holders))
            spent = time.process_time() - start
            nursery.cancel_scope.cancel()
    return 1e6 * spent / n


def _stored(p: peer.Peer) -> int:
    return 0 if p.storage is None else p.storage.counters.stored


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    burst = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    store = len(sys.argv) > 3 and sys.argv[3] == "store"
    alone = trio.run(measure, n, burst, False, store)
    hop = trio.run(measure, n, burst, True, store)
    kept = ", each worker storing" if store else ""
    print(f"{n} messages of 300 B in bursts of {burst}, signature checks off{kept}, "
          "CPU per message:")  # fmt: skip
    print(f"  worker 0 routing alone:           {alone:7.1f} us")
    print(f"  with the hop to worker 1:         {hop:7.1f} us  (the hop: {hop - alone:.1f} us)")


if __name__ == "__main__":
    main()
