"""clawmesh's message store: per-topic append logs on LMDB, and its Trio shell.

``MessageStore`` (``store._log``) is the synchronous interface: every LMDB
transaction begins and ends inside one method, and a write returns only after
its commit. ``StoreService`` (``store._service``) runs it from Trio with one
writer thread and group commit. ``store._policy`` holds the pure decisions:
which topics to keep and for how long, and retry backoff.
"""

from ._env import private_dir
from ._log import (
    DEFAULT_MAP_SIZE,
    DEFAULT_MAX_MAP_SIZE,
    MAX_PAGE,
    AppendItem,
    AppendResult,
    DeadLetter,
    EnvelopeLike,
    MessageStore,
    OutboxEntry,
    RetentionResult,
    StoreClosed,
    StoreCorrupt,
    StoredMessage,
    StoreError,
    StoreFull,
    StoreStats,
    TopicHead,
    gaps_between,
    merge_ranges,
)
from ._policy import Backoff, KeepRules, RetentionPolicy
from ._retention import Pin
from ._service import ServiceStatistics, StoreService, open_store_service

__all__ = [
    "DEFAULT_MAP_SIZE",
    "DEFAULT_MAX_MAP_SIZE",
    "MAX_PAGE",
    "AppendItem",
    "AppendResult",
    "Backoff",
    "DeadLetter",
    "EnvelopeLike",
    "KeepRules",
    "MessageStore",
    "OutboxEntry",
    "Pin",
    "RetentionPolicy",
    "RetentionResult",
    "ServiceStatistics",
    "StoreClosed",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
    "StoreService",
    "StoreStats",
    "StoredMessage",
    "TopicHead",
    "gaps_between",
    "merge_ranges",
    "open_store_service",
    "private_dir",
]
