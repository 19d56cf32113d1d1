"""What an idle WebSocket link keeps: empty queues that hold no buffer.

A relay holds thousands of idle links. Each upgraded trio-websocket connection
keeps two queues that are empty nearly all the time: wsproto's ``Connection``
queues the events parsed from received bytes (``_events``), and the Trio memory
channel trio-websocket hands messages over in (``_recv_channel``) keeps its
messages in a ``deque``. An empty ``collections.deque`` already holds a block of
64 slots: 760 bytes, two of them per link.

``LazyDeque`` is the part of the ``deque`` interface those two use (``append``,
``popleft``, ``clear``, ``len``, truth, iteration) and holds a real ``deque``
only while it has items: an empty one is a 40-byte object. ``slim_websocket``
swaps one in for each empty queue, only where the attribute is there and is
an empty ``deque`` (so nothing queued is ever lost), and only on the library
releases these were read from (``SLIM_VERSIONS``); anything else is left as
it is (the link then costs the 1.5 KiB more). tests/test_slim.py checks the
queues behave the same and that the swap happens on the pinned versions.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

import trio
import trio_websocket
import wsproto

T = TypeVar("T")

# The releases whose private attributes were read: wsproto ``Connection._events``
# (appended to by ``receive_data``, emptied by ``events()``) and trio's
# ``MemoryChannelState.data`` (``append``, ``popleft``, ``clear``, ``len``, truth).
SLIM_VERSIONS = {
    "trio": ("0.35.",),  # constraints.txt pins it
    "trio_websocket": ("0.12.",),
    "wsproto": ("1.2.", "1.3."),
}
SLIM = True  # False: keep the libraries' own deques (tests compare both)


def _version_ok(version: str, prefixes: tuple[str, ...]) -> bool:
    return version.startswith(prefixes)


def _versions_ok() -> bool:
    return (
        _version_ok(trio.__version__, SLIM_VERSIONS["trio"])
        and _version_ok(trio_websocket.__version__, SLIM_VERSIONS["trio_websocket"])
        and _version_ok(getattr(wsproto, "__version__", ""), SLIM_VERSIONS["wsproto"])
    )


_VERSIONS_OK = _versions_ok()


class LazyDeque(Generic[T]):
    """A FIFO queue that holds a ``deque`` only while it has items."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: deque[T] | None = None

    def append(self, item: T) -> None:
        items = self._items
        if items is None:
            items = self._items = deque()
        items.append(item)

    def popleft(self) -> T:
        items = self._items
        if not items:
            raise IndexError("pop from an empty deque")
        item = items.popleft()
        if not items:
            self._items = None
        return item

    def clear(self) -> None:
        self._items = None

    def __len__(self) -> int:
        return 0 if self._items is None else len(self._items)

    def __bool__(self) -> bool:
        return self._items is not None

    def __iter__(self) -> Iterator[T]:
        return iter(()) if self._items is None else iter(self._items)


def _swap(owner: object, name: str) -> bool:
    """Put a ``LazyDeque`` in place of ``owner.name`` if it is an empty ``deque``."""
    current = getattr(owner, name, None)
    if type(current) is not deque or current:
        return False
    setattr(owner, name, LazyDeque())
    return True


def slim_websocket(ws: trio_websocket.WebSocketConnection, connection: object) -> int:
    """Swap the empty queues of an upgraded connection for lazy ones; how many were.

    ``connection`` is wsproto's frame-level ``Connection`` the WebSocket uses.
    """
    if not (SLIM and _VERSIONS_OK):
        return 0
    swapped = int(_swap(connection, "_events"))
    any_ws: Any = ws
    channel = getattr(any_ws, "_recv_channel", None)
    state = getattr(channel, "_state", None)
    if state is not None and hasattr(state, "max_buffer_size"):
        swapped += _swap(state, "data")
    return swapped
