"""Envelopes handed on already checked, between the worker processes of one seed.

A seed run as several workers (``--workers N``) relays every message a worker
takes off the network to its siblings (``peer.protocols._siblingrouter``).
The worker that took it opened the envelope strictly (canonical CBOR, every
field, the signature) and computed its id; a sibling that opens it again
spends what the first one did for nothing. So on the sibling link only (a
Unix socket in the seed's private directory, never the network) such a
message travels as a *checked record*: one byte that no frame can start with
(a CBOR integer: ``CHECKED``, 0, when the first worker charged the message to
its author's limit; ``CHECKED_FREE``, 1, when it took it free of that limit,
as an answer to its own IWANT), its 32-byte message id, then the exact
``pub`` frame the worker forwards. The receiver builds the ``Envelope`` from
those bytes without the strict checks (:func:`open_checked`).

Rules kept here:

* Only for bytes from a sibling worker: a network link's records go through
  ``decode_frame``, which refuses a record starting with ``CHECKED`` (it is
  not a CBOR map), and the router takes a checked record from a sibling link
  only. Never call :func:`open_checked` on network input.
* Trusted is not careless: a record that is not what a sibling sends (too
  short, not a ``pub`` frame, an envelope without its fields) raises
  ``ProtocolError``, so a bug closes the sibling link, never the worker.
* A checked record is 33 bytes longer than its frame; a ``pub`` frame that
  was forwarded holds an envelope of at most ``MAX_ENVELOPE``, so the record
  stays within the sibling reader's ``MAX_RECORD`` (a test keeps it so).
* :func:`open_checked` gives the same ``Envelope`` as ``open_envelope`` for
  an envelope that passed it (tests compare them); it does not re-encode,
  re-hash the id or walk the fields.
"""

from __future__ import annotations

from ._cbor import _loads
from ._envelope import Envelope, _envelope, split_wire
from ._errors import ErrorCode, ProtocolError
from ._frames import decode_frame
from ._frametypes import Pub

CHECKED = b"\x00"  # never the first byte of a frame (every frame is a CBOR map)
CHECKED_FREE = b"\x01"  # the same, taken free of its author's limit
_ID = 32


def checked_record(mid: bytes, frame: bytes, free: bool = False) -> bytes:
    """The sibling record of the ``pub`` ``frame`` whose envelope (id ``mid``) was
    opened strictly by this worker (``free``: not charged to its author's limit)."""
    return (CHECKED_FREE if free else CHECKED) + mid + frame


def split_checked(record: bytes) -> tuple[bytes, bytes, bool] | None:
    """``(message id, pub frame, free)`` of a checked record; None if ``record`` is
    not one (a plain frame); ``ProtocolError`` if it is one but too short."""
    first = record[:1]
    if first != CHECKED and first != CHECKED_FREE:
        return None
    if len(record) <= 1 + _ID:
        raise ProtocolError(ErrorCode.MALFORMED, "a checked record without its frame")
    return record[1 : 1 + _ID], record[1 + _ID :], first == CHECKED_FREE


def open_checked(mid: bytes, frame: bytes) -> Envelope:
    """The ``Envelope`` of a sibling's checked ``pub`` ``frame`` (see the header)."""
    pub = decode_frame(frame)  # a pub frame is read by slicing: no CBOR decode
    if not isinstance(pub, Pub):
        raise ProtocolError(ErrorCode.UNEXPECTED, f"a checked {pub.TYPE!r} frame")
    wire = pub.envelope
    signed, _ = split_wire(wire)
    try:
        return _envelope(signed, _loads(signed), wire, mid)
    except Exception as exc:  # not what a sibling sends: its link goes, not the worker
        why = f"a checked envelope does not open: {exc!r:.80}"
        raise ProtocolError(ErrorCode.MALFORMED, why) from None
