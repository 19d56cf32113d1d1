"""Client calls for agents working together: requests and rallies.

``CoordCalls`` (mixed into ``Client``) and ``AsyncCoordCalls`` (into
``AsyncClient``) build their requests with the functions below and return
the API's JSON as dicts (see README "Agents working together" for fields).
"""

from __future__ import annotations

from typing import Any, Protocol

from ._calls import Call, _params


def request_call(peer_id: str, body: str, payload: Any, timeout: float, wait: float) -> Call:
    data: dict[str, Any] = {"to": peer_id, "body": body, "timeout": timeout, "wait": wait}
    if payload is not None:
        data["payload"] = payload
    return Call("POST", "/request", body=data)


def rally_call(
    body: str,
    *,
    to: list[str] | None,
    channel: str | None,
    quorum: int | None,
    payload: Any,
    timeout: float,
    wait: float,
    skill: str | None = None,
    tag: str | None = None,
    online: bool | None = None,
) -> Call:
    data: dict[str, Any] = {"body": body, "timeout": timeout, "wait": wait}
    for key, value in (("to", to), ("channel", channel), ("quorum", quorum),
                       ("payload", payload), ("skill", skill), ("tag", tag),
                       ("online", online)):
        if value is not None:
            data[key] = value
    return Call("POST", "/rally", body=data)


def round_call(
    rally_id: str, body: str, quorum: int | None, payload: Any, timeout: float, wait: float
) -> Call:
    data: dict[str, Any] = {"body": body, "timeout": timeout, "wait": wait}
    if quorum is not None:
        data["quorum"] = quorum
    if payload is not None:
        data["payload"] = payload
    return Call("POST", f"/rallies/{rally_id}/round", body=data)


def conversation_call(
    type_: str, to: list[str], body: str, *, rule: str | None, threshold: float | None,
    payload: Any, within: float | None, idle: float | None,
) -> Call:
    data: dict[str, Any] = {"type": type_, "to": to, "body": body}
    for key, value in (("rule", rule), ("threshold", threshold), ("payload", payload),
                       ("timeout", within), ("idle_timeout", idle)):
        if value is not None:
            data[key] = value
    return Call("POST", "/conversations", body=data)


def post_call(conv_id: str, body: str, vote: Any, payload: Any) -> Call:
    data: dict[str, Any] = {"body": body}
    if vote is not None:
        data["vote"] = vote
    if payload is not None:
        data["payload"] = payload
    return Call("POST", f"/conversations/{conv_id}/messages", body=data)


def search_call(q: str | None, agent: str | None, type_: str | None,
                status: str | None) -> Call:
    return Call("GET", "/conversations",
                params=_params(q=q, agent=agent, type=type_, status=status))


def verdict_call(conv_id: str, decision: str, summary: str) -> Call:
    return Call("POST", f"/conversations/{conv_id}/verdict",
                body={"decision": decision, "summary": summary})


class _Sync(Protocol):
    def _do(self, call: Call, *, wait: float = 0.0) -> Any: ...


class _Async(Protocol):
    async def _do(self, call: Call, *, wait: float = 0.0) -> Any: ...


