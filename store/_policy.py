"""What a node keeps, for how long, and when to retry: pure decisions, no I/O.

Rules this module keeps:

* No lmdb, no trio, no clock: time comes in as ``now_ms`` and randomness as an
  injected ``random.Random``, so every decision is reproducible in a test.
* Every peer keeps the topics it subscribes to; a relay-only seed keeps what
  it relays. :class:`KeepRules` says which topics a node keeps at all and with
  which :class:`RetentionPolicy` (how long, how much); the store applies the
  policy in small steps (``MessageStore.apply_retention``).
* Retries of undelivered DMs back off exponentially with jitter, up to a cap;
  the outbox entry itself carries the deadline after which it becomes a dead
  letter.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How much of one topic's log to keep; ``None`` means no limit of that kind.

    Age is measured from the time this node received a message
    (``received_ms``), not from the sender's clock, which it cannot trust.
    """

    max_age_ms: int | None = None
    max_bytes: int | None = None
    max_count: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_age_ms", "max_bytes", "max_count"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, not {value}")

    @property
    def unlimited(self) -> bool:
        return self.max_age_ms is None and self.max_bytes is None and self.max_count is None


@dataclass(frozen=True, slots=True)
class KeepRules:
    """Which topics a node stores, and the retention policy of each.

    Lookup order: an exact topic name in ``topics``, then the longest matching
    prefix in ``prefixes`` (for example ``"dm/"``), then ``default``. A result
    of ``None`` means the node does not keep that topic (it may still relay
    it). A subscribing peer typically keeps its own topics with a generous
    policy; a relay-only seed sets ``default`` to a bounded policy, or to
    ``None`` and lists the topics it carries.
    """

    default: RetentionPolicy | None = field(default_factory=RetentionPolicy)
    topics: Mapping[str, RetentionPolicy | None] = field(default_factory=dict)
    prefixes: Mapping[str, RetentionPolicy | None] = field(default_factory=dict)

    def policy_for(self, topic: str) -> RetentionPolicy | None:
        if topic in self.topics:
            return self.topics[topic]
        best: str | None = None
        for prefix in self.prefixes:
            if topic.startswith(prefix) and (best is None or len(prefix) > len(best)):
                best = prefix
        if best is not None:
            return self.prefixes[best]
        return self.default

    def keeps(self, topic: str) -> bool:
        return self.policy_for(topic) is not None


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter for outbox retries.

    ``delay_ms(attempts, rng)`` is a uniform draw from
    ``[base, min(cap, base * factor ** attempts)]``.
    """

    base_ms: int = 1_000
    cap_ms: int = 300_000
    factor: float = 2.0

    def __post_init__(self) -> None:
        if self.base_ms <= 0 or self.cap_ms < self.base_ms or self.factor < 1.0:
            raise ValueError("need 0 < base_ms <= cap_ms and factor >= 1")

    def delay_ms(self, attempts: int, rng: random.Random) -> int:
        ceiling = self.cap_ms
        if attempts < 64:
            ceiling = min(self.cap_ms, int(self.base_ms * self.factor**attempts))
        return rng.randint(self.base_ms, max(self.base_ms, ceiling))

    def next_try_ms(self, now_ms: int, attempts: int, rng: random.Random) -> int:
        return now_ms + self.delay_ms(attempts, rng)
