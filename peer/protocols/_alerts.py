"""Alert deduplication as MESH does it, sans-IO (``now_ms`` passed in).

Alerts are keyed by (host, check). A firing alert is ``new`` the first time
(or once ``window_ms`` passed since it was last sent); repeats within the
window are ``suppressed``, except the ``escalate_after``-th occurrence
(3), which is sent again as an ``escalate``; a later ``ok`` for a firing
key is a ``recovery`` (and the key is forgotten), an ``ok`` for a key that
is not firing is ``ignored``. Only ``new``, ``escalate`` and ``recovery``
are sent. Bounded: at most ``MAX_KEYS`` firing keys (the oldest go first).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

NEW, SUPPRESSED, ESCALATE = "new", "suppressed", "escalate"
RECOVERY, IGNORED = "recovery", "ignored"
SENT = frozenset({NEW, ESCALATE, RECOVERY})
WINDOW_MS = 15 * 60_000
ESCALATE_AFTER = 3
MAX_KEYS = 10_000


@dataclass(slots=True)
class Firing:
    host: str
    check: str
    first_ms: int
    last_sent_ms: int
    count: int  # occurrences since it was last new
    escalated: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    kind: str
    count: int

    @property
    def send(self) -> bool:
        return self.kind in SENT


class AlertDedup:
    """See the module docstring."""

    def __init__(self, window_ms: int = WINDOW_MS, escalate_after: int = ESCALATE_AFTER) -> None:
        self.window_ms = window_ms
        self.escalate_after = escalate_after
        self.firing: OrderedDict[tuple[str, str], Firing] = OrderedDict()
        self.counts = {NEW: 0, SUPPRESSED: 0, ESCALATE: 0, RECOVERY: 0, IGNORED: 0}

    def on_alert(self, host: str, check: str, ok: bool, now_ms: int) -> Decision:
        key = (host, check)
        state = self.firing.get(key)
        if ok:
            if state is None:
                return self._count(Decision(IGNORED, 0))
            del self.firing[key]
            return self._count(Decision(RECOVERY, state.count))
        if state is None or now_ms - state.last_sent_ms >= self.window_ms:
            self.firing[key] = Firing(host, check, now_ms, now_ms, 1)
            self.firing.move_to_end(key)
            while len(self.firing) > MAX_KEYS:
                self.firing.popitem(last=False)
            return self._count(Decision(NEW, 1))
        state.count += 1
        if state.count == self.escalate_after and not state.escalated:
            state.escalated, state.last_sent_ms = True, now_ms
            return self._count(Decision(ESCALATE, state.count))
        return self._count(Decision(SUPPRESSED, state.count))

    def _count(self, decision: Decision) -> Decision:
        self.counts[decision.kind] += 1
        return decision


__all__ = ["ESCALATE", "IGNORED", "NEW", "RECOVERY", "SUPPRESSED", "AlertDedup", "Decision"]
