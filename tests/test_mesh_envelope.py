"""MESH v3 envelopes (sans-IO): body shapes, field checks, HMAC, replay rules."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.protocols._meshenv import (
    MAX_HOOK_BODY,
    MeshError,
    ReplayGuard,
    check_envelope,
    hmac_of,
    parse_hook_body,
    parse_time,
    response_envelope,
    signature_valid,
)

NOW = parse_time("2026-02-21T20:45:00.000Z")


def env(**extra: object) -> dict[str, object]:
    base: dict[str, object] = {
        "protocol": "mesh/3.0", "id": "msg_1", "from": "hub", "to": "worker-a",
        "type": "request", "timestamp": "2026-02-21T20:45:00.000Z",
        "replyTo": {"url": "http://127.0.0.1:9/hooks/worker-a", "token": "t"},
        "payload": {"subject": "s", "body": "b"}, "nonce": "n1",
    }
    base.update(extra)
    return base


def test_the_three_body_shapes_give_the_same_envelope() -> None:
    e = env()
    assert parse_hook_body(json.dumps({"message": json.dumps(e)}).encode()) == e
    assert parse_hook_body(json.dumps({"message": e}).encode()) == e
    assert parse_hook_body(json.dumps(e).encode()) == e


@pytest.mark.parametrize("body", [b"nope", b"[]", b'{"message": "{"}', b'{"message": 3}',
                                  b"x" * (MAX_HOOK_BODY + 1)])
def test_bad_bodies(body: bytes) -> None:
    with pytest.raises(MeshError):
        parse_hook_body(body)


@pytest.mark.parametrize("change", [
    {"protocol": "http/1.1"}, {"type": "gossip"}, {"ttl": 0}, {"ttl": True},
    {"priority": "urgent"}, {"timestamp": "yesterday"}, {"replyTo": {"url": "file:///etc"}},
    {"payload": "text"}, {"payload": {"body": "x" * 70_000}}, {"id": 5},
    {"payload": {"body": "b", "attachments": [{}] * 33}},
])
def test_bad_fields_are_refused(change: dict[str, object]) -> None:
    with pytest.raises(MeshError):
        check_envelope(env(**change))


def test_hmac_as_mesh_send_computes_it() -> None:
    e = env()
    signed = {**e, "signature": hmac_of(e, b"key")}
    assert signature_valid(check_envelope(signed), b"key")
    assert signature_valid(check_envelope({**signed, "signature": f"sha256:{signed['signature']}"}),
                           b"key")
    assert not signature_valid(check_envelope(signed), b"other")
    assert not signature_valid(check_envelope({**signed, "to": "x"}), b"key")
    assert not signature_valid(check_envelope(e), b"key")


def test_replay_window_nonces_and_ttl() -> None:
    guard = ReplayGuard(window=300, skew=60)
    e = check_envelope(env())
    guard.check(e, NOW + 10, need_nonce=True)
    guard.remember(e, NOW + 10, signed=True)
    with pytest.raises(MeshError) as caught:
        guard.check(e, NOW + 11, need_nonce=True)
    assert caught.value.status == 409
    with pytest.raises(MeshError):  # too old, though within its ttl
        guard.check(check_envelope(env(nonce="n2", ttl=3600)), NOW + 301, need_nonce=False)
    with pytest.raises(MeshError):  # from the future
        guard.check(check_envelope(env(nonce="n3")), NOW - 61, need_nonce=False)
    with pytest.raises(MeshError) as caught:  # past its ttl
        guard.check(check_envelope(env(nonce="n4", ttl=5)), NOW + 6, need_nonce=False)
    assert caught.value.status == 410
    with pytest.raises(MeshError):  # signed senders need a nonce
        guard.check(check_envelope(env(nonce=None)), NOW, need_nonce=True)
    guard.check(check_envelope(env(nonce=None)), NOW, need_nonce=False)
    # nonces are forgotten after twice the window: the memory stays bounded
    guard.check(check_envelope(env(nonce="n1", timestamp="2026-02-21T21:00:00Z")),
                NOW + 901, need_nonce=True)


def test_far_future_stamps_are_refused_without_a_nonce() -> None:
    guard = ReplayGuard(window=300, skew=60)
    future = check_envelope(env(nonce=None, timestamp="9999-12-31T23:59:59-14:00"))
    with pytest.raises(MeshError) as caught:
        guard.check(future, NOW, need_nonce=False)
    assert caught.value.status == 401


def test_unsigned_nonces_cannot_evict_a_signed_senders(monkeypatch: pytest.MonkeyPatch) -> None:
    import peer.protocols._meshenv as meshenv
    monkeypatch.setattr(meshenv, "MAX_NONCES", 3)
    guard = ReplayGuard(window=300, skew=60)
    signed = check_envelope(env(nonce="sig"))
    guard.check(signed, NOW, need_nonce=True)
    guard.remember(signed, NOW, signed=True)
    for i in range(10):  # unsigned floods: their nonces are not kept
        e = check_envelope(env(nonce=f"u{i}", **{"from": "other"}))
        guard.check(e, NOW, need_nonce=False)
        guard.remember(e, NOW, signed=False)
    with pytest.raises(MeshError) as caught:  # the signed one still cannot be replayed
        guard.check(signed, NOW + 1, need_nonce=True)
    assert caught.value.status == 409
    # nonces are per sender: another signed sender may use the same one
    guard.check(check_envelope(env(nonce="sig", **{"from": "b"})), NOW, need_nonce=True)
    for i in range(2):
        e = check_envelope(env(nonce=f"s{i}"))
        guard.check(e, NOW, need_nonce=True)
        guard.remember(e, NOW, signed=True)
    with pytest.raises(MeshError) as caught:  # full: refused, nothing evicted
        guard.check(check_envelope(env(nonce="s9")), NOW, need_nonce=True)
    assert caught.value.status == 503
    with pytest.raises(MeshError):
        guard.check(signed, NOW + 2, need_nonce=True)


def test_shared_form_keeps_the_reply_token_home() -> None:
    e = check_envelope({**env(), "signature": "x"})
    assert "replyTo" not in e.shared() and "signature" not in e.shared()
    assert e.reply_url == "http://127.0.0.1:9/hooks/worker-a" and e.reply_token == "t"


def test_response_envelope() -> None:
    original = env(conversationId="conv_1", replyContext={"sessionKey": "k"})
    r = response_envelope(original, sender="worker-b", body="ok", message_id="msg_2", now=NOW)
    assert r["type"] == "response" and r["correlationId"] == "msg_1" and r["to"] == "hub"
    assert r["replyContext"] == {"sessionKey": "k"} and r["conversationId"] == "conv_1"
    assert r["payload"] == {"subject": "Re: s", "body": "ok"}
    assert r["timestamp"] == "2026-02-21T20:45:00.000Z"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400) | st.text(max_size=400).map(str.encode)
       | st.dictionaries(st.sampled_from(["protocol", "id", "from", "to", "type", "timestamp",
                                          "ttl", "priority", "payload", "replyTo", "nonce",
                                          "signature", "replyContext"]),
                         st.none() | st.integers() | st.text(max_size=20)
                         | st.dictionaries(st.text(max_size=5), st.text(max_size=5),
                                           max_size=3)).map(lambda d: json.dumps(d).encode()))
def test_any_body_is_an_envelope_or_a_mesh_error(body: bytes) -> None:
    with contextlib.suppress(MeshError):
        check_envelope(parse_hook_body(body))
