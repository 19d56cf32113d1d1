"""Protocol errors: the one exception type that network input may raise.

Every decoder and state machine in clawmesh turns bad input into a
``ProtocolError`` carrying a stable, spec-listed error code (see
protocol-spec/README.md, "Error codes"). Anything else escaping a decoder is a
bug, and the fuzz tests treat it as one.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Error codes sent in ``error`` frames and counted in statistics."""

    MALFORMED = "malformed"  # undecodable CBOR, bad shape, bad field
    NON_CANONICAL = "non-canonical"  # CBOR that does not re-encode to the same bytes
    TOO_LARGE = "too-large"  # record, frame, field or collection over its limit
    VERSION = "version"  # no protocol version in common
    AUTH = "auth"  # handshake proof failed: wrong key, replay, bad signature
    UNEXPECTED = "unexpected"  # a frame not allowed in the current state
    BAD_SIGNATURE = "bad-signature"  # envelope signature does not verify
    DECRYPT = "decrypt"  # AEAD failure on a link record
    RATE = "rate"  # peer exceeded its frame or byte budget
    DUPLICATE = "duplicate"  # a second link to the same peer
    TIMEOUT = "timeout"  # handshake or keepalive deadline passed
    SLOW = "slow"  # peer does not read fast enough
    SHUTDOWN = "shutdown"  # we are going away


class ProtocolError(Exception):
    """Bad input from the network, with a code from :class:`ErrorCode`."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
