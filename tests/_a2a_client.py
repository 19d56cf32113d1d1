"""The A2A conformance client: the official ``a2a-sdk`` (asyncio), run by
tests/test_a2a_processes.py in a process of its own against a clawmesh peer.

Usage: python -m tests._a2a_client API_URL PEER_ID TOKEN

Talks to the mesh agent PEER_ID through the peer's A2A gateway at API_URL:
discovers its card, streams a task to completion, cancels a second task,
disconnects from a third and resubscribes to it. It prints progress lines
(``READY``, ``SUBSCRIBED``) for the test, waits for a line on stdin after
``SUBSCRIBED``, and ends with one line ``RESULT <json>``; exit 0 on success.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from typing import Any

import httpx
from a2a.client import ClientConfig, create_client
from a2a.types import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    SubscribeToTaskRequest,
    TaskState,
)


def say(line: str) -> None:
    print(line, flush=True)


def request(text: str) -> SendMessageRequest:
    return SendMessageRequest(message=Message(
        message_id=str(uuid.uuid4()), role=Role.ROLE_USER, parts=[Part(text=text)]))


def state_of(event: Any) -> int | None:
    kind = event.WhichOneof("payload")
    if kind == "task":
        return int(event.task.status.state)
    if kind == "status_update":
        return int(event.status_update.status.state)
    return None


async def main(api: str, peer_id: str, token: str) -> dict[str, Any]:
    http = httpx.AsyncClient(timeout=60, headers={
        "Authorization": f"Bearer {token}", "A2A-Version": "1.0"})
    client = await create_client(f"{api}/a2a/{peer_id}",
                                 client_config=ClientConfig(httpx_client=http, streaming=True))
    out: dict[str, Any] = {}

    # 1. a task streamed to completion, with its artifact
    states, artifacts = [], []
    async for event in client.send_message(request("work: count the records")):
        if (state := state_of(event)) is not None:
            states.append(TaskState.Name(state))
        if event.WhichOneof("payload") == "artifact_update":
            artifacts.append("".join(p.text for p in event.artifact_update.artifact.parts))
        if event.WhichOneof("payload") == "task":
            out["first_task"] = event.task.id
    out["states"] = states
    out["artifacts"] = artifacts

    # 2. a task cancelled while the agent works on it
    slow = None
    async for event in client.send_message(request("slow: take your time")):
        if event.WhichOneof("payload") == "task":
            slow = event.task.id
        if state_of(event) == TaskState.TASK_STATE_WORKING:
            break
    assert slow is not None
    canceled = await client.cancel_task(CancelTaskRequest(id=slow))
    got = await client.get_task(GetTaskRequest(id=slow))
    out["canceled"] = [TaskState.Name(canceled.status.state), TaskState.Name(got.status.state)]

    # 3. disconnect from a working task, then resubscribe to it
    third = None
    async for event in client.send_message(request("resub: wait for me")):
        if event.WhichOneof("payload") == "task":
            third = event.task.id
        if state_of(event) == TaskState.TASK_STATE_WORKING:
            break  # the stream is dropped here
    assert third is not None
    say(f"READY {third}")
    resumed: list[str] = []
    resumed_artifacts: list[str] = []
    async for event in client.subscribe(SubscribeToTaskRequest(id=third)):
        if event.WhichOneof("payload") == "task" and not resumed:
            say("SUBSCRIBED")
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        if (state := state_of(event)) is not None:
            resumed.append(TaskState.Name(state))
        if event.WhichOneof("payload") == "artifact_update":
            resumed_artifacts.append(
                "".join(p.text for p in event.artifact_update.artifact.parts))
    out["resumed"] = resumed
    out["resumed_artifacts"] = resumed_artifacts

    listed = await client.list_tasks(ListTasksRequest())
    out["listed"] = sorted(TaskState.Name(t.status.state) for t in listed.tasks)
    await client.close()
    await http.aclose()
    return out


if __name__ == "__main__":
    result = asyncio.run(main(*sys.argv[1:4]))
    say("RESULT " + json.dumps(result))
