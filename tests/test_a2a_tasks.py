"""A2A tasks relayed over the mesh (sans-IO): states, who may update, events, JSON forms."""

from __future__ import annotations

import pytest

from peer.protocols._a2atasks import (
    MAX_EVENTS,
    TaskBook,
    TaskError,
    check_message,
    state_name,
    task_request,
    wire_event,
    wire_state,
    wire_task,
)
from peer.protocols._presence import presence_payload, presence_skills
from peer.wire import _cbor

AGENT = b"\x0a" * 32
OTHER = b"\x0b" * 32


def message(text: str = "hi", **extra: object) -> dict[str, object]:
    return check_message({"messageId": "m1", "role": "ROLE_USER", "parts": [{"text": text}],
                          **extra})


def test_a_task_goes_from_submitted_to_completed_by_its_agents_updates() -> None:
    book = TaskBook()
    task = book.create(AGENT, message(), 1.0)
    assert task.state == "submitted" and task_request(task)["message"]["parts"] == [
        {"text": "hi"}]
    assert book.apply_update(OTHER, {"task_id": task.id, "state": "working"}, 2.0) is None
    assert book.apply_update(AGENT, {"task_id": task.id, "state": "working"}, 2.0) is task
    book.apply_update(AGENT, {"task_id": task.id, "artifact": {
        "artifactId": "a", "parts": [{"text": "4"}]}}, 3.0)
    book.apply_update(AGENT, {"task_id": task.id, "artifact": {
        "artifactId": "a", "parts": [{"text": "2"}], "append": True}}, 3.5)
    book.apply_update(AGENT, {"task_id": task.id, "state": "completed", "message": "ok"}, 4.0)
    assert task.final and task.artifacts == [{"artifactId": "a", "parts": [
        {"text": "4"}, {"text": "2"}]}]
    assert [e.state for e in task.events if e.kind == "status"] == [
        "submitted", "working", "completed"]
    # final is final: no update, no cancel
    assert book.apply_update(AGENT, {"task_id": task.id, "state": "working"}, 5.0) is None
    with pytest.raises(TaskError) as caught:
        book.cancel(task, 5.0)
    assert caught.value.code == -32002


@pytest.mark.parametrize("update", [
    None, [], {"task_id": "nope"}, {"state": "done"}, {"artifact": "x"},
    {"artifact": {"parts": []}}, {"artifact": {"parts": [{"blob": 1}]}},
])
def test_bad_updates_are_refused(update: object) -> None:
    book = TaskBook()
    task = book.create(AGENT, message(), 1.0)
    if isinstance(update, dict) and "task_id" not in update:
        update = {**update, "task_id": task.id}
    assert book.apply_update(AGENT, update, 2.0) is None
    assert task.state == "submitted" and len(task.events) == 1


def test_input_required_takes_more_input_and_cancel_is_final() -> None:
    book = TaskBook()
    task = book.create(AGENT, message(), 1.0)
    with pytest.raises(TaskError):
        book.continue_task(task, message("more"), 2.0)
    book.apply_update(AGENT, {"task_id": task.id, "state": "input-required",
                              "message": "which one?"}, 2.0)
    book.continue_task(task, message("the first"), 3.0)
    assert task.state == "working" and task.history[-1]["parts"] == [{"text": "the first"}]
    book.cancel(task, 4.0)
    assert task.state == "canceled" and task.final


def test_bounds_events_and_tasks() -> None:
    book = TaskBook(limit=3)
    tasks = [book.create(AGENT, message(), float(i)) for i in range(3)]
    book.cancel(tasks[1], 4.0)
    book.create(AGENT, message(), 5.0)
    assert tasks[1].id not in book.tasks and len(book.tasks) == 3  # a final one went first
    task = tasks[0]
    for i in range(MAX_EVENTS + 10):
        book.apply_update(AGENT, {"task_id": task.id, "message": f"step {i}"}, 6.0)
    assert len(task.events) == MAX_EVENTS and task.dropped == 11


@pytest.mark.parametrize("bad", [
    None, {"parts": [{"text": "x"}]}, {"messageId": "m", "parts": []},
    {"messageId": "m", "parts": "text"}, {"messageId": 5, "parts": [{"text": "x"}]},
])
def test_client_messages_are_checked(bad: object) -> None:
    with pytest.raises(TaskError) as caught:
        check_message(bad)
    assert caught.value.code == -32602


def test_two_json_dialects() -> None:
    assert wire_state("input-required", True) == "TASK_STATE_INPUT_REQUIRED"
    assert state_name("TASK_STATE_INPUT_REQUIRED") == "input-required" == state_name(
        "input-required")
    book = TaskBook()
    task = book.create(AGENT, check_message(
        {"messageId": "m", "role": "user", "parts": [{"kind": "text", "text": "v03"}]}), 0.0)
    book.apply_update(AGENT, {"task_id": task.id, "state": "completed", "message": "ok"}, 1.0)
    v1, v03 = wire_task(task, True), wire_task(task, False)
    assert v1["status"]["state"] == "TASK_STATE_COMPLETED" and "kind" not in v1
    assert v03["kind"] == "task" and v03["status"]["state"] == "completed"
    assert v03["history"][0]["parts"] == [{"kind": "text", "text": "v03"}]
    assert v1["history"][-1]["role"] == "ROLE_AGENT" and v03["history"][-1]["role"] == "agent"
    last = task.events[-1]
    assert wire_event(task, last, True)["statusUpdate"]["status"]["state"] == (
        "TASK_STATE_COMPLETED")
    assert wire_event(task, last, False)["final"] is True
    assert wire_task(task, True, history_length=0)["history"] == []


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
