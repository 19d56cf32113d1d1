"""Acceptance test 2: a writer appending under load is killed with SIGKILL, again and again.

``store._crashwriter`` appends batches with ``sync=True`` and prints each
acknowledgement only after the commit returned. This test kills it with
SIGKILL at a random moment (uniform over its first ``MAX_LIFE`` seconds,
so sometimes before the first acknowledgement), ``CRASH_ROUNDS`` times (200 by default, as in
CI; set it higher for a longer run), reopening the store after each kill and
checking that:

* every record decodes and the store is consistent (``MessageStore.check``:
  each topic's records are exactly ``first_seq .. next_seq - 1``, no holes,
  counts, bytes and indexes agree);
* every acknowledged message is at its acknowledged position with the right
  content (its id is the SHA-256 of its wire bytes, sender and sender seq
  match), unless retention has since removed the oldest records of its topic,
  in which case it is gone from the indexes too;
* acknowledged cursors, state and outbox changes survived; each writer's
  sender sequence numbers have no gaps.

Writers are forked from one ``--fork-server`` process so that 200 rounds cost
fork, not interpreter start-up. Everything waits on pipe output with a
deadline; nothing sleeps: the moment of each kill is the timeout of the ``select`` that reads
the writer's acknowledgements.

A second test fills a store against a file-size limit (``RLIMIT_FSIZE``, the
nearest thing to a full disk without root) and checks that the write fails
with ``StoreFull`` while reads and the process keep going.
"""

from __future__ import annotations

import hashlib
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from store import MAX_PAGE, MessageStore, StoredMessage
from store._crashwriter import CURSOR, STATE_KEY, TOPICS, sender_of, state_value

REPO = Path(__file__).resolve().parent.parent
ROUNDS = int(os.environ.get("CRASH_ROUNDS", "200"))
MAX_LIFE = 0.12  # seconds a writer may live before it is killed
DEADLINE = 60.0  # seconds without output before the test gives up on a writer


class _Lines:
    """Lines from a pipe, read with deadlines (no sleeping, no hanging)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""

    def next(self, timeout: float = DEADLINE) -> str | None:
        """The next line, or None if none is complete within ``timeout`` seconds."""
        end = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                return None
            chunk = os.read(self.fd, 65536)
            assert chunk, "the fork server exited"
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    def must(self) -> str:
        line = self.next()
        assert line is not None, f"no output from the crash writer for {DEADLINE} s"
        return line


@dataclass
class Acked:
    """Everything the writers acknowledged so far."""

    messages: dict[str, dict[int, tuple[bytes, int, int]]] = field(
        default_factory=lambda: {t: {} for t in TOPICS}
    )  # topic -> seq -> (msg_id, seed, sender seq)
    cursors: dict[str, int] = field(default_factory=dict)
    state: bytes | None = None
    outbox_added: set[bytes] = field(default_factory=set)
    outbox_done_intent: set[bytes] = field(default_factory=set)
    outbox_done: set[bytes] = field(default_factory=set)
    seeds: list[int] = field(default_factory=list)
    acks: int = 0
    retained_away: int = 0


def _run_round(server: subprocess.Popen[bytes], lines: _Lines, path: Path, seed: int,
               life: float, acked: Acked) -> list[tuple[str, int, bytes]]:
    """One writer life: start it, SIGKILL it ``life`` seconds after it started,
    collect everything it acknowledged; returns this round's appends."""
    assert server.stdin is not None
    server.stdin.write(f"{path} {seed}\n".encode())
    server.stdin.flush()
    first = lines.must()
    assert first.startswith("P "), first
    pid = int(first.split()[1])
    kill_at = time.monotonic() + life
    killed = False
    new: list[tuple[str, int, bytes]] = []
    acked.seeds.append(seed)
    while True:
        line = lines.must() if killed else lines.next(kill_at - time.monotonic())
        if line is None:  # the chosen moment has come
            os.kill(pid, signal.SIGKILL)
            killed = True
            continue
        kind, *rest = line.split()
        if kind == "A":
            topic, seq, hexid, n = rest
            acked.messages[topic][int(seq)] = (bytes.fromhex(hexid), seed, int(n))
            acked.acks += 1
            new.append((topic, int(seq), bytes.fromhex(hexid)))
        elif kind == "C":
            acked.cursors[rest[0]] = int(rest[1])
        elif kind == "S":
            acked.state = state_value(seed, int(rest[0]))
        elif kind == "O":
            acked.outbox_added.add(bytes.fromhex(rest[0]))
        elif kind == "d":
            acked.outbox_done_intent.add(bytes.fromhex(rest[0]))
        elif kind == "D":
            acked.outbox_done.add(bytes.fromhex(rest[0]))
        elif kind == "X":
            status = int(rest[1])
            assert killed, f"writer {pid} ended on its own (wait status {status})"
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
            return new
        else:
            raise AssertionError(f"unexpected line from the writer: {line!r}")


