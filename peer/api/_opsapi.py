"""The fleet operator's endpoints: ``/metrics`` (and, beside it, schedules, the
audit trail and the fleet view).

Kept apart from ``_endpoints`` so the agent's message endpoints stay small;
``LocalApi`` merges these handlers with the others. Each handler gets a
request that already passed the origin, token and parameter checks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from peer.node._node import Peer

from ._metrics import CONTENT_TYPE, Metrics

Handler = Callable[[Request], Awaitable[Response]]


class OpsEndpoints:
    """The operator's handlers, around one running peer."""

    def __init__(self, peer: Peer, version: str) -> None:
        self.peer = peer
        self.metrics = Metrics(peer, version)

    def handlers(self) -> dict[str, Handler]:
        return {"/metrics": self.metrics_page}

    async def metrics_page(self, request: Request) -> Response:
        return Response(await self.metrics.scrape(), media_type=CONTENT_TYPE)


__all__ = ["OpsEndpoints"]
