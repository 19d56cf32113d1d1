"""The fleet operator's endpoints: ``/metrics``, schedules (``/schedules``
and ``send_at`` on ``/send``), and beside them the audit trail and the fleet
view.

Kept apart from ``_endpoints`` so the agent's message endpoints stay small;
``LocalApi`` merges these handlers over the others. Each handler gets a
request that already passed the origin, token and parameter checks.
``run`` starts the background parts (the scheduler) in the API's nursery.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
from starlette.requests import Request
from starlette.responses import Response

from peer.node._node import Peer

from ._audit import AuditTrail
from ._auditapi import AuditApi
from ._book import Book
from ._endpoints import Endpoints
from ._fleet import FleetService
from ._metrics import CONTENT_TYPE, Metrics
from ._schedapi import ScheduleApi
from ._schedules import ScheduleService

Handler = Callable[[Request], Awaitable[Response]]


class OpsEndpoints:
    """The operator's handlers, around one running peer."""

    def __init__(self, peer: Peer, version: str, endpoints: Endpoints) -> None:
        self.peer = peer
        self.metrics = Metrics(peer, version)
        self.book = Book(peer)
        self.schedules = ScheduleService(peer, self.book, endpoints.send_data)
        self.schedule_api = ScheduleApi(endpoints, self.schedules)
        self.metrics.collector.extra.append(self.schedules.metrics)
        self.audit = AuditTrail(peer, self.book)
        self.audit_api = AuditApi(self.audit)
        self.fleet = FleetService(peer, version)
        self.metrics.collector.extra += [self.audit.metrics, self.fleet.metrics]
        endpoints.status_parts.update(
            schedules=self.schedules.statistics,
            audit=self.audit.statistics,
            fleet=self.fleet.statistics,
        )

    def handlers(self) -> dict[str, Handler]:
        return {
            "/metrics": self.metrics_page,
            **self.schedule_api.handlers(),
            **self.audit_api.handlers(),
            "/fleet": self.fleet.handle,
        }

    async def metrics_page(self, request: Request) -> Response:
        return Response(await self.metrics.scrape(), media_type=CONTENT_TYPE)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The scheduler, the audit trail's writer and the fleet status's store
        figure, for as long as the API serves."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.schedules.run)
            await nursery.start(self.fleet.run)
            await nursery.start(self.audit.run)
            task_status.started()


__all__ = ["OpsEndpoints"]
