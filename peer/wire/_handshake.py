"""The link handshake as a sans-IO state machine, and the session cipher.

Records in, records out; no sockets, no clock. The steps
(protocol-spec/handshake.md):

1. initiator -> responder: ``hello`` (versions it speaks, claimed id, Ed25519
   key, fresh X25519 key, fresh nonce, capabilities, listen addresses)
2. responder -> initiator: ``hello`` (the one version it chose, and its own
   fields), then ``auth``: its Ed25519 signature over the transcript hash
3. initiator -> responder: ``auth``, its signature over the same hash

The transcript hash covers both hellos byte for byte, so both ephemeral keys
and both nonces: a recorded ``auth`` is worthless on any other connection.
Each signature is domain-separated by role, so a peer's proof cannot be
reflected back to it. After step 3 every record is a ChaCha20-Poly1305
ciphertext under per-direction keys derived from the X25519 secret and the
transcript hash, with a 64-bit counter as nonce.

For benchmarks only, a peer started with ``--bench-plaintext-links`` offers
the ``bench-plaintext`` capability; when both hellos carry it, records after
the handshake are sent unencrypted (:class:`PlaintextCipher`). A peer that
does not offer it never agrees to that.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto

from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_decrypt,
    crypto_aead_chacha20poly1305_ietf_encrypt,
    crypto_scalarmult,
    crypto_scalarmult_base,
)
from nacl.exceptions import CryptoError

# libsodium through PyNaCl's private cffi module: the AEAD without the public
# bindings' per-call checks and copies. Measured with `.venv/bin/python -m
# bench._internals` (2 shared cores, CPython 3.11.7, PyNaCl 1.6.2), best of 5 x
# 10,000: a 300-byte record seals in 1.75 us and opens in 1.90 us, against
# 4.92 and 4.77 us through nacl.bindings; 16 KiB: 24.5 / 15.5 us against
# 28.8 / 24.3 us. pyproject.toml bounds PyNaCl to the releases this was read
# from. Without it (``_lib`` None) LinkCipher uses the public nacl.bindings:
# tests/test_internals.py runs that path, the handshake included.
try:
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _lib
except ImportError:  # a PyNaCl without it: use the checked public bindings
    _ffi = _lib = None

from ._errors import ErrorCode, ProtocolError
from ._frames import decode_frame
from ._frametypes import Auth, Error, Hello
from ._identity import Identity, peer_id_of, verify_signature
from ._limits import MAX_HANDSHAKE_RECORD, PROTOCOL_VERSIONS

TRANSCRIPT_TAG = b"clawmesh/handshake/v1"
AUTH_TAG = {"initiator": b"clawmesh/auth/initiator/v1", "responder": b"clawmesh/auth/responder/v1"}
AGENT = "clawmesh/0.1"
PLAINTEXT_CAP = "bench-plaintext"  # benchmarks only: see the module docstring

Random = Callable[[int], bytes]


class SelfConnection(ProtocolError):
    """We dialled an address that turned out to be ourselves."""

    MESSAGE = "connected to ourselves"

    def __init__(self) -> None:
        super().__init__(ErrorCode.AUTH, self.MESSAGE)


class PeerRefused(ProtocolError):
    """The other side refused the handshake with an ``error`` frame.

    ``code`` is ``unexpected``; ``remote_code`` and ``remote_msg`` are what it
    sent. Nothing is to be sent back: the other side has closed.
    """

    def __init__(self, remote_code: str, remote_msg: str) -> None:
        super().__init__(ErrorCode.UNEXPECTED, f"peer refused: {remote_code}: {remote_msg}")
        self.remote_code = remote_code
        self.remote_msg = remote_msg


def _refused_by(frame: Error) -> ProtocolError:
    """The error to raise for an ``error`` frame received during the handshake.

    The one refusal told apart by its text is the self-connection, as
    handshake.md defines it: code ``auth``, message ``connected to ourselves``.
    """
    if (frame.code, frame.msg) == (ErrorCode.AUTH.value, SelfConnection.MESSAGE):
        return SelfConnection()  # we dialled our own address
    return PeerRefused(frame.code, frame.msg)


@dataclass(frozen=True, slots=True)
class HandshakeResult:
    """What a completed handshake established about the other side."""

    peer_id: bytes
    public_key: bytes
    version: int
    caps: tuple[str, ...]
    listen: tuple[str, ...]
    agent: str
    transcript_hash: bytes
    cipher: LinkCipher


class _State(Enum):
    START = auto()
    SENT_HELLO = auto()  # initiator: waiting for the responder's hello
    WAIT_AUTH = auto()  # waiting for the other side's auth
    DONE = auto()


class Handshake:
    """One side of a handshake. Feed it records; send what it returns."""

    def __init__(
        self,
        identity: Identity,
        *,
        initiator: bool,
        caps: tuple[str, ...] = ("relay",),
        listen: tuple[str, ...] = (),
        versions: tuple[int, ...] = PROTOCOL_VERSIONS,
        expect_peer_id: bytes | None = None,
        random: Random = os.urandom,
    ) -> None:
        self._identity = identity
        self.initiator = initiator
        self._caps = caps
        self._listen = listen
        self._versions = versions
        self._expect = expect_peer_id
        self._eph_secret = random(32)
        self._eph_public = bytes(crypto_scalarmult_base(self._eph_secret))
        self._nonce = random(32)
        self._state = _State.START
        self._my_hello = b""
        self._their_hello: Hello | None = None
        self._their_hello_bytes = b""
        self._version = 0
        self._transcript = b""
        self.result: HandshakeResult | None = None

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    def _hello(self, versions: tuple[int, ...]) -> bytes:
        return Hello(
            versions=versions,
            id=self._identity.peer_id,
            pk=self._identity.public_key,
            eph=self._eph_public,
            nonce=self._nonce,
            caps=self._caps,
            listen=self._listen,
            agent=AGENT,
        ).encode()

    def _auth(self) -> bytes:
        role = "initiator" if self.initiator else "responder"
        return Auth(self._identity.sign(AUTH_TAG[role] + self._transcript)).encode()

    def start(self) -> list[bytes]:
        """The initiator's first record."""
        if not self.initiator or self._state is not _State.START:
            raise RuntimeError("start() is for a fresh initiator")
        self._my_hello = self._hello(self._versions)
        self._state = _State.SENT_HELLO
        return [self._my_hello]

    def receive(self, record: bytes) -> list[bytes]:
        """Process one record from the other side; return the records to send."""
        if len(record) > MAX_HANDSHAKE_RECORD:
            raise ProtocolError(ErrorCode.TOO_LARGE, "handshake record too large")
        frame = decode_frame(record, MAX_HANDSHAKE_RECORD)
        match frame:
            case Error():
                raise _refused_by(frame)
            case Hello() if self._state is _State.START and not self.initiator:
                return self._on_initiator_hello(frame, record)
            case Hello() if self._state is _State.SENT_HELLO:
                self._on_responder_hello(frame, record)
                return []
            case Auth() if self._state is _State.WAIT_AUTH:
                return self._on_auth(frame)
        raise ProtocolError(ErrorCode.UNEXPECTED, f"{frame.TYPE!r} frame during handshake")

    def _check_identity(self, hello: Hello) -> None:
        if peer_id_of(hello.pk) != hello.id:
            raise ProtocolError(ErrorCode.AUTH, "claimed peer id does not match the key")
        if hello.id == self._identity.peer_id:
            raise SelfConnection()
        if self._expect is not None and hello.id != self._expect:
            raise ProtocolError(ErrorCode.AUTH, "peer id is not the one we dialled")

    def _on_initiator_hello(self, hello: Hello, raw: bytes) -> list[bytes]:
        self._check_identity(hello)
        common = set(hello.versions) & set(self._versions)
        if not common:
            raise ProtocolError(ErrorCode.VERSION, f"no common version in {list(hello.versions)}")
        self._version = max(common)
        self._their_hello, self._their_hello_bytes = hello, raw
        self._my_hello = self._hello((self._version,))
        self._transcript = _transcript(raw, self._my_hello)
        self._state = _State.WAIT_AUTH
        return [self._my_hello, self._auth()]

    def _on_responder_hello(self, hello: Hello, raw: bytes) -> None:
        self._check_identity(hello)
        chosen = hello.versions
        if len(chosen) != 1 or chosen[0] not in self._versions:
            raise ProtocolError(ErrorCode.VERSION, f"responder chose {list(chosen)}")
        self._version = chosen[0]
        self._their_hello, self._their_hello_bytes = hello, raw
        self._transcript = _transcript(self._my_hello, raw)
        self._state = _State.WAIT_AUTH

    def _on_auth(self, auth: Auth) -> list[bytes]:
        their_role = "responder" if self.initiator else "initiator"
        signed = AUTH_TAG[their_role] + self._transcript
        assert self._their_hello is not None
        if not verify_signature(self._their_hello.pk, signed, auth.sig):
            raise ProtocolError(ErrorCode.AUTH, "handshake signature does not verify")
        out = [self._auth()] if self.initiator else []
        self._finish()
        return out

    def _finish(self) -> None:
        hello = self._their_hello
        assert hello is not None
        try:
            shared = bytes(crypto_scalarmult(self._eph_secret, hello.eph))
        except (CryptoError, RuntimeError, ValueError):
            raise ProtocolError(ErrorCode.AUTH, "bad ephemeral key") from None
        if shared == bytes(32):
            raise ProtocolError(ErrorCode.AUTH, "bad ephemeral key")
        i2r = _kdf(shared, self._transcript, b"i2r")
        r2i = _kdf(shared, self._transcript, b"r2i")
        send, recv = (i2r, r2i) if self.initiator else (r2i, i2r)
        plaintext = PLAINTEXT_CAP in self._caps and PLAINTEXT_CAP in hello.caps
        self.result = HandshakeResult(
            peer_id=hello.id,
            public_key=hello.pk,
            version=self._version,
            caps=hello.caps,
            listen=hello.listen,
            agent=hello.agent,
            transcript_hash=self._transcript,
            cipher=PlaintextCipher() if plaintext else LinkCipher(send, recv),
        )
        self._state = _State.DONE


