"""A2A's JSON forms of the mesh's tasks (sans-IO): checks, both dialects, stream events."""

from __future__ import annotations

import pytest

from peer.protocols._a2atasks import (
    A2aError,
    StreamCursor,
    check_message,
    context_of,
    request_payload,
    state_name,
    wire_state,
    wire_task,
)
from peer.protocols._presence import presence_payload, presence_skills
from peer.protocols._tasks import new_task
from peer.wire import _cbor

ME, AGENT = b"\x0a" * 32, b"\x0b" * 32


def task_for(text: str = "hi", **extra: object):  # type: ignore[no-untyped-def]
    message = check_message({"messageId": "m1", "role": "ROLE_USER",
                             "parts": [{"text": text}], **extra})
    return new_task(b"\x01" * 16, requester=ME, worker=AGENT, request=text,
                    payload=request_payload(message), now_ms=1_000)


def test_a_task_in_both_dialects() -> None:
    task = task_for(contextId="ctx-1")
    task.update("working", 2_000)
    task.update("completed", 3_000, message="done",
                artifact={"name": "answer", "data": "42", "last": True})
    v1, v03 = wire_task(task, True), wire_task(task, False)
    assert v1["id"] == "01" * 16 and v1["contextId"] == "ctx-1" == context_of(task)
    assert v1["status"]["state"] == "TASK_STATE_COMPLETED" and "kind" not in v1
    assert v1["status"]["message"]["parts"] == [{"text": "done"}]
    assert v1["artifacts"] == [{"artifactId": "answer", "name": "answer",
                                "parts": [{"text": "42"}]}]
    assert [m["role"] for m in v1["history"]] == ["ROLE_USER", "ROLE_AGENT"]
    assert v03["kind"] == "task" and v03["status"]["state"] == "completed"
    assert v03["history"][0]["parts"] == [{"kind": "text", "text": "hi"}]
    assert v03["artifacts"][0]["parts"] == [{"kind": "text", "text": "42"}]
    assert wire_task(task, True, history_length=0)["history"] == []


def test_a_stream_cursor_shows_each_change_once() -> None:
    task = task_for()
    cursor = StreamCursor(task)
    assert cursor.advance(task, True) == []
    task.update("working", 2_000)
    task.update("working", 2_100, artifact={"name": "a", "data": "4", "last": False})
    task.update("working", 2_200, artifact={"name": "a", "data": "2", "append": True,
                                            "last": True})
    events = cursor.advance(task, True)
    assert events[0]["artifactUpdate"]["artifact"]["parts"] == [{"text": "4"}, {"text": "2"}]
    assert events[0]["artifactUpdate"]["append"] is False
    assert events[0]["artifactUpdate"]["lastChunk"] is True
    assert [e["statusUpdate"]["status"]["state"] for e in events[1:]] == ["TASK_STATE_WORKING"]
    task.update("canceled", 3_000, message="canceled by the requester")
    [last] = cursor.advance(task, False)
    assert last["kind"] == "status-update" and last["final"] is True
    assert cursor.advance(task, False) == []


@pytest.mark.parametrize("bad", [
    None, {"parts": [{"text": "x"}]}, {"messageId": "m", "parts": []},
    {"messageId": "m", "parts": "text"}, {"messageId": 5, "parts": [{"text": "x"}]},
    {"messageId": "m", "parts": [{"blob": 1}]}, {"messageId": "m", "parts": [{"text": "x"}],
                                                "taskId": 3},
])
def test_client_messages_are_checked(bad: object) -> None:
    with pytest.raises(A2aError) as caught:
        check_message(bad)
    assert caught.value.code == -32602


def test_state_names() -> None:
    assert wire_state("input-required", True) == "TASK_STATE_INPUT_REQUIRED"
    assert wire_state("input-required", False) == "input-required"
    assert state_name("TASK_STATE_INPUT_REQUIRED") == "input-required" == state_name(
        "input-required")


def test_skills_in_presence() -> None:
    payload = presence_payload(["ws://a/"], ("relay",), "n", (("count", "Counts"), ("x", "")))
    assert presence_skills(payload) == (("count", "Counts"), ("x", ""))
    assert presence_skills({"skills": [{"id": "has space"}, {"id": "ok"}, "junk",
                                       {"id": "y" * 33}, {"id": "z", "description": 5}]}) == (
        ("ok", ""),)
    assert presence_skills({"skills": "no"}) == () == presence_skills(None)
    many = presence_payload([], (), "", tuple((f"s{i}", "d" * 200) for i in range(20)))
    assert len(many["skills"]) == 8 and all(len(s["description"]) == 96 for s in many["skills"])
    assert len(_cbor.encode(many)) < 4096 - 8 * 256  # room for 8 long listen addresses
