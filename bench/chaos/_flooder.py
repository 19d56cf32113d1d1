"""A hostile peer for the ``flood`` scenario: publishes far over the author limit.

``python -m bench.chaos._flooder --key-dir D --bootstrap URL... --channel C
--rate R --seconds S`` runs a real peer (handshake, encrypted links,
signatures; no store, no DHT, no API) that links to the bootstrap peers and,
once its channel is reachable, seals and publishes ``R`` messages per second
for ``S`` seconds straight through its router: a hostile peer skips its own
publishing limit (which is checked where an agent sends, not in the router),
so only the relays' limits stand in its way. Its own limits are off too.

It prints JSON lines on stdout: ``{"event": "flooding", "ms": ...}`` when the
flood starts, then ``{"event": "done", "ms": ..., "sent": n, "links": k, "cpu_s": c}``
(``links``: how many links it still had at the end, so whether it was
pruned or refused; ``cpu_s``: its own CPU time, which a remote flooder
would not take from the mesh's cores). Exit 2 if the channel never became reachable.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import trio

from peer import PeerOptions, open_peer
from peer.wire._envelope import Content, seal_message
from peer.wire._limits import GossipParams

REACH_S = 60.0
TICK_S = 0.01


def _say(**fields: object) -> None:
    print(json.dumps({**fields, "ms": int(time.time() * 1000)}), flush=True)


async def flood(a: argparse.Namespace) -> int:
    no_limits = GossipParams(sender_rate=0.0, link_pub_rate=0.0)
    options = PeerOptions(dht=False, gossip=no_limits)
    async with open_peer(a.key_dir, bootstrap=a.bootstrap, listen=None, store=False,
                         options=options) as peer:  # fmt: skip
        with trio.move_on_after(REACH_S):
            while not peer.router.reachable(a.channel):
                await peer.wait_changed()
        if not peer.router.reachable(a.channel):
            _say(event="unreachable")
            return 2
        _say(event="flooding")
        sent = 0
        start = trio.current_time()
        while (elapsed := trio.current_time() - start) < a.seconds:
            while sent < a.rate * elapsed:
                sent += 1
                env = seal_message(peer.identity, topic=a.channel, content=Content(f"flood {sent}"),
                                   seq=sent, ts=peer.wall_ms())  # fmt: skip
                peer.perform(peer.router.publish(env, peer.now()))
            await trio.sleep(TICK_S)  # the pacing of the flood itself
        usage = resource.getrusage(resource.RUSAGE_SELF)
        _say(event="done", sent=sent, seconds=round(trio.current_time() - start, 1),
             links=len(peer.links), cpu_s=round(usage.ru_utime + usage.ru_stime, 1))  # fmt: skip
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.chaos._flooder")
    ap.add_argument("--key-dir", required=True)
    ap.add_argument("--bootstrap", action="append", default=[])
    ap.add_argument("--channel", required=True)
    ap.add_argument("--rate", type=float, required=True, help="messages per second")
    ap.add_argument("--seconds", type=float, required=True)
    result: int = trio.run(flood, ap.parse_args())
    return result


if __name__ == "__main__":
    raise SystemExit(main())
