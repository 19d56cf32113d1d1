"""Room for records other peers create here (tasks, conversations): sans-IO.

A remote peer may open records on this peer by sending it DMs; without
bounds one peer could fill the global cap for good (records are reloaded at
start). ``make_room`` says whether one more record from ``requester`` is
taken, and which finished records to forget first:

* a remote requester has at most ``per_requester`` unfinished records here;
* remote records together stay ``reserved`` below ``cap``: the room left is
  this peer's own agent's;
* when the cap (or the remote share) is reached, the oldest finished records
  (of the remote share, for a remote requester) are evicted; with none
  finished the new record is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

T = TypeVar("T")


def make_room(
    records: Mapping[bytes, T],
    *,
    me: bytes,
    requester: bytes,
    owner: Callable[[T], bytes],
    finished: Callable[[T], bool],
    age: Callable[[T], int],
    cap: int,
    per_requester: int,
    reserved: int,
) -> tuple[bool, list[bytes]]:
    """(take it, ids to evict first). ``requester == me``: this peer's own."""
    remote = requester != me
    if remote and sum(1 for r in records.values()
                      if owner(r) == requester and not finished(r)) >= per_requester:
        return False, []
    scope = [(k, r) for k, r in records.items() if owner(r) != me] if remote else list(
        records.items())
    limit = cap - reserved if remote else cap
    over = max(len(scope) - limit + 1, len(records) - cap + 1, 0)
    if over == 0:
        return True, []
    done = sorted((age(r), k) for k, r in scope if finished(r))
    if len(done) < over:
        return False, []
    return True, [k for _, k in done[:over]]


__all__ = ["make_room"]
