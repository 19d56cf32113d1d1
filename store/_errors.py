"""The errors the message store raises on purpose.

Every one derives from :class:`StoreError`; LMDB's own errors are translated
into these at the transaction boundary (``store._env``).
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error this package raises on purpose."""


class StoreFull(StoreError):
    """The store cannot take this write: the map is at its maximum, or the disk is full.

    Nothing of the failed write was committed. Reads keep working, and so do
    writes that free space (retention) or record small state.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # "map" or "disk"


class StoreClosed(StoreError):
    """The store (or its service) has been closed."""


class StoreCorrupt(StoreError):
    """Stored bytes do not have the shape this package writes."""
