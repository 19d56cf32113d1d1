"""Acceptance (MESH gateway) with real ``python -m peer`` processes and curl, as MESH's
README and PROTOCOL.md show it: ``POST /hooks/<sender>`` with a MESH v3 envelope
(``{"message": "<envelope JSON>"}``, bearer token, HMAC signature and nonce),
``GET /inbox``, ``GET /health``; a MESH request to an agent on another peer is
answered by that agent with a DM, and the answer reaches the ``replyTo`` URL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests._procs import PeerProcess, free_port, running, start_peer, wait_ready

HOOK_TOKEN = "worker-a-hook-token"
HUB_KEY = "0123456789abcdef0123456789abcdef"


class ReplyReceiver:
    """MESH's side: where a request's replyTo points."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.got = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append({"path": self.path, "headers": dict(self.headers.items()),
                                       "body": json.loads(body)})
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()
                outer.got.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/worker-b"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def envelope(to: str, kind: str, body: str, **extra: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        "protocol": "mesh/3.0",
        "id": f"msg_{uuid.uuid4()}",
        "conversationId": "conv_abc123",
        "from": "hub",
        "to": to,
        "type": kind,
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "payload": {"subject": "Status check", "body": body, "attachments": [], "metadata": {}},
        "priority": "normal",
        "ttl": 300,
        "nonce": uuid.uuid4().hex,
    }
    env.update(extra)
    return env


def signed(env: dict[str, Any], key: str = HUB_KEY) -> dict[str, Any]:
    """As mesh-send.sh signs: HMAC-SHA256 over ``jq -c`` of the envelope, base64."""
    unsigned = json.dumps(env, separators=(",", ":"), ensure_ascii=False).encode()
    sig = base64.b64encode(hmac.new(key.encode(), unsigned, hashlib.sha256).digest()).decode()
    return {**env, "signature": sig}


def curl(url: str, *args: str) -> tuple[int, Any]:
    out = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", *args, url],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    text, _, code = out.rpartition("\n")
    return int(code), json.loads(text) if text else None


def post_hook(p: PeerProcess, env: dict[str, Any], token: str = HOOK_TOKEN) -> tuple[int, Any]:
    return curl(f"{p.api}/hooks/{env['from']}", "-X", "POST",
                "-H", "Content-Type: application/json",
                "-H", f"Authorization: Bearer {token}",
                "-d", json.dumps({"message": json.dumps(env)}))


def wait_for(check: Any, deadline: float = 20.0) -> Any:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_mesh_clients_through_a_peer(tmp_path: Path) -> None:
    keys = tmp_path / "signing-keys"
    keys.mkdir()
    (keys / "hub.key").write_text(HUB_KEY + "\n")
    a = start_peer(tmp_path, "a", "--name", "worker-a", "--mesh-token", HOOK_TOKEN,
                   "--mesh-keys", str(keys), "--mesh-reply-allow", "127.0.0.1")
    wait_ready(a)
    b = start_peer(tmp_path, "b", "--name", "worker-b", bootstrap=a.ws_url)
    receiver = ReplyReceiver()
    with running(a, b):
        wait_ready(b)
        # MESH's usage: a signed notification for this peer's own agent
        note = signed(envelope("worker-a", "notification", "Schema updated, please refresh"))
        code, answer = post_hook(a, note)
        assert code == 202 and answer["ok"] is True and answer["id"] == note["id"]
        code, inbox = curl(f"{a.api}/inbox", "-H", f"Authorization: Bearer {HOOK_TOKEN}")
        assert code == 200 and inbox["count"] == 1
        [got] = inbox["messages"]
        assert got["id"] == note["id"]
        assert got["payload"]["body"] == "Schema updated, please refresh"
        assert got["x-clawmesh"]["signature"] == "valid"
        code, health = curl(f"{a.api}/health")
        assert code == 200 and health == {"status": "ok", "agent": "worker-a", "inbox": 1}

        # refused: the same POST again is a duplicate (202, kept once), a replayed
        # nonce, a bad signature, an unsigned message from a keyed sender, no token,
        # an expired ttl, a path that names another sender
        assert post_hook(a, note) == (202, {"ok": True, "id": note["id"], "duplicate": True})
        replay = signed({**envelope("worker-a", "notification", "x"), "nonce": note["nonce"]})
        assert post_hook(a, replay)[0] == 409
        forged = {**signed(envelope("worker-a", "notification", "x")), "signature": "AAAA"}
        assert post_hook(a, forged)[0] == 401
        assert post_hook(a, envelope("worker-a", "notification", "unsigned"))[0] == 401
        assert post_hook(a, signed(envelope("worker-a", "notification", "x")), "wrong")[0] == 401
        old = signed(envelope("worker-a", "notification", "x", ttl=1,
                              timestamp="2020-01-01T00:00:00.000Z"))
        assert post_hook(a, old)[0] == 410
        elsewhere = json.dumps({"message": json.dumps(signed(envelope("x", "ack", "")))})
        code, err = curl(f"{a.api}/hooks/helper", "-X", "POST", "-H",
                         f"Authorization: Bearer {HOOK_TOKEN}", "-d", elsewhere)
        assert code == 400 and err["error"]["code"] == "sender"
        assert curl(f"{a.api}/inbox", "-H", f"Authorization: Bearer {HOOK_TOKEN}")[1]["count"] == 1

        # a request for an agent on another peer, answered there, reaches replyTo
        wait_for(lambda: any(p["name"] == "worker-b" for p in a.get("/peers").json()))
        request = signed(envelope(
            "worker-b", "request", "What's the current database status?",
            replyTo={"url": receiver.url, "token": "hub-hook-token"},
            replyContext={"sessionKey": "agent:main:slack:thread:123"},
        ))
        code, answer = post_hook(a, request)
        assert code == 202 and answer["delivered"] == "mesh", answer
        dm = wait_for(lambda: [m for m in b.get("/messages").json() if m.get("kind") == "dm"])[0]
        assert dm["body"] == "What's the current database status?"
        assert dm["payload"]["mesh"]["type"] == "request"
        assert "replyTo" not in dm["payload"]["mesh"]  # its token stays with the gateway
        # its semantics ride in the DM's meta (envelope.md 12)
        assert dm["message_kind"] == "request" and dm["idempotency_key"] == request["id"]
        assert dm["priority"] == "normal" and dm["conversation_id"] == hashlib.sha256(
            b"conv_abc123").digest()[:16].hex()
        r = b.post("/send", {"to": a.peer_id, "body": "All green", "reply_to": dm["id"]})
        assert r.status_code == 200, r.text
        assert receiver.got.wait(20)
        [reply] = receiver.requests
        assert reply["headers"]["Authorization"] == "Bearer hub-hook-token"
        response = json.loads(reply["body"]["message"])
        assert response["type"] == "response" and response["correlationId"] == request["id"]
        assert response["from"] == "worker-b" and response["to"] == "hub"
        assert response["payload"]["body"] == "All green"
        assert response["replyContext"] == {"sessionKey": "agent:main:slack:thread:123"}
        assert response["conversationId"] == "conv_abc123"
        # the reply is counted once its POST has been answered, just after the receiver saw it
        deadline = time.monotonic() + 20
        while (stats := a.get("/status").json()["mesh_hooks"])["replies_sent"] < 1:
            assert time.monotonic() < deadline, stats
            time.sleep(0.1)  # polling the API with a deadline
        assert stats["replies_sent"] == 1 and stats["accepted"] == 2 and stats["refused"] >= 5
    receiver.close()
