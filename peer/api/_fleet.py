"""The fleet view's shell: puts this peer's status in its presence, takes the
statuses others' presence carries (``peer.protocols._fleet``), and answers
``GET /fleet``.

The store's size needs an LMDB read, so ``run`` refreshes it every
``REFRESH`` seconds in the store's reader threads; the presence hook only
reads the cached figure (hooks are synchronous and must not raise).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import structlog
import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from peer.node._node import Peer
from peer.protocols._fleet import FLEET_KEY, FleetStatus, FleetView, StatusRefused
from peer.wire import _cbor
from peer.wire._envelope import Envelope
from store import MessageStore, StoreError

from ._metrics import Metric, counter, labelled
from ._values import bool_param, iso

REFRESH = 30.0


def status_json(status: FleetStatus) -> dict[str, Any]:
    return {
        "version": status.version,
        "uptime_seconds": status.uptime_s,
        "links": status.links,
        "outbox": status.outbox,
        "store_bytes": status.store_bytes,
        "circuits": dict(status.circuits),
    }


class FleetService:
    """This peer's part in the fleet view."""

    def __init__(self, peer: Peer, version: str) -> None:
        self.peer = peer
        self.version = version
        self.view = FleetView()
        self.store_bytes: int | None = None
        self.log = structlog.get_logger("clawmesh.fleet")
        peer.presence_extras.append(self._extra)
        peer.presence_hooks.append(self._heard)

    def own_status(self) -> FleetStatus:
        peer = self.peer
        storage = peer.storage
        circuits = peer.statistics().get("circuits")
        pairs: tuple[tuple[str, str], ...] = ()
        if isinstance(circuits, dict):
            pairs = tuple(sorted((str(k)[:32], str(v)[:32]) for k, v in circuits.items()))[:16]
        return FleetStatus(
            version=self.version,
            uptime_s=int(peer.uptime),
            links=len(peer.links),
            outbox=0 if storage is None else storage.delivery.waiting(),
            store_bytes=self.store_bytes,
            circuits=pairs,
        )

    def _extra(self) -> dict[str, Any]:
        return {FLEET_KEY: self.own_status().to_wire()}

    def _heard(self, env: Envelope, data: Any) -> None:
        if not isinstance(data, dict) or FLEET_KEY not in data:
            return  # an older peer, or one that publishes no status
        value = data[FLEET_KEY]
        try:
            size = len(_cbor.encode(value))
            self.view.on_status(env.sender, value, size, env.seq, self.peer.wall_ms())
        except StatusRefused as exc:
            self.log.debug("fleet status refused", sender=env.sender.hex()[:16],
                           reason=exc.reason, error=str(exc))
        except Exception as exc:  # never let a hook break presence
            self.log.warning("fleet status not read", error=repr(exc))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            storage = self.peer.storage
            if storage is not None:
                try:
                    self.store_bytes = (await storage.service.read(MessageStore.stats)).used_bytes
                except StoreError as exc:
                    self.log.warning("store size not read", error=str(exc))
            await trio.sleep(REFRESH)

    def fleet_json(self, online: bool | None = None) -> dict[str, Any]:
        now = self.peer.wall_ms()
        peers = []
        for peer_id, status, heard_ms, is_online in self.view.entries(now):
            if online is not None and is_online != online:
                continue
            info = self.peer.directory.get(peer_id)
            peers.append({
                "peer_id": peer_id.hex(),
                "name": (info.name if info is not None else "") or None,
                "online": is_online,
                "heard": iso(heard_ms),
                "relay_only": info is not None and "relay-only" in info.caps,
                **status_json(status),
            })
        own = {"peer_id": self.peer.identity.peer_id_hex, "name": self.peer.options.name or None,
               **status_json(self.own_status())}
        return {"self": own, "peers": peers, "accepted": self.view.accepted,
                "refused": dict(self.view.refused)}

    async def handle(self, request: Request) -> Response:
        return JSONResponse(self.fleet_json(bool_param(request, "online")))

    def statistics(self) -> dict[str, Any]:
        """For /status (``fleet``) and /metrics."""
        now = self.peer.wall_ms()
        online = sum(1 for *_, up in self.view.entries(now) if up)
        return {"peers": len(self.view), "online": online, "accepted": self.view.accepted,
                "refused": dict(self.view.refused)}

    def metrics(self) -> Iterator[Metric]:
        stats = self.statistics()
        yield labelled(GaugeMetricFamily, "clawmesh_fleet_peers", "peers in the fleet view",
                       "online", {"true": stats["online"],
                                  "false": stats["peers"] - stats["online"]})
        yield labelled(CounterMetricFamily, "clawmesh_fleet_statuses_refused",
                       "fleet statuses refused, by reason", "reason", stats["refused"])
        yield counter("clawmesh_fleet_statuses_accepted", "fleet statuses taken",
                      stats["accepted"])


__all__ = ["FleetService", "status_json"]
