"""The relay's hash savings give what the hashes give.

``peer_id_of`` remembers recent keys' ids (bounded); ``open_envelope(...,
mid=)`` takes the id the router already computed instead of hashing again.
Both are compared with the plain computation.
"""

from __future__ import annotations

import hashlib
import os

from peer.wire import _identity
from peer.wire._envelope import Content, message_id, open_envelope, seal_message, split_wire
from peer.wire._identity import PEER_ID_TAG, Identity, peer_id_of


def test_peer_id_of_is_the_hash_cached_or_not_and_the_cache_is_bounded() -> None:
    bound = _identity._recent_peer_id.cache_info().maxsize
    assert bound is not None
    keys = [os.urandom(32) for _ in range(bound + 50)]
    for _ in range(2):  # computed, then (for the recent ones) remembered
        for key in keys:
            assert peer_id_of(key) == hashlib.sha256(PEER_ID_TAG + key).digest()
    assert 0 < _identity._recent_peer_id.cache_info().currsize <= bound
    raw = bytearray(keys[0])  # not hashable: computed, not remembered
    assert peer_id_of(raw) == hashlib.sha256(PEER_ID_TAG + keys[0]).digest()  # type: ignore[arg-type]


def test_open_envelope_with_the_routers_id_is_the_same_envelope() -> None:
    author = Identity.generate()
    env = seal_message(author, topic="t", content=Content(body="hi"), seq=1, ts=1000)
    signed, sig = split_wire(env.wire)
    plain = open_envelope(env.wire)
    given = open_envelope(env.wire, signed=signed, sig=sig, verify=False, mid=message_id(signed))
    assert given == plain and given.id == env.id and given.sender == author.peer_id
    # without ``signed``, a ``mid`` is not trusted: the id is computed
    assert open_envelope(env.wire, mid=b"\0" * 32).id == env.id
