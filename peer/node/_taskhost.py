"""Tasks in the peer's Trio shell: it performs what ``peer.protocols._tasks`` decides.

Every task message is a DM whose meta carries the task id as correlation
id (envelope.md section 12.2): the requester's ``{"task": {"id"}, "data"}``
(``k`` = ``request``) submits it, the worker's ``{"task_update": {"id",
"state", "message", "progress", "artifact"}}`` moves it on, the
requester's ``{"task_cancel": {"id"}}`` cancels it and ``{"task_input":
{"id"}, "data"}`` answers an ``input-required``. Updates are applied only
from the task's worker, cancels and inputs only from its requester. Both
sides keep the record under state key ``task/<id>``, written by the task
``run`` after every change; the changes feed ``task`` stream events. A remote
requester has at most ``MAX_OPEN_PER_REQUESTER`` unfinished tasks here and
remote tasks leave ``RESERVED_LOCAL`` of ``MAX_TASKS`` to this agent; at the
cap the oldest finished tasks are forgotten (``peer/protocols/_roomcap.py``).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import cbor2
import trio

from peer.protocols._roomcap import make_room
from peer.protocols._tasks import CANCELED, Task, TaskError, new_task
from peer.wire import _cbor
from peer.wire._envelope import Content
from peer.wire._meta import Meta
from store import StoreError

from ._coordhost import CoordPeer
from ._inbox import InboxMessage

TASK_PREFIX = "task/"
MAX_TASKS = 10_000
MAX_RECORD = 200 * 1024
MAX_APPLIED = 65_536
MAX_OPEN_PER_REQUESTER = 256  # unfinished tasks one remote peer may have here
RESERVED_LOCAL = 1000  # of MAX_TASKS, never taken by other peers' tasks


class TaskService:
    """See the module docstring."""

    def __init__(self, peer: CoordPeer) -> None:
        self.peer = peer
        self.by_id: dict[bytes, Task] = {}
        self._dirty: dict[bytes, None] = {}
        self._wake = trio.Event()
        self._changed = trio.Event()
        self.changes: list[tuple[bytes, str]] = []  # (id, state) for streams
        self.change_count = 0
        self._applied: OrderedDict[bytes, None] = OrderedDict()  # message ids taken

    async def load(self) -> None:
        storage = self.peer.storage
        if storage is None:
            return
        items = await storage.service.read(lambda s: s.state_items(TASK_PREFIX))
        for raw in items.values():
            try:
                task = Task.from_record(cbor2.loads(raw))
            except (ValueError, KeyError, TypeError, IndexError, cbor2.CBORDecodeError):
                continue
            self.by_id[task.id] = task

    # -- the agent's side ----------------------------------------------------------------

    async def submit(self, worker: bytes, request: str, payload: Any) -> Task:
        if not self._room(self.peer.peer_id):
            raise TaskError(f"at most {MAX_TASKS} tasks are kept and none is finished")
        task = new_task(os.urandom(16), requester=self.peer.peer_id, worker=worker,
                        request=request, payload=payload, now_ms=self.peer.wall_ms())
        self.by_id[task.id] = task
        await self._write([task.id])
        await self._send(task, worker, request, {"task": {"id": task.id.hex()}, "data": payload},
                         "request")
        self._note(task)
        return task

    async def update(self, task: Task, state: str, *, message: str, progress: float | None,
                     artifact: dict[str, Any] | None) -> None:
        """The worker's agent moves its task on; the requester hears of it."""
        if task.worker != self.peer.peer_id:
            raise TaskError("only the task's worker updates it (the requester may cancel)")
        task.update(state, self.peer.wall_ms(), message=message, progress=progress,
                    artifact=artifact, size=0 if artifact is None else len(cbor2.dumps(artifact)))
        self._note(task)
        update = {"id": task.id.hex(), "state": state, "message": message,
                  "progress": progress, "artifact": artifact}
        await self._send(task, task.requester, message or state, {"task_update": update},
                         "notification")

    async def cancel(self, task: Task) -> None:
        if task.requester != self.peer.peer_id:
            raise TaskError("only the requester cancels a task (its worker sets failed)")
        task.update(CANCELED, self.peer.wall_ms(), message="canceled by the requester")
        self._note(task)
        await self._send(task, task.worker, "canceled", {"task_cancel": {"id": task.id.hex()}},
                         "notification")

    async def give_input(self, task: Task, body: str, payload: Any) -> None:
        if task.requester != self.peer.peer_id:
            raise TaskError("only the requester answers its task")
        if task.final:
            raise TaskError(f"the task is {task.state}")
        await self._send(task, task.worker, body,
                         {"task_input": {"id": task.id.hex()}, "data": payload}, "response")

    # -- what arrives --------------------------------------------------------------------

    def on_dm(self, message: InboxMessage, now_ms: int) -> None:
        """A DM with a correlation id was stored (``Coordination.admit``)."""
        payload = message.payload if message.has_payload else None
        meta = message.meta
        if not isinstance(payload, dict) or meta is None or meta.corr is None:
            return
        if message.id in self._applied:
            return  # the same DM again (its receipt was lost and it was pushed again)
        self._applied[message.id] = None
        while len(self._applied) > MAX_APPLIED:
            self._applied.popitem(last=False)
        task = self.by_id.get(meta.corr)
        if task is None:
            if "task" in payload and 1 <= len(meta.corr) <= 32 and self._room(message.sender):
                task = new_task(meta.corr, requester=message.sender, worker=self.peer.peer_id,
                                request=message.body, payload=payload.get("data"),
                                now_ms=now_ms)
                self.by_id[task.id] = task
                self._note(task)
            return
        try:
            if "task_update" in payload and message.sender == task.worker:
                self._apply_update(task, payload["task_update"], now_ms)
            elif "task_cancel" in payload and message.sender == task.requester:
                task.update(CANCELED, now_ms, message="canceled by the requester")
            else:
                return
        except (TaskError, TypeError, ValueError, KeyError) as exc:
            self.peer.log.warning("task update refused", task=task.id.hex()[:16], error=str(exc))
            return
        self._note(task)

    def _room(self, requester: bytes) -> bool:
        """Whether a task from ``requester`` is taken (``_roomcap``), oldest finished
        tasks forgotten to make room."""
        take, evict = make_room(
            self.by_id, me=self.peer.peer_id, requester=requester,
            owner=lambda t: t.requester, finished=lambda t: t.final,
            age=lambda t: t.history[-1].at_ms, cap=MAX_TASKS,
            per_requester=MAX_OPEN_PER_REQUESTER, reserved=RESERVED_LOCAL)
        for task_id in evict:
            del self.by_id[task_id]
            self._dirty[task_id] = None  # its record is deleted by the writer
        if evict:
            self._wake.set()
        if not take:
            self.peer.log.info("task refused: no room", requester=requester.hex()[:16])
        return take

    @staticmethod
    def _apply_update(task: Task, update: Any, now_ms: int) -> None:
        if not isinstance(update, dict):
            raise TaskError("a task update is a map")
        progress = update.get("progress")
        artifact = update.get("artifact")
        artifact = artifact if isinstance(artifact, dict) else None
        task.update(
            str(update["state"]), now_ms, message=str(update.get("message") or "")[:4096],
            progress=None if progress is None else float(progress), artifact=artifact,
            size=0 if artifact is None else len(cbor2.dumps(artifact)),
        )

    def _note(self, task: Task) -> None:
        self._dirty[task.id] = None
        self.changes = [*self.changes, (task.id, task.state)][-1024:]
        self.change_count += 1
        self._changed.set()
        self._changed = trio.Event()
        self._wake.set()
        self.peer.notify_inbox()

    async def wait_changed(self, timeout_s: float) -> None:
        with trio.move_on_after(timeout_s):
            await self._changed.wait()

    # -- sending and storing -------------------------------------------------------------

    async def _send(self, task: Task, to: bytes, body: str, payload: Any, kind: str) -> None:
        meta = Meta(kind=kind, corr=task.id, conv=task.id)
        await self.peer.send_direct(to, Content(body, _cbor.encode(payload), meta=meta))

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            try:
                await self._write(list(self._dirty))
            except (StoreError, ValueError) as exc:
                self.peer.log.error("task write failed", error=str(exc))
                await trio.sleep(1)

    async def _write(self, ids: list[bytes]) -> None:
        for task_id in ids:
            self._dirty.pop(task_id, None)
        storage = self.peer.storage
        records: dict[str, bytes | None] = {}
        for task_id in ids:
            if task_id not in self.by_id:
                records[TASK_PREFIX + task_id.hex()] = None  # evicted
            task = self.by_id.get(task_id)
            if task is not None:
                raw = cbor2.dumps(task.to_record())
                if len(raw) > MAX_RECORD:  # keep the states; the parts stay in the inbox
                    record = task.to_record()
                    record["artifacts"] = [[a[0], a[1][-8:], a[2]] for a in record["artifacts"]]
                    raw = cbor2.dumps(record)
                records[TASK_PREFIX + task_id.hex()] = raw
        if storage is None or not records:
            return

        await storage.service.write(lambda s: s.write_states(records))


__all__ = ["TASK_PREFIX", "TaskService"]
