"""The link handshake and session cipher (peer/wire/_handshake.py), sans-IO.

Two Handshake objects are driven against each other through a fake link that
shuttles records both ways until neither side has anything to send.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.wire._cbor import decode
from peer.wire._errors import ErrorCode, ProtocolError
from peer.wire._frames import decode_frame, encode_frame
from peer.wire._frametypes import Auth, Hello
from peer.wire._handshake import (
    Handshake,
    HandshakeResult,
    LinkCipher,
    PeerRefused,
    SelfConnection,
)
from peer.wire._identity import Identity
from tests._fuzz import fuzz_scale

TRANSCRIPT_TAG = b"clawmesh/handshake/v1"
INITIATOR_TAG = b"clawmesh/auth/initiator/v1"
RESPONDER_TAG = b"clawmesh/auth/responder/v1"

ALICE = Identity.from_seed(b"\x01" * 32)
BOB = Identity.from_seed(b"\x02" * 32)
CAROL = Identity.from_seed(b"\x03" * 32)

Tamper = Callable[[int, bytes], bytes]


def seeded(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def initiator(identity: Identity = ALICE, seed: int = 1, **kwargs: Any) -> Handshake:
    return Handshake(identity, initiator=True, random=seeded(seed), **kwargs)


def responder(identity: Identity = BOB, seed: int = 2, **kwargs: Any) -> Handshake:
    return Handshake(identity, initiator=False, random=seeded(seed), **kwargs)


def shuttle(init: Handshake, resp: Handshake, tamper: Tamper | None = None) -> list[bytes]:
    """Carry records both ways until both sides are quiet; return the wire log.

    ``tamper(index, record)`` may replace the index-th record on the wire.
    """
    wire: list[bytes] = []
    to_resp: deque[bytes] = deque(init.start())
    to_init: deque[bytes] = deque()
    while to_resp or to_init:
        if to_resp:
            record, target, back = to_resp.popleft(), resp, to_init
        else:
            record, target, back = to_init.popleft(), init, to_resp
        if tamper is not None:
            record = tamper(len(wire), record)
        wire.append(record)
        back.extend(target.receive(record))
    return wire


def results(init: Handshake, resp: Handshake) -> tuple[HandshakeResult, HandshakeResult]:
    assert init.done and resp.done
    assert init.result is not None and resp.result is not None
    return init.result, resp.result


def transcript_hash(initiator_hello: bytes, responder_hello: bytes) -> bytes:
    """The spec's transcript hash, computed independently of the code under test."""
    h = hashlib.sha256(TRANSCRIPT_TAG)
    for part in (initiator_hello, responder_hello):
        h.update(struct.pack(">I", len(part)) + part)
    return h.digest()


def edit(record: bytes, **changes: object) -> bytes:
    """Re-encode a frame with some fields replaced."""
    fields = dict(decode(record))
    kind = fields.pop("t")
    fields.update(changes)
    return encode_frame(kind, **fields)


def refused(action: Callable[[], object]) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        action()
    return info.value


def refuse_record(hs: Handshake, record: bytes) -> ErrorCode:
    with pytest.raises(ProtocolError) as info:
        hs.receive(record)
    return info.value.code


# -- success ----------------------------------------------------------------------


def test_handshake_completes_and_both_sides_agree() -> None:
    init = initiator(caps=("relay", "store"), listen=("ws://10.0.0.1:7000",))
    resp = responder(caps=(), listen=("ws://10.0.0.2:7000", "tcp://10.0.0.2:7001"))
    wire = shuttle(init, resp)
    assert [decode_frame(r).TYPE for r in wire] == ["hello", "hello", "auth", "auth"]
    ri, rr = results(init, resp)
    assert ri.peer_id == BOB.peer_id and ri.public_key == BOB.public_key
    assert rr.peer_id == ALICE.peer_id and rr.public_key == ALICE.public_key
    assert ri.version == rr.version == 1
    assert ri.transcript_hash == rr.transcript_hash == transcript_hash(wire[0], wire[1])
    assert rr.caps == ("relay", "store") and rr.listen == ("ws://10.0.0.1:7000",)
    assert ri.caps == () and ri.listen == ("ws://10.0.0.2:7000", "tcp://10.0.0.2:7001")
    assert ri.agent == rr.agent != ""


def test_auth_signatures_cover_the_transcript_with_role_tags() -> None:
    init, resp = initiator(), responder()
    wire = shuttle(init, resp)
    th = transcript_hash(wire[0], wire[1])
    assert decode_frame(wire[2]) == Auth(BOB.sign(RESPONDER_TAG + th))
    assert decode_frame(wire[3]) == Auth(ALICE.sign(INITIATOR_TAG + th))


