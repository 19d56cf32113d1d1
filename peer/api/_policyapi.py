"""The local API's delivery policy: dead-letter retries, circuit breakers in
``/status``, and deduplicated alerts.

``POST /dead-letters/retry`` puts every dead letter (or the ``ids`` given)
back into the outbox with a fresh deadline, except those whose ``ttl`` has
passed (listed as ``skipped``); ``POST /dead-letters/{id}/retry`` one (409
``expired`` for such a one). ``POST /alerts`` sends an alert keyed by ``host`` and ``check`` only
when MESH's deduplication says so (new, escalate after 3 within the window,
recovery) and answers the decision; ``GET /alerts`` lists the firing ones.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from peer.node._delivery import Retried
from peer.node._node import Peer, UnknownPeer
from peer.protocols._alerts import ESCALATE, RECOVERY
from peer.wire import _cbor
from peer.wire._envelope import Content
from peer.wire._meta import PRIORITIES, Meta
from store import StoreError

from ._spec import BY_ROUTE, Endpoint
from ._values import ApiError, channel_name, hex_id, iso

JsonBody = Callable[[Request, Endpoint], Awaitable[dict[str, Any]]]
MAX_NAME = 128


def policy_status(peer: Peer) -> dict[str, Any]:
    """What ``/status`` shows of the delivery policy and the coordination layer."""
    out: dict[str, Any] = {"coordination": {**peer.coord.statistics(),
                                            **peer.rallies.statistics()}}
    if peer.storage is not None:
        delivery = peer.storage.delivery
        now_ms = peer.wall_ms()
        out["circuit_breakers"] = delivery.breakers.snapshot(now_ms)
        out["delivery_policy"] = {
            "breaker_threshold": delivery.breakers.threshold,
            "breaker_cooldown_s": delivery.breakers.cooldown_ms / 1000,
            "attempts_held_by_open_breakers": delivery.breakers.refused,
            "dead_letters_replayed": delivery.replayed,
        }
    out["alerts"] = dict(peer.coord.alerts.counts)
    return out


def _name(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME:
        raise ApiError(400, "invalid", f"{key} must be 1..{MAX_NAME} characters")
    return value


class PolicyEndpoints:
    def __init__(self, peer: Peer, json_body: JsonBody) -> None:
        self.peer = peer
        self._json_body = json_body

    def handlers(self) -> dict[str, Callable[[Request], Awaitable[Response]]]:
        return {
            "/dead-letters/retry": self.retry_all,
            "/dead-letters/{id}/retry": self.retry_one,
            "/alerts": self.alerts,
        }

    async def _retry(self, ids: list[bytes] | None) -> Retried:
        storage = self.peer.storage
        if storage is None:
            raise ApiError(400, "no-store", "a peer without a store keeps no dead letters")
        try:
            return await storage.delivery.retry_dead(ids)
        except StoreError as exc:
            raise ApiError(507, "store", f"not retried: {exc}") from None

    @staticmethod
    def _retried(done: Retried) -> Response:
        return JSONResponse({
            "retried": [i.hex() for i in done.revived], "count": len(done.revived),
            "skipped": [{"id": i.hex(), "reason": "expired"} for i in done.expired],
        })

    async def retry_all(self, request: Request) -> Response:
        data = await self._json_body(request, BY_ROUTE[("POST", "/dead-letters/retry")])
        ids = data.get("ids")
        if ids is not None and (not isinstance(ids, list) or len(ids) > 10_000):
            raise ApiError(400, "invalid", "ids must be a list of message ids")
        ids_wanted = None if ids is None else [hex_id(i, "ids[]") for i in ids]
        return self._retried(await self._retry(ids_wanted))

    async def retry_one(self, request: Request) -> Response:
        msg_id = hex_id(request.path_params.get("id"), "id")
        done = await self._retry([msg_id])
        if done.expired:
            raise ApiError(409, "expired", "this DM's ttl has passed: it can never be handed "
                           "over, so it stays a dead letter")
        if not done.revived:
            raise ApiError(404, "not-found", "no dead letter with this id")
        return self._retried(done)

    async def alerts(self, request: Request) -> Response:
        dedup = self.peer.coord.alerts
        if request.method == "GET":
            return JSONResponse([
                {"host": f.host, "check": f.check, "since": iso(f.first_ms),
                 "last_sent": iso(f.last_sent_ms), "count": f.count, "escalated": f.escalated}
                for f in dedup.firing.values()
            ])
        data = await self._json_body(request, BY_ROUTE[("POST", "/alerts")])
        host, check = _name(data, "host"), _name(data, "check")
        status = data.get("status", "firing")
        if status not in ("firing", "ok"):
            raise ApiError(400, "invalid", 'status is "firing" or "ok"')
        body = data.get("body") or f"{check} on {host}: {status}"
        if not isinstance(body, str) or len(body.encode()) > 4096:
            raise ApiError(400, "invalid", "body must be a string of at most 4096 bytes")
        targets = self._targets(data)
        decision = dedup.on_alert(host, check, status == "ok", self.peer.wall_ms())
        sent: list[str] = []
        if decision.send:
            sent = await self._send(targets, body, {
                "alert": {"host": host, "check": check, "status": status,
                          "decision": decision.kind, "count": decision.count}})
        return JSONResponse({"decision": decision.kind, "count": decision.count,
                             "sent": sent})

    def _targets(self, data: dict[str, Any]) -> tuple[list[bytes], str | None]:
        if ("to" in data) == ("channel" in data):
            raise ApiError(400, "invalid", 'send an alert "to": [peer ids] or a "channel"')
        if "channel" in data:
            return [], channel_name(data["channel"])
        to = data["to"] if isinstance(data["to"], list) else [data["to"]]
        if not 1 <= len(to) <= 64:
            raise ApiError(400, "invalid", "to names 1..64 peer ids")
        return [hex_id(t, "to") for t in to], None

    async def _send(self, targets: tuple[list[bytes], str | None], body: str,
                    info: dict[str, Any]) -> list[str]:
        peers, channel = targets
        decision = info["alert"]["decision"]
        priority = {ESCALATE: "urgent", RECOVERY: "normal"}.get(decision, "high")
        payload = _cbor.encode(info)
        try:
            if channel is not None:
                env = await self.peer.send_message(channel, Content(body, payload))
                return [env.id.hex()]
            meta = Meta(kind="alert", priority=PRIORITIES.index(priority))
            out = []
            for peer_id in peers:
                env = await self.peer.send_direct(peer_id, Content(body, payload, meta=meta))
                out.append(env.id.hex())
            return out
        except UnknownPeer as exc:
            raise ApiError(400, "unknown-peer", f"peer unknown: {exc}") from None
        except StoreError as exc:
            raise ApiError(507, "store", f"not stored, not sent: {exc}") from None


__all__ = ["PolicyEndpoints", "policy_status"]
