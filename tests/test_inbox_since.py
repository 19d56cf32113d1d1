"""``Inbox.since``: its fast paths (from the new end, or cursor by cursor for a
reader far behind) give what a plain scan gives, evictions included."""

from __future__ import annotations

import random

from peer.node._inbox import Inbox, InboxMessage


def _message(i: int) -> InboxMessage:
    return InboxMessage(
        cursor=0, id=i.to_bytes(32, "big"), kind="msg", topic="t", channel="t",
        sender=bytes(32), peer=None, body="", payload=None, has_payload=False,
        reply_to=None, thread=None, ts=0, received_ms=0, outgoing=False,
    )


def test_since_matches_a_plain_scan() -> None:
    for trial in range(200):
        rng = random.Random(trial)
        inbox = Inbox(rng.choice([10, 50, 1000]))
        count = rng.randint(0, 300)
        for i in range(count):
            inbox.add(_message(i))
            if rng.random() < 0.3:  # read ones are evicted first: holes in the cursors
                inbox.mark_read([_message(rng.randrange(i + 1)).id])
        for after in range(-1, count + 2):
            limit = rng.choice([1, 3, 10])
            plain = [m.cursor for m in inbox if m.cursor > after][:limit]
            assert [m.cursor for m in inbox.since(after, limit)] == plain, (trial, after)