def test_responder_picks_the_highest_common_version() -> None:
    init = initiator(versions=(1, 2, 3))
    resp = responder(versions=(2, 3, 4))
    wire = shuttle(init, resp)
    hello = decode_frame(wire[1])
    assert isinstance(hello, Hello) and hello.versions == (3,)
    ri, rr = results(init, resp)
    assert ri.version == rr.version == 3


def test_expected_peer_id_that_matches() -> None:
    init = initiator(expect_peer_id=BOB.peer_id)
    resp = responder()
    shuttle(init, resp)
    assert results(init, resp)[0].peer_id == BOB.peer_id


def test_every_session_has_its_own_transcript_and_keys() -> None:
    a1, b1 = initiator(seed=10), responder(seed=11)
    a2, b2 = initiator(seed=12), responder(seed=13)
    shuttle(a1, b1)
    shuttle(a2, b2)
    r1, r2 = results(a1, b1)[0], results(a2, b2)[0]
    assert r1.transcript_hash != r2.transcript_hash
    record = r1.cipher.seal(b"hello")
    assert refused(lambda: results(a2, b2)[1].cipher.open(record)).code is ErrorCode.DECRYPT


# -- the cipher --------------------------------------------------------------------


def ciphers() -> tuple[LinkCipher, LinkCipher]:
    init, resp = initiator(), responder()
    shuttle(init, resp)
    ri, rr = results(init, resp)
    return ri.cipher, rr.cipher


def test_ciphers_interoperate_both_ways_over_many_records() -> None:
    a, b = ciphers()
    rng = random.Random(7)
    for i in range(300):
        message = rng.randbytes(rng.randint(0, 2000))
        if rng.random() < 0.5:
            sealed = a.seal(message)
            assert b.open(sealed) == message
        else:
            sealed = b.seal(message)
            assert a.open(sealed) == message
        assert len(sealed) == len(message) + 16
        if message:
            assert message not in sealed, i


def test_the_two_directions_use_different_keys() -> None:
    a, b = ciphers()
    # the same plaintext at the same counter encrypts differently per direction
    assert a.seal(b"same") != b.seal(b"same")
    # and a record cannot be reflected back to its sender
    c, d = ciphers()
    echo = c.seal(b"echo")
    assert refused(lambda: c.open(echo)).code is ErrorCode.DECRYPT
    assert d.open(echo) == b"echo"


def test_each_record_has_its_own_nonce() -> None:
    a, b = ciphers()
    first, second = a.seal(b"again"), a.seal(b"again")
    assert first != second
    assert b.open(first) == b.open(second) == b"again"


@pytest.mark.parametrize("position", [0, 5, -17, -1])
def test_tampered_record_does_not_decrypt(position: int) -> None:
    a, b = ciphers()
    sealed = bytearray(a.seal(b"attack at dawn"))
    sealed[position] ^= 0x01
    assert refused(lambda: b.open(bytes(sealed))).code is ErrorCode.DECRYPT


def test_truncated_and_empty_records_do_not_decrypt() -> None:
    a, b = ciphers()
    sealed = a.seal(b"attack at dawn")
    assert refused(lambda: b.open(sealed[:-1])).code is ErrorCode.DECRYPT
    assert refused(lambda: b.open(b"")).code is ErrorCode.DECRYPT
    assert refused(lambda: b.open(sealed[:15])).code is ErrorCode.DECRYPT


def test_reordered_replayed_and_dropped_records_do_not_decrypt() -> None:
    a, b = ciphers()
    first, second = a.seal(b"one"), a.seal(b"two")
    assert refused(lambda: b.open(second)).code is ErrorCode.DECRYPT  # reordered
    assert b.open(first) == b"one"
    assert refused(lambda: b.open(first)).code is ErrorCode.DECRYPT  # replayed
    assert b.open(second) == b"two"
    a.seal(b"three (lost)")
    assert refused(lambda: b.open(a.seal(b"four"))).code is ErrorCode.DECRYPT  # gap


# -- refusals ----------------------------------------------------------------------


def test_hello_claiming_an_id_that_is_not_its_key() -> None:
    init, resp = initiator(), responder()
    hello = init.start()[0]
    forged = edit(hello, id=CAROL.peer_id)
    assert refused(lambda: resp.receive(forged)).code is ErrorCode.AUTH
    # CAROL's key with ALICE's id does not pass either
    resp2 = responder()
    forged2 = edit(hello, pk=CAROL.public_key)
    assert refused(lambda: resp2.receive(forged2)).code is ErrorCode.AUTH


def test_responder_hello_claiming_an_id_that_is_not_its_key() -> None:
    def forge(index: int, record: bytes) -> bytes:
        return edit(record, id=CAROL.peer_id) if index == 1 else record

    error = refused(lambda: shuttle(initiator(), responder(), forge))
    assert error.code is ErrorCode.AUTH


