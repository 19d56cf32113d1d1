"""The checker: every acknowledged message against what every agent holds.

After the faults stop, each agent's inbox is read through ``/messages``
(long-polls, so the settle period ends as soon as everyone has everything,
or at its bound). Then, per agent, in cursor order:

- **lost**: acknowledged on a channel the agent subscribes to, never received;
- **duplicated**: an id held twice, or two ids with one sender's same seq;
- **reordered**: a message whose seq is not above every earlier one from its
  sender on that channel (per-sender order broken in cursor order);
- **late**: received after the faults stopped, or more than ``late_s`` after
  its acknowledgement;
- **missed**: what the agent's ``/status`` says it still lacks.

An agent's own messages are not expected in its inbox (they are its outbox).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import trio

from ._cluster import Cluster, Node
from ._load import Ack

PAGE = 1000
WAIT_S = 5


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


async def read_inbox(client: httpx.AsyncClient, node: Node) -> list[dict[str, Any]]:
    """Every message the agent holds, in cursor order (pages of ``PAGE``)."""
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        r = await client.get(
            node.api + "/messages",
            params={"after": str(after), "limit": str(PAGE), "peek": "true"},
            headers=node.headers(),
            timeout=60,
        )
        r.raise_for_status()
        page = r.json()
        if not page:
            return out
        after = int(r.headers["X-Clawmesh-Cursor"])
        out += [m for m in page if m.get("kind") == "msg"]


def expected_for(node: Node, acks: list[Ack]) -> set[str]:
    return {a.id for a in acks if a.sender != node.peer_id and a.channel in node.channels}


async def settle(cluster: Cluster, acks: list[Ack], bound_s: float) -> float:
    """Wait until every agent holds everything it should, at most ``bound_s``;
    returns the seconds it took (``bound_s`` if it did not happen)."""
    start = trio.current_time()

    async def one(node: Node) -> None:
        missing = expected_for(node, acks)
        after = 0
        while missing:
            try:
                r = await cluster.client.get(
                    node.api + "/messages",
                    params={"after": str(after), "limit": str(PAGE), "peek": "true",
                            "wait": str(WAIT_S)},
                    headers=node.headers(), timeout=WAIT_S + 30,
                )  # fmt: skip
            except httpx.TransportError:  # not up (a restart that failed is in the errors)
                await trio.sleep(1.0)  # polling a node that is down, within bound_s
                continue
            r.raise_for_status()
            after = int(r.headers["X-Clawmesh-Cursor"])
            missing -= {m["id"] for m in r.json()}

    with trio.move_on_after(bound_s):
        async with trio.open_nursery() as nursery:
            for node in cluster.peers:
                nursery.start_soon(one, node)
    return trio.current_time() - start


@dataclass
class AgentVerdict:
    agent: str
    expected: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    late: int = 0
    late_after_faults: int = 0  # of ``late``: received only after the faults stopped
    missed: int = 0
    unacked: int = 0  # received, never acknowledged (a /send cut by a kill): fine
    latencies_ms: list[int] = field(default_factory=list)
    sent_ms: list[int] = field(default_factory=list)  # each latency's sender timestamp
    lost_ids: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)  # the first reorders, to investigate

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k not in ("latencies_ms", "sent_ms")}
        out["lost_ids"] = self.lost_ids[:20]
        out["examples"] = self.examples[:10]
        return out


def judge(
    node: Node, inbox: list[dict[str, Any]], status: dict[str, Any], acks: list[Ack],
    faults_end_ms: int, late_s: float,
) -> AgentVerdict:  # fmt: skip
    by_id = {a.id: a for a in acks}
    expected = expected_for(node, acks)
    v = AgentVerdict(node.name, expected=len(expected))
    ids = Counter(m["id"] for m in inbox)
    v.duplicated = sum(c - 1 for c in ids.values() if c > 1)
    unique = {m["id"]: m for m in inbox}.values()
    seqs = Counter((m["from"], m.get("channel"), m["seq"]) for m in unique)
    v.duplicated += sum(c - 1 for c in seqs.values() if c > 1)
    top: dict[tuple[str, str], int] = {}
    for m in inbox:
        key = (m["from"], m.get("channel") or "")
        if m["seq"] <= top.get(key, 0):
            v.reordered += 1
            v.examples.append(
                f"cursor {m['cursor']}: {key[0][:8]} seq {m['seq']} after {top[key]}"
                f" (received {m['received']})"
            )
        top[key] = max(top.get(key, 0), m["seq"])
        ack = by_id.get(m["id"])
        if ack is None:
            v.unacked += int(m["from"] != node.peer_id)
            continue
        if m["id"] not in expected:
            continue
        received, sent = _ms(m["received"]), _ms(m["timestamp"])
        v.latencies_ms.append(max(0, received - sent))
        v.sent_ms.append(sent)
        after = received > faults_end_ms
        v.late_after_faults += after
        v.late += after or received - ack.ack_ms > late_s * 1000
    lost = expected - set(ids)
    v.lost, v.lost_ids = len(lost), sorted(lost)
    v.delivered = len(expected) - v.lost
    catchup = status.get("store", {}).get("catchup", {})
    v.missed = sum(sum(s.get("missed", {}).values()) for s in catchup.values())
    return v


async def check(
    cluster: Cluster, acks: list[Ack], faults_end_ms: int, late_s: float
) -> list[AgentVerdict]:
    verdicts = []
    for node in cluster.peers:
        inbox = await read_inbox(cluster.client, node)
        r = await cluster.client.get(node.api + "/status", headers=node.headers(), timeout=30)
        verdicts.append(judge(node, inbox, r.json(), acks, faults_end_ms, late_s))
    return verdicts


def percentile(values: list[int], q: float) -> int | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def summary(verdicts: list[AgentVerdict]) -> dict[str, Any]:
    lat = [x for v in verdicts for x in v.latencies_ms]
    keys = ("expected", "delivered", "lost", "duplicated", "reordered", "late", "late_after_faults",
            "missed", "unacked")
    out: dict[str, Any] = {k: sum(getattr(v, k) for v in verdicts) for k in keys}
    out["agents"] = len(verdicts)
    out["agents_complete"] = sum(1 for v in verdicts if v.lost == 0)
    out["latency_p50_ms"] = percentile(lat, 0.50)
    out["latency_p99_ms"] = percentile(lat, 0.99)
    return out
