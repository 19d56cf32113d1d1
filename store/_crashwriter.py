"""A store writer that is meant to be killed: the subject of the SIGKILL crash test.

``python -m store._crashwriter PATH SEED`` appends batches to the store at
PATH as fast as it can, and reports on stdout only what has been committed
(``sync=True``). Each report is one ``os.write`` of whole lines, written after
the call that committed it returned, so a line on stdout is an
acknowledgement: whatever it names must survive a kill at any later moment.

``python -m store._crashwriter --fork-server`` imports everything once, then
for each ``PATH SEED`` line on stdin forks a writer (so a test can kill and
restart one hundreds of times without paying interpreter start-up) and, after
the writer died, reports ``X <pid> <wait status>``.

Lines a writer prints:

``P pid``                      started (before opening the store)
``A topic seq msg_id_hex n``   appended: sender seq ``n`` of this seed's sender
``C topic seq``                cursor ``crash`` of topic set to seq
``S n``                        state ``crash/last`` set to (seed, n)
``O msg_id_hex``               outbox entry added
``d msg_id_hex``               about to mark an outbox entry done (may or may not commit)
``D msg_id_hex``               outbox entry done

Rules it keeps: it never opens the store before forking (the fork server
holds no LMDB environment), and it uses only ``MessageStore``'s public
methods, each of which commits before returning.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import traceback
from collections import deque

from ._log import AppendItem, MessageStore

TOPICS = ("crash-a", "crash-b", "crash-c", "dm/crash")
CURSOR = "crash"
STATE_KEY = "crash/last"
KEEP_PER_TOPIC = 300
MAP_SIZE = 256 * 1024  # start small: the map grows while being killed, too
MAX_MAP_SIZE = 256 * 1024 * 1024
EXIT_WRONG = 3


def sender_of(seed: int) -> bytes:
    return hashlib.sha256(b"clawmesh/crash-sender/" + seed.to_bytes(8, "big")).digest()


def state_value(seed: int, n: int) -> bytes:
    return seed.to_bytes(8, "big") + n.to_bytes(8, "big")


def _emit(fd: int, lines: list[str]) -> None:
    if lines:
        os.write(fd, "".join(line + "\n" for line in lines).encode())


def run_writer(path: str, seed: int, out: int = 1) -> int:
    """Append until killed (or until something is wrong: returns EXIT_WRONG)."""
    _emit(out, [f"P {os.getpid()}"])
    rng = random.Random(seed)
    sender = sender_of(seed)
    store = MessageStore(path, map_size=MAP_SIZE, max_map_size=MAX_MAP_SIZE, sync=True)
    n = 0
    last_seq: dict[str, int] = {}
    recent: deque[tuple[AppendItem, str, int]] = deque(maxlen=32)
    pending: deque[bytes] = deque()
    batches = 0
    while True:
        batches += 1
        items: list[AppendItem] = []
        for _ in range(rng.randint(1, 24)):
            n += 1
            wire = rng.randbytes(rng.randint(1, 3000))
            items.append(
                AppendItem(
                    msg_id=hashlib.sha256(wire).digest(),
                    topic=rng.choice(TOPICS),
                    sender=sender,
                    sender_seq=n,
                    ts=n,
                    wire=wire,
                    received_ms=n,
                )
            )
        dups = [rng.choice(recent) for _ in range(rng.randint(0, 2))] if recent else []
        results = store.append_batch(items + [d[0] for d in dups])
        lines: list[str] = []
        for item, result in zip(items, results, strict=False):
            if result.duplicate or result.topic != item.topic:
                return EXIT_WRONG
            lines.append(f"A {item.topic} {result.seq} {item.msg_id.hex()} {item.sender_seq}")
            recent.append((item, result.topic, result.seq))
            last_seq[item.topic] = result.seq
        for (_, topic, seq), result in zip(dups, results[len(items) :], strict=True):
            if not result.duplicate or (result.topic, result.seq) != (topic, seq):
                return EXIT_WRONG
        _emit(out, lines)

        if rng.random() < 0.3:
            topic = rng.choice(sorted(last_seq))
            store.set_cursor(CURSOR, topic, last_seq[topic])
            _emit(out, [f"C {topic} {last_seq[topic]}"])
        if rng.random() < 0.2:
            store.put_state(STATE_KEY, state_value(seed, n))
            _emit(out, [f"S {n}"])
        if rng.random() < 0.3:
            msg_id = rng.randbytes(32)
            if store.outbox_add(msg_id, sender, rng.randbytes(64), n, n + 1000):
                pending.append(msg_id)
                _emit(out, [f"O {msg_id.hex()}"])
        if pending and rng.random() < 0.2:
            msg_id = pending.popleft()
            _emit(out, [f"d {msg_id.hex()}"])
            if not store.outbox_done(msg_id):
                return EXIT_WRONG
            _emit(out, [f"D {msg_id.hex()}"])
        if batches % 4 == 0:
            store.apply_retention(
                rng.choice(TOPICS), now_ms=n, max_count=KEEP_PER_TOPIC, budget=64
            )


def fork_server() -> int:
    """Fork one writer per ``PATH SEED`` line on stdin; report how each one ended."""
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            return 0
        path, seed = line.decode().split()
        pid = os.fork()
        if pid == 0:  # the writer
            code = 2
            try:
                code = run_writer(path, int(seed))
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        _emit(1, [f"X {pid} {status}"])


def main(argv: list[str]) -> int:
    if argv == ["--fork-server"]:
        return fork_server()
    if len(argv) in (1, 2):
        return run_writer(argv[0], int(argv[1]) if len(argv) == 2 else 1)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
