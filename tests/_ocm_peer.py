"""A small OpenClaw Messaging peer for the tests, written from OCM's protocol description
(JSON text frames over a WebSocket: handshake, subscribe, message, sync_request, ...).

It signs its messages with Ed25519 over OCM's canonical string when it has a key,
and checks nothing it receives beyond JSON: the tests do the checking.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import trio
import trio_websocket
from nacl.signing import SigningKey

SPKI = bytes.fromhex("302a300506032b6570032100")


def pem(public_key: bytes) -> str:
    b64 = base64.b64encode(SPKI + public_key).decode()
    return f"-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n"


def canonical(message: dict[str, Any]) -> bytes:
    payload = message.get("payload")
    fields = {
        "message_id": message["message_id"],
        "channel_id": message["channel_id"],
        "sender_id": message["sender_id"],
        "body": message["body"],
        "payload": None if payload is None else json.dumps(
            payload, separators=(",", ":"), ensure_ascii=False),
        "timestamp": message["timestamp"],
    }
    return json.dumps(dict(sorted(fields.items())), separators=(",", ":"),
                      ensure_ascii=False).encode()


class OcmTestPeer:
    def __init__(self, peer_id: str | None = None, *, signed: bool = True) -> None:
        self.key = SigningKey.generate() if signed else None
        if peer_id is None:
            assert self.key is not None
            raw = bytes(self.key.verify_key)
            peer_id = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        self.peer_id = peer_id
        self.ws: trio_websocket.WebSocketConnection | None = None
        self.frames: list[dict[str, Any]] = []
        self.hello: dict[str, Any] | None = None

    def dm(self, other: str) -> str:
        low, high = sorted((self.peer_id, other))
        return f"dm:{low}:{high}"

    async def send_raw(self, text: str) -> None:
        assert self.ws is not None
        await self.ws.send_message(text)

    async def send(self, frame: dict[str, Any]) -> None:
        await self.send_raw(json.dumps(frame))

    async def handshake(self, ws: trio_websocket.WebSocketConnection) -> dict[str, Any]:
        self.ws = ws
        frame: dict[str, Any] = {
            "type": "handshake", "version": 1, "peer_id": self.peer_id,
            "capabilities": {"relay": False, "store": False},
        }
        if self.key is not None:
            frame["public_key"] = pem(bytes(self.key.verify_key))
        await self.send(frame)
        self.hello = await self.expect(lambda f: f["type"] == "handshake")
        return self.hello

    def message(self, channel_id: str, body: str, payload: Any = None,
                sender_id: str | None = None, sign: bool = True) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "type": "message",
            "message_id": str(uuid.uuid4()),
            "channel_id": channel_id,
            "sender_id": sender_id or self.peer_id,
            "body": body,
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }
        if payload is not None:
            msg["payload"] = payload
        if sign and self.key is not None:
            msg["signature"] = base64.b64encode(
                self.key.sign(canonical(msg)).signature).decode()
        return msg

    async def receive(self) -> dict[str, Any]:
        assert self.ws is not None
        text = await self.ws.get_message()
        assert isinstance(text, str), "the gateway answers OCM peers in text frames"
        frame: dict[str, Any] = json.loads(text)
        self.frames.append(frame)
        return frame

    async def expect(
        self, wanted: Callable[[dict[str, Any]], bool], within: float = 20.0
    ) -> dict[str, Any]:
        """The first frame (seen before or next) that ``wanted`` accepts."""
        for frame in self.frames:
            if wanted(frame):
                self.frames.remove(frame)
                return frame
        with trio.fail_after(within):
            while True:
                frame = await self.receive()
                if wanted(frame):
                    self.frames.remove(frame)
                    return frame
