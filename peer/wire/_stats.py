"""One counter style for every part of a peer: mutable counters inside, a frozen
snapshot outside.

A part counts in a slotted dataclass of numbers (``GossipCounters``,
``PeerCounters``, ``StorageCounters``, ...) that only it changes. Asked for
``statistics()``, it returns a ``Statistics``: a read-only snapshot of those
counters and of its gauges (sizes, queue lengths), like trio's
``statistics()`` methods, safe to keep and compare while the part goes on.
Nested snapshots (a peer's includes its gossip router's) stay ``Statistics``.
Pure: no I/O; shared by every layer, so it sits with the wire format.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any


def _freeze(value: Any) -> Any:
    if isinstance(value, Statistics):
        return value
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple | set | frozenset):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Statistics):
        return value.to_json()
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class Statistics(Mapping[str, Any]):
    """A frozen snapshot of one part's counters and gauges."""

    data: Mapping[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def to_json(self) -> dict[str, Any]:
        """Plain dicts and lists, for JSON."""
        out: dict[str, Any] = _thaw(self.data)
        return out


def snapshot(counters: object | None = None, /, **gauges: Any) -> Statistics:
    """The frozen snapshot of ``counters`` (a dataclass instance) and ``gauges``."""
    values: dict[str, Any] = {}
    if counters is not None:
        assert dataclasses.is_dataclass(counters) and not isinstance(counters, type)
        values.update({f.name: getattr(counters, f.name) for f in dataclasses.fields(counters)})
    values.update(gauges)
    return Statistics(_freeze(values))
