"""Checking catch-up pages ahead of their store (the shell's side of ``Received``).

While a walk's page is being stored, the pages after it arrive; the core
announces each (``Received``) and later hands them all to one
``CheckAndStore``. ``EarlyChecks`` lets the shell check such a page as soon
as it is announced, in a worker thread while the store commits, and the
``CheckAndStore`` then takes the outcome instead of checking again. Rules:

* An entry is registered synchronously when the announcement is fed (before
  any task runs), so a ``CheckAndStore`` that runs first still finds it and
  waits for it; one that finds none checks the page itself.
* What is taken is the same check's outcome (``None``: the page was bad and
  its link was closed), so the early way stores exactly what the other does.
* Bounded: at most ``MAX_EARLY`` entries (a page each, at most ``PAGES_AHEAD``
  per walk); past that a page is simply checked when it is stored. A walk's
  entries go when its store fails (a link that goes still has the pages it
  brought stored, so theirs stay to be taken).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from peer.wire._envelope import Envelope

MAX_EARLY = 256  # pages checked ahead, all walks together

Outcome = list[Envelope] | None


@dataclass
class _Entry:
    done: trio.Event = field(default_factory=trio.Event)
    outcome: Outcome = None
    ran: bool = False  # the check finished (not forgotten, not crashed)


class EarlyChecks:
    """Outcomes of page checks started ahead of their ``CheckAndStore``."""

    def __init__(self) -> None:
        self._entries: dict[tuple[int, int], _Entry] = {}  # (walk, page.r) -> entry
        self.taken = 0  # checks a store found done or under way (for tests and /status)

    def __len__(self) -> int:
        return len(self._entries)

    def register(self, walk: int, r: int) -> bool:
        """Note that page ``r`` of ``walk`` will be checked early; False: not (bounded)."""
        if len(self._entries) >= MAX_EARLY or (walk, r) in self._entries:
            return False
        self._entries[(walk, r)] = _Entry()
        return True

    def forget(self, walk: int, r: int) -> None:
        """No early check of this page after all: whoever waits checks it."""
        entry = self._entries.pop((walk, r), None)
        if entry is not None:
            entry.done.set()

    async def run(self, walk: int, r: int, check: Callable[[], Awaitable[Outcome]]) -> None:
        """Do the registered check of page ``r`` of ``walk`` (nothing if it went)."""
        entry = self._entries.get((walk, r))
        if entry is None or entry.done.is_set():
            return
        try:
            entry.outcome = await check()
            entry.ran = True
        finally:
            entry.done.set()

    async def take(self, walk: int, r: int) -> tuple[bool, Outcome]:
        """``(True, outcome)`` of the early check of page ``r`` of ``walk`` (waiting
        for it if under way), or ``(False, None)``: there was none, check it now."""
        entry = self._entries.get((walk, r))
        if entry is None:
            return False, None
        await entry.done.wait()  # run, or forgotten
        if self._entries.get((walk, r)) is entry:
            del self._entries[(walk, r)]
        if not entry.ran:
            return False, None
        self.taken += 1
        return True, entry.outcome

    def drop_walk(self, walk: int) -> None:
        for key in [k for k in self._entries if k[0] == walk]:
            self.forget(*key)


__all__ = ["MAX_EARLY", "EarlyChecks"]
