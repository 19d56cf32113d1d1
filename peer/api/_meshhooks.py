"""The MESH gateway: openclaw-mesh's webhook clients on the local API.

``POST /hooks/<sender>`` takes a MESH v3 envelope (checked by
``peer/protocols/_meshenv.py``) and answers 202; ``GET /inbox`` and
``GET /health`` answer in MESH's shapes. protocol-spec/gateways.md part 2.

Rules kept here:

* ``/hooks`` and ``/inbox`` want ``Authorization: Bearer`` with the API token
  or the ``--mesh-token`` (``LocalApi`` checks it); ``/health`` is open and cheap
  (its ``inbox`` is a count kept as messages arrive, never a walk of the inbox).
  A sender with a key in ``--mesh-keys`` (``<sender>.key``, MESH's signing-keys layout) must sign,
  with a nonce; replay rules and TTLs are enforced; envelope ids are
  deduplicated (a retried POST is 202 again, delivered once).
* A message for this peer's agent (``to`` is its name or peer id, or empty)
  goes to the local MESH inbox: a JSON-lines file beside the store, appended
  and fsynced before the 202 (the last ``LOCAL_KEPT`` are served). One for
  another mesh agent (its peer id, or its presence name) is a DM to it,
  stored and sent before the 202.
* A request's ``replyTo`` stays here (its token is the sender's secret). A DM
  answering it (``reply_to`` the DM's id, or ``payload.mesh.correlationId``)
  and sent by the peer the request went to (any other sender is ignored)
  is POSTed to ``replyTo.url`` as a MESH ``response``: ``ATTEMPTS`` tries,
  2, 4, 8 s apart, at most ``DELIVERIES`` at once; a 4xx other than 408/429
  is final. Pending requests live in memory until their TTL.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from peer.node._inbox import InboxMessage
from peer.node._node import Peer, UnknownPeer
from peer.protocols._meshenv import (
    MAX_HOOK_BODY,
    MeshEnvelope,
    MeshError,
    ReplayGuard,
    check_envelope,
    iso_now,
    parse_hook_body,
    parse_networks,
    reply_address_allowed,
    response_envelope,
    signature_valid,
)
from peer.wire import _cbor
from peer.wire._envelope import Content
from peer.wire._errors import ProtocolError
from peer.wire._limits import MAX_PAYLOAD
from peer.wire._meta import MAX_IDEM_BYTES, PRIORITIES, Meta
from store import StoreError

from ._values import ApiError, cbor_to_json_value, error_response, int_param, json_to_cbor_value

MESH_TOKEN_PATHS = frozenset({"/hooks/{sender}", "/inbox"})
LOCAL_FILE = "mesh-inbox.jsonl"
LOCAL_KEPT = 1000
SEEN_IDS = 100_000
PENDING = 10_000
ATTEMPTS = 4
DELIVERIES = 8
TIMEOUT = 10.0
BODY_TIMEOUT = 10.0


@dataclass
class Pending:
    raw: dict[str, Any]
    url: str
    token: str | None
    deadline: float
    target: bytes  # the mesh peer asked: only its answer is carried back


class MeshHooks:
    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.keys_dir = peer.options.mesh_keys
        self.reply_allow = parse_networks(getattr(peer.options, "mesh_reply_allow", ()))
        self.guard = ReplayGuard()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.pending: OrderedDict[str, Pending] = OrderedDict()
        self._by_dm: dict[bytes, str] = {}
        self.local: deque[dict[str, Any]] = deque(maxlen=LOCAL_KEPT)
        store = peer.options.store_path
        self.path = None if store is None else Path(store).parent / LOCAL_FILE
        self.counters = {"accepted": 0, "duplicates": 0, "refused": 0, "replies_sent": 0,
                         "replies_failed": 0}
        self._send, self._receive = trio.open_memory_channel[tuple[str, str | None, str]](1024)
        self.log = peer.log.bind(part="mesh-hooks")
        self._lock = trio.Lock()
        self.mesh_received = 0  # MESH DMs in the inbox, counted: /health never walks it

    # -- the service: local inbox load, replies watched and delivered -----------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.path is not None and self.path.exists():
            for line in self.path.read_text().splitlines()[-LOCAL_KEPT:]:
                with contextlib.suppress(ValueError):
                    self.local.append(json.loads(line))
        stream = self.peer.messages(after=self.peer.inbox.last_cursor)
        self.mesh_received = sum(1 for m in self.peer.inbox if _incoming_mesh(m))  # once
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._deliver_all)
            task_status.started()
            async for message in stream:
                if _incoming_mesh(message):
                    self.mesh_received += 1
                self._maybe_reply(message)

    def _maybe_reply(self, message: InboxMessage) -> None:
        if message.kind != "dm" or message.outgoing:
            return
        meta = _mesh_of(message)
        wanted = None
        if message.reply_to is not None:
            wanted = self._by_dm.get(message.reply_to)
        if wanted is None and meta is not None and isinstance(meta.get("correlationId"), str):
            wanted = meta["correlationId"]
        pending = self.pending.get(wanted) if wanted is not None else None
        if wanted is None or pending is None or message.sender != pending.target:
            return  # not an answer, or another peer's forgery: the real answer may still come
        del self.pending[wanted]
        if self.peer.wall_time() > pending.deadline:
            return
        sender = self._name_of(message.sender)
        env = response_envelope(pending.raw, sender=sender, body=message.body,
                                message_id=f"msg_{uuid.uuid4()}", now=self.peer.wall_time())
        try:
            self._send.send_nowait((pending.url, pending.token, json.dumps(env)))
        except trio.WouldBlock:
            self.counters["replies_failed"] += 1
            self.log.warning("mesh reply queue full", id=wanted)

    async def _deliver_all(self) -> None:
        limit = trio.CapacityLimiter(DELIVERIES)
        async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False) as client, \
                trio.open_nursery() as nursery:
            async for url, token, envelope in self._receive:
                await limit.acquire_on_behalf_of(envelope)
                nursery.start_soon(self._deliver, client, limit, url, token, envelope)

    async def _deliver(self, client: httpx.AsyncClient, limit: trio.CapacityLimiter, url: str,
                       token: str | None, envelope: str) -> None:
        try:
            headers = {"Content-Type": "application/json"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            body = json.dumps({"message": envelope})
            for attempt in range(ATTEMPTS):
                if attempt:
                    await trio.sleep(2.0 ** attempt)
                try:  # resolved and checked each time, and the checked address is used
                    pinned, host, sni = await self.reply_target(url)
                    r = await client.post(pinned, content=body, headers={**headers, "Host": host},
                                          extensions={"sni_hostname": sni})
                except MeshError as exc:
                    self.log.warning("mesh reply refused", url=url, error=exc.message)
                    break
                except httpx.HTTPError as exc:
                    self.log.info("mesh reply failed", url=url, error=repr(exc))
                    continue
                if 200 <= r.status_code < 300:
                    self.counters["replies_sent"] += 1
                    return
                if 400 <= r.status_code < 500 and r.status_code not in (408, 429):
                    break
            self.counters["replies_failed"] += 1
            self.log.warning("mesh reply not delivered", url=url)
        finally:
            limit.release_on_behalf_of(envelope)

    async def reply_target(self, url: str) -> tuple[str, str, str]:
        """(``url`` with its host replaced by a checked address, the Host header, the TLS
        server name); MeshError if the host resolves to an address not allowed
        (``reply_address_allowed``: public ones, and ``--mesh-reply-allow``)."""
        parts = urlsplit(url)
        hostname = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            infos = await trio.socket.getaddrinfo(hostname, port, type=trio.socket.SOCK_STREAM)
        except OSError as exc:
            raise MeshError(400, "reply-url", f"replyTo host {hostname!r} does not resolve: "
                            f"{exc}") from None
        addresses = [str(info[4][0]) for info in infos]
        refused = [a for a in addresses if not reply_address_allowed(a, self.reply_allow)]
        if not addresses or refused:
            where = (refused or ["no address"])[0]
            raise MeshError(400, "reply-url", f"replyTo host {hostname!r} is at {where}: "
                            "not a public address (see --mesh-reply-allow)")
        address = addresses[0]
        literal = f"[{address}]" if ":" in address else address
        netloc = f"{literal}:{parts.port}" if parts.port else literal
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=netloc)), host, hostname

    # -- endpoints -------------------------------------------------------------------------

    def handlers(self) -> dict[str, Any]:
        return {"/hooks/{sender}": self.hooks, "/inbox": self.inbox, "/health": self.health}

    async def hooks(self, request: Request) -> Response:
        try:
            env = check_envelope(parse_hook_body(await _read_body(request)))
            sender = request.path_params["sender"]
            if env.sender != sender:
                raise MeshError(400, "sender", f"from is {env.sender!r}, the path says {sender!r}")
            return await self._accept(env)
        except MeshError as exc:
            self.counters["refused"] += 1
            return error_response(exc.status, exc.code, exc.message)

    def _key_of(self, sender: str) -> bytes | None:
        if self.keys_dir is None or not sender.replace("-", "").replace("_", "").isalnum():
            return None
        path = Path(self.keys_dir) / f"{sender}.key"
        return path.read_bytes().strip() if path.is_file() else None

    async def _accept(self, env: MeshEnvelope) -> Response:
        key = self._key_of(env.sender)
        if key is not None and not signature_valid(env, key):
            raise MeshError(401, "signature", "HMAC signature missing or wrong")
        if env.signature is not None and key is None:
            self.log.info("mesh signature unchecked: no key", sender=env.sender)
        checked = "valid" if key is not None else "unchecked"
        if env.reply_url is not None and env.type in ("request", "alert"):
            await self.reply_target(env.reply_url)  # refused now, not silently at reply time
        async with self._lock:  # one at a time: a duplicate cannot pass while one is carried
            if env.id in self._seen:  # a sender's retry (same envelope and nonce): carried once
                self.counters["duplicates"] += 1
                return JSONResponse({"ok": True, "id": env.id, "duplicate": True},
                                    status_code=202)
            now = self.peer.wall_time()
            self.guard.check(env, now, need_nonce=key is not None)
            target = self._recipient(env.to)
            if target is None:
                delivered = await self._keep_local(env, checked)
            else:
                delivered = await self._to_mesh(env, target, checked)
            # only once carried: a refused POST may be retried
            self.guard.remember(env, now, signed=key is not None)
            self._seen[env.id] = None
        if len(self._seen) > SEEN_IDS:
            self._seen.popitem(last=False)
        self.counters["accepted"] += 1
        return JSONResponse({"ok": True, "id": env.id, **delivered}, status_code=202)

    def _recipient(self, to: str) -> bytes | None:
        """None: this peer's agent; else the mesh peer ``to`` names (MeshError if none)."""
        peer = self.peer
        if to in ("", peer.identity.peer_id_hex, peer.options.name):
            return None
        if len(to) == 64:
            with contextlib.suppress(ValueError):
                return bytes.fromhex(to)
        named = [i.peer_id for i in peer.directory if i.name == to and i.peer_id != peer.peer_id]
        if len(named) == 1:
            return named[0]
        raise MeshError(404, "unknown-recipient",
                        f"no mesh agent named {to!r}" if not named else f"{to!r} is ambiguous")

    async def _keep_local(self, env: MeshEnvelope, checked: str) -> dict[str, Any]:
        entry = dict(env.raw)
        entry["x-clawmesh"] = {"via": "hook", "signature": checked,
                               "received": iso_now(self.peer.wall_time())}
        if self.path is not None:
            await trio.to_thread.run_sync(_append, self.path, json.dumps(entry))
        self.local.append(entry)
        return {"delivered": "local"}

    async def _to_mesh(self, env: MeshEnvelope, target: bytes, checked: str) -> dict[str, Any]:
        try:
            value = json_to_cbor_value({"mesh": env.shared(), "mesh_signature": checked})
            payload = _cbor.encode(value)
        except ApiError as exc:
            raise MeshError(400, "invalid", exc.message) from None
        if len(payload) > MAX_PAYLOAD:
            raise MeshError(413, "too-large", "envelope too large for the mesh")
        content = Content(body=env.body or env.subject, payload=payload, meta=_meta_of(env))
        try:
            if self.peer.directory.get(target) is None:
                with trio.move_on_after(10):
                    await self.peer.resolve_peer(target)
            dm = await self.peer.send_direct(target, content)
        except UnknownPeer:
            raise MeshError(404, "unknown-recipient", f"peer {target.hex()} is unknown") from None
        except ProtocolError as exc:
            raise MeshError(429, exc.code.value, exc.message) from None
        except StoreError as exc:
            raise MeshError(503, "store", str(exc)) from None
        if env.type in ("request", "alert") and env.reply_url is not None:
            self.pending[env.id] = Pending(env.shared(), env.reply_url, env.reply_token,
                                           env.timestamp + env.ttl, target)
            self._by_dm[dm.id] = env.id
            while len(self.pending) > PENDING:
                self.pending.popitem(last=False)
            if len(self._by_dm) > 2 * PENDING:
                self._by_dm = {k: v for k, v in self._by_dm.items() if v in self.pending}
        return {"delivered": "mesh", "peer": target.hex(), "message_id": dm.id.hex()}

    def _entries(self) -> list[dict[str, Any]]:
        out = list(self.local)
        for message in self.peer.inbox:
            meta = _mesh_of(message) if message.kind == "dm" and not message.outgoing else None
            if meta is None:
                continue
            entry = cbor_to_json_value(meta)
            entry["x-clawmesh"] = {"via": "mesh", "peer": message.sender.hex(),
                                   "id": message.id.hex(), "received": iso_now(
                                       message.received_ms / 1000)}
            out.append(entry)
        out.sort(key=lambda e: str(e.get("x-clawmesh", {}).get("received", "")))
        return out

    async def inbox(self, request: Request) -> Response:
        limit = int_param(request, "limit", 1, 1000) or 100
        entries = self._entries()[-limit:]
        return JSONResponse({"messages": entries, "count": len(entries)})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "agent": self.agent,
                             "inbox": len(self.local) + self.mesh_received})

    @property
    def agent(self) -> str:
        return self.peer.options.name or self.peer.identity.peer_id_hex

    def _name_of(self, peer_id: bytes) -> str:
        info = self.peer.directory.get(peer_id)
        return info.name if info is not None and info.name else peer_id.hex()

    def statistics(self) -> dict[str, Any]:
        return {**self.counters, "pending": len(self.pending), "local": len(self.local)}


