"""fleet.json: a presence announcement carrying a fleet status (envelope.md
8.1), and statuses a receiver refuses, with the reason it counts."""

from __future__ import annotations

from peer import Identity
from peer.protocols._fleet import FLEET_KEY, parse_status
from peer.wire import _cbor
from peer.wire._envelope import seal_presence

from .common import TS0, Json, hx
from .envelope import envelope_entry
from .handshake import INITIATOR_CAPS, INITIATOR_LISTEN

STATUS = {
    "ver": "0.1.0",
    "up": 3600,
    "links": 5,
    "outbox": 2,
    "store": 1_048_576,
    "circuits": {"bob": "closed", "carol": "open"},
}

REFUSED = [
    ("not a map", ["0.1.0", 1], "malformed"),
    ("uptime is text", {**STATUS, "up": "an hour"}, "malformed"),
    ("negative links", {**STATUS, "links": -1}, "malformed"),
    ("version over 32 characters", {**STATUS, "ver": "v" * 33}, "oversize"),
    ("17 circuits", {**STATUS, "circuits": {f"c{i}": "open" for i in range(17)}}, "oversize"),
    ("over 512 bytes", {**STATUS, "pad": "x" * 500}, "oversize"),
]


def build_fleet(ids: dict[str, Identity]) -> Json:
    alice = ids["alice"]
    payload_value = {"listen": list(INITIATOR_LISTEN), "caps": list(INITIATOR_CAPS),
                     FLEET_KEY: STATUS}
    payload = _cbor.encode(payload_value)
    env = seal_presence(alice, payload=payload, seq=TS0 + 60_000, ts=TS0 + 60_000)
    status = _cbor.encode(STATUS)
    parsed = parse_status(STATUS, len(status))
    assert parsed.store_bytes == STATUS["store"]
    refused = []
    for name, value, reason in REFUSED:
        encoded = _cbor.encode(value)
        try:
            parse_status(value, len(encoded))
        except ValueError as exc:
            assert getattr(exc, "reason", None) == reason, (name, exc)
        else:
            raise AssertionError(f"{name} was accepted")
        refused.append({"name": name, "status": hx(encoded), "reason": reason})
    return {
        "description": "A presence announcement whose payload carries the optional fleet "
        "status (envelope.md 8.1), and statuses a receiver refuses with the reason it counts. "
        "A receiver also refuses, per author, a status not newer than the one it holds "
        "(stale) or within 4000 ms of it (flood).",
        "presence": {**envelope_entry("presence-with-fleet", env, None), "payload": hx(payload)},
        "status": {"cbor": hx(status), "value": STATUS},
        "refused": refused,
        "limits": {"max_status_bytes": 512, "max_text": 32, "max_circuits": 16,
                   "min_interval_ms": 4000},
    }
