"""The OCM gateway's sans-IO parts: frames, sessions (virtual time), the mesh mapping."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.node._bootstrap import parse_peer_list
from peer.protocols._ocm import (
    MAX_OCM_FRAME,
    OcmError,
    OcmMessage,
    SyncRequest,
    key_of_pem,
    parse_frame,
    pem_of,
)
from peer.protocols._ocmmap import export, mesh_channel, message_uuid, route_of, wrap
from peer.protocols._ocmsession import (
    FRAME_BURST,
    MAX_REFUSALS,
    AnswerSync,
    Close,
    Established,
    KnownKeys,
    OcmCounters,
    OcmSession,
    Relay,
    Send,
    Subscribed,
)
from tests._ocm_peer import OcmTestPeer, pem

OWN = "ab" * 32


def session(now: float = 0.0) -> tuple[OcmSession, OcmCounters]:
    counters = OcmCounters()
    s = OcmSession(OWN, b"\x01" * 32, initiator=False, store=True, keys=KnownKeys(),
                   counters=counters, now=now)
    return s, counters


def hello(p: OcmTestPeer) -> str:
    frame = {"type": "handshake", "version": 1, "peer_id": p.peer_id,
             "capabilities": {"relay": True, "store": False}}
    if p.key is not None:
        frame["public_key"] = pem(bytes(p.key.verify_key))
    return json.dumps(frame)


def test_handshake_answers_and_learns_the_key() -> None:
    s, _ = session()
    p = OcmTestPeer()
    out = s.receive(hello(p), 0.0)
    assert isinstance(out[0], Send) and out[0].frame["type"] == "handshake"
    assert out[0].frame["peer_id"] == OWN and key_of_pem(out[0].frame["public_key"]) == b"\x01" * 32
    assert isinstance(out[1], Established)
    assert s.keys.get(p.peer_id) == bytes(p.key.verify_key)  # type: ignore[union-attr]


def test_nothing_before_the_handshake_and_wrong_versions_close() -> None:
    s, counters = session()
    out = s.receive(json.dumps({"type": "subscribe", "channel_id": "lobby"}), 0.0)
    assert isinstance(out[-1], Close) and out[0].frame["code"] == "invalid_message"  # type: ignore[union-attr]
    s, counters = session()
    out = s.receive(json.dumps({"type": "handshake", "version": 2, "peer_id": "x"}), 0.0)
    assert out[0].frame["code"] == "unsupported_version"  # type: ignore[union-attr]
    assert isinstance(out[-1], Close) and counters.refused == {"version": 1}


def test_a_peer_id_naming_another_key_is_refused() -> None:
    p, other = OcmTestPeer(), OcmTestPeer()
    frame = json.loads(hello(p))
    frame["public_key"] = pem(bytes(other.key.verify_key))  # type: ignore[union-attr]
    s, _ = session()
    out = s.receive(json.dumps(frame), 0.0)
    assert out[0].frame["code"] == "unauthorized" and isinstance(out[-1], Close)  # type: ignore[union-attr]


def established(p: OcmTestPeer) -> tuple[OcmSession, OcmCounters]:
    s, counters = session()
    s.receive(hello(p), 0.0)
    return s, counters


def test_signed_unsigned_forged_and_tampered_messages() -> None:
    p = OcmTestPeer()
    s, counters = established(p)
    [relay] = s.receive(json.dumps(p.message("lobby", "hi", payload={"b": 1, "a": [2]})), 0.0)
    assert isinstance(relay, Relay) and relay.verified and relay.public_key is not None
    [relay] = s.receive(json.dumps(p.message("lobby", "plain", sign=False)), 0.0)
    assert isinstance(relay, Relay) and not relay.verified and relay.public_key is None
    out = s.receive(json.dumps(p.message("lobby", "x", sender_id="mallory", sign=False)), 0.0)
    assert out[0].frame["code"] == "unauthorized"  # type: ignore[union-attr]
    bad = p.message("lobby", "x")
    bad["body"] = "y"
    out = s.receive(json.dumps(bad), 0.0)
    assert out[0].frame["code"] == "invalid_message"  # type: ignore[union-attr]
    assert counters.refused == {"forged-sender": 1, "bad-signature": 1}


def test_a_relayed_message_needs_a_known_signer() -> None:
    relay_peer, author = OcmTestPeer(), OcmTestPeer()
    s, _ = established(relay_peer)
    [relay] = s.receive(json.dumps(author.message("lobby", "via a relay")), 0.0)
    assert isinstance(relay, Relay) and relay.verified  # its peer id names its key


def test_dm_channels_are_for_their_members() -> None:
    p = OcmTestPeer()
    s, counters = established(p)
    mine = p.dm(OWN)
    assert s.receive(json.dumps({"type": "subscribe", "channel_id": mine}), 0.0) == [
        Subscribed(mine, True)]
    out = s.receive(json.dumps({"type": "subscribe", "channel_id": "dm:aa:bb"}), 0.0)
    assert out[0].frame["code"] == "unauthorized"  # type: ignore[union-attr]
    out = s.receive(json.dumps({"type": "sync_request", "channel_id": "dm:aa:bb"}), 0.0)
    assert out[0].frame["code"] == "unauthorized"  # type: ignore[union-attr]
    out = s.receive(json.dumps({"type": "sync_request", "channel_id": mine, "limit": 9999}), 0.0)
    assert out == [AnswerSync(SyncRequest(mine, None, 500))]
    assert counters.refused == {"not-a-member": 2}


def test_the_frame_rate_is_bounded_and_refusals_close_the_link() -> None:
    p = OcmTestPeer()
    s, counters = established(p)
    ping = json.dumps({"type": "ping"})
    sent = [s.receive(ping, 0.0) for _ in range(int(FRAME_BURST))]
    assert sum(1 for out in sent if out and out[0] == Send({"type": "pong"})) == FRAME_BURST - 1
    out = []
    for _ in range(MAX_REFUSALS - 1):  # the burst's last frame was the first refusal
        out = s.receive(ping, 0.0)
    assert isinstance(out[-1], Close) and s.closed
    assert counters.refused["rate"] == MAX_REFUSALS
    s2, _ = established(p)
    for i in range(400):  # 50 frames a second, for 8 virtual seconds: all answered
        assert s2.receive(ping, i / 50) == [Send({"type": "pong"})]


@pytest.mark.parametrize("text", [
    "", "[]", "{}", '{"type": 5}', "{not json", '{"type":"message"}',
    '{"type":"subscribe","channel_id":"has space"}',
    '{"type":"sync_request","channel_id":"a","limit":0}',
    '{"type":"message","message_id":"1","channel_id":"c","sender_id":"s","body":"b","timestamp":"never"}',
    "x" * (MAX_OCM_FRAME + 1), '{"type":"message","payload":NaN}',
])
def test_malformed_frames_raise_only_ocm_errors(text: str) -> None:
    with pytest.raises(OcmError):
        parse_frame(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_any_text_parses_or_raises_ocm_error(text: str) -> None:
    with contextlib.suppress(OcmError):
        parse_frame(text)


def test_pem_round_trip_and_canonical_string_match_ocm() -> None:
    key = bytes(range(32))
    assert key_of_pem(pem_of(key)) == key and pem_of(key) == pem(key)
    m = OcmMessage("id", "c", "s", "b\u00e9", '{"z":1,"a":2}', "2026-01-01T00:00:00Z", None)
    assert m.canonical() == (
        b'{"body":"b\xc3\xa9","channel_id":"c","message_id":"id",'
        b'"payload":"{\\"z\\":1,\\"a\\":2}","sender_id":"s","timestamp":"2026-01-01T00:00:00Z"}'
    )


def test_channel_and_route_mapping() -> None:
    assert mesh_channel("lobby") == mesh_channel("#lobby") == "lobby"
    odd = mesh_channel("dm:alice:bob")
    assert odd.startswith("ocm-") and len(odd) == 36 and odd == mesh_channel("dm:alice:bob")
    peer = "cd" * 32
    assert route_of(f"dm:{peer}:alice", "alice") == ("dm", bytes.fromhex(peer), "alice")
    assert route_of("dm:alice:bob", "alice") == ("ch", odd)


def test_wrapped_messages_export_as_they_were_written() -> None:
    p = OcmTestPeer()
    frame = p.message("lobby", "hi", payload={"z": 1, "a": [1, 2]})
    original = parse_frame(json.dumps(frame))
    assert isinstance(original, OcmMessage)
    value = wrap(original, True, bytes(p.key.verify_key), to_mesh_peer=False)  # type: ignore[union-attr]
    found = export(kind="msg", channel="lobby", peer=None, outgoing=True, sender=b"\x02" * 32,
                   body="hi", payload=value, has_payload=True, message_id=b"\x03" * 32,
                   ts_ms=0)
    assert found is not None and found[0] == ("ch", "lobby")
    assert found[1] == original and found[1].verifies(bytes(p.key.verify_key))  # type: ignore[union-attr]
    native = export(kind="msg", channel="lobby", peer=None, outgoing=False, sender=b"\x02" * 32,
                    body="yo", payload=None, has_payload=False, message_id=b"\x03" * 32,
                    ts_ms=1_700_000_000_123)
    assert native is not None
    assert native[1].message_id == message_uuid(b"\x03" * 32)
    assert native[1].sender_id == "02" * 32 and native[1].timestamp == "2023-11-14T22:13:20.123Z"
    # a DM not meant for an OCM peer is not exported
    assert export(kind="dm", channel=None, peer=b"\x02" * 32, outgoing=False,
                  sender=b"\x02" * 32, body="x", payload=None, has_payload=False,
                  message_id=b"\x03" * 32, ts_ms=0) is None


def test_bootstrap_lists_mark_ocm_entries() -> None:
    doc = {"version": 1, "updated_at": "2026-01-01T00:00:00Z", "peers": [
        {"peer_id": "abc", "ws_url": "ws://127.0.0.1:9/", "capabilities": {"relay": True}},
        {"peer_id": "ab" * 32, "ws_url": "ws://127.0.0.1:10/", "caps": ["relay"], "protocol": 1},
    ]}
    ocm, mesh = parse_peer_list(doc)
    assert ocm.ocm and ocm.url == "ws://127.0.0.1:9/" and ocm.peer_id is None
    assert not mesh.ocm and mesh.peer_id == bytes.fromhex("ab" * 32)


def test_a_named_id_keeps_its_first_key_and_others_cannot_send_as_it() -> None:
    # review item 1: whoever connected last used to set the key trusted for "alice"
    keys, counters = KnownKeys(), OcmCounters()
    alice, attacker = OcmTestPeer("alice"), OcmTestPeer("alice")

    def link() -> OcmSession:
        return OcmSession(OWN, b"\x01" * 32, initiator=False, store=True, keys=keys,
                          counters=counters, now=0.0)

    first = link()
    assert isinstance(first.receive(hello(alice), 0.0)[-1], Established)
    out = link().receive(hello(attacker), 0.0)  # another key for "alice": refused
    assert out[0].frame["code"] == "unauthorized" and isinstance(out[-1], Close)  # type: ignore[union-attr]
    assert keys.get("alice") == bytes(alice.key.verify_key)  # type: ignore[union-attr]
    mallory = link()
    mallory.receive(hello(OcmTestPeer("mallory")), 0.0)
    out = mallory.receive(json.dumps(attacker.message("lobby", "as alice")), 0.0)
    assert out[0].frame["code"] == "invalid_message"  # type: ignore[union-attr]
    [relay] = first.receive(json.dumps(alice.message("lobby", "me")), 0.0)
    assert isinstance(relay, Relay) and relay.verified
    assert counters.refused == {"key-mismatch": 1, "bad-signature": 1}


def test_a_full_key_table_trusts_no_new_key_and_evicts_none() -> None:
    keys = KnownKeys(limit=1)
    assert keys.learn("alice", b"\x02" * 32) and not keys.learn("bob", b"\x03" * 32)
    assert keys.get("alice") == b"\x02" * 32 and keys.get("bob") is None
    s = OcmSession(OWN, b"\x01" * 32, initiator=False, store=True, keys=keys,
                   counters=OcmCounters(), now=0.0)
    bob = OcmTestPeer("bob")
    s.receive(hello(bob), 0.0)
    [relay] = s.receive(json.dumps(bob.message("lobby", "hi")), 0.0)
    assert isinstance(relay, Relay) and not relay.verified


def test_sync_requests_have_their_own_smaller_rate() -> None:
    # review item 2: each sync_request costs an inbox scan, 50 a second was too many
    p = OcmTestPeer()
    s, counters = established(p)
    ask = json.dumps({"type": "sync_request", "channel_id": "lobby", "limit": 10})
    answered = [d for _ in range(20) for d in s.receive(ask, 0.0) if isinstance(d, AnswerSync)]
    assert len(answered) == 8 and counters.refused == {"sync-rate": 12}
    assert any(isinstance(d, AnswerSync) for d in s.receive(ask, 1.0))


def test_relayed_messages_have_a_rate_per_link_and_for_the_gateway() -> None:
    # review item 14: OCM messages spent the gateway's own author budget unbounded
    from peer.protocols._ocmsession import MESSAGE_BURST, Bucket

    shared = Bucket(1000.0, 150.0, 0.0)
    counters = OcmCounters()
    links = []
    for _ in range(2):
        s = OcmSession(OWN, b"\x01" * 32, initiator=False, store=True, keys=KnownKeys(),
                       counters=counters, now=0.0, shared=shared)
        p = OcmTestPeer()
        s.receive(hello(p), 0.0)
        links.append((s, p))
    s, p = links[0]
    relayed = [d for i in range(120)
               for d in s.receive(json.dumps(p.message("lobby", f"m{i}")), 0.0)
               if isinstance(d, Relay)]
    assert len(relayed) == MESSAGE_BURST and counters.refused["message-rate"] == 20
    assert s.closed  # 20 refusals
    s, p = links[1]
    relayed = [d for i in range(100)
               for d in s.receive(json.dumps(p.message("lobby", f"n{i}")), 0.0)
               if isinstance(d, Relay)]
    assert len(relayed) == 50 and counters.refused["gateway-rate"] >= 1
