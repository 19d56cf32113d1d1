"""The redial policy (``peer.node._dialer.Redial``), with times given by hand."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import trio

import peer
from peer.node import _dialer
from peer.node._dialer import FLAP_LIMIT, STABLE, Redial
from store import Backoff

NO_DHT = peer.PeerOptions(dht=False)

BACKOFF = Backoff(base_ms=500, cap_ms=60_000)


def delays(policy: Redial, n: int = 50) -> list[float]:
    rng = random.Random(1)
    return [policy.delay(rng) for _ in range(n)]


def test_failed_dials_back_off_to_the_cap_with_jitter() -> None:
    policy = Redial(BACKOFF)
    for i in range(12):
        policy.ended(False, i, i + 0.1)
    got = delays(policy)
    assert max(got) <= 60.0 and min(got) >= 0.5 and len(set(got)) > 10


def test_a_link_that_came_up_starts_the_delays_over() -> None:
    policy = Redial(BACKOFF)
    for i in range(8):
        policy.ended(False, i, i + 0.1)
    policy.ended(True, 100.0, 100.0 + STABLE + 1)
    assert max(delays(policy)) <= 1.0  # one to two base delays


def test_a_relay_that_restarts_every_few_seconds_is_redialled_quickly() -> None:
    """Short links reset the backoff too, as long as they do not flap."""
    policy = Redial(BACKOFF)
    now = 0.0
    for _ in range(FLAP_LIMIT - 1):
        policy.ended(False, now, now + 0.1)  # the relay is down
        policy.ended(True, now + 1, now + 4)  # back for a few seconds
        now += 20
        assert max(delays(policy)) <= 1.0


def test_flapping_links_back_off_until_one_lasts() -> None:
    policy = Redial(BACKOFF)
    now = 0.0
    for _ in range(3 * FLAP_LIMIT):
        policy.ended(True, now, now + 0.5)  # handshake, then dropped at once
        now += 1
    got = delays(policy)
    assert sum(got) / len(got) > 5.0 and policy.failures > FLAP_LIMIT  # growing
    policy.ended(True, now, now + STABLE)
    assert max(delays(policy)) <= 1.0


async def test_a_peer_left_alone_bootstraps_again_from_a_changed_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bootstrap list names seed 1; seed 1 goes and the list now names seed 2:
    the peer, with no link left, reads the list again and links to seed 2."""
    monkeypatch.setattr(_dialer, "REJOIN_AFTER", 0.5)
    listing = tmp_path / "bootstrap.json"

    def name(seed: peer.Peer) -> None:
        entry = {"peer_id": seed.identity.peer_id_hex, "ws_url": seed.listen_urls[0]}
        listing.write_text(json.dumps({"version": 1, "peers": [entry]}))

    async with (
        peer.open_peer(tmp_path / "s1", store=False, options=NO_DHT) as seed1,
        peer.open_peer(tmp_path / "s2", store=False, options=NO_DHT) as seed2,
    ):
        name(seed1)
        async with peer.open_peer(
            tmp_path / "a", store=False, options=NO_DHT, bootstrap=[str(listing)]
        ) as a:
            with trio.fail_after(10):
                while seed1.peer_id not in a.links:
                    await a.wait_changed()
            name(seed2)
            seed1.cancel()  # seed 1 is gone for good
            with trio.fail_after(15):
                while seed2.peer_id not in a.links:
                    await a.wait_changed()
            assert a.dialer.rejoins >= 1
