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
  page. A plain channel message (a text body, in a topic an earlier message
  of the page passed the checks with) is checked in one expression
  (``_plain_msg``) that accepts only what those functions accept; anything
  else goes through them.
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
from ._limits import MAX_BODY_BYTES, MAX_FRAME_ITEMS


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


_PLAIN_KEYS = frozenset({"v", "kind", "topic", "from", "seq", "ts", "prev", "body"})
_U64_MAX = 2**64 - 1
_BODY_CHARS = MAX_BODY_BYTES // 4  # this many characters are within the bound in UTF-8


def _plain_msg(f: Any, topic: str) -> bool:
    """``fields`` are a channel message in ``topic`` (one that passed every check)
    with a text body and nothing else that needs a check of its own (no payload,
    reply, thread, attachments): what ``_check_shape``, ``_check_log_fields`` and
    ``_check_msg`` accept, decided in one expression. False: those decide."""
    if type(f) is not dict:
        return False
    prev = f.get("prev")
    seq, ts, key, body = f.get("seq"), f.get("ts"), f.get("from"), f.get("body")
    return (
        f.keys() <= _PLAIN_KEYS
        and f.get("kind") == "msg" and type(f.get("v")) is int and f["v"] == 1
        and type(key) is bytes and len(key) == 32
        and type(seq) is int and 0 <= seq <= _U64_MAX
        and type(ts) is int and 0 <= ts <= _U64_MAX
        and ("prev" not in f or (type(prev) is bytes and len(prev) == 32 and seq >= 2))
        and type(f.get("topic")) is str and f["topic"] == topic
        and type(body) is str and len(body) <= _BODY_CHARS
    )


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
    topic_ok = None  # a channel topic that passed the full checks on this page
    for i, fields in enumerate(decoded):
        if topic_ok is not None and _plain_msg(fields, topic_ok):
            key = fields["from"]
        else:
            kind = _check_shape(fields)
            key, topic = _check_log_fields(fields)
            _KIND_CHECKS[kind](fields, key, topic)
            if kind == "msg":
                topic_ok = topic
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
