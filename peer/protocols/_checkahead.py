"""Check ahead: the signature checks of a burst of ``pub`` frames, planned sans-IO.

The Trio shell (``peer.node._checkahead``) may run the Ed25519 checks of a
burst of records in a worker thread (libsodium releases the GIL) before it
routes the burst. This module holds the parts that need no I/O. Rules kept
here:

* ``plan`` picks what is worth checking ahead: each ``pub`` frame whose
  envelope splits, whose id the router has not seen, and that no other
  check of this burst (or one in flight) covers. Anything it cannot read
  is left to the router, which refuses it as usual.
* ``run_checks`` returns the ``Vouch`` entries of the checks that passed:
  message id -> (author key, signature). It only calls libsodium, so it may
  run in a worker thread; it touches no shared state.
* ``Vouching`` is the router's side: ``check_envelope`` skips the check only
  for an envelope whose id, author key and signature are exactly those of a
  passed check (the id is the hash of the signed bytes, so the triple the
  router would check is the one that was checked). The shell sets
  ``vouched`` for the synchronous stretch that routes one burst and clears
  it after; everything else is checked as always, and a failed check ahead
  vouches for nothing, so the router checks again and refuses the frame.
* The author key is read by a cheap scan of the signed bytes; if the scan is
  fooled (a payload that looks like a ``from`` field), the key differs from
  the one the router decodes, the vouch does not match, and the router
  checks: a wrong guess costs a second check, never a skipped one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from peer.wire._envelope import check_signature, message_id, split_wire
from peer.wire._errors import ProtocolError
from peer.wire._frametypes import AnyFrame, Pub

Vouch = Mapping[bytes, tuple[bytes, bytes]]  # message id -> (author key, signature)
NO_VOUCHES: Vouch = MappingProxyType({})
_FROM = b"\x64from\x58\x20"  # the text key "from", then a 32-byte byte string header


@dataclass(frozen=True, slots=True)
class Check:
    """One signature check: ``key``'s signature ``sig`` over ``signed`` (id ``mid``)."""

    mid: bytes
    key: bytes
    signed: bytes
    sig: bytes


def author_key(signed: bytes) -> bytes | None:
    """The author key of a signed envelope, by a scan (a guess: see the module header)."""
    at = signed.find(_FROM)
    if at < 0 or at + len(_FROM) + 32 > len(signed):
        return None
    start = at + len(_FROM)
    return signed[start : start + 32]


def plan(
    frames: Iterable[AnyFrame], seen: Callable[[bytes], bool], busy: Iterable[bytes] = ()
) -> list[Check]:
    """The checks worth running ahead for ``frames`` (in order, each id once)."""
    checks: list[Check] = []
    taken = set(busy)
    for frame in frames:
        if type(frame) is not Pub:
            continue
        try:
            signed, sig = split_wire(frame.envelope)
        except ProtocolError:
            continue  # the router refuses it
        mid = message_id(signed)
        if mid in taken or seen(mid):
            continue
        key = author_key(signed)
        if key is None:
            continue
        taken.add(mid)
        checks.append(Check(mid, key, signed, sig))
    return checks


def run_checks(checks: Iterable[Check]) -> dict[bytes, tuple[bytes, bytes]]:
    """The vouches of the checks that pass (thread-safe: libsodium only)."""
    passed: dict[bytes, tuple[bytes, bytes]] = {}
    for check in checks:
        try:
            check_signature(check.key, check.signed, check.sig)
        except ProtocolError:
            continue
        passed[check.mid] = (check.key, check.sig)
    return passed


class Vouching:
    """The router's side of check-ahead (``GossipRouter`` inherits it)."""

    _seen: OrderedDict[bytes, float]
    vouched: Vouch = NO_VOUCHES  # set by the shell while it routes one checked burst

    def seen(self, msg_id: bytes) -> bool:
        return msg_id in self._seen

    def check_envelope(self, key: bytes, mid: bytes, signed: bytes, sig: bytes) -> None:
        """``check_signature``, unless exactly this envelope was checked ahead."""
        if self.vouched.get(mid) != (key, sig):
            check_signature(key, signed, sig)
