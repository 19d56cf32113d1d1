"""Where the operator's records live: the peer's store (``store._journal``:
keyed records in LMDB, written and paged in short sync transactions) or,
for a peer run with ``--no-store``, a bounded dict that dies with it.

One async interface for both, so schedules and the audit trail need not
care; every store call runs in the store service's threads.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Mapping

from peer.node._node import Peer
from store import _journal

MEMORY_CAP = 200_000  # records a store-less peer keeps (oldest keys go first)


class Book:
    """Keyed records of one peer, in key order."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self._keys: list[str] = []  # without a store: sorted keys of _values
        self._values: dict[str, bytes] = {}

    @property
    def durable(self) -> bool:
        return self.peer.storage is not None

    async def put(self, items: Mapping[str, bytes | None], *, reserve: bool = False) -> None:
        """Write or delete (None) all of ``items`` at once: one commit."""
        storage = self.peer.storage
        if storage is not None:
            await storage.service.write(
                functools.partial(_journal.put, items=dict(items), reserve=reserve)
            )
            return
        for key, value in items.items():
            if value is None:
                if self._values.pop(key, None) is not None:
                    self._keys.remove(key)
                continue
            if key not in self._values:
                bisect.insort(self._keys, key)
            self._values[key] = value
        while len(self._keys) > MEMORY_CAP:
            self._values.pop(self._keys.pop(0), None)

    async def get(self, key: str) -> bytes | None:
        storage = self.peer.storage
        if storage is not None:
            return await storage.service.read(lambda s: s.get_state(key))
        return self._values.get(key)

    async def page(
        self, prefix: str, after: str | None = None, limit: int = 1000, *, reverse: bool = False
    ) -> list[tuple[str, bytes]]:
        storage = self.peer.storage
        if storage is not None:
            return await storage.service.read(
                functools.partial(
                    _journal.page, prefix=prefix, after=after, limit=limit, reverse=reverse
                )
            )
        return self._memory_page(prefix, after, limit, reverse)

    def _memory_page(
        self, prefix: str, after: str | None, limit: int, reverse: bool
    ) -> list[tuple[str, bytes]]:
        keys = self._keys
        if reverse:
            end = bisect.bisect_left(keys, after if after is not None else prefix + "\U0010ffff")
            picked = keys[max(0, end - limit) : end][::-1]  # a prefix's keys are contiguous
        else:
            at = bisect.bisect_right(keys, after) if after is not None else 0
            at = max(at, bisect.bisect_left(keys, prefix))
            picked = keys[at : at + limit]
        out = [(k, self._values[k]) for k in picked if k.startswith(prefix)]
        return out[:limit]

    async def delete_before(self, prefix: str, before: str, budget: int = 1000) -> int:
        storage = self.peer.storage
        if storage is not None:
            return await storage.service.write(
                functools.partial(
                    _journal.delete_before, prefix=prefix, before=before, budget=budget
                )
            )
        doomed = [k for k in self._keys if k.startswith(prefix) and k < before][:budget]
        await self.put(dict.fromkeys(doomed))
        return len(doomed)


__all__ = ["Book"]