def test_impersonation_with_the_right_public_key_fails_at_auth() -> None:
    # Mallory (holding CAROL's key) claims to be BOB, copying BOB's id and key
    init = initiator(expect_peer_id=BOB.peer_id)
    mallory = responder(identity=CAROL)

    def impersonate(index: int, record: bytes) -> bytes:
        if index == 1:
            return edit(record, id=BOB.peer_id, pk=BOB.public_key)
        return record

    assert refused(lambda: shuttle(init, mallory, impersonate)).code is ErrorCode.AUTH
    assert not init.done


def test_replayed_initiator_transcript_is_refused() -> None:
    init, resp = initiator(seed=20), responder(seed=21)
    wire = shuttle(init, resp)
    assert init.done and resp.done
    recorded_hello, recorded_auth = wire[0], wire[3]
    # the same responder identity, a fresh connection
    fresh = responder(seed=22)
    out = fresh.receive(recorded_hello)
    assert [decode_frame(r).TYPE for r in out] == ["hello", "auth"]
    assert refused(lambda: fresh.receive(recorded_auth)).code is ErrorCode.AUTH
    assert not fresh.done and fresh.result is None


def test_replayed_responder_transcript_is_refused() -> None:
    init, resp = initiator(seed=30), responder(seed=31)
    wire = shuttle(init, resp)
    fresh = initiator(seed=32)
    fresh.start()
    assert fresh.receive(wire[1]) == []
    assert refused(lambda: fresh.receive(wire[2])).code is ErrorCode.AUTH
    assert not fresh.done


def test_man_in_the_middle_swapping_the_ephemeral_key_is_detected() -> None:
    def swap_eph(index: int, record: bytes) -> bytes:
        return edit(record, eph=b"\x09" * 32) if index == 0 else record

    init, resp = initiator(), responder()
    assert refused(lambda: shuttle(init, resp, swap_eph)).code is ErrorCode.AUTH
    assert not init.done and not resp.done


def test_expected_peer_id_mismatch() -> None:
    init = initiator(expect_peer_id=CAROL.peer_id)
    assert refused(lambda: shuttle(init, responder())).code is ErrorCode.AUTH
    assert not init.done


def test_no_common_version() -> None:
    init = initiator(versions=(2,))
    resp = responder(versions=(1,))
    assert refused(lambda: shuttle(init, resp)).code is ErrorCode.VERSION
    assert not resp.done


@pytest.mark.parametrize("chosen", [[2], [1, 2], [7]])
def test_responder_choosing_a_version_we_do_not_speak(chosen: list[int]) -> None:
    def choose(index: int, record: bytes) -> bytes:
        return edit(record, versions=chosen) if index == 1 else record

    init = initiator(versions=(1,))
    assert refused(lambda: shuttle(init, responder(), choose)).code is ErrorCode.VERSION


def test_connecting_to_ourselves() -> None:
    init = initiator(identity=ALICE, seed=40)
    resp = responder(identity=ALICE, seed=41)
    error = refused(lambda: shuttle(init, resp))
    assert isinstance(error, SelfConnection) and not isinstance(error, PeerRefused)
    assert error.code is ErrorCode.AUTH
    # the initiator notices too when the answer comes from its own id
    other = initiator(identity=BOB, seed=42)
    mirror = responder(identity=ALICE, seed=43)
    answer = mirror.receive(other.start()[0])[0]
    me = initiator(identity=ALICE, seed=44)
    me.start()
    assert isinstance(refused(lambda: me.receive(answer)), SelfConnection)


def test_frames_other_than_hello_and_auth_are_unexpected() -> None:
    ping = encode_frame("ping", n=1)
    sub = encode_frame("sub", topics=[["general", 0]])
    for record in (ping, sub, encode_frame("auth", sig=b"\x00" * 64)):
        assert refuse_record(responder(), record) is ErrorCode.UNEXPECTED

    init = initiator()
    init.start()
    assert refused(lambda: init.receive(ping)).code is ErrorCode.UNEXPECTED

    # a second hello where an auth is due
    init, resp = initiator(), responder()
    hello_a = init.start()[0]
    hello_b, _ = resp.receive(hello_a)
    assert refused(lambda: resp.receive(hello_a)).code is ErrorCode.UNEXPECTED
    init.receive(hello_b)
    assert refused(lambda: init.receive(hello_b)).code is ErrorCode.UNEXPECTED
    # an unstarted initiator takes nothing
    assert refused(lambda: initiator().receive(hello_b)).code is ErrorCode.UNEXPECTED


def test_nothing_is_accepted_after_the_handshake() -> None:
    init, resp = initiator(), responder()
    wire = shuttle(init, resp)
    for record in wire:
        assert refuse_record(init, record) is ErrorCode.UNEXPECTED
        assert refuse_record(resp, record) is ErrorCode.UNEXPECTED


