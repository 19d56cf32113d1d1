"""The local API's agent directory: ``GET /agents``, ``GET``/``PUT``/``DELETE /card``.

``/agents`` finds agents by skill and tag through the DHT (``peer.node._agents``)
and lists their cards with their online state; ``/card`` is our own card.
Handlers raise ``ApiError`` for what they refuse; a card that does not pass
``dht.check_card`` is refused 400 (413 for one over a limit) naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dht import RecordError
from peer.node._agents import matches
from peer.node._inbox import PeerInfo
from peer.node._node import Peer
from peer.wire._errors import ErrorCode

from ._values import ApiError, bool_param, int_param, iso

LOOKUP_TIMEOUT = 10.0  # seconds a /agents lookup may spend in the DHT
_LABEL_RE = re.compile(r"[a-z0-9][a-z0-9._:+/-]{0,63}")

Body = Callable[[Request], Awaitable[dict[str, Any]]]


def label_value(raw: object, name: str) -> str:
    """A skill id or tag from a JSON body: lower-cased and checked (ApiError)."""
    value = raw.strip().lower() if isinstance(raw, str) else ""
    if _LABEL_RE.fullmatch(value) is None:
        raise ApiError(
            400, "invalid", f"{name} must be 1 to 64 of a-z, 0-9 and ._:+/- (got {raw!r:.70})"
        )
    return value


def label_param(request: Request, name: str) -> str | None:
    """A skill id or tag from the query: lower-cased, checked, or None if absent."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    value = raw.strip().lower()
    if _LABEL_RE.fullmatch(value) is None:
        raise ApiError(
            400, "invalid", f"{name} must be 1 to 64 of a-z, 0-9 and ._:+/- (got {raw[:70]!r})"
        )
    return value


async def learn_skill(peer: Peer, feature: str) -> None:
    """Before ``/peers?feature=X``: look skill X up in the DHT (bounded), so the cards
    of the agents declaring it are known; nothing for a capability or a non-label."""
    skill = feature.strip().lower()
    if feature in peer.caps or _LABEL_RE.fullmatch(skill) is None or peer.dht is None:
        return
    with trio.move_on_after(LOOKUP_TIMEOUT):
        await peer.agents.find(skill, None)


def has_feature(peer: Peer, info: PeerInfo, feature: str) -> bool:
    """``/peers?feature=X``: the peer advertises capability X, or its card declares skill X
    (skill ids are lower case: X is matched lower-cased, as ``/agents?skill=`` does)."""
    return feature in info.caps or (
        feature.strip().lower() in peer.agents.skills_of(info.peer_id))


class AgentEndpoints:
    def __init__(self, peer: Peer, body: Body) -> None:
        self.peer = peer
        self.body = body

    def handlers(self) -> dict[str, Callable[[Request], Awaitable[Response]]]:
        return {"/agents": self.agents, "/card": self.card}

    async def agents(self, request: Request) -> Response:
        skill = label_param(request, "skill")
        tag = label_param(request, "tag")
        online = bool_param(request, "online")
        limit = int_param(request, "limit", 100, 1000)
        directory = self.peer.agents
        records = []
        with trio.move_on_after(LOOKUP_TIMEOUT) as scope:
            records = await directory.find(skill, tag)
        if scope.cancelled_caught:  # the DHT was too slow: what we know
            records = [r for r in await directory.find(None, None) if matches(r.card, skill, tag)]
        now_ms = self.peer.wall_ms()
        entries = [directory.entry(r, now_ms) for r in records]
        if online is not None:
            entries = [e for e in entries if e.online == online]
        entries.sort(key=lambda e: (not e.online, str(e.card.get("name", "")), e.peer_id))
        return JSONResponse(
            [e.to_json(iso) for e in entries[:limit]],
            headers={"X-Total-Count": str(len(entries))},
        )

    async def card(self, request: Request) -> Response:
        directory = self.peer.agents
        if request.method == "PUT":
            data = await self.body(request)
            try:
                directory.set_card(data)
                self.peer.swarm.want_presence()  # announce the card's skills at once
            except RecordError as exc:
                status = 413 if exc.code is ErrorCode.TOO_LARGE else 400
                raise ApiError(status, "invalid-card", exc.message) from None
        elif request.method == "DELETE":
            directory.set_card(None)
            self.peer.swarm.want_presence()
            return JSONResponse({"card": None, "published": False})
        if directory.card is None:
            raise ApiError(404, "no-card", "this agent declares no card: PUT /card to declare one")
        record = directory.own_record()
        return JSONResponse(
            {
                "peer_id": self.peer.identity.peer_id_hex,
                "card": directory.card,
                "published": record is not None and self.peer.dht is not None,
                "seq": None if record is None else record.seq,
                "expires": None if record is None else iso(record.expires * 1000),
            }
        )
