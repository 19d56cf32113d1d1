"""Tasks with A2A's states (peer.protocols._tasks): transitions, progress,
streamed artifacts, terminal states, records."""

from __future__ import annotations

import cbor2
import pytest

from peer.protocols._tasks import (
    CANCELED,
    COMPLETED,
    INPUT_REQUIRED,
    STATES,
    SUBMITTED,
    WORKING,
    Task,
    TaskError,
    new_task,
)

R, W = b"\x01" * 32, b"\x02" * 32


def _task() -> Task:
    return new_task(b"\x05" * 16, requester=R, worker=W, request="index the docs",
                    payload={"repo": "x"}, now_ms=0)


def test_a2a_state_names() -> None:
    assert STATES == ("submitted", "working", "input-required", "completed", "failed",
                      "canceled", "rejected")


def test_progress_partial_results_input_and_completion() -> None:
    task = _task()
    assert task.state == SUBMITTED and not task.final
    task.update(WORKING, 10, progress=0.25, artifact={"name": "log", "data": "line 1",
                                                      "append": True, "last": False})
    task.update(WORKING, 20, progress=0.5, artifact={"name": "log", "data": "line 2",
                                                     "append": True, "last": False})
    assert task.progress == 0.5 and task.artifacts["log"].parts == ["line 1", "line 2"]
    assert not task.artifacts["log"].complete
    task.update(INPUT_REQUIRED, 30, message="which branch?")
    task.update(WORKING, 40)
    assert task.progress == 0.5  # the last progress given
    task.update(COMPLETED, 50, progress=1.0, artifact={"name": "index", "data": {"n": 3}})
    assert task.final and task.artifacts["index"].complete
    with pytest.raises(TaskError):
        task.update(WORKING, 60)  # nothing after a terminal state
    assert task.progress == 1.0
    done = _task()
    done.update(WORKING, 10, progress=0.5)
    done.update(COMPLETED, 20)  # no progress given: a completed task is still all done
    assert done.progress == 1.0
    stopped = _task()
    stopped.update(WORKING, 10, progress=0.5)
    stopped.update(CANCELED, 20)
    assert stopped.progress == 0.5  # how far it got
    assert [s.state for s in task.history] == [SUBMITTED, WORKING, WORKING, INPUT_REQUIRED,
                                               WORKING, COMPLETED]


def test_refused_updates_change_nothing() -> None:
    task = _task()
    for state, kwargs in (("done", {}), (WORKING, {"progress": 1.5}),
                          (WORKING, {"artifact": {"name": ""}})):
        with pytest.raises(TaskError):
            task.update(state, 1, **kwargs)
    assert len(task.history) == 1 and not task.artifacts
    task.update(WORKING, 2, artifact={"name": "a", "data": 1, "last": True})
    with pytest.raises(TaskError):
        task.update(WORKING, 3, artifact={"name": "a", "data": 2, "append": True})
    task.update(CANCELED, 4)
    assert task.state == CANCELED and task.final
    with pytest.raises(TaskError):
        new_task(b"\x01", requester=R, worker=R, request="x", payload=None, now_ms=0)


def test_artifacts_are_bounded_per_task() -> None:
    task = _task()
    task.update(WORKING, 1, artifact={"name": "a", "data": "x"}, size=4 * 1024 * 1024)
    with pytest.raises(TaskError):
        task.update(WORKING, 2, artifact={"name": "b", "data": "y"}, size=1)
    assert list(task.artifacts) == ["a"] and len(task.history) == 2


def test_record_round_trip() -> None:
    task = _task()
    task.update(WORKING, 5, progress=0.1, message="go", artifact={"name": "p", "data": [1]})
    again = Task.from_record(cbor2.loads(cbor2.dumps(task.to_record())))
    assert again.to_record() == task.to_record() and again.state == WORKING
