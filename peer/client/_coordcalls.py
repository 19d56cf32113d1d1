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
) -> Call:
    data: dict[str, Any] = {"body": body, "timeout": timeout, "wait": wait}
    for key, value in (("to", to), ("channel", channel), ("quorum", quorum),
                       ("payload", payload)):
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
        wait: float = 0.0,
    ) -> dict[str, Any]:
        """Ask several peers (``to``) or a ``channel``; complete on ``quorum`` answers."""
        call = rally_call(body, to=to, channel=channel, quorum=quorum, payload=payload,
                          timeout=within, wait=wait)
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
        wait: float = 0.0,
    ) -> dict[str, Any]:
        call = rally_call(body, to=to, channel=channel, quorum=quorum, payload=payload,
                          timeout=within, wait=wait)
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
