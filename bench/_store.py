"""The store and envelope checks alone, ``python -m bench._store``: the in-run baselines.

Measures the components a catch-up is made of, on their own, in one
process: ``store.MessageStore`` (LMDB, ``sync=True`` as in production) in a
fresh directory fed real signed envelopes in batches (group commit, the way
its Trio service writes; ``--batch 512`` is one catch-up page), read back
page by page as a carrier serves them (the "store replay" rate), and
``peer.open_envelope`` over the same envelopes with and without the
signature check (what the returning peer does to each one). Scenario 3 uses
the rates as the baselines of its catch-up figure, scenario 5 the RSS and
LMDB bytes per 1,000 messages as the reference for the peer's own. Prints
one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence

from ._conn import make_body
from ._procs import rss_bytes


def measure(messages: int, size: int, batch: int) -> dict[str, object]:
    from peer import Content, Identity, open_envelope, seal_message
    from store import MAX_PAGE, AppendItem, MessageStore

    identity = Identity.generate()
    now_ms = time.time_ns() // 1_000_000
    items = []
    for i in range(messages):
        env = seal_message(identity, topic="bench", seq=i + 1, ts=now_ms,
                           content=Content(body=make_body(b"M", i, 0, size).decode()))
        items.append(AppendItem.from_envelope(env, received_ms=now_ms))
    wire_bytes = sum(len(item.wire) for item in items)
    wires = [item.wire for item in items]
    t = time.perf_counter()
    for wire in wires:
        open_envelope(wire)  # parse and check the signature, as catch-up does per envelope
    verify_s = time.perf_counter() - t
    t = time.perf_counter()
    for wire in wires:
        open_envelope(wire, verify=False)
    parse_s = time.perf_counter() - t
    pid = os.getpid()
    directory = tempfile.mkdtemp(prefix="clawmesh-bench-store-")
    try:
        rss0 = rss_bytes(pid)
        store = MessageStore(directory)
        rss_open = rss_bytes(pid)
        t = time.perf_counter()
        for start in range(0, messages, batch):
            store.append_batch(items[start : start + batch])
        append_s = time.perf_counter() - t
        rss_written = rss_bytes(pid)
        stats = store.stats()
        t = time.perf_counter()
        after, read = 0, 0
        for _ in range(messages // MAX_PAGE + 2):
            page = store.read("bench", after=after, limit=MAX_PAGE)
            if not page:
                break
            read += len(page)
            after = page[-1].seq
        read_s = time.perf_counter() - t
        rss_read = rss_bytes(pid)
        store.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    per_k = 1000 / messages
    return {
        "messages": messages,
        "size": size,
        "wire_bytes_per_message": round(wire_bytes / messages),
        "batch": batch,
        "rss_open_kib": (rss_open - rss0) // 1024,
        "rss_per_1000_written_kib": round((rss_written - rss_open) / 1024 * per_k, 1),
        "rss_per_1000_after_read_kib": round((rss_read - rss_open) / 1024 * per_k, 1),
        "lmdb_used_per_1000_kib": round(stats.used_bytes / 1024 * per_k, 1),
        "append_per_s": round(messages / append_s),
        "read_back": read,
        "read_per_s": round(read / read_s) if read_s else None,
        "verify_per_s": round(messages / verify_s) if verify_s else None,
        "parse_per_s": round(messages / parse_s) if parse_s else None,
    }


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench._store", description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--size", type=int, default=300)
    p.add_argument("--batch", type=int, default=256)
    args = p.parse_args(argv)
    try:
        out = measure(args.messages, args.size, args.batch)
    except Exception as exc:  # the store is young: report, do not hide, whatever broke
        print(json.dumps({"ev": "error", "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        raise SystemExit(1) from None
    print(json.dumps({"ev": "done", **out}), flush=True)


if __name__ == "__main__":
    main()
