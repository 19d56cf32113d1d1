"""Serving the local API with Hypercorn on Trio, in a nursery the caller owns."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from peer.node._node import Peer

from ._api import LocalApi
from ._session import Sessions
from ._webhooks import WebhookService

BACKLOG = 4096  # connections the kernel queues for us: thousands of clients at once
# A connection is closed when it has been idle (no request under way, or its request's
# head not complete) for this long. There is no read timeout during a request: a
# stream's client (SSE) sends nothing for hours, and a long-poll waits up to 60 s;
# a body that does not come is cut by the API itself (``BODY_TIMEOUT``).
IDLE_TIMEOUT = 30
WS_PING_INTERVAL = 15.0  # WebSocket pings keep idle /ws streams alive through proxies


async def serve_api(
    peer: Peer,
    host: str,
    port: int,
    token: str,
    nursery: trio.Nursery,
    *,
    allowed_hosts: Iterable[str] = (),
    compat: str | None = None,
    webhooks: WebhookService | None = None,
    key_dir: Path | None = None,
) -> str:
    """Serve ``peer``'s local API on ``host:port`` in ``nursery``; returns its URL.

    ``allowed_hosts`` are names besides loopback that ``Host`` and ``Origin``
    may carry (for an API bound to another address); ``compat`` ("ocmesh")
    opens ocmesh's endpoints to tokenless loopback calls; ``webhooks`` shows its
    counters in ``/status``; ``key_dir`` gets the web page's login link
    (``login-url``, see ``_session``). Raises OSError when the address cannot be bound.
    """
    config = HypercornConfig()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.backlog = BACKLOG
    config.read_timeout = None
    config.keep_alive_timeout = IDLE_TIMEOUT
    config.websocket_ping_interval = WS_PING_INTERVAL
    named = [] if host in ("0.0.0.0", "::", "") else [host]  # an address bound on purpose
    sessions = Sessions(token, peer.identity.peer_id_hex, key_dir=key_dir)
    api = LocalApi(
        peer,
        token,
        allowed_hosts=[*named, *allowed_hosts],
        compat=compat,
        webhooks=webhooks,
        sessions=sessions,
    )
    await nursery.start(api.ops.run)  # schedules: loaded before the API answers
    await nursery.start(api.mesh.run)
    binds: Any = await nursery.start(_serve, api, config)
    url = str(binds[0]) if binds else f"http://{host}:{port}"
    api.api_url = url
    sessions.write_link()
    return url


async def _serve(
    api: LocalApi,
    config: HypercornConfig,
    *,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    await hypercorn_serve(api.app, config, task_status=task_status)  # type: ignore[arg-type]
