"""Which messages of a topic are stored, found through the seen ranges.

``_Held`` is a part of :class:`~store._log.MessageStore`. ``held_in`` answers
what ``held`` answers for messages of one topic whose senders and sequence
numbers are known (a catch-up page, once opened), without a random look into
the id index per message: only an id whose seq lies in its sender's seen
ranges in the topic is looked up. That is exact because a stored sequenced
record's seq is always in those ranges (``_append_in`` marks every one it
stores, and ranges are only ever added to or merged, never taken away), and
safe besides: an id missed here is still never stored twice (the append
checks every id). One read transaction, like every read of the store.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

import lmdb

from ._env import _StoreEnv
from ._records import _U64, MAX_ID_BYTES, U64_MAX, _check_id, _check_u64, _topic_key


class _Held(_StoreEnv):
    """``held_in``: stored messages of a topic, by (sender, seq) first."""

    def held_in(self, topic: str, messages: Sequence[tuple[bytes, int, bytes]]) -> set[bytes]:
        """Which of ``messages`` (``(sender, sender_seq, msg_id)``, all of ``topic``)
        are stored in ``topic``: ``held`` of their ids, for messages stored there.

        A page of messages not seen before costs one read of each sender's
        ranges instead of a look into the id index per message. A message
        stored under another topic is not found here (``held`` finds it). A
        seq of 0 (not sequenced) is always looked up by its id."""
        tkey = _topic_key(topic)
        for sender, seq, msg_id in messages:
            if not (  # the common case in one expression; the checks one by one say why not
                type(sender) is bytes and len(sender) == MAX_ID_BYTES
                and type(msg_id) is bytes and len(msg_id) == MAX_ID_BYTES
                and type(seq) is int and 0 <= seq <= U64_MAX
            ):
                _check_id(sender, "sender")
                _check_u64(seq, "sender_seq")
                _check_id(msg_id, "msg_id")

        def read(txn: lmdb.Transaction[bytes]) -> set[bytes]:
            lanes: dict[bytes, tuple[list[int], list[int]]] = {}
            seen = txn.cursor(db=self._seen)
            ids = txn.cursor(db=self._ids)
            out: set[bytes] = set()
            for sender, seq, msg_id in messages:
                lane = lanes.get(sender)
                if lane is None:
                    lane = lanes[sender] = _seen_ranges(seen, sender + tkey + b"\x00")
                starts, ends = lane
                at = bisect_right(starts, seq) - 1
                if (seq == 0 or (at >= 0 and seq <= ends[at])) and ids.set_key(msg_id):
                    out.add(msg_id)
            return out

        return self._read(read)


def _seen_ranges(cur: lmdb.Cursor[bytes], prefix: bytes) -> tuple[list[int], list[int]]:
    """The seen ranges under ``prefix`` (a sender and a topic key): sorted starts,
    and the end of each."""
    starts: list[int] = []
    ends: list[int] = []
    if cur.set_range(prefix):
        for key, value in cur.iternext():
            if not key.startswith(prefix):
                break
            starts.append(_U64.unpack(key[-8:])[0])
            ends.append(_U64.unpack(value)[0])
    return starts, ends
