"""The local API's conversations (MESH's six types) with lifecycle and consensus.

``POST /conversations`` starts one (``type``, ``to``, ``body`` as its
subject, optional ``rule``/``threshold`` for a computed verdict, ``timeout``
and ``idle_timeout``); ``GET /conversations`` searches them (``q`` keyword,
``agent``, ``type``, ``status``); ``GET /conversations/{id}`` shows one with
its history and verdict (``wait=S`` waits for a change); ``POST
/conversations/{id}/messages`` posts into it (``vote`` for consensus);
``POST /conversations/{id}/verdict`` lets the initiator decide.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from peer.node._convhost import ConversationService
from peer.node._node import Peer
from peer.protocols._conversations import MAX_PARTICIPANTS, RULES, STATES, TYPES, Conversation
from peer.wire._limits import MAX_BODY_BYTES
from store import StoreError

from ._spec import BY_ROUTE, Endpoint
from ._values import ApiError, cbor_to_json_value, hex_id, iso, json_to_cbor_value, wait_param

JsonBody = Callable[[Request, Endpoint], Awaitable[dict[str, Any]]]
Event = tuple[str, int | None, dict[str, Any]]
MAX_TIMEOUT = 30 * 86400.0


def conversation_json(conv: Conversation, service: ConversationService) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": conv.id.hex(),
        "type": conv.type,
        "state": conv.state,
        "subject": conv.subject,
        "initiator": conv.owner.hex(),
        "participants": [p.hex() for p in conv.participants],
        "rule": conv.rule,
        "created": iso(conv.created_ms),
        "deadline": iso(conv.deadline_ms),
        "idle_timeout": conv.idle_ms / 1000,
        "last_activity": iso(conv.last_ms),
        "ended": None if conv.ended_ms is None else iso(conv.ended_ms),
        "votes": {p.hex(): v for p, v in conv.votes.items()},
        "history": [
            {"from": p.author.hex(), "id": p.msg_id.hex(), "body": p.body, "vote": p.vote,
             "at": iso(p.at_ms)}
            for p in conv.posts
        ],
        "verdict": None,
    }
    if conv.rule == "threshold":
        out["threshold"] = conv.threshold
    if conv.verdict is not None:
        verdict = dict(conv.verdict)
        verdict["signed_by"] = conv.owner.hex()
        verdict["verified"] = service.verdict_check(conv)
        if conv.verdict_wire is not None:
            verdict["envelope"] = conv.verdict_wire.hex()
        out["verdict"] = cbor_to_json_value(verdict)
    return out


def conversation_events(service: ConversationService, seen: int) -> tuple[int, list[Event]]:
    """The ``conversation`` stream events after the ``seen``-th change (live only)."""
    if seen >= service.change_count:
        return seen, []
    fresh = service.changes[-(service.change_count - seen):]
    events: list[Event] = []
    for conv_id, what in fresh:
        conv = service.by_id.get(conv_id)
        data: dict[str, Any] = {"id": conv_id.hex(), "change": what,
                                "state": None if conv is None else conv.state,
                                "type": None if conv is None else conv.type}
        if what == "verdict" and conv is not None and conv.verdict is not None:
            data["verdict"] = cbor_to_json_value(conv.verdict)
        events.append(("conversation", None, data))
    return service.change_count, events


def _seconds(data: dict[str, Any], name: str, default: float | None) -> float | None:
    value = data.get(name, default)
    if value is None:
        return None
    if type(value) not in (int, float) or not 0 < value <= MAX_TIMEOUT:
        raise ApiError(400, "invalid", f"{name} must be seconds in (0, {MAX_TIMEOUT:.0f}]")
    return float(value)


def _text(data: dict[str, Any], name: str, required: bool = True) -> str:
    value = data.get(name, "")
    if not isinstance(value, str) or (required and not value):
        raise ApiError(400, "invalid", f"{name} must be a non-empty string")
    if len(value.encode()) > MAX_BODY_BYTES:
        raise ApiError(413, "too-large", f"{name} over {MAX_BODY_BYTES} bytes")
    return value


def _payload(data: dict[str, Any]) -> Any:
    try:
        return None if data.get("payload") is None else json_to_cbor_value(data["payload"])
    except (ValueError, TypeError, OverflowError) as exc:
        raise ApiError(400, "invalid", f"payload cannot be encoded: {exc}") from None


class ConversationEndpoints:
    def __init__(self, peer: Peer, json_body: JsonBody) -> None:
        self.peer = peer
        self._json_body = json_body

    def handlers(self) -> dict[str, Callable[[Request], Awaitable[Response]]]:
        return {
            "/conversations": self.conversations,
            "/conversations/{id}": self.show,
            "/conversations/{id}/messages": self.post,
            "/conversations/{id}/verdict": self.verdict,
        }

    @property
    def service(self) -> ConversationService:
        return self.peer.conversations

    async def conversations(self, request: Request) -> Response:
        if request.method == "POST":
            return await self.start(request)
        q = request.query_params
        for name, allowed in (("type", TYPES), ("status", STATES)):
            if q.get(name) is not None and q.get(name) not in allowed:
                raise ApiError(400, "invalid", f"{name} must be one of {', '.join(allowed)}")
        agent = hex_id(q["agent"], "agent") if q.get("agent") else None
        found = [
            c for c in sorted(self.service.by_id.values(), key=lambda c: c.created_ms)
            if c.matches(q=q.get("q"), agent=agent, type_=q.get("type"), state=q.get("status"))
        ]
        return JSONResponse([conversation_json(c, self.service) for c in found[-200:]])

    async def start(self, request: Request) -> Response:
        data = await self._json_body(request, BY_ROUTE[("POST", "/conversations")])
        if self.peer.options.relay_only:
            raise ApiError(400, "relay-only", "a relay-only peer has no agent")
        to = data.get("to")
        if not isinstance(to, list) or not 1 <= len(to) <= MAX_PARTICIPANTS:
            raise ApiError(400, "invalid", f"to names 1..{MAX_PARTICIPANTS} peer ids")
        rule = data.get("rule")
        if rule is not None and rule not in RULES:
            raise ApiError(400, "invalid", f"rule must be one of {', '.join(RULES)}")
        threshold = data.get("threshold", 0.5)
        if type(threshold) not in (int, float):
            raise ApiError(400, "invalid", "threshold is a fraction in (0, 1]")
        try:
            conv = await self.service.start(
                type_=str(data.get("type", "")), participants=tuple(hex_id(t, "to") for t in to),
                subject=_text(data, "body"), payload=_payload(data), rule=rule,
                threshold=float(threshold), timeout_s=_seconds(data, "timeout", 3600.0) or 3600.0,
                idle_s=_seconds(data, "idle_timeout", None),
            )
        except ValueError as exc:
            raise ApiError(400, "invalid", str(exc)) from None
        except StoreError as exc:
            raise ApiError(507, "store", f"not stored, not sent: {exc}") from None
        return JSONResponse(conversation_json(conv, self.service))

    def _find(self, request: Request) -> Conversation:
        try:
            conv_id = bytes.fromhex(request.path_params.get("id", ""))
        except ValueError:
            conv_id = b""
        conv = self.service.by_id.get(conv_id)
        if conv is None:
            raise ApiError(404, "not-found", "no conversation with this id")
        return conv

    def _open(self, request: Request) -> Conversation:
        """A conversation still taking posts and a verdict (409 once finished)."""
        conv = self._find(request)
        if conv.finished:
            raise ApiError(409, "conflict", f"the conversation is {conv.state}: it takes no "
                           "more posts and no other verdict")
        return conv

    async def show(self, request: Request) -> Response:
        conv = self._find(request)
        wait = wait_param(request)
        if wait > 0 and not conv.finished:
            await self.service.wait_changed(wait)
        return JSONResponse(conversation_json(conv, self.service))

    async def post(self, request: Request) -> Response:
        conv = self._open(request)
        data = await self._json_body(request, BY_ROUTE[("POST", "/conversations/{id}/messages")])
        try:
            await self.service.post(conv, _text(data, "body"), data.get("vote"), _payload(data))
        except ValueError as exc:
            raise ApiError(400, "invalid", str(exc)) from None
        except StoreError as exc:
            raise ApiError(507, "store", f"not stored, not sent: {exc}") from None
        return JSONResponse(conversation_json(conv, self.service))

    async def verdict(self, request: Request) -> Response:
        conv = self._open(request)
        data = await self._json_body(request, BY_ROUTE[("POST", "/conversations/{id}/verdict")])
        try:
            await self.service.set_verdict(conv, _text(data, "decision"),
                                           _text(data, "summary", required=False))
        except ValueError as exc:
            raise ApiError(400, "invalid", str(exc)) from None
        return JSONResponse(conversation_json(conv, self.service))


__all__ = ["ConversationEndpoints", "conversation_events", "conversation_json"]
