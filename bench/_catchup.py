"""Filling a relay's store, and scenario 3: a peer back after missing N messages.

``fill`` publishes N pre-signed messages through a clawmesh relay with the
load generator's publisher and waits until the relay has taken all of them
(stored them, or with ``--no-store`` relayed them): the publisher may run at
most ``window`` messages ahead of what the relay's ``/status`` says it has
taken, and at most ``rate`` messages per second (the relay closes a link that
sends more than 20,000 frames/s for long).

``run_catchup`` is the scenario, with real processes all the way:

1. a relay-only seed with a store (``python -m peer --relay-only --no-dht``);
2. a full peer in the channel (``python -m peer --no-dht --channel bench
   --bootstrap <seed>``) links to it, notes that it follows the channel, and
   stops: it is away;
3. ``fill``: N messages of the channel go to the seed, which keeps them
   (a storing seed keeps whatever it relays, subscriber or not);
4. the same peer (same key and data directory) starts again: on its link to
   the seed it asks for what it lacks, page by page, verifies every envelope
   and appends them to its store and inbox. The harness polls its ``/status``
   until ``store.stored`` reaches what the seed holds (``via_catchup`` is
   ``store.catchup.bench.received``; the rest, a few hundred of the newest,
   came first through gossip repair, see ``via_gossip``).

The clock: from the "link up" line in the returning peer's log (JSON lines,
ISO time to the microsecond) to ``store.catchup.bench.last``, the peer's own
wall-clock time of its last commit; both are the peer's clock. The time from
process start is reported too (it adds Python start-up and the handshake).
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import trio

from ._conn import now_ns
from ._drive import READY_TIMEOUT, _gen_cmd
from ._procs import Child, ChildFailed, cpu_seconds, http_get_json, rss_bytes
from ._systems import Clawmesh, Deployment, Env

TOPIC = "bench"  # the load generator's topic: a channel name
POLL = 0.1  # seconds between /status polls while waiting (a poll costs the peer ~2 ms)
LINK_POLL = 0.01
STALL = 30.0  # seconds without progress: the run failed
FILL_WINDOW = 8000  # messages the publisher may run ahead of what the relay took


async def status(api: tuple[str, int]) -> dict[str, Any] | None:
    got = await http_get_json(api[0], api[1], "/status")
    return got if isinstance(got, dict) else None


def _taken(st: dict[str, Any] | None, stored: bool) -> int:
    """What a relay has taken so far: messages stored (with a store) or accepted by gossip."""
    if st is None:
        return -1
    if stored:
        return int((st.get("store") or {}).get("stored", 0))
    return int((st.get("gossip") or {}).get("received", 0))


def disk_bytes(path: Path) -> int:
    """Bytes the files under ``path`` occupy on disk (allocated blocks, like ``du``)."""
    total = 0
    if path.is_dir():
        for f in path.rglob("*"):
            try:
                if f.is_file():
                    total += f.stat().st_blocks * 512
            except OSError:
                continue
    return total


def store_dir(home: Path) -> Path:
    return home / "data" / "store"


async def fill(nursery: trio.Nursery, system: Clawmesh, dep: Deployment, logs: Path,
               messages: int, size: int, rate: float, window: int) -> dict[str, Any]:
    """Publish ``messages`` through ``dep``'s first relay; returns when it took them all."""
    api = dep.status[0]
    stored = system.stores
    before = _taken(await status(api), stored)
    if before < 0:
        raise ChildFailed("the relay's /status does not answer")
    lifetime = READY_TIMEOUT + messages / 1000 + 600
    pub = await Child.start(
        nursery, f"{system.name}-fill",
        _gen_cmd("pub", system, dep.pub[0], dep.pub[1], lifetime, "--mode", "fanout",
                 "--size", str(size), "--messages", str(messages), "--rate", f"{rate:g}",
                 "--duration", f"{lifetime:g}", "--window", str(window)),
        logs,
    )
    try:
        ready = await pub.wait_for("ready", READY_TIMEOUT + messages / 1000)
        pid = dep.pids[0]
        cpu0, rss0 = cpu_seconds(pid), rss_bytes(pid)
        t0 = now_ns()
        await pub.send("go")
        credit = window
        taken = 0
        last_change = trio.current_time()
        sent: int | None = None
        while sent is None or taken < sent:
            await trio.sleep(POLL)
            if "error" in pub.last:
                raise ChildFailed(f"publisher: {pub.last['error']}")
            now = _taken(await status(api), stored) - before
            if now > taken:
                taken, last_change = now, trio.current_time()
            if taken + window > credit:
                credit = taken + window
                await pub.send(f"credit {credit}")
            if "sent" in pub.last:
                sent = int(pub.last["sent"]["n"])
            if trio.current_time() - last_change > STALL:
                raise ChildFailed(f"the relay took {taken} of {sent or messages} messages, "
                                  f"then nothing for {STALL:g} s")
        t1 = now_ns()
        cpu1, rss1 = cpu_seconds(pid), rss_bytes(pid)
        t0 = int(pub.last["sent"]["t0_ns"])  # its first send (it pauses 0.2 s after "go")
        await pub.send("stop")
        await pub.wait_for("done", 30)
    finally:
        with trio.CancelScope(shield=True):
            await pub.stop(grace=5)
    seconds = (t1 - t0) / 1e9
    return {
        "sent": sent,
        "taken": taken,
        "wire_bytes": int(ready.get("wire_bytes", 0)),
        "fill_s": round(seconds, 3),
        "relay_per_s": round(taken / seconds) if seconds else None,
        "relay_cpu_s": round(cpu1 - cpu0, 3),
        "relay_rss_before_kib": rss0 // 1024,
        "relay_rss_after_kib": rss1 // 1024,
    }