def _transcript(initiator_hello: bytes, responder_hello: bytes) -> bytes:
    h = hashlib.sha256(TRANSCRIPT_TAG)
    for part in (initiator_hello, responder_hello):
        h.update(struct.pack(">I", len(part)))
        h.update(part)
    return h.digest()


def _kdf(shared: bytes, transcript: bytes, label: bytes) -> bytes:
    return hashlib.blake2b(label + transcript, key=shared, digest_size=32).digest()


_NONCE = struct.Struct("<4xQ")  # 4 zero bytes, then the record counter little-endian
_TAG_BYTES = 16


class LinkCipher:
    """ChaCha20-Poly1305 for one link, a key and a counter per direction."""

    __slots__ = ("_recv_key", "_recv_n", "_send_key", "_send_n")

    def __init__(self, send_key: bytes, recv_key: bytes) -> None:
        if len(send_key) != 32 or len(recv_key) != 32:
            raise ValueError("link keys are 32 bytes")
        self._send_key = send_key
        self._recv_key = recv_key
        self._send_n = 0
        self._recv_n = 0

    def seal(self, plaintext: bytes) -> bytes:
        nonce = _NONCE.pack(self._send_n)
        self._send_n += 1
        if _lib is None:  # pragma: no cover
            return bytes(
                crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, None, nonce, self._send_key)
            )
        size = len(plaintext) + _TAG_BYTES
        out = _ffi.new("unsigned char[]", size)
        _lib.crypto_aead_chacha20poly1305_ietf_encrypt(
            out,
            _ffi.NULL,
            plaintext,
            len(plaintext),
            _ffi.NULL,
            0,
            _ffi.NULL,
            nonce,
            self._send_key,
        )
        return bytes(_ffi.buffer(out, size))

    def open(self, ciphertext: bytes) -> bytes:
        nonce = _NONCE.pack(self._recv_n)
        if _lib is None or len(ciphertext) < _TAG_BYTES:  # pragma: no cover
            try:
                plaintext = crypto_aead_chacha20poly1305_ietf_decrypt(
                    ciphertext, None, nonce, self._recv_key
                )
            except (CryptoError, ValueError, TypeError):
                raise ProtocolError(ErrorCode.DECRYPT, "record does not decrypt") from None
            self._recv_n += 1
            return bytes(plaintext)
        size = len(ciphertext) - _TAG_BYTES
        out = _ffi.new("unsigned char[]", max(size, 1))
        failed = _lib.crypto_aead_chacha20poly1305_ietf_decrypt(
            out,
            _ffi.NULL,
            _ffi.NULL,
            ciphertext,
            len(ciphertext),
            _ffi.NULL,
            0,
            nonce,
            self._recv_key,
        )
        if failed:
            raise ProtocolError(ErrorCode.DECRYPT, "record does not decrypt")
        self._recv_n += 1
        return bytes(_ffi.buffer(out, size))


class PlaintextCipher(LinkCipher):
    """Benchmarks only: records pass unencrypted (both sides offered ``bench-plaintext``)."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(bytes(32), bytes(32))

    def seal(self, plaintext: bytes) -> bytes:
        return plaintext

    def open(self, ciphertext: bytes) -> bytes:
        return ciphertext
