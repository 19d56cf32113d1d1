"""The API calls as data, shared by the sync and async clients: a request, then its answer.

Each ``*_call`` function returns a :class:`Call`; the clients perform it with
httpx and hand the response to :func:`decode`, which returns the JSON or
raises the typed error. Stream parameters are built here too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from ._errors import ProtocolMismatch, error_from_response


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    params: dict[str, str] | None = None
    body: dict[str, Any] | None = None


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _params(**values: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in values.items():
        if value is None:
            continue
        out[key] = _flag(value) if isinstance(value, bool) else str(value)
    return out


def send_call(
    *,
    channel: str | None = None,
    to: str | None = None,
    body: str = "",
    payload: Any = None,
    reply_to: str | None = None,
    thread: str | None = None,
    semantics: dict[str, Any] | None = None,
) -> Call:
    data: dict[str, Any] = {"body": body}
    data.update({k: v for k, v in (semantics or {}).items() if v is not None})
    if channel is not None:
        data["channel"] = channel
    if to is not None:
        data["to"] = to
    if payload is not None:
        data["payload"] = payload
    if reply_to is not None:
        data["reply_to"] = reply_to
    if thread is not None:
        data["thread"] = thread
    return Call("POST", "/send", body=data)


def semantics(
    *,
    kind: str | None = None,
    correlation_id: str | None = None,
    conversation_id: str | None = None,
    reply_context: str | None = None,
    priority: str | None = None,
    ttl: float | None = None,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """A DM's message-semantics fields for ``/send`` (None: left out)."""
    return {
        "kind": kind,
        "correlation_id": correlation_id,
        "conversation_id": conversation_id,
        "reply_context": reply_context,
        "priority": priority,
        "ttl": ttl,
        "idempotency_key": idempotency_key,
    }


def messages_call(
    *,
    unread: bool | None = None,
    channel: str | None = None,
    peer: str | None = None,
    thread: str | None = None,
    after: int | None = None,
    limit: int | None = None,
    wait: float | None = None,
    peek: bool | None = None,
) -> Call:
    params = _params(
        unread=unread,
        channel=channel,
        peer=peer,
        thread=thread,
        after=after,
        limit=limit,
        wait=wait,
        peek=peek,
    )
    return Call("GET", "/messages", params=params)


def ack_call(*, ids: list[str] | None = None, through: int | None = None) -> Call:
    body: dict[str, Any] = {}
    if ids is not None:
        body["ids"] = list(ids)
    if through is not None:
        body["through"] = through
    return Call("POST", "/ack", body=body)


def peers_call(
    *, online: bool | None = None, min_count: int | None = None, wait: float | None = None
) -> Call:
    return Call("GET", "/peers", params=_params(online=online, min=min_count, wait=wait))


def channel_call(path: str, name: str) -> Call:
    return Call("POST", path, body={"channel": name})


def stream_params(
    *, after: int | None, channel: str | None, peer: str | None, thread: str | None
) -> dict[str, str]:
    return _params(after=after, channel=channel, peer=peer, thread=thread)


def headers(token: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    out = {"Accept": "application/json"}
    if token:
        out["Authorization"] = f"Bearer {token}"
    if extra:
        out.update(extra)
    return out


def decode(response: httpx.Response) -> Any:
    """The JSON of a 2xx answer, or the typed exception for anything else."""
    try:
        body = response.json() if response.content else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
        if response.is_success:
            raise ProtocolMismatch(
                f"{response.request.url} answered {response.status_code} with something that "
                "is not JSON: is this a clawmesh peer's API address?"
            ) from None
    if response.is_success:
        return body
    raise error_from_response(response.status_code, body, response.text)
