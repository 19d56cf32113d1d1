"""Acceptance (A2A gateway) with real ``python -m peer`` processes and the official
``a2a-sdk`` client in a process of its own (tests/_a2a_client.py): it discovers a
mesh agent's card through its local peer, sends a message that becomes a task on
an agent two peers away (client peer - seed - agent's peer), streams it to
completion, cancels a second task and resubscribes to a third after dropping
its stream. The agent is a small worker on the far peer's local API."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests._procs import REPO, PeerProcess, running, start_peer, wait_ready


class Worker:
    """The far agent: works the tasks it is given with its peer's ``/tasks`` API."""

    def __init__(self, p: PeerProcess) -> None:
        self.p = p
        self.release = threading.Event()
        self.stop = threading.Event()
        self.seen: set[str] = set()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def status(self, task_id: str, **fields: Any) -> None:
        r = self.p.post(f"/tasks/{task_id}/status", fields)
        assert r.status_code == 200, r.text

    def run(self) -> None:
        while not self.stop.is_set():
            for task in self.p.get("/tasks", role="worker").json():
                if task["id"] not in self.seen and task["state"] == "submitted":
                    self.seen.add(task["id"])
                    threading.Thread(target=self.handle, args=(task,), daemon=True).start()
            time.sleep(0.1)  # polling the API (a deadline bounds the test)

    def handle(self, task: dict[str, Any]) -> None:
        task_id, text = task["id"], task["request"]
        assert task["payload"]["a2a"]["message"]["parts"] == [{"text": text}]
        self.status(task_id, state="working")
        if text.startswith("slow"):
            return  # works until it is cancelled
        if text.startswith("resub"):
            self.release.wait(30)
        self.status(task_id, state="working",
                    artifact={"name": "answer", "data": "42 ", "last": False})
        self.status(task_id, state="working",
                    artifact={"name": "answer", "data": "records", "append": True, "last": True})
        self.status(task_id, state="completed", message="done")

    def canceled(self) -> list[str]:
        return [t["id"] for t in self.p.get("/tasks", role="worker", state="canceled").json()]


def test_a2a_sdk_client_reaches_an_agent_two_peers_away(tmp_path: Path) -> None:
    seed = start_peer(tmp_path, "seed", "--no-dht")
    wait_ready(seed)
    near = start_peer(tmp_path, "near", "--no-dht", "--name", "near", bootstrap=seed.ws_url)
    wait_ready(near)
    far = start_peer(tmp_path, "far", "--no-dht", "--name", "far-agent",
                     "--skill", "count=Counts the records of a dataset", bootstrap=seed.ws_url)
    with running(seed, near, far):
        wait_ready(far)
        for a, b in ((near, far), (far, near)):  # each knows the other's key (presence)
            r = a.get("/peers", min=2, wait=30)
            assert b.peer_id in {p["peer_id"] for p in r.json()}, r.text
        assert far.peer_id not in {p["peer_id"] for p in near.get("/peers").json() if p["linked"]}
        card = httpx.get(f"{near.api}/a2a/{far.peer_id}/.well-known/agent-card.json").json()
        assert card["name"] == "far-agent" and card["capabilities"]["streaming"] is True
        assert [(s["id"], s["description"]) for s in card["skills"]] == [
            ("count", "Counts the records of a dataset")]  # declared in its presence
        assert httpx.get(f"{near.api}/.well-known/agent.json").json()["name"] == "near"

        worker = Worker(far)
        client = subprocess.Popen(
            [sys.executable, "-m", "tests._a2a_client", near.api, far.peer_id, near.token],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert client.stdout is not None and client.stdin is not None
            lines = []
            for line in client.stdout:
                lines.append(line.strip())
                if line.startswith("SUBSCRIBED"):
                    worker.release.set()
                    client.stdin.write("go\n")
                    client.stdin.flush()
                if line.startswith("RESULT"):
                    break
            client.wait(60)
            errors = client.stderr.read() if client.stderr else ""
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
            for pipe in (client.stdin, client.stdout, client.stderr):
                if pipe is not None:
                    pipe.close()
        assert client.returncode == 0, (lines, errors)
        result = json.loads(lines[-1].removeprefix("RESULT "))
        assert result["states"][0] == "TASK_STATE_SUBMITTED"
        assert result["states"][-1] == "TASK_STATE_COMPLETED"
        assert "TASK_STATE_WORKING" in result["states"]
        # two chunks, or one when both were stored before the stream sent either
        assert "".join(result["artifacts"]) == "42 records" and result["artifacts"][0]
        assert result["canceled"] == ["TASK_STATE_CANCELED", "TASK_STATE_CANCELED"]
        assert result["resumed"][0] == "TASK_STATE_WORKING"
        assert result["resumed"][-1] == "TASK_STATE_COMPLETED"
        assert "".join(result["resumed_artifacts"]) == "42 records"
        assert result["listed"] == ["TASK_STATE_CANCELED", "TASK_STATE_COMPLETED",
                                    "TASK_STATE_COMPLETED"]
        status = near.get("/status").json()["a2a"]
        assert status["by_state"] == {"completed": 2, "canceled": 1}

        # no A2A-Version header: the v0.3 names, answered in v0.3's shape
        rpc = {"jsonrpc": "2.0", "id": 7, "method": "tasks/get",
               "params": {"id": result["first_task"]}}
        old = httpx.post(f"{near.api}/a2a/{far.peer_id}", json=rpc, headers=near.headers())
        task = old.json()["result"]
        assert task["kind"] == "task" and task["status"]["state"] == "completed"
        # ... and with A2A-Version: 1.0 they are not found
        new = httpx.post(f"{near.api}/a2a/{far.peer_id}", json=rpc,
                         headers={**near.headers(), "A2A-Version": "1.0"})
        assert new.json()["error"]["code"] == -32601
        # JSON-RPC errors: not JSON, an unknown method or version, an unknown task, a
        # final task cancelled, a bad message, a mesh agent nobody knows; no token: 401
        url = f"{near.api}/a2a/{far.peer_id}"
        v1 = {**near.headers(), "A2A-Version": "1.0"}

        def call(method: str, params: Any, headers: dict[str, str] = v1) -> int:
            body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
            code: int = httpx.post(url, json=body, headers=headers).json()["error"]["code"]
            return code

        assert httpx.post(url, content=b"{", headers=v1).json()["error"]["code"] == -32700
        assert call("Nope", {}) == -32601
        assert call("GetTask", {"id": "x"}, {**v1, "A2A-Version": "9.9"}) == -32009
        assert call("GetTask", {"id": "no-such-task"}) == -32001
        assert call("CancelTask", {"id": result["first_task"]}) == -32002
        assert call("SendMessage", {"message": {"parts": []}}) == -32602
        nobody = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": {
            "messageId": "m", "role": "ROLE_USER", "parts": [{"text": "hi"}]}}}
        assert httpx.post(f"{near.api}/a2a/{'ab' * 32}", json=nobody, headers=v1,
                          timeout=30).json()["error"]["code"] == -32602
        assert httpx.post(url, json=nobody).status_code == 401

        # the far agent was told of the cancel, over the mesh
        deadline = time.monotonic() + 20
        while not worker.canceled() and time.monotonic() < deadline:
            time.sleep(0.1)
        worker.stop.set()
        assert len(worker.canceled()) == 1
