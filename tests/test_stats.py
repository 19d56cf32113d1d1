"""One counter style: ``statistics()`` returns a frozen snapshot, like trio's."""

from __future__ import annotations

import dataclasses
import json

import pytest

from peer.protocols._gossip import GossipRouter
from peer.wire._stats import Statistics, snapshot


@dataclasses.dataclass
class Counters:
    sent: int = 0
    refused: dict[str, int] = dataclasses.field(default_factory=dict)


def test_a_snapshot_does_not_move_with_its_counters() -> None:
    counters = Counters()
    counters.refused["rate"] = 1
    before = snapshot(counters, queue=3)
    counters.sent += 5
    counters.refused["rate"] += 1
    assert before["sent"] == 0 and before["refused"]["rate"] == 1 and before["queue"] == 3
    assert snapshot(counters)["sent"] == 5


def test_a_snapshot_is_read_only_and_thaws_to_json() -> None:
    inner = snapshot(Counters(sent=2, refused={"slow": 1}))
    outer = snapshot(part=inner, names=["a", "b"])
    assert outer["names"] == ("a", "b")  # lists become tuples
    with pytest.raises(TypeError):
        inner["refused"]["slow"] = 9  # read-only mappings inside
    with pytest.raises(dataclasses.FrozenInstanceError):
        outer.data = {}  # type: ignore[misc]
    doc = outer.to_json()
    assert json.loads(json.dumps(doc)) == {
        "part": {"sent": 2, "refused": {"slow": 1}},
        "names": ["a", "b"],
    }


def test_the_gossip_router_reports_a_snapshot() -> None:
    router = GossipRouter(bytes(32))
    first = router.statistics()
    router.subscribe("general")
    assert isinstance(first, Statistics)
    assert first["subscriptions"] == 0 and router.statistics()["subscriptions"] == 1
