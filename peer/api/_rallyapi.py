"""The local API's requests and rallies.

``POST /request`` asks one peer and may wait for the answer; ``GET
/requests/{id}`` gives its state later. ``POST /rally`` asks several peers
(``to``: peer ids), a channel, or the agents declaring a ``skill`` (found
through the agent directory, see ``peer.node._skillrally``; 404
``no-agents`` when none is found), with a ``quorum`` and a ``timeout``;
``GET /rallies`` lists them, ``GET /rallies/{id}`` shows one (``wait=S``
waits until it is no longer open), ``POST /rallies/{id}/round`` asks a
follow-up carrying the last round's answers, ``POST /rallies/{id}/cancel``
ends it. Every refusal is an ``ApiError``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from peer.node._node import Peer
from peer.node._rallyhost import RallyService
from peer.node._skillrally import SkillChoice, resolve_skill
from peer.protocols._rally import MAX_TARGETS, OPEN, STATES, Rally, Round
from peer.wire._limits import MAX_BODY_BYTES
from store import StoreError

from ._agents import label_value
from ._spec import BY_ROUTE, Endpoint
from ._values import (
    ApiError,
    cbor_to_json_value,
    channel_name,
    hex_id,
    iso,
    json_to_cbor_value,
    wait_param,
)

JsonBody = Callable[[Request, Endpoint], Awaitable[dict[str, Any]]]
MAX_TIMEOUT = 7 * 86400.0
DEFAULT_TIMEOUT = 30.0


def _round_json(rnd: Round) -> dict[str, Any]:
    return {
        "round": rnd.number,
        "question": rnd.question,
        "payload": cbor_to_json_value(rnd.payload),
        "quorum": rnd.quorum,
        "state": rnd.state,
        "started": iso(rnd.started_ms),
        "deadline": iso(rnd.deadline_ms),
        "ended": None if rnd.ended_ms is None else iso(rnd.ended_ms),
        "asked": {p.hex(): m.hex() for p, m in rnd.sent.items()},
        "answered": len(rnd.on_time()),
        "late": sum(a.late for a in rnd.answers.values()),
        "answers": [
            {
                "from": a.peer.hex(),
                "id": a.msg_id.hex(),
                "body": a.body,
                "payload": cbor_to_json_value(a.payload),
                "at": iso(a.at_ms),
                "late": a.late,
            }
            for a in sorted(rnd.answers.values(), key=lambda a: a.at_ms)
        ],
    }


def rally_json(rally: Rally) -> dict[str, Any]:
    current = _round_json(rally.current)
    out: dict[str, Any] = {
        "id": rally.id.hex(),
        "kind": rally.kind,
        "state": rally.state,
        "created": iso(rally.created_ms),
        "round": rally.current.number,
        "quorum": rally.current.quorum,
        "deadline": current["deadline"],
        "answers": current["answers"],
        "rounds": [_round_json(r) for r in rally.rounds],
    }
    if rally.channel is not None:
        out["channel"] = rally.channel
    else:
        out["to"] = [t.hex() for t in rally.targets]
    if rally.selector is not None:
        out["selected_by"] = rally.selector
    if rally.kind == "request":
        first = current["answers"][0] if current["answers"] else None
        out["response"] = first
    return out


def _timeout(data: dict[str, Any]) -> float:
    value = data.get("timeout", DEFAULT_TIMEOUT)
    if type(value) not in (int, float) or not 0 < value <= MAX_TIMEOUT:
        raise ApiError(400, "invalid", f"timeout must be seconds in (0, {MAX_TIMEOUT:.0f}]")
    return float(value)


def _wait(data: dict[str, Any]) -> float:
    value = data.get("wait", 0)
    if type(value) not in (int, float) or not 0 <= value <= 60:
        raise ApiError(400, "invalid", "wait must be seconds in 0..60")
    return float(value)


def _question(data: dict[str, Any]) -> tuple[str, Any]:
    body = data.get("body", "")
    if not isinstance(body, str) or not body:
        raise ApiError(400, "invalid", "body (the question) must be a non-empty string")
    if len(body.encode()) > MAX_BODY_BYTES:
        raise ApiError(413, "too-large", f"body over {MAX_BODY_BYTES} bytes")
    payload = data.get("payload")
    try:
        return body, None if payload is None else json_to_cbor_value(payload)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ApiError(400, "invalid", f"payload cannot be encoded: {exc}") from None


def _quorum(data: dict[str, Any], default: int | None) -> int | None:
    value = data.get("quorum", default)
    if value is None:
        return None
    if type(value) is not int or not 1 <= value <= MAX_TARGETS:
        raise ApiError(400, "invalid", f"quorum must be 1..{MAX_TARGETS}")
    return int(value)


def rally_events(
    rallies: RallyService, seen: int
) -> tuple[int, list[tuple[str, int | None, dict[str, Any]]]]:
    """The ``rally`` stream events after the ``seen``-th change (live only)."""
    if seen >= rallies.change_count:
        return seen, []
    fresh = rallies.changes[-(rallies.change_count - seen):]
    events: list[tuple[str, int | None, dict[str, Any]]] = []
    for change in fresh:
        rally = rallies.rallies.get(change.rally_id)
        events.append(("rally", None, {
            "id": change.rally_id.hex(),
            "kind": None if rally is None else rally.kind,
            "change": change.what,
            "round": change.round,
            "peer": None if change.peer is None else change.peer.hex(),
            "state": None if rally is None else rally.state,
        }))
    return rallies.change_count, events


def _none_found(choice: SkillChoice) -> str:
    what = f"skill {choice.skill!r}" + (f" tagged {choice.tag!r}" if choice.tag else "")
    if choice.found == 0:
        return f"no agent declares {what} (GET /agents?skill= lists who does)"
    which = "" if choice.online is None else ("online " if choice.online else "offline ")
    return f"no {which}agent but this one declares {what}"


class RallyEndpoints:
    """The handlers, around one running peer."""

    def __init__(self, peer: Peer, json_body: JsonBody) -> None:
        self.peer = peer
        self._json_body = json_body

    def handlers(self) -> dict[str, Callable[[Request], Awaitable[Response]]]:
        return {
            "/request": self.request,
            "/requests/{id}": self.show,
            "/rally": self.rally,
            "/rallies": self.list,
            "/rallies/{id}": self.show,
            "/rallies/{id}/round": self.round,
            "/rallies/{id}/cancel": self.cancel,
        }

    async def _body(self, request: Request, path: str) -> dict[str, Any]:
        return await self._json_body(request, BY_ROUTE[("POST", path)])

    def _targets(self, raw: Any) -> tuple[bytes, ...]:
        items = raw if isinstance(raw, list) else [raw]
        if not items or len(items) > MAX_TARGETS:
            raise ApiError(400, "invalid", f"to names 1..{MAX_TARGETS} peer ids")
        targets = tuple(hex_id(t, "to") for t in items)
        for target in targets:
            if target == self.peer.peer_id:
                raise ApiError(400, "invalid", "a rally does not ask this peer itself")
        return targets

    async def _start(self, **kwargs: Any) -> Rally:
        if self.peer.options.relay_only:
            raise ApiError(400, "relay-only", "a relay-only peer has no agent to ask for")
        try:
            return await self.peer.rallies.start(**kwargs)
        except ValueError as exc:
            raise ApiError(400, "invalid", str(exc)) from None
        except StoreError as exc:
            raise ApiError(507, "store", f"not stored, not sent: {exc}") from None

    async def _answer(self, rally: Rally, wait: float) -> Response:
        if wait > 0 and rally.state == OPEN:
            await self.peer.rallies.wait_finished(rally, wait)
        return JSONResponse(rally_json(rally))

    async def request(self, request: Request) -> Response:
        data = await self._body(request, "/request")
        body, payload = _question(data)
        rally = await self._start(
            kind="request", targets=self._targets(data.get("to")), channel=None,
            question=body, payload=payload, quorum=1, timeout_s=_timeout(data),
        )
        return await self._answer(rally, _wait(data))

    async def rally(self, request: Request) -> Response:
        data = await self._body(request, "/rally")
        body, payload = _question(data)
        if sum(k in data for k in ("to", "channel", "skill")) != 1:
            raise ApiError(
                400, "invalid", 'ask "to": [peer ids], a "channel" or a "skill", one of them'
            )
        if "skill" in data:
            return await self._skill_rally(data, body, payload)
        channel = channel_name(data["channel"]) if "channel" in data else None
        targets = () if channel is not None else self._targets(data.get("to"))
        quorum = _quorum(data, len(targets) or 1)
        rally = await self._start(
            kind="rally", targets=targets, channel=channel, question=body, payload=payload,
            quorum=quorum, timeout_s=_timeout(data),
        )
        return await self._answer(rally, _wait(data))

    async def _skill_rally(self, data: dict[str, Any], body: str, payload: Any) -> Response:
        choice = await self._choose(data)
        if not choice.chosen:
            raise ApiError(404, "no-agents", _none_found(choice))
        quorum = _quorum(data, len(choice.chosen))
        if quorum is not None and quorum > len(choice.chosen):
            raise ApiError(409, "too-few-agents", f"quorum {quorum} but only "
                           f"{len(choice.chosen)} agents found for skill {choice.skill!r}")
        rally = await self._start(
            kind="rally", targets=choice.chosen, channel=None, question=body, payload=payload,
            quorum=quorum, timeout_s=_timeout(data), selector=choice.selector(),
        )
        return await self._answer(rally, _wait(data))

    async def _choose(self, data: dict[str, Any]) -> SkillChoice:
        skill = label_value(data.get("skill"), "skill")
        tag = None if data.get("tag") is None else label_value(data["tag"], "tag")
        online = data.get("online")
        if online is not None and not isinstance(online, bool):
            raise ApiError(400, "invalid", "online must be true, false or absent")
        limit = data.get("max", MAX_TARGETS)
        if type(limit) is not int or not 1 <= limit <= MAX_TARGETS:
            raise ApiError(400, "invalid", f"max must be 1..{MAX_TARGETS}")
        if self.peer.options.relay_only:
            raise ApiError(400, "relay-only", "a relay-only peer has no agent to ask for")
        return await resolve_skill(self.peer, skill, tag, online, int(limit))

    def _find(self, request: Request) -> Rally:
        rally_id = request.path_params.get("id", "")
        try:
            raw = bytes.fromhex(rally_id)
        except ValueError:
            raw = b""
        rally = self.peer.rallies.rallies.get(raw)
        if rally is None:
            raise ApiError(404, "not-found", "no request or rally with this id")
        return rally

    async def show(self, request: Request) -> Response:
        rally = self._find(request)
        return await self._answer(rally, wait_param(request))

    async def list(self, request: Request) -> Response:
        state = request.query_params.get("state")
        if state is not None and state not in STATES:
            raise ApiError(400, "invalid", f"state must be one of {', '.join(STATES)}")
        rallies = sorted(self.peer.rallies.rallies.by_id.values(), key=lambda r: r.created_ms)
        return JSONResponse(
            [rally_json(r) for r in rallies if state is None or r.state == state][-1000:]
        )

    async def round(self, request: Request) -> Response:
        rally = self._find(request)
        data = await self._body(request, "/rallies/{id}/round")
        body, payload = _question(data)
        try:
            await self.peer.rallies.next_round(
                rally, body, payload, _quorum(data, None), _timeout(data)
            )
        except ValueError as exc:
            raise ApiError(400, "invalid", str(exc)) from None
        return await self._answer(rally, _wait(data))

    async def cancel(self, request: Request) -> Response:
        rally = self._find(request)
        await self.peer.rallies.cancel(rally)
        return JSONResponse(rally_json(rally))


__all__ = ["RallyEndpoints", "rally_json"]
