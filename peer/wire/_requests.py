"""Matching replies to requests, sans-IO: ids, the link each went to, deadlines.

One ``RequestMatcher`` serves any request/reply protocol carried over links
(catch-up's ``cureq``/``cupage``, the DHT's RPCs). It lives in ``peer.wire``
because ``dht`` may import only that layer; it knows nothing of frames.

Rules kept here:

* Ids count ``first``, ``first + 1``, ... up to ``max_id`` and wrap to 1
  (0 is never used); an id still outstanding is skipped, so two requests in
  flight never share one.
* A request belongs to the link (peer id) it was sent on: a reply with a
  known id from another peer, or with an unknown or late id, is refused and
  counted (``refused``), never matched.
* Bounded: at most ``capacity`` requests at once (``start`` returns None
  beyond it).
* Time is the caller's ``now`` (monotonic seconds, never going back); each
  request expires ``timeout`` seconds after it started, so deadlines come in
  start order and the oldest is always the next to expire.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class _Outstanding(Generic[T]):
    peer: bytes
    deadline: float
    token: T


class RequestMatcher(Generic[T]):
    """Outstanding requests by id; ``token`` is what the caller wants back."""

    def __init__(
        self, timeout: float, *, capacity: int = 1024, max_id: int = 2**32 - 1, first: int = 1
    ) -> None:
        if timeout <= 0 or capacity < 1 or max_id < 1:
            raise ValueError("a matcher needs a positive timeout, capacity and id range")
        self.timeout = timeout
        self.capacity = capacity
        self.max_id = max_id
        self._next = (first - 1) % max_id + 1
        self._out: dict[int, _Outstanding[T]] = {}  # in start order, so in deadline order
        self.refused = 0  # replies from the wrong peer, or to no outstanding request

    def __len__(self) -> int:
        return len(self._out)

    def __contains__(self, rid: object) -> bool:
        return rid in self._out

    def _take_id(self) -> int:
        while True:
            rid = self._next
            self._next = rid % self.max_id + 1
            if rid not in self._out:
                return rid

    def start(self, peer: bytes, now: float, token: T) -> int | None:
        """A request to ``peer`` leaves now; its id, or None when too many are out."""
        if len(self._out) >= self.capacity or len(self._out) >= self.max_id:
            return None
        rid = self._take_id()
        self._out[rid] = _Outstanding(peer, now + self.timeout, token)
        return rid

    def peer_of(self, rid: int) -> bytes | None:
        out = self._out.get(rid)
        return None if out is None else out.peer

    def deadline(self, rid: int) -> float | None:
        out = self._out.get(rid)
        return None if out is None else out.deadline

    def resolve(self, peer: bytes, rid: int) -> T | None:
        """The token of request ``rid`` if ``peer`` is the one it went to (it is then
        no longer outstanding); None, counted in ``refused``, otherwise."""
        out = self._out.get(rid)
        if out is None or out.peer != peer:
            self.refused += 1
            return None
        del self._out[rid]
        return out.token

    def cancel(self, rid: int) -> T | None:
        """Forget request ``rid`` (the caller gave up on it); its token, if it was out."""
        out = self._out.pop(rid, None)
        return None if out is None else out.token

    def drop_peer(self, peer: bytes) -> list[tuple[int, T]]:
        """The link to ``peer`` went: its requests fail; returns them in start order."""
        gone = [(rid, out.token) for rid, out in self._out.items() if out.peer == peer]
        for rid, _ in gone:
            del self._out[rid]
        return gone

    def expired(self, now: float) -> list[tuple[int, T]]:
        """Requests whose deadline has come, oldest first; they are no longer outstanding."""
        gone: list[tuple[int, T]] = []
        for rid, out in self._out.items():
            if out.deadline > now:
                break
            gone.append((rid, out.token))
        for rid, _ in gone:
            del self._out[rid]
        return gone

    def next_deadline(self) -> float | None:
        for out in self._out.values():
            return out.deadline
        return None


__all__ = ["RequestMatcher"]