def _link_up_ms(log: Path, since_ms: int) -> int | None:
    """Wall-clock ms of the first "link up" a peer logged (JSON lines) at or after ``since_ms``."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if '"link up"' not in line:
            continue
        try:
            event = json.loads(line)
            stamp = datetime.fromisoformat(event["timestamp"]).timestamp()
        except (ValueError, KeyError, TypeError):
            continue
        ms = int(stamp * 1000)
        if ms >= since_ms:
            return ms
    return None


async def _wait_linked(api: tuple[str, int], within: float) -> dict[str, Any]:
    """Poll a peer's /status until it has a link and has started catching up on TOPIC."""
    with trio.move_on_after(within):
        while True:
            st = await status(api)
            if st and st.get("peer_count") and TOPIC in ((st.get("store") or {})
                                                        .get("catchup") or {}):
                return st
            await trio.sleep(LINK_POLL)
    raise ChildFailed(f"the peer did not link to the seed within {within:g} s")


async def run_catchup(env: Env, system: Clawmesh, messages: int, size: int, rate: float,
                      window: int, tag: str) -> dict[str, Any]:
    """One catch-up measurement (see the module docstring); raises ChildFailed."""
    async with system.deploy(env, 1, no_dht=True) as dep:
        seed_api, seed_pid = dep.status[0], dep.pids[0]
        home = env.work / f"{system.name}-{tag}-returning"
        # 1. the peer's first life: it links, follows the channel, and goes away
        first, api = await system.start_member(env, f"{tag}-first", home, dep.specs[0], TOPIC)
        try:
            await _wait_linked(api, 60)
            await trio.sleep(0.3)  # let its store note the subscription and the cursor
        finally:
            with trio.CancelScope(shield=True):
                await first.stop(grace=10)
        # 2. what it misses
        seed_disk0 = disk_bytes(store_dir(dep.homes[0]))
        filled = await fill(env.nursery, system, dep, env.logs, messages, size, rate, window)
        seed_status = await status(seed_api) or {}
        target = filled["taken"]
        seed_disk1 = disk_bytes(store_dir(dep.homes[0]))
        # 3. it comes back
        cpu_seed0 = cpu_seconds(seed_pid)
        spawned_ms = int(time.time() * 1000)
        back, api = await system.start_member(env, f"{tag}-back", home, dep.specs[0], TOPIC)
        try:
            st = await _wait_linked(api, 60)
            cpu_back0 = cpu_seconds(back.pid)
            rss_back0 = rss_bytes(back.pid)
            # Done when the peer's store holds all of them. Most come through catch-up;
            # a few hundred of the newest may come first through gossip repair (the
            # seed's IHAVE for what it relayed in the last heartbeats), and their
            # catch-up page then counts them as duplicates.
            received, last_change = 0, trio.current_time()
            while True:
                stored = int((st.get("store") or {}).get("stored", 0))
                cu = ((st.get("store") or {}).get("catchup") or {}).get(TOPIC) or {}
                if stored > received:
                    received, last_change = stored, trio.current_time()
                if received >= target and int(cu.get("pages", 0)):
                    break
                if trio.current_time() - last_change > STALL:
                    raise ChildFailed(f"catch-up stalled at {received} of {target} messages "
                                      f"(/status store: {json.dumps(st.get('store'))[:600]})")
                await trio.sleep(POLL)
                st = await status(api) or st
            cpu_back1 = cpu_seconds(back.pid)
            rss_back1 = rss_bytes(back.pid)
            cpu_seed1 = cpu_seconds(seed_pid)
            seed_after = await status(seed_api) or {}
        finally:
            with trio.CancelScope(shield=True):
                await back.stop(grace=10)
        back_disk = disk_bytes(store_dir(home))
    link_ms = _link_up_ms(back.log_path, spawned_ms)
    done_ms = int(cu.get("last", 0))
    active = (done_ms - link_ms) / 1000 if link_ms and done_ms > link_ms else None
    from_start = (done_ms - spawned_ms) / 1000 if done_ms > spawned_ms else None
    store_st = st.get("store") or {}
    seed_store = seed_after.get("store") or {}
    return {
        "system": system.name,
        "messages": messages,
        "size": size,
        "wire_bytes": filled["wire_bytes"],
        "seed_stored": target,
        "received": received,
        "via_catchup": int(cu.get("received", 0)),
        "via_gossip": received - int(cu.get("received", 0)),
        "duplicates": int(cu.get("duplicates", 0)),
        "pages": int(cu.get("pages", 0)),
        "missed": cu.get("missed") or {},
        "catchup_s": round(active, 3) if active else None,
        "from_start_s": round(from_start, 3) if from_start else None,
        "catchup_per_s": round(received / active) if active else None,
        "from_start_per_s": round(received / from_start) if from_start else None,
        "peer_cpu_s": round(cpu_back1 - cpu_back0, 3),
        "peer_cpu_us_per_msg": round(1e6 * (cpu_back1 - cpu_back0) / received, 1)
        if received else None,
        "peer_cpu_pct": round(100 * (cpu_back1 - cpu_back0) / active, 1) if active else None,
        "seed_cpu_s": round(cpu_seed1 - cpu_seed0, 3),
        "peer_rss_growth_kib": (rss_back1 - rss_back0) // 1024,
        "peer_store_disk_kib": back_disk // 1024,
        "peer_inbox_unread": st.get("unread"),
        "peer_stored": store_st.get("stored"),
        "peer_dropped": store_st.get("dropped"),
        "seed_pages_served": seed_store.get("pages_served"),
        "fill": filled,
        "seed_status_after_fill": {"store": seed_status.get("store"),
                                   "gossip": seed_status.get("gossip")},
        "seed_disk_per_1000_kib": round((seed_disk1 - seed_disk0) / 1024 * 1000 / target, 1)
        if target else None,
        "seed_rss_per_1000_kib": round(
            (filled["relay_rss_after_kib"] - filled["relay_rss_before_kib"]) * 1000 / target, 1)
        if target else None,
        "clock": "catchup_s: from the returning peer's 'link up' log line to its last catch-up "
                 "commit (store.catchup.<topic>.last); from_start_s: from process start",
    }