def _meta_of(env: MeshEnvelope) -> Meta:
    """The DM's message semantics (envelope.md 12) from the MESH envelope: its type (an
    ``ack`` without receipt ids travels as a notification), its correlation and
    conversation (16 bytes of SHA-256 of MESH's ids), priority, expiry (timestamp +
    ttl) and its id as the idempotency key."""
    def short(text: str | None) -> bytes | None:
        return None if text is None else hashlib.sha256(text.encode()).digest()[:16]

    return Meta(
        kind=env.type if env.type != "ack" else "notification",
        corr=short(env.correlation),
        conv=short(env.conversation),
        priority=PRIORITIES.index(env.priority) if env.priority in PRIORITIES else None,
        expires_ms=max(0, int((env.timestamp + env.ttl) * 1000)),
        idem=env.id if len(env.id.encode()) <= MAX_IDEM_BYTES else hashlib.sha256(
            env.id.encode()).hexdigest(),
    )


def _incoming_mesh(message: InboxMessage) -> bool:
    return message.kind == "dm" and not message.outgoing and _mesh_of(message) is not None


def _mesh_of(message: InboxMessage) -> dict[str, Any] | None:
    payload = message.payload if message.has_payload else None
    if isinstance(payload, dict) and isinstance(payload.get("mesh"), dict):
        meta: dict[str, Any] = payload["mesh"]
        return meta
    return None


def _append(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line.encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    if path.stat().st_size > 64 * 1024 * 1024:  # keep the file bounded: the newest only
        lines = path.read_text().splitlines()[-LOCAL_KEPT:]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(f"{ln}\n" for ln in lines))
        os.replace(tmp, path)


async def _read_body(request: Request) -> bytes:
    body = bytearray()
    with trio.move_on_after(BODY_TIMEOUT) as reading:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_HOOK_BODY:
                raise MeshError(413, "too-large", f"body over {MAX_HOOK_BODY} bytes")
    if reading.cancelled_caught:
        raise MeshError(408, "timeout", "request body not sent in time")
    return bytes(body)
