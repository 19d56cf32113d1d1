"""A per-peer circuit breaker for delivery, sans-IO (``now_ms`` passed in).

MESH's policy: after ``threshold`` (3) failed attempts to reach a peer in a
row its breaker *opens*: no attempt is made for ``cooldown_ms`` (60 s).
Then it is *half-open*: one probe attempt is allowed; its success closes the
breaker, its failure opens it again for another cooldown. Any success (a
link to the peer came up, a receipt arrived) closes it at once. Messages to
a peer behind an open breaker are not lost: they wait in the outbox, and go
out when the peer is linked again.

Bounded: at most ``MAX_PEERS`` peers are followed; closed ones with no
failures are forgotten first.
"""

from __future__ import annotations

from dataclasses import dataclass

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
THRESHOLD = 3
COOLDOWN_MS = 60_000
MAX_PEERS = 10_000


@dataclass(slots=True)
class _State:
    state: str = CLOSED
    failures: int = 0
    opened_ms: int = 0
    opens: int = 0  # times it opened


class CircuitBreakers:
    """One breaker per peer; see the module docstring."""

    def __init__(self, threshold: int = THRESHOLD, cooldown_ms: int = COOLDOWN_MS) -> None:
        self.threshold = threshold
        self.cooldown_ms = cooldown_ms
        self._peers: dict[bytes, _State] = {}
        self.refused = 0  # attempts not made because a breaker was open

    def state(self, peer: bytes, now_ms: int) -> str:
        s = self._peers.get(peer)
        if s is None:
            return CLOSED
        if s.state == OPEN and now_ms >= s.opened_ms + self.cooldown_ms:
            return HALF_OPEN  # the next attempt is the probe
        return s.state

    def allow(self, peer: bytes, now_ms: int) -> bool:
        """May we try to reach ``peer`` now? In half-open, only the one probe may."""
        s = self._peers.get(peer)
        if s is None or s.state == CLOSED:
            return True
        if s.state == OPEN and now_ms >= s.opened_ms + self.cooldown_ms:
            s.state = HALF_OPEN  # this attempt is the probe
            return True
        self.refused += 1
        return False

    def on_failure(self, peer: bytes, now_ms: int) -> bool:
        """An attempt failed; True if the breaker (re)opened."""
        s = self._peers.get(peer)
        if s is None:
            s = self._peers[peer] = _State()
            self._bound()
        s.failures += 1
        if s.state == HALF_OPEN or (s.state == CLOSED and s.failures >= self.threshold):
            s.state, s.opened_ms = OPEN, now_ms
            s.opens += 1
            return True
        return False

    def on_success(self, peer: bytes) -> None:
        s = self._peers.get(peer)
        if s is not None:
            s.state, s.failures = CLOSED, 0

    def next_probe_ms(self, peer: bytes) -> int | None:
        s = self._peers.get(peer)
        return None if s is None or s.state != OPEN else s.opened_ms + self.cooldown_ms

    def _bound(self) -> None:
        if len(self._peers) <= MAX_PEERS:
            return
        for peer in [p for p, s in self._peers.items() if s.state == CLOSED and not s.failures]:
            del self._peers[peer]
        while len(self._peers) > MAX_PEERS:
            del self._peers[next(iter(self._peers))]

    def snapshot(self, now_ms: int) -> dict[str, dict[str, object]]:
        """Every peer whose breaker is not plainly closed, for ``/status``."""
        out: dict[str, dict[str, object]] = {}
        for peer, s in self._peers.items():
            if s.state == CLOSED and not s.failures:
                continue
            probe = self.next_probe_ms(peer)
            out[peer.hex()] = {
                "state": self.state(peer, now_ms),
                "failures": s.failures,
                "opened": s.opens,
                "probe_in_s": None if probe is None else max(0.0, (probe - now_ms) / 1000),
            }
        return out


__all__ = ["CLOSED", "COOLDOWN_MS", "HALF_OPEN", "OPEN", "THRESHOLD", "CircuitBreakers"]