class CoordCalls:
    """Requests and rallies, blocking."""

    def request(
        self: _Sync, peer_id: str, body: str, *, payload: Any = None, within: float = 30.0,
        wait: float = 0.0,
    ) -> dict[str, Any]:
        """Ask ``peer_id``; with ``wait`` > 0, answers once it replied (or ``wait`` passed)."""
        out: dict[str, Any] = self._do(request_call(peer_id, body, payload, within, wait),
                                       wait=wait)
        return out

    def get_request(self: _Sync, request_id: str, *, wait: float = 0.0) -> dict[str, Any]:
        call = Call("GET", f"/requests/{request_id}", params=_params(wait=wait or None))
        out: dict[str, Any] = self._do(call, wait=wait)
        return out

    def rally(
        self: _Sync, body: str, *, to: list[str] | None = None, channel: str | None = None,
        quorum: int | None = None, payload: Any = None, within: float = 30.0,
        wait: float = 0.0, skill: str | None = None, tag: str | None = None,
        online: bool | None = None,
    ) -> dict[str, Any]:
        """Ask several peers (``to``), a ``channel``, or the agents declaring ``skill``
        (optionally ``tag``, ``online``); complete on ``quorum`` answers."""
        call = rally_call(body, to=to, channel=channel, quorum=quorum, payload=payload,
                          timeout=within, wait=wait, skill=skill, tag=tag, online=online)
        out: dict[str, Any] = self._do(call, wait=wait)
        return out

    def get_rally(self: _Sync, rally_id: str, *, wait: float = 0.0) -> dict[str, Any]:
        call = Call("GET", f"/rallies/{rally_id}", params=_params(wait=wait or None))
        out: dict[str, Any] = self._do(call, wait=wait)
        return out

    def rallies(self: _Sync, *, state: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self._do(Call("GET", "/rallies", params=_params(state=state)))
        return out

    def rally_round(
        self: _Sync, rally_id: str, body: str, *, quorum: int | None = None,
        payload: Any = None, within: float = 30.0, wait: float = 0.0,
    ) -> dict[str, Any]:
        """A follow-up round: its question carries the last round's answers."""
        out: dict[str, Any] = self._do(
            round_call(rally_id, body, quorum, payload, within, wait), wait=wait
        )
        return out

    def cancel_rally(self: _Sync, rally_id: str) -> dict[str, Any]:
        out: dict[str, Any] = self._do(Call("POST", f"/rallies/{rally_id}/cancel"))
        return out


class ConversationCalls:
    """Conversations, blocking."""

    def start_conversation(
        self: _Sync, type_: str, to: list[str], body: str, *, rule: str | None = None,
        threshold: float | None = None, payload: Any = None, within: float | None = None,
        idle: float | None = None,
    ) -> dict[str, Any]:
        """Start a conversation (rally, collab, escalation, broadcast, opinion, brainstorm);
        with ``rule`` (majority, unanimity, threshold) the verdict is computed from votes."""
        out: dict[str, Any] = self._do(conversation_call(
            type_, to, body, rule=rule, threshold=threshold, payload=payload, within=within,
            idle=idle))
        return out

    def post_to_conversation(
        self: _Sync, conv_id: str, body: str, *, vote: Any = None, payload: Any = None
    ) -> dict[str, Any]:
        out: dict[str, Any] = self._do(post_call(conv_id, body, vote, payload))
        return out

    def get_conversation(self: _Sync, conv_id: str, *, wait: float = 0.0) -> dict[str, Any]:
        call = Call("GET", f"/conversations/{conv_id}", params=_params(wait=wait or None))
        out: dict[str, Any] = self._do(call, wait=wait)
        return out

    def conversations(
        self: _Sync, *, q: str | None = None, agent: str | None = None,
        type_: str | None = None, status: str | None = None,
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self._do(search_call(q, agent, type_, status))
        return out

    def set_verdict(self: _Sync, conv_id: str, decision: str, summary: str = "") -> dict[str, Any]:
        out: dict[str, Any] = self._do(verdict_call(conv_id, decision, summary))
        return out


class AsyncConversationCalls:
    """Conversations, on Trio or asyncio (the same calls as ``ConversationCalls``)."""

    async def start_conversation(
        self: _Async, type_: str, to: list[str], body: str, *, rule: str | None = None,
        threshold: float | None = None, payload: Any = None, within: float | None = None,
        idle: float | None = None,
    ) -> dict[str, Any]:
        out: dict[str, Any] = await self._do(conversation_call(
            type_, to, body, rule=rule, threshold=threshold, payload=payload, within=within,
            idle=idle))
        return out

    async def post_to_conversation(
        self: _Async, conv_id: str, body: str, *, vote: Any = None, payload: Any = None
    ) -> dict[str, Any]:
        out: dict[str, Any] = await self._do(post_call(conv_id, body, vote, payload))
        return out

    async def get_conversation(
        self: _Async, conv_id: str, *, wait: float = 0.0
    ) -> dict[str, Any]:
        call = Call("GET", f"/conversations/{conv_id}", params=_params(wait=wait or None))
        out: dict[str, Any] = await self._do(call, wait=wait)
        return out

    async def conversations(
        self: _Async, *, q: str | None = None, agent: str | None = None,
        type_: str | None = None, status: str | None = None,
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = await self._do(search_call(q, agent, type_, status))
        return out

    async def set_verdict(
        self: _Async, conv_id: str, decision: str, summary: str = ""
    ) -> dict[str, Any]:
        out: dict[str, Any] = await self._do(verdict_call(conv_id, decision, summary))
        return out


class AsyncCoordCalls:
    """Requests and rallies, on Trio or asyncio (the same calls as ``CoordCalls``)."""

    async def request(
        self: _Async, peer_id: str, body: str, *, payload: Any = None, within: float = 30.0,
        wait: float = 0.0,
    ) -> dict[str, Any]:
        out: dict[str, Any] = await self._do(
            request_call(peer_id, body, payload, within, wait), wait=wait
        )
        return out

    async def get_request(self: _Async, request_id: str, *, wait: float = 0.0) -> dict[str, Any]:
        call = Call("GET", f"/requests/{request_id}", params=_params(wait=wait or None))
        out: dict[str, Any] = await self._do(call, wait=wait)
        return out

    async def rally(
        self: _Async, body: str, *, to: list[str] | None = None, channel: str | None = None,
        quorum: int | None = None, payload: Any = None, within: float = 30.0,
        wait: float = 0.0, skill: str | None = None, tag: str | None = None,
        online: bool | None = None,
    ) -> dict[str, Any]:
        call = rally_call(body, to=to, channel=channel, quorum=quorum, payload=payload,
                          timeout=within, wait=wait, skill=skill, tag=tag, online=online)
        out: dict[str, Any] = await self._do(call, wait=wait)
        return out

    async def get_rally(self: _Async, rally_id: str, *, wait: float = 0.0) -> dict[str, Any]:
        call = Call("GET", f"/rallies/{rally_id}", params=_params(wait=wait or None))
        out: dict[str, Any] = await self._do(call, wait=wait)
        return out

    async def rallies(self: _Async, *, state: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = await self._do(
            Call("GET", "/rallies", params=_params(state=state))
        )
        return out

    async def rally_round(
        self: _Async, rally_id: str, body: str, *, quorum: int | None = None,
        payload: Any = None, within: float = 30.0, wait: float = 0.0,
    ) -> dict[str, Any]:
        out: dict[str, Any] = await self._do(
            round_call(rally_id, body, quorum, payload, within, wait), wait=wait
        )
        return out

    async def cancel_rally(self: _Async, rally_id: str) -> dict[str, Any]:
        out: dict[str, Any] = await self._do(Call("POST", f"/rallies/{rally_id}/cancel"))
        return out