def test_error_frame_during_handshake() -> None:
    err = encode_frame("error", code="version", msg="no common version")
    error = refused(lambda: responder().receive(err))
    assert error.code is ErrorCode.UNEXPECTED
    assert "version" in error.message
    assert isinstance(error, PeerRefused) and not isinstance(error, SelfConnection)
    assert (error.remote_code, error.remote_msg) == ("version", "no common version")


def test_oversize_and_malformed_handshake_records() -> None:
    big = encode_frame("error", code="x", msg="")  # valid shape, then padded
    assert refused(lambda: responder().receive(big + b"\x00" * 5000)).code is ErrorCode.TOO_LARGE
    assert refused(lambda: responder().receive(b"\xa0")).code is ErrorCode.MALFORMED
    assert refused(lambda: responder().receive(b"")).code is ErrorCode.MALFORMED


def test_responder_auth_signed_with_another_key() -> None:
    def resign_with(identity: Identity, tag: bytes) -> Tamper:
        hellos: list[bytes] = []

        def tamper(index: int, record: bytes) -> bytes:
            if index < 2:
                hellos.append(record)
            if index == 2:
                th = transcript_hash(hellos[0], hellos[1])
                return encode_frame("auth", sig=identity.sign(tag + th))
            return record

        return tamper

    # sanity: re-signing with the right key and role is accepted
    init, resp = initiator(), responder()
    shuttle(init, resp, resign_with(BOB, RESPONDER_TAG))
    assert init.done and resp.done

    init = initiator()
    error = refused(lambda: shuttle(init, responder(), resign_with(CAROL, RESPONDER_TAG)))
    assert error.code is ErrorCode.AUTH
    assert not init.done
    # the right key under the initiator's role tag is not a responder's proof
    init = initiator()
    error = refused(lambda: shuttle(init, responder(), resign_with(BOB, INITIATOR_TAG)))
    assert error.code is ErrorCode.AUTH


def test_initiator_auth_signed_with_another_key() -> None:
    hellos: list[bytes] = []

    def tamper(index: int, record: bytes) -> bytes:
        if index < 2:
            hellos.append(record)
        if index == 3:
            th = transcript_hash(hellos[0], hellos[1])
            return encode_frame("auth", sig=CAROL.sign(INITIATOR_TAG + th))
        return record

    resp = responder()
    assert refused(lambda: shuttle(initiator(), resp, tamper)).code is ErrorCode.AUTH
    assert not resp.done


def test_low_order_ephemeral_key_from_a_signing_responder() -> None:
    """A responder that signs a transcript with an all-zero X25519 key is refused."""
    init = initiator()
    hello_a = init.start()[0]
    hello_b = encode_frame(
        "hello",
        versions=[1],
        id=BOB.peer_id,
        pk=BOB.public_key,
        eph=bytes(32),
        nonce=b"\x05" * 32,
        caps=[],
        listen=[],
        agent="evil/1",
    )
    auth_b = encode_frame("auth", sig=BOB.sign(RESPONDER_TAG + transcript_hash(hello_a, hello_b)))
    assert init.receive(hello_b) == []
    assert refused(lambda: init.receive(auth_b)).code is ErrorCode.AUTH
    assert not init.done


def test_start_is_only_for_a_fresh_initiator() -> None:
    with pytest.raises(RuntimeError):
        responder().start()
    init = initiator()
    init.start()
    with pytest.raises(RuntimeError):
        init.start()


# -- fuzz --------------------------------------------------------------------------


def mutate(record: bytes, data: st.DataObject) -> bytes:
    out = bytearray(record)
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = data.draw(st.integers(0, len(out)))
        if op == "flip" and pos < len(out):
            out[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "insert":
            out[pos:pos] = bytes([data.draw(st.integers(0, 255))])
        elif op == "delete" and pos < len(out):
            del out[pos]
        elif op == "truncate":
            del out[pos:]
    return bytes(out)


@settings(max_examples=fuzz_scale(300), deadline=None)
@given(st.integers(0, 3), st.data())
def test_mutated_handshake_records_raise_only_protocol_error(
    index: int, data: st.DataObject
) -> None:
    """Any change to any record in flight fails the handshake with ProtocolError."""
    changed: list[bool] = []

    def tamper(i: int, record: bytes) -> bytes:
        if i != index:
            return record
        mutated = mutate(record, data)
        changed.append(mutated != record)
        return mutated

    init, resp = initiator(seed=50), responder(seed=51)
    try:
        shuttle(init, resp, tamper)
    except ProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)
        assert not (init.done and resp.done)
    else:
        # only an unchanged record lets the handshake complete
        assert changed == [False]
        results(init, resp)
