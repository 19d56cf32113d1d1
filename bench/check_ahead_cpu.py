"""Event-loop CPU per message, check-ahead off and on: ``python -m bench.check_ahead_cpu``.

Arguments: ``[N] [BURST]`` (default 4000 messages, bursts of 16).

A link manager and a gossip router in this process (no sockets: the records
come from a stand-in transport, what the router sends goes nowhere, 10
subscribers want the topic) are fed N pre-signed 300-byte messages in
bursts of BURST records, as the link reader takes them, with check-ahead
off and on. Printed per message: the event loop thread's CPU
(``thread_time``, what bounds a relay's loop when another core is free for
the checks) and the process's (``process_time``, both threads: what the
bench's hub CPU counts). Both count only this process, so the figures hold
on a busy machine; the wall clock does not.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections import deque
from typing import Any, cast

import trio

from peer.node._checkahead import CheckAhead
from peer.node._link import Link
from peer.node._linkhost import LinkConfig, LinkManager
from peer.node._logging import peer_logger
from peer.node._options import PeerCounters, PeerOptions
from peer.protocols._gossip import GossipRouter
from peer.wire._envelope import Content, seal_message
from peer.wire._frametypes import Pub, Sub
from peer.wire._handshake import Handshake, HandshakeResult
from peer.wire._identity import Identity
from peer.wire._limits import GossipParams

TOPIC = "ahead"
SUBSCRIBERS = 10


class _Records:
    remote = "bench"

    def __init__(self) -> None:
        self.records: deque[bytes] = deque()

    def receive_nowait(self) -> bytes | None:
        return self.records.popleft() if self.records else None

    def ready(self) -> bool:
        return False


class _Events:
    def __init__(self, router: GossipRouter, ahead: CheckAhead | None) -> None:
        self.router, self.check_ahead = router, ahead
        self.wall = int(time.time() * 1000)

    def frame(self, link: Link, frame: Any, raw: bytes) -> None:
        self.router.handle_frame(link.peer_id, frame, raw, trio.current_time(), self.wall)


def _pair() -> tuple[HandshakeResult, HandshakeResult]:
    ids = [Identity.from_seed(hashlib.sha256(n).digest()) for n in (b"cab-i", b"cab-r")]
    ini, res = Handshake(ids[0], initiator=True), Handshake(ids[1], initiator=False)
    to_res = ini.start()
    while not (ini.done and res.done):
        to_ini = [out for record in to_res for out in res.receive(record)]
        to_res = [out for record in to_ini for out in ini.receive(record)]
    assert ini.result is not None and res.result is not None
    return ini.result, res.result


async def _run(n: int, burst: int, on: bool) -> tuple[float, float, int]:
    ini, res = _pair()
    unlimited = GossipParams(link_pub_rate=0.0, sender_rate=0.0, frame_burst=1e9, byte_burst=1e12)
    router = GossipRouter(b"\x01" * 32, relay=True, params=unlimited)
    router.add_link(ini.peer_id, relay=True, now=0.0)
    sub = Sub(((TOPIC, 0),))
    for i in range(SUBSCRIBERS):
        peer_id = hashlib.sha256(b"sub %d" % i).digest()
        router.add_link(peer_id, relay=False, now=0.0)
        router.handle_frame(peer_id, sub, sub.encode(), 0.0, 0)
    counters = PeerCounters()
    events = _Events(router, CheckAhead(router, counters) if on else None)
    config = LinkConfig(Identity.generate(), PeerOptions(), lambda: (), lambda: [])
    manager = LinkManager(config, cast(Any, events), counters, peer_logger("00" * 32))
    author = Identity.from_seed(hashlib.sha256(b"check-ahead author").digest())
    wall = events.wall
    envs = [
        seal_message(author, topic=TOPIC, content=Content("x" * 200), seq=i + 1, ts=wall)
        for i in range(n)
    ]
    records = [res.cipher.seal(Pub(e.wire).encode()) for e in envs]
    transport = _Records()
    link = Link(ini, cast(Any, transport), initiator=True, opened=0.0)
    t0, p0 = time.thread_time(), time.process_time()
    for start in range(0, n, burst):
        chunk = records[start : start + burst]
        transport.records.extend(chunk[1:])
        if manager.check_ahead is None:
            manager._on_burst(link, chunk[0])
        else:
            await manager._on_checked_burst(link, chunk[0], manager.check_ahead)
    loop_cpu, process_cpu = time.thread_time() - t0, time.process_time() - p0
    assert router.stats.forwarded == n * SUBSCRIBERS, router.stats
    return loop_cpu / n * 1e6, process_cpu / n * 1e6, counters.checked_ahead


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
    burst = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    print(f"{n} messages of 300 B to {SUBSCRIBERS} subscribers, bursts of {burst}")
    print("check-ahead   loop thread CPU/msg   process CPU/msg   checked ahead")
    for on in (False, True, False, True):
        loop, process, checked = trio.run(_run, n, burst, on)
        print(f"{'on' if on else 'off':>11}   {loop:16.1f} us   {process:12.1f} us   {checked:>13}")


if __name__ == "__main__":
    main()