def _whole_log(store: MessageStore, topic: str) -> dict[int, StoredMessage]:
    out: dict[int, StoredMessage] = {}
    after = 0
    while page := store.read(topic, after, MAX_PAGE):
        out.update((m.seq, m) for m in page)
        after = page[-1].seq
    return out


def _verify(path: Path, acked: Acked, new_acks: list[tuple[str, int, bytes]]) -> None:
    store = MessageStore(path, map_size=256 * 1024, max_map_size=256 * 1024 * 1024)
    try:
        problems = store.check()
        assert not problems, problems
        for topic in TOPICS:
            head = store.head(topic)
            log = _whole_log(store, topic)
            assert sorted(log) == list(range(head.first_seq, head.next_seq))  # no holes
            positions = acked.messages[topic]
            if positions:
                assert head.last_seq >= max(positions), (topic, head)
            for seq in sorted(positions):
                msg_id, seed, n = positions[seq]
                if seq < head.first_seq:  # removed by retention, and from every index
                    assert store.get(msg_id) is None
                    del positions[seq]
                    acked.retained_away += 1
                    continue
                msg = log[seq]
                assert msg.msg_id == msg_id, (topic, seq)
                assert hashlib.sha256(msg.wire).digest() == msg_id
                assert (msg.sender, msg.sender_seq) == (sender_of(seed), n)
            cursor = store.get_cursor(CURSOR, topic)
            assert acked.cursors.get(topic, 0) <= cursor <= head.last_seq
        for topic, seq, msg_id in new_acks:
            if seq in acked.messages[topic]:
                assert store.position(msg_id) == (topic, seq)
        if acked.state is not None:
            stored = store.get_state(STATE_KEY)
            assert stored is not None and stored >= acked.state
        for msg_id in acked.outbox_added - acked.outbox_done_intent:
            assert store.outbox_get(msg_id) is not None
        for msg_id in acked.outbox_done:
            assert store.outbox_get(msg_id) is None
        assert store.sender_gaps(sender_of(acked.seeds[-1])) == []
    finally:
        store.close()


def test_sigkill_while_appending(tmp_path: Path) -> None:
    path = tmp_path / "store"
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    server = subprocess.Popen(
        [sys.executable, "-m", "store._crashwriter", "--fork-server"],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert server.stdout is not None and server.stdin is not None
    lines = _Lines(server.stdout.fileno())
    acked = Acked()
    try:
        for round_ in range(ROUNDS):
            # A uniformly random moment of the writer's life, so kills land in
            # commits, fsyncs, map growth and retention in proportion to the
            # time spent there; a few land while it opens the store.
            life = rng.uniform(0.0, MAX_LIFE)
            new = _run_round(server, lines, path, 1000 + round_, life, acked)
            _verify(path, acked, new)
    finally:
        server.stdin.close()
        server.wait(timeout=DEADLINE)
        server.stdout.close()
    assert acked.acks > ROUNDS  # the writers did work between kills
    assert acked.retained_away > 0 or ROUNDS < 50  # retention ran under the kills too


DISK_FULL_SCRIPT = textwrap.dedent(
    """
    import hashlib, resource, signal, sys
    from store import AppendItem, MessageStore, StoreFull

    path = sys.argv[1]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of dying
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 1024 * 1024, 2 * 1024 * 1024))
    store = MessageStore(path, map_size=1 << 20, max_map_size=1 << 30)
    n = 0
    try:
        while True:
            items = []
            for _ in range(10):
                n += 1
                wire = n.to_bytes(8, "big") * 400
                items.append(AppendItem(hashlib.sha256(wire).digest(), "t", b"s" * 32,
                                        n, n, wire, n))
            store.append_batch(items)
    except StoreFull as exc:
        assert exc.reason == "disk", exc.reason
    head = store.head("t")
    assert head.count > 0 and head.count < n, (head, n)
    assert len(store.read("t", 0, 5)) == 5          # reads keep working
    store.set_cursor("api", "t", head.last_seq)     # and small writes still fit
    assert store.check() == []
    store.close()
    store = MessageStore(path, map_size=1 << 20, max_map_size=1 << 30)
    assert store.head("t") == head and store.get_cursor("api", "t") == head.last_seq
    print("ok", head.count)
    """
)


def test_disk_full_is_a_clear_error(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", DISK_FULL_SCRIPT, str(tmp_path / "store")],
        cwd=REPO,
        capture_output=True,
        timeout=DEADLINE,
        check=False,
    )
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().startswith("ok ")
