"""Outgoing webhooks: every new message others send us, POSTed as JSON to each
``--webhook`` URL, at least once, in cursor order.

Rules kept here:

* One task per webhook, one request in flight: it takes the next message
  after its delivered cursor (read from the inbox by cursor, like a stream),
  POSTs it until a 2xx answer, then moves its cursor on and persists it
  (``webhook/<url hash>`` in the store's state, through the store service).
  A restart, ``kill -9`` included, resumes after the last persisted cursor:
  a message may come twice, never not at all; receivers dedupe by its id.
* A new webhook starts at the inbox's current end (its cursor is persisted at
  once): it gets the messages that arrive from then on.
* Our own messages are not posted (a receiver that answers by ``/send``
  would otherwise loop).
* Failures retry with jittered exponential backoff, ``retry_first`` seconds
  doubling up to ``RETRY_CAP``; each request times out after ``TIMEOUT`` s;
  redirects are not followed.
* The body is ``{"event": "message", "id": <cursor>, "data": <message>}``
  (the WebSocket frame of the same event). ``X-Clawmesh-Signature`` is
  ``sha256=<hex HMAC-SHA256 of the body with the secret>``;
  ``X-Clawmesh-Id`` (also ``Idempotency-Key``) is the message id.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio

from peer.node._inbox import InboxMessage
from peer.node._keystore import _write_private
from peer.node._node import Peer
from store import StoreError

from ._values import message_json

SECRET_FILE = "webhook-secret"
TIMEOUT = 10.0
RETRY_CAP = 60.0
STATE_PREFIX = "webhook/"
SIGNATURE_HEADER = "X-Clawmesh-Signature"
ID_HEADER = "X-Clawmesh-Id"


def load_or_create_secret(key_dir: Path) -> str:
    """The webhook signing secret in the key directory (``webhook-secret``, mode 0600),
    created on first use."""
    path = key_dir / SECRET_FILE
    if path.exists():
        secret = path.read_text().strip()
        if len(secret) >= 16:
            return secret
    secret = secrets.token_urlsafe(32)
    _write_private(path, secret.encode() + b"\n")
    return secret


def sign(secret: str, body: bytes) -> str:
    """The ``X-Clawmesh-Signature`` value of ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """What a receiver checks (constant time): the header signs these exact bytes."""
    return hmac.compare_digest(sign(secret, body), header)


@dataclass
class HookCounters:
    url: str
    cursor: int = 0
    delivered: int = 0
    attempts: int = 0
    failures: int = 0
    lost: int = 0  # messages evicted from the inbox before they were posted
    last_status: int | None = None
    last_error: str | None = None


class Webhook:
    """One URL's delivery loop."""

    def __init__(
        self, peer: Peer, url: str, secret: str, client: httpx.AsyncClient, retry_first: float
    ) -> None:
        self.peer = peer
        self.url = url
        self.secret = secret
        self.client = client
        self.retry_first = retry_first
        self.key = STATE_PREFIX + hashlib.sha256(url.encode()).hexdigest()[:32]
        self.counters = HookCounters(url)
        self.rng = random.Random(peer.rng.random())

    async def run(self) -> None:
        cursor = await self._load()
        while True:
            message = await self._next(cursor)
            await self._deliver(message)
            cursor = message.cursor
            await self._save(cursor)

    async def _load(self) -> int:
        storage = self.peer.storage
        if storage is not None:
            raw = await storage.service.read(lambda s: s.get_state(self.key))
            if raw is not None:
                self.counters.cursor = int(raw.decode())
                return self.counters.cursor
        cursor = self.peer.inbox.last_cursor
        await self._save(cursor)
        return cursor

    async def _save(self, cursor: int) -> None:
        self.counters.cursor = cursor
        storage = self.peer.storage
        if storage is None:
            return
        value = str(cursor).encode()
        while True:
            try:
                await storage.service.write(lambda s: s.put_state(self.key, value))
                return
            except StoreError as exc:  # not lost: retried; at worst posted again
                self.counters.last_error = f"cursor not stored: {exc}"
                await trio.sleep(1.0)

    async def _next(self, cursor: int) -> InboxMessage:
        """The next message others sent after ``cursor``, waiting for one."""
        inbox = self.peer.inbox
        while True:
            first = inbox.first_cursor
            if first > cursor + 1 and inbox.last_cursor > cursor:
                self.counters.lost += first - 1 - cursor
                self.peer.log.warning(
                    "webhook fell behind the inbox", url=self.url, lost=first - 1 - cursor
                )
                cursor = first - 1
            batch = inbox.since(cursor, 256)
            for message in batch:
                if not message.outgoing:
                    return message
                cursor = message.cursor
            if not batch:
                await self.peer.wait_inbox_changed()

    async def _deliver(self, message: InboxMessage) -> None:
        self.peer.inbox.handed([message])
        body = json.dumps(
            {"event": "message", "id": message.cursor, "data": message_json(message)},
            separators=(",", ":"),
        ).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "clawmesh-webhook/1",
            SIGNATURE_HEADER: sign(self.secret, body),
            ID_HEADER: message.id.hex(),
            "Idempotency-Key": message.id.hex(),
            "X-Clawmesh-Cursor": str(message.cursor),
            "X-Clawmesh-Event": "message",
        }
        attempt = 0
        while True:
            attempt += 1
            self.counters.attempts += 1
            headers["X-Clawmesh-Attempt"] = str(attempt)
            if await self._post(body, headers):
                self.counters.delivered += 1
                return
            self.counters.failures += 1
            delay = min(RETRY_CAP, self.retry_first * 2 ** min(attempt - 1, 30))
            await trio.sleep(delay * (0.5 + self.rng.random() / 2))

    async def _post(self, body: bytes, headers: dict[str, str]) -> bool:
        try:
            with trio.fail_after(TIMEOUT):
                response = await self.client.post(self.url, content=body, headers=headers)
        except (httpx.HTTPError, trio.TooSlowError) as exc:
            self.counters.last_status = None
            self.counters.last_error = repr(exc)[:200]
            return False
        self.counters.last_status = response.status_code
        if 200 <= response.status_code < 300:
            self.counters.last_error = None
            return True
        self.counters.last_error = f"HTTP {response.status_code}"
        return False


class WebhookService:
    """Every configured webhook, each in its own task."""

    def __init__(
        self, peer: Peer, urls: Sequence[str], secret: str, *, retry_first: float = 1.0
    ) -> None:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"a webhook is an http:// or https:// URL, not {url!r}")
        if retry_first <= 0:
            raise ValueError("the first webhook retry must be after a positive delay")
        self.peer = peer
        self.urls = list(dict.fromkeys(urls))
        self.secret = secret
        self.retry_first = retry_first
        self.hooks: list[Webhook] = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        timeout = httpx.Timeout(TIMEOUT)
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            self.hooks = [
                Webhook(self.peer, url, self.secret, client, self.retry_first)
                for url in self.urls
            ]
            async with trio.open_nursery() as nursery:
                for hook in self.hooks:
                    nursery.start_soon(hook.run)
                task_status.started()

    def statistics(self) -> list[dict[str, Any]]:
        """Per webhook: its URL (without credentials or query: ``/status`` is open),
        cursor, counters and how many messages it is behind."""
        inbox = self.peer.inbox
        return [
            {
                **vars(h.counters),
                "url": shown_url(h.url),
                "behind": max(0, inbox.last_cursor - h.counters.cursor),
            }
            for h in self.hooks
        ]


def shown_url(url: str) -> str:
    """``url`` without user, password, query or fragment (they may hold secrets)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
