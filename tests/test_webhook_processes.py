"""Acceptance (webhooks) with real ``python -m peer`` processes: a receiver
that fails its first 5 deliveries, and the peer killed with ``kill -9`` in the
middle of the messages, still ends with every message delivered (at least
once, deduplicated by id), each request signed, in cursor order per run."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests._procs import PeerProcess, free_port, kill_hard, running, start_peer, stop, wait_ready

SECRET = "webhook-test-secret-0123456789"
MESSAGES = 200


class Receiver:
    """An HTTP server that refuses its first ``fail`` requests with 500."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    n = len(receiver.requests)
                    receiver.requests.append(
                        {"body": body, "headers": dict(self.headers.items()), "n": n}
                    )
                self.send_response(500 if n < receiver.fail else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["n"] >= self.fail]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _send(sender: PeerProcess, start: int, count: int) -> set[str]:
    def one(i: int) -> str:
        r = sender.post("/send", {"channel": "hooks", "body": f"m{i}"})
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    with ThreadPoolExecutor(4) as pool:
        return set(pool.map(one, range(start, start + count)))


def test_webhooks_deliver_everything_through_failures_and_kill_9(tmp_path: Path) -> None:
    receiver = Receiver(fail=5)
    hook = ["--webhook", receiver.url, "--webhook-secret", SECRET, "--webhook-retry", "0.05"]
    a = start_peer(tmp_path, "a", "--channel", "hooks", "--no-dht")
    b = None
    try:
        with running(a):
            wait_ready(a)
            b = start_peer(tmp_path, "b", "--channel", "hooks", "--no-dht", *hook,
                           bootstrap=a.ws_url)
            wait_ready(b)
            assert b.get("/peers", min="1", wait="20").json()
            sent = _send(a, 0, MESSAGES // 2)
            end = time.monotonic() + 60
            while len(receiver.accepted()) < 20:  # part way through: kill -9
                assert time.monotonic() < end
                time.sleep(0.01)
            ports = (b.mesh_port, b.api_port)
            kill_hard(b)
            sent |= _send(a, MESSAGES // 2, MESSAGES // 2)  # while b is down
            b = start_peer(tmp_path, "b", "--channel", "hooks", "--no-dht", *hook,
                           bootstrap=a.ws_url, ports=ports)
            wait_ready(b)
            end = time.monotonic() + 120
            while {json.loads(r["body"])["data"]["id"] for r in receiver.accepted()} != sent:
                assert time.monotonic() < end, f"{len(receiver.accepted())} delivered"
                time.sleep(0.05)
            status = b.get("/status").json()["webhooks"]
    finally:
        if b is not None and b.proc.returncode is None:
            stop(b)
        receiver.close()
    requests = receiver.requests
    for r in requests:  # every request signed over its exact body, named by its id
        mac = hmac.new(SECRET.encode(), r["body"], hashlib.sha256).hexdigest()
        assert r["headers"]["X-Clawmesh-Signature"] == "sha256=" + mac
        event = json.loads(r["body"])
        assert r["headers"]["X-Clawmesh-Id"] == event["data"]["id"]
        assert r["headers"]["Idempotency-Key"] == event["data"]["id"]
        assert event["event"] == "message" and event["id"] == event["data"]["cursor"]
    # the first 5 were refused: the same message was retried until it was taken
    first = {json.loads(r["body"])["data"]["id"] for r in requests[:6]}
    assert len(first) == 1
    cursors = [json.loads(r["body"])["id"] for r in receiver.accepted()]
    restarts = sum(1 for x, y in itertools.pairwise(cursors) if y <= x)
    assert restarts <= 1  # in cursor order, but for one replay after the kill
    assert status[0]["url"] == receiver.url and status[0]["failures"] == 0
