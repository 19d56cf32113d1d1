"""``Client``: the local API from ordinary (blocking) code; the same calls as ``AsyncClient``.

``stream`` is a blocking generator with the same resumption rules.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from . import _calls
from ._config import Endpoint, discover
from ._coordcalls import ConversationCalls, CoordCalls
from ._errors import ApiError, PeerUnreachable
from ._resume import Resume, StreamCut
from ._sse import SseParser
from ._taskcalls import PolicyCalls, TaskCalls
from ._types import AckResult, Event, Message, PeerInfo, SendResult, Status


class Client(CoordCalls, ConversationCalls, TaskCalls, PolicyCalls):
    """The local API of one peer, found in ``key_dir`` and the environment unless given.

    ``with Client() as mesh: mesh.send("lobby", "hello")``
    """

    def __init__(
        self,
        api: str | None = None,
        *,
        key_dir: str | Path | None = None,
        token: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.endpoint: Endpoint = discover(api, key_dir=key_dir, token=token)
        self._timeout = timeout
        self._http = httpx.Client(base_url=self.endpoint.url, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _do(self, call: _calls.Call, *, wait: float = 0.0) -> Any:
        try:
            response = self._http.request(
                call.method,
                call.path,
                params=call.params,
                json=call.body,
                headers=_calls.headers(self.endpoint.token),
                timeout=self._timeout + wait,
            )
        except httpx.TransportError as exc:
            raise PeerUnreachable(self.endpoint.url, type(exc).__name__) from exc
        return _calls.decode(response)

    def status(self) -> Status:
        return Status.from_json(self._do(_calls.Call("GET", "/status")))

    def send(
        self,
        channel: str,
        body: str,
        *,
        payload: Any = None,
        reply_to: str | None = None,
        thread: str | None = None,
    ) -> SendResult:
        """Post ``body`` to ``channel``; returns once the peer stored it."""
        call = _calls.send_call(
            channel=channel, body=body, payload=payload, reply_to=reply_to, thread=thread
        )
        return SendResult.from_json(self._do(call))

    def send_dm(
        self,
        peer_id: str,
        body: str,
        *,
        payload: Any = None,
        reply_to: str | None = None,
        thread: str | None = None,
        kind: str | None = None,
        correlation_id: str | None = None,
        conversation_id: str | None = None,
        reply_context: str | None = None,
        priority: str | None = None,
        ttl: float | None = None,
        idempotency_key: str | None = None,
    ) -> SendResult:
        """An end-to-end encrypted DM to ``peer_id``; ``UnknownPeer`` if its key is unknown.

        ``kind`` (request, response, notification, alert), the ids, ``reply_context``,
        ``priority``, ``ttl`` (seconds) and ``idempotency_key`` travel in the DM's meta."""
        meta = _calls.semantics(
            kind=kind, correlation_id=correlation_id, conversation_id=conversation_id,
            reply_context=reply_context, priority=priority, ttl=ttl,
            idempotency_key=idempotency_key,
        )
        call = _calls.send_call(
            to=peer_id, body=body, payload=payload, reply_to=reply_to, thread=thread,
            semantics=meta,
        )
        return SendResult.from_json(self._do(call))

    def receipts(self, msg_id: str) -> dict[str, Any]:
        """The states the recipient signed for our DM ``msg_id`` (stored, delivered,
        read, replied or expired), each with its envelope and ``verified``."""
        data: dict[str, Any] = self._do(
            _calls.Call("GET", "/receipts", params={"id": msg_id})
        )
        return data

    def messages(
        self,
        *,
        unread: bool | None = None,
        channel: str | None = None,
        peer: str | None = None,
        thread: str | None = None,
        after: int | None = None,
        limit: int | None = None,
        wait: float | None = None,
        peek: bool | None = None,
    ) -> list[Message]:
        """Inbox messages in cursor order (see ``AsyncClient.messages``)."""
        call = _calls.messages_call(
            unread=unread, channel=channel, peer=peer, thread=thread,
            after=after, limit=limit, wait=wait, peek=peek,
        )
        return [Message.from_json(m) for m in self._do(call, wait=wait or 0.0)]

    def ack(self, *, ids: list[str] | None = None, through: int | None = None) -> AckResult:
        data = self._do(_calls.ack_call(ids=ids, through=through))
        return AckResult(int(data.get("marked", 0)), int(data.get("unread", 0)))

    def peers(
        self, *, online: bool | None = None, min_count: int | None = None, wait: float | None = None
    ) -> list[PeerInfo]:
        call = _calls.peers_call(online=online, min_count=min_count, wait=wait)
        return [PeerInfo.from_json(p) for p in self._do(call, wait=wait or 0.0)]

    def channels(self) -> list[str]:
        return [str(c) for c in self._do(_calls.Call("GET", "/channels"))]

    def join(self, channel: str) -> list[str]:
        data = self._do(_calls.channel_call("/subscribe", channel))
        return [str(c) for c in data.get("channels", [])]

    def leave(self, channel: str) -> list[str]:
        data = self._do(_calls.channel_call("/unsubscribe", channel))
        return [str(c) for c in data.get("channels", [])]

    def stream(
        self,
        *,
        after: int | None = None,
        channel: str | None = None,
        peer: str | None = None,
        thread: str | None = None,
        reconnect: bool = True,
        give_up_after: float | None = None,
        on_retry: Callable[[str, float], None] | None = None,
    ) -> Iterator[Event]:
        """Messages and DM status changes as they arrive (see ``AsyncClient.stream``)."""
        resume = Resume(after, give_up_after)
        while True:
            try:
                yield from self._stream_once(resume, channel, peer, thread)
                reason = "the peer ended the stream"
            except (httpx.TransportError, PeerUnreachable, StreamCut) as exc:
                reason = type(exc).__name__
            delay = resume.failed(time.monotonic()) if reconnect else None
            if delay is None:
                raise PeerUnreachable(self.endpoint.url, reason)
            if on_retry is not None:
                on_retry(reason, delay)
            time.sleep(delay)

    def _stream_once(
        self, resume: Resume, channel: str | None, peer: str | None, thread: str | None
    ) -> Iterator[Event]:
        params = _calls.stream_params(
            after=resume.after, channel=channel, peer=peer, thread=thread
        )
        headers = _calls.headers(self.endpoint.token, resume.headers())
        headers["Accept"] = "text/event-stream"
        timeout = httpx.Timeout(self._timeout, read=resume.read_timeout)
        with self._http.stream(
            "GET", "/events", params=params, headers=headers, timeout=timeout
        ) as response:
            if response.status_code != 200:
                response.read()
                if response.status_code == 503:
                    raise PeerUnreachable(self.endpoint.url, "busy")
                _calls.decode(response)
                raise ApiError(response.status_code, "http", "unexpected answer")
            resume.connected(time.monotonic())
            parser = SseParser()
            for line in response.iter_lines():
                sse = parser.feed(line)
                if sse is None:
                    continue
                try:
                    data = json.loads(sse.data)
                except ValueError:
                    continue
                event = resume.event(sse.event, data, sse.id)
                if event is not None:
                    yield event
