"""The benchmark-only flags: plaintext links need both sides; no-verify skips only the check."""

from __future__ import annotations

import dataclasses

import pytest

from peer.cli._cli import build_parser
from peer.node._node import PeerOptions
from peer.node._options import BenchOnly
from peer.wire._envelope import Content, open_envelope, seal_message, split_wire
from peer.wire._errors import ErrorCode, ProtocolError
from peer.wire._handshake import PLAINTEXT_CAP, Handshake, LinkCipher, PlaintextCipher
from peer.wire._identity import Identity
from tests.test_handshake import results, shuttle

ALICE = Identity.from_seed(b"\x01" * 32)
BOB = Identity.from_seed(b"\x02" * 32)


def _pair(init_caps: tuple[str, ...], resp_caps: tuple[str, ...]) -> tuple[LinkCipher, LinkCipher]:
    init = Handshake(ALICE, initiator=True, caps=init_caps)
    resp = Handshake(BOB, initiator=False, caps=resp_caps)
    shuttle(init, resp)
    a, b = results(init, resp)
    return a.cipher, b.cipher


def test_plaintext_only_when_both_sides_offer_it() -> None:
    a, b = _pair(("relay", PLAINTEXT_CAP), (PLAINTEXT_CAP,))
    assert isinstance(a, PlaintextCipher) and isinstance(b, PlaintextCipher)
    assert a.seal(b"frame") == b"frame" == b.open(b"frame")
    for caps in ((("relay", PLAINTEXT_CAP), ("relay",)), (("relay",), (PLAINTEXT_CAP,))):
        a, b = _pair(*caps)
        assert type(a) is LinkCipher and type(b) is LinkCipher
        assert b.open(a.seal(b"frame")) == b"frame"
        with pytest.raises(ProtocolError) as info:
            b.open(b"an unencrypted frame")  # the side that did not offer it refuses
        assert info.value.code is ErrorCode.DECRYPT


def test_flags_reach_the_caps_but_are_no_public_options() -> None:
    args = build_parser().parse_args(["--bench-no-verify", "--bench-plaintext-links"])
    assert args.bench_no_verify and args.bench_plaintext_links
    assert PLAINTEXT_CAP in PeerOptions().caps_for(False, BenchOnly(plaintext_links=True))
    assert PLAINTEXT_CAP not in PeerOptions().caps
    plain = build_parser().parse_args([])
    assert not plain.bench_no_verify and not plain.bench_plaintext_links
    # not a PeerOptions field, and not offered in --help
    assert not [f for f in dataclasses.fields(PeerOptions) if "bench" in f.name]
    assert "--bench" not in build_parser().format_help()


def test_no_verify_skips_only_the_signature_check() -> None:
    env = seal_message(ALICE, topic="general", content=Content("hi"), seq=1, ts=1)
    signed, _sig = split_wire(env.wire)
    forged = bytes(64)
    with pytest.raises(ProtocolError) as info:
        open_envelope(env.wire, signed=signed, sig=forged)
    assert info.value.code is ErrorCode.BAD_SIGNATURE
    assert open_envelope(env.wire, signed=signed, sig=forged, verify=False).id == env.id
    with pytest.raises(ProtocolError):  # everything else is still checked
        open_envelope(env.wire, signed=signed[:-1], sig=forged, verify=False)
