"""The seed's audit fast path writes exactly the general path's bytes.

``relayed_json`` (``peer.api._auditfast``) must return the bytes of
``_dump(relayed_record(env, ms))`` or None (then the general path is taken):
checked on sealed envelopes of every kind and on envelopes with hand-made
fields (odd types, escapes, non-ASCII text, bodies over ``MAX_TEXT``), and
``iso_ms`` against ``iso`` at the edges of its range.
"""

from __future__ import annotations

import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from peer.api._audit import MAX_TEXT, _dump, relayed_record
from peer.api._auditfast import _ISO_RANGE, iso_ms, relayed_json
from peer.api._values import iso
from peer.wire._envelope import (
    Content,
    Envelope,
    seal_dm,
    seal_message,
    seal_presence,
    seal_receipt,
)
from peer.wire._identity import Identity
from tests._fuzz import fuzz_scale

_ME = Identity.generate()
_YOU = Identity.generate()
_NOW = 1_796_702_577_298

_TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"]) | st.sampled_from('"\\\n\t\x00\x1f/'),
    max_size=40,
)
_ODD = st.one_of(
    st.none(), st.integers(-5, 5), st.booleans(), st.binary(max_size=33), _TEXT,
    st.lists(st.integers(0, 3), max_size=2),
)


def _general(env: Envelope, ms: int) -> bytes | None:
    try:
        return _dump(relayed_record(env, ms))
    except Exception:  # the general path refuses it: the fast one must say None
        return None


def _same(env: Envelope, ms: int) -> None:
    fast = relayed_json(env, ms, MAX_TEXT)
    if fast is not None:
        assert fast == _general(env, ms)


def _sealed() -> list[Envelope]:
    ts = int(time.time() * 1000)
    long_body = "é\"\\\u2028" * (MAX_TEXT // 2)
    return [
        seal_message(_ME, topic="bench", content=Content(body="x" * 300), seq=1, ts=ts),
        seal_message(_ME, topic="t-1", content=Content(body=long_body), seq=2, ts=ts),
        seal_message(
            _ME, topic="room", content=Content(body="re", reply_to=b"\x01" * 32), seq=3, ts=ts
        ),
        seal_message(
            _ME,
            topic="room",
            content=Content(body="", thread=b"\x02" * 32, reply_to=b"\x03" * 32),
            seq=4,
            ts=ts,
        ),
        seal_dm(_ME, recipient_key=_YOU.public_key, content=Content(body="hi"), seq=1, ts=ts),
        seal_receipt(_ME, recipient=_YOU.peer_id, ids=[b"\x04" * 32], seq=1, ts=ts),
        seal_presence(_ME, payload=b"\xa0", seq=ts, ts=ts),
    ]


def test_sealed_envelopes_of_every_kind_give_the_general_bytes() -> None:
    envelopes = _sealed()
    assert {e.kind for e in envelopes} == {"msg", "dm", "receipt", "presence"}
    for env in envelopes:
        fast = relayed_json(env, _NOW, MAX_TEXT)
        assert fast is not None, env.kind  # every real kind takes the fast path
        assert fast == _dump(relayed_record(env, _NOW))


@settings(max_examples=fuzz_scale(300), deadline=None)
@given(
    kind=st.sampled_from(["msg", "dm", "receipt", "presence"]),
    topic=_TEXT,
    body=_ODD,
    to=_ODD,
    thread=_ODD,
    reply_to=_ODD,
    seq=st.one_of(st.integers(0, 2**64), st.booleans()),
    ts=st.integers(-(10**13), 10**15),
    ms=st.integers(-(10**13), 10**15),
    drop=st.sets(st.sampled_from(["body", "to", "thread", "reply_to"])),
)
def test_hand_made_fields_give_the_general_bytes_or_none(
    kind: str, topic: str, body: Any, to: Any, thread: Any, reply_to: Any,
    seq: int, ts: int, ms: int, drop: set[str],
) -> None:
    fields = {"body": body, "to": to, "thread": thread, "reply_to": reply_to}
    for name in drop:
        del fields[name]
    env = Envelope(
        id=b"\x05" * 32, kind=kind, topic=topic, sender_key=b"\x06" * 32,
        sender=b"\x07" * 32, seq=seq, ts=ts, fields=fields, wire=b"w" * 17,
    )
    _same(env, ms)


def test_iso_ms_is_iso_in_its_range_and_none_outside() -> None:
    edges = [0, 1, 999, 1000, 59_999, _NOW, _ISO_RANGE.stop - 1, _ISO_RANGE.stop - 1000]
    for ms in edges + list(range(_NOW - 2500, _NOW + 2500, 7)):
        assert iso_ms(ms) == iso(ms)
    assert iso_ms(-1) is None
    assert iso_ms(_ISO_RANGE.stop) is None
    assert iso_ms(True) is None  # not an int to the template


@settings(max_examples=fuzz_scale(500), deadline=None)
@given(st.integers(_ISO_RANGE.start, _ISO_RANGE.stop - 1))
def test_iso_ms_matches_iso_anywhere_in_range(ms: int) -> None:
    assert iso_ms(ms) == iso(ms)
