"""Opening many envelopes at once (a catch-up page): one CBOR decode for all of them.

``open_many`` yields what ``open_envelope(..., verify=False)`` gives for each
envelope, in order, and raises the same ProtocolError at the same place;
signatures are the caller's (catch-up checks one per author run,
``peer.protocols._catchup.authenticate``). Rules kept here:

* The fast way decodes the signed parts of all the envelopes as one CBOR
  array (their bytes joined behind an array header) and checks the canonical
  form once, by re-encoding the array and comparing bytes. CBOR items are
  self-delimiting, so the joined bytes re-encode to themselves exactly when
  each part does: the fast way accepts an envelope exactly when
  ``open_envelope`` does.
* It is taken only where it cannot differ from the strict decoder: every part
  within the item bound by its size alone (as ``_cbor.decode``'s own short
  way), no floats and every map's keys in canonical order (so cbor2's plain
  encoding is the canonical one). Anything else (a decode error, a depth at
  the bound, a float, a part over the bound) goes envelope by envelope through
  ``open_envelope``, which says exactly what is wrong.
* The field checks are ``open_envelope``'s own functions; the message id is
  the caller's when it has it, and a sender's peer id is hashed once per
  page.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import cbor2

from . import _cbor
from ._envelope import (
    _KIND_CHECKS,
    Envelope,
    _check_log_fields,
    _check_shape,
    message_id,
    open_envelope,
)
from ._identity import peer_id_of
from ._limits import MAX_FRAME_ITEMS


def _array_head(n: int) -> bytes:
    """The canonical CBOR header of an array of ``n`` items."""
    return cbor2.dumps([None] * n)[: -n or None]  # n nulls are n bytes (0xF6)


def _decode_all(signed: Sequence[bytes]) -> list[Any] | None:
    """The decoded signed parts, or None where the fast way does not apply."""
    if len(signed) < 2 or any(len(s) > MAX_FRAME_ITEMS for s in signed):
        return None
    data = _array_head(len(signed)) + b"".join(signed)
    try:
        objs = _cbor._loads(data)
        if (
            type(objs) is list
            and len(objs) == len(signed)
            and _cbor._shape(objs) is _cbor._PLAIN_SORTED
            and cbor2.dumps(objs) == data
        ):
            return objs
    except Exception:  # the strict way says what is wrong
        pass
    return None


def open_many(
    wires: Sequence[bytes],
    parts: Sequence[tuple[bytes, bytes]],
    ids: Sequence[bytes] | None = None,
) -> Iterator[Envelope]:
    """``open_envelope(wire, signed=, sig=, verify=False)`` for each of ``wires`` in
    turn (``parts`` their ``(signed, sig)``, ``ids`` their message ids if known),
    yielded one by one: an envelope that does not open raises where it comes, as
    it would opened alone."""
    decoded = _decode_all([signed for signed, _ in parts])
    if decoded is None:
        for wire, (signed, sig) in zip(wires, parts, strict=True):
            yield open_envelope(wire, signed=signed, sig=sig, verify=False)
        return
    peers: dict[bytes, bytes] = {}
    for i, fields in enumerate(decoded):
        kind = _check_shape(fields)
        key, topic = _check_log_fields(fields)
        _KIND_CHECKS[kind](fields, key, topic)
        sender = peers.get(key)
        if sender is None:
            sender = peers[key] = peer_id_of(key)
        yield Envelope(
            id=message_id(parts[i][0]) if ids is None else ids[i],
            kind=fields["kind"],
            topic=fields["topic"],
            sender_key=key,
            sender=sender,
            seq=fields["seq"],
            ts=fields["ts"],
            fields=fields,
            wire=wires[i],
        )


__all__ = ["open_many"]
