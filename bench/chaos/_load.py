"""The storm: P publishers sending through ``POST /send``, every acknowledgement kept.

Publisher ``k`` speaks to peer ``k mod N`` on channel ``k mod C``, one request
at a time (so at most P in flight), all of them together at most ``rate``
messages per second. While its peer is down (killed, or offline for a spell)
a publisher waits on the peer's ``up`` event; a request that fails or is
refused is counted, not recorded: only a 200 is an acknowledgement. The
record of acknowledgements is bounded by ``max_messages``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import httpx
import trio

from ._cluster import Cluster, Node

SEND_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class Ack:
    id: str
    sender: str  # peer id of the publishing peer
    publisher: str  # node name
    channel: str
    seq: int
    ack_ms: int  # wall clock when /send answered
    routed: bool


@dataclass
class Storm:
    cluster: Cluster
    channels: tuple[str, ...]
    publishers: int
    rate: float
    max_messages: int
    acks: list[Ack] = field(default_factory=list)
    failed: int = 0
    refused: dict[int, int] = field(default_factory=dict)
    stop: trio.Event = field(default_factory=trio.Event)
    _next_slot: float = 0.0

    async def run(self) -> None:
        self._next_slot = trio.current_time()
        async with trio.open_nursery() as nursery:
            for k in range(self.publishers):
                node = self.cluster.peers[k % len(self.cluster.peers)]
                channel = self.channels[k % len(self.channels)]
                nursery.start_soon(self._publisher, k, node, channel)

    async def _tick(self) -> None:
        """A global pacer: slots ``1/rate`` apart, handed out in turn."""
        slot = max(self._next_slot, trio.current_time())
        self._next_slot = slot + 1.0 / self.rate
        await trio.sleep_until(slot)

    async def _publisher(self, k: int, node: Node, channel: str) -> None:
        i = 0
        while not self.stop.is_set() and len(self.acks) < self.max_messages:
            await self._tick()
            with trio.move_on_at(trio.current_time() + SEND_TIMEOUT_S * 4):
                await node.up.wait()
            if self.stop.is_set() or not node.up.is_set():
                continue
            i += 1
            await self._send(node, channel, f"p{k}-{i}")

    async def _send(self, node: Node, channel: str, body: str) -> None:
        try:
            r = await self.cluster.client.post(
                node.api + "/send",
                json={"channel": channel, "body": body},
                headers=node.headers(),
                timeout=SEND_TIMEOUT_S,
            )
        except httpx.HTTPError:
            self.failed += 1  # killed mid-request: not acknowledged, maybe stored
            return
        if r.status_code != 200:
            self.refused[r.status_code] = self.refused.get(r.status_code, 0) + 1
            return
        data = r.json()
        self.acks.append(
            Ack(data["id"], node.peer_id, node.name, channel, int(data["seq"]),
                int(time.time() * 1000), bool(data.get("routed")))
        )  # fmt: skip
