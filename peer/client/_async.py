"""``AsyncClient``: the local API from async code (Trio or asyncio, through httpx and anyio).

Every method is one HTTP call, except :meth:`AsyncClient.stream`, which
follows ``GET /events`` (Server-Sent Events) and reconnects by itself: after
a dropped connection, a slow-consumer cut or a peer restart it resumes with
``Last-Event-ID`` set to the last cursor it yielded, so nothing is missed and
nothing repeats.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import httpx

from . import _calls
from ._config import Endpoint, discover
from ._coordcalls import AsyncConversationCalls, AsyncCoordCalls
from ._errors import ApiError, PeerUnreachable
from ._resume import Resume, StreamCut
from ._sse import SseParser
from ._stream import EventStream
from ._taskcalls import AsyncPolicyCalls, AsyncTaskCalls
from ._types import AckResult, Event, Message, PeerInfo, SendResult, Status


class AsyncClient(AsyncCoordCalls, AsyncConversationCalls, AsyncTaskCalls, AsyncPolicyCalls):
    """The local API of one peer; found in ``key_dir`` and the environment unless given.

    ``async with AsyncClient() as mesh: await mesh.send("lobby", "hello")``
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
        self._http = httpx.AsyncClient(base_url=self.endpoint.url, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _do(self, call: _calls.Call, *, wait: float = 0.0) -> Any:
        try:
            response = await self._http.request(
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

    # -- the calls -----------------------------------------------------------------

    async def status(self) -> Status:
        return Status.from_json(await self._do(_calls.Call("GET", "/status")))

    async def send(
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
        return SendResult.from_json(await self._do(call))

    async def send_dm(
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
        return SendResult.from_json(await self._do(call))

    async def receipts(self, msg_id: str) -> dict[str, Any]:
        """The states the recipient signed for our DM ``msg_id`` (stored, delivered,
        read, replied or expired), each with its envelope and ``verified``."""
        data: dict[str, Any] = await self._do(
            _calls.Call("GET", "/receipts", params={"id": msg_id})
        )
        return data

    async def messages(
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
        """Inbox messages in cursor order; ``unread=True`` marks them read unless ``peek``;
        ``wait`` long-polls up to that many seconds for at least one."""
        call = _calls.messages_call(
            unread=unread, channel=channel, peer=peer, thread=thread,
            after=after, limit=limit, wait=wait, peek=peek,
        )
        return [Message.from_json(m) for m in await self._do(call, wait=wait or 0.0)]

    async def ack(self, *, ids: list[str] | None = None, through: int | None = None) -> AckResult:
        data = await self._do(_calls.ack_call(ids=ids, through=through))
        return AckResult(int(data.get("marked", 0)), int(data.get("unread", 0)))

    async def peers(
        self, *, online: bool | None = None, min_count: int | None = None, wait: float | None = None
    ) -> list[PeerInfo]:
        call = _calls.peers_call(online=online, min_count=min_count, wait=wait)
        return [PeerInfo.from_json(p) for p in await self._do(call, wait=wait or 0.0)]

    async def channels(self) -> list[str]:
        return [str(c) for c in await self._do(_calls.Call("GET", "/channels"))]

    async def join(self, channel: str) -> list[str]:
        """Subscribe to ``channel``; returns the channels now joined."""
        data = await self._do(_calls.channel_call("/subscribe", channel))
        return [str(c) for c in data.get("channels", [])]

    async def leave(self, channel: str) -> list[str]:
        data = await self._do(_calls.channel_call("/unsubscribe", channel))
        return [str(c) for c in data.get("channels", [])]

    # -- the stream ------------------------------------------------------------------

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
    ) -> EventStream:
        """Messages (and DM status changes) as they arrive, from ``GET /events``::

            async with mesh.stream(after=0) as events:
                async for event in events:
                    ...

        ``after=None`` starts with what arrives from now on (until its first
        message it has no cursor, so a reconnection then is live again: pass a
        cursor to be exact); ``after=0`` first replays the whole inbox,
        ``after=N`` what came after cursor N. With
        ``reconnect`` a broken stream is reopened from the last cursor yielded
        (backing off up to 5 s), for ever or until no connection succeeded for
        ``give_up_after`` seconds (then ``PeerUnreachable``). API errors (a
        wrong token, a bad filter) are raised at once. ``on_retry(reason, delay)``
        is called before each reconnection. The connection is read by a task of
        the ``async with`` block, through a bounded buffer: a consumer that falls
        far behind is cut by the peer and resumes by cursor.
        """
        resume = Resume(after, give_up_after)
        return EventStream(
            lambda send: self._follow(
                send, resume, (channel, peer, thread), reconnect, on_retry
            )
        )

    async def _follow(
        self,
        send: Callable[[Event], Awaitable[None]],
        resume: Resume,
        filters: tuple[str | None, str | None, str | None],
        reconnect: bool,
        on_retry: Callable[[str, float], None] | None,
    ) -> None:
        while True:
            try:
                await self._stream_once(send, resume, *filters)
                reason = "the peer ended the stream"
            except (httpx.TransportError, PeerUnreachable, StreamCut) as exc:
                reason = type(exc).__name__
            delay = resume.failed(anyio.current_time()) if reconnect else None
            if delay is None:
                raise PeerUnreachable(self.endpoint.url, reason)
            if on_retry is not None:
                on_retry(reason, delay)
            await anyio.sleep(delay)

    async def _stream_once(
        self,
        send: Callable[[Event], Awaitable[None]],
        resume: Resume,
        channel: str | None,
        peer: str | None,
        thread: str | None,
    ) -> None:
        params = _calls.stream_params(
            after=resume.after, channel=channel, peer=peer, thread=thread
        )
        headers = _calls.headers(self.endpoint.token, resume.headers())
        headers["Accept"] = "text/event-stream"
        timeout = httpx.Timeout(self._timeout, read=resume.read_timeout)
        async with self._http.stream(
            "GET", "/events", params=params, headers=headers, timeout=timeout
        ) as response:
            if response.status_code != 200:
                await response.aread()
                if response.status_code == 503:  # busy: retry like a dropped stream
                    raise PeerUnreachable(self.endpoint.url, "busy")
                _calls.decode(response)
                raise ApiError(response.status_code, "http", "unexpected answer")  # not reached
            resume.connected(anyio.current_time())
            parser = SseParser()
            async for line in response.aiter_lines():
                sse = parser.feed(line)
                if sse is None:
                    continue
                try:
                    data = json.loads(sse.data)
                except ValueError:
                    continue  # not ours to guess at; the cursor stays where it was
                event = resume.event(sse.event, data, sse.id)
                if event is not None:
                    await send(event)
