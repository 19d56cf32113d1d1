"""The fleet view, sans-IO: each peer's small signed status, carried in its
presence announcement, and the table of the statuses heard.

Rules kept here (protocol-spec/envelope.md, section 8.1):

* A status is the optional ``"fleet"`` entry of a presence payload: a CBOR
  map ``{"ver": text, "up": uint (seconds), "links": uint, "outbox": uint,
  "store": uint (bytes in use) or null, "circuits": {text: text}}``. Peers
  that do not know it ignore it, as they ignore any unknown payload key.
* It is signed (it is inside the presence envelope) and goes out at the
  presence rate (every 60 s; never twice within 5 s).
* A receiver keeps one status per peer and refuses, counting the reason:
  ``oversize`` (over ``MAX_STATUS_BYTES`` encoded, or a text, or more
  circuits, past its bound), ``malformed`` (not a map, a value of the
  wrong type), ``flood`` (less than ``MIN_INTERVAL_MS`` after the last one
  it took from that peer), ``stale`` (not newer than that one: presence
  ``seq`` is the author's clock). Unknown keys are ignored.
* At most ``MAX_PEERS`` statuses are kept; the one heard longest ago goes.

Time is passed in (``now_ms``, wall clock milliseconds).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

FLEET_KEY = "fleet"
MAX_STATUS_BYTES = 512
MAX_TEXT = 32
MAX_CIRCUITS = 16
MAX_PEERS = 10_000
MIN_INTERVAL_MS = 4_000  # presence is debounced to one per 5 s
ONLINE_MS = 150_000  # as for presence: heard within this long counts as online
_UINTS = ("up", "links", "outbox")


class StatusRefused(ValueError):
    """A status not taken; ``reason`` is what the refusal is counted under."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class FleetStatus:
    version: str
    uptime_s: int
    links: int
    outbox: int
    store_bytes: int | None
    circuits: tuple[tuple[str, str], ...] = ()

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ver": self.version[:MAX_TEXT],
            "up": self.uptime_s,
            "links": self.links,
            "outbox": self.outbox,
            "store": self.store_bytes,
        }
        if self.circuits:
            out["circuits"] = dict(self.circuits[:MAX_CIRCUITS])
        return out


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise StatusRefused("malformed", f"{what} is not text")
    if len(value) > MAX_TEXT:
        raise StatusRefused("oversize", f"{what} over {MAX_TEXT} characters")
    return value


def _uint(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise StatusRefused("malformed", f"{what} is not an unsigned integer")
    return value


def parse_status(value: Any, encoded_size: int) -> FleetStatus:
    """The status in a presence payload's ``fleet`` entry, or StatusRefused."""
    if encoded_size > MAX_STATUS_BYTES:
        raise StatusRefused("oversize", f"status of {encoded_size} bytes over {MAX_STATUS_BYTES}")
    if not isinstance(value, dict):
        raise StatusRefused("malformed", "status is not a map")
    store = value.get("store")
    circuits = value.get("circuits", {})
    if not isinstance(circuits, dict):
        raise StatusRefused("malformed", "circuits is not a map")
    if len(circuits) > MAX_CIRCUITS:
        raise StatusRefused("oversize", f"more than {MAX_CIRCUITS} circuits")
    return FleetStatus(
        version=_text(value.get("ver"), "ver"),
        uptime_s=_uint(value.get("up"), "up"),
        links=_uint(value.get("links"), "links"),
        outbox=_uint(value.get("outbox"), "outbox"),
        store_bytes=None if store is None else _uint(store, "store"),
        circuits=tuple(
            sorted((_text(k, "circuit name"), _text(v, "circuit state"))
                   for k, v in circuits.items())
        ),
    )


@dataclass(slots=True)
class _Entry:
    status: FleetStatus
    seq: int  # the presence's seq: the author's clock when it signed
    heard_ms: int


class FleetView:
    """The latest status of each peer heard, bounded, with refusal counts."""

    def __init__(self, max_peers: int = MAX_PEERS) -> None:
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._max = max_peers
        self.refused: Counter[str] = Counter()
        self.accepted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def on_status(
        self, peer_id: bytes, value: Any, encoded_size: int, seq: int, now_ms: int
    ) -> FleetStatus:
        """Take a peer's status (its presence's ``fleet`` entry), or count and
        raise StatusRefused."""
        try:
            status = parse_status(value, encoded_size)
            last = self._entries.get(peer_id)
            if last is not None:
                if seq <= last.seq:
                    raise StatusRefused("stale", "not newer than the status held")
                if now_ms - last.heard_ms < MIN_INTERVAL_MS:
                    raise StatusRefused("flood", f"within {MIN_INTERVAL_MS} ms of the last")
        except StatusRefused as exc:
            self.refused[exc.reason] += 1
            raise
        self._entries[peer_id] = _Entry(status, seq, now_ms)
        self._entries.move_to_end(peer_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        self.accepted += 1
        return status

    def entries(self, now_ms: int) -> list[tuple[bytes, FleetStatus, int, bool]]:
        """``(peer id, status, heard_ms, online)`` of every peer, by peer id."""
        return [
            (pid, e.status, e.heard_ms, now_ms - e.heard_ms <= ONLINE_MS)
            for pid, e in sorted(self._entries.items())
        ]


__all__ = [
    "FLEET_KEY",
    "MAX_STATUS_BYTES",
    "MIN_INTERVAL_MS",
    "FleetStatus",
    "FleetView",
    "StatusRefused",
    "parse_status",
]
