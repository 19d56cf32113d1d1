"""One remote peer cannot fill this peer's task or conversation limits for good:
a cap per remote requester, room reserved for the local agent, oldest finished
records evicted (peer/protocols/_roomcap.py; review item 9)."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import pytest
import structlog

from peer.node import _convhost, _taskhost
from peer.node._convhost import ConversationService
from peer.node._taskhost import TaskService
from peer.protocols._roomcap import make_room
from peer.protocols._tasks import TaskError

ME, EVE, BOB = b"\x01" * 32, b"\x0e" * 32, b"\x0b" * 32


Rec = tuple[bytes, bool, int]


def _room(records: dict[bytes, Rec], requester: bytes) -> tuple[bool, list[bytes]]:
    return make_room(records, me=ME, requester=requester, owner=lambda r: r[0],
                     finished=lambda r: r[1], age=lambda r: r[2], cap=10, per_requester=3,
                     reserved=4)


def test_make_room_rules() -> None:
    records = {bytes([i]): (EVE, False, i) for i in range(3)}
    assert _room(records, EVE) == (False, [])  # three open: Eve's share is full
    assert _room(records, BOB) == (True, [])
    records = {bytes([i]): (EVE if i % 2 else BOB, True, 100 - i) for i in range(6)}
    assert _room(records, EVE) == (True, [bytes([5])])  # remote share 6 = cap - reserved
    assert _room(records, ME) == (True, [])  # the reserved room is the agent's
    records.update({bytes([i]): (ME, False, i) for i in range(10, 14)})
    assert _room(records, ME) == (True, [bytes([5])])  # full: the oldest finished goes
    open_only = {bytes([i]): (ME, False, i) for i in range(10)}
    assert _room(open_only, ME) == (False, [])


def _service() -> TaskService:
    peer: Any = SimpleNamespace(peer_id=ME, log=structlog.get_logger(), storage=None,
                                notify_inbox=lambda: None, wall_ms=lambda: 5)
    return TaskService(peer)


def _task_dm(sender: bytes) -> Any:
    return SimpleNamespace(payload={"task": {"id": "x"}, "data": None}, has_payload=True,
                           meta=SimpleNamespace(corr=os.urandom(16)), id=os.urandom(16),
                           sender=sender, body="do it")


def test_one_remote_peer_cannot_fill_the_task_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_taskhost, "MAX_TASKS", 20)
    monkeypatch.setattr(_taskhost, "RESERVED_LOCAL", 5)
    monkeypatch.setattr(_taskhost, "MAX_OPEN_PER_REQUESTER", 8)
    tasks = _service()
    for _ in range(30):
        tasks.on_dm(_task_dm(EVE), 1)
    assert len(tasks.by_id) == 8  # Eve's open tasks are capped
    for task in tasks.by_id.values():
        task.update("completed", 2)
    for _ in range(30):
        tasks.on_dm(_task_dm(EVE), 3)
    assert len(tasks.by_id) == 15  # the remote share: finished ones evicted, oldest first
    assert sum(1 for t in tasks.by_id.values() if not t.final) == 8
    for _ in range(5):
        tasks.on_dm(_task_dm(BOB), 4)
    assert sum(1 for t in tasks.by_id.values() if t.requester == BOB) == 5
    assert len(tasks.by_id) == 15  # still within the remote share


async def test_the_local_agent_keeps_its_room(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_taskhost, "MAX_TASKS", 6)
    monkeypatch.setattr(_taskhost, "RESERVED_LOCAL", 2)
    tasks = _service()
    sent: list[Any] = []

    async def send(*args: Any) -> None:
        sent.append(args)

    tasks._send = send  # type: ignore[method-assign,assignment]
    for _ in range(10):
        tasks.on_dm(_task_dm(EVE), 1)
    assert len(tasks.by_id) == 4
    await tasks.submit(BOB, "mine", None)
    await tasks.submit(BOB, "mine too", None)
    with pytest.raises(TaskError):
        await tasks.submit(BOB, "no room", None)
    assert len(sent) == 2


def _opening(owner: bytes) -> Any:
    conv_id = os.urandom(16)
    info = {"id": conv_id.hex(), "type": "opinion", "owner": owner.hex(),
            "participants": [ME.hex()], "subject": "s", "created": 1, "deadline": 10**12,
            "idle": 10**9}
    return SimpleNamespace(payload={"conversation": info}, has_payload=True,
                           meta=SimpleNamespace(conv=conv_id), id=os.urandom(16),
                           sender=owner, body="s")


def test_one_remote_peer_cannot_fill_the_conversation_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_convhost, "MAX_OPEN_PER_OWNER", 4)
    peer: Any = SimpleNamespace(peer_id=ME, log=structlog.get_logger(), storage=None,
                                notify_inbox=lambda: None, wall_ms=lambda: 5)
    convs = ConversationService(peer)
    for _ in range(20):
        convs.on_dm(_opening(EVE), b"", 2)
    assert len(convs.by_id) == 4
    convs.on_dm(_opening(BOB), b"", 2)
    assert len(convs.by_id) == 5
