"""Check ahead: the signature checks of a burst of ``pub`` frames, planned sans-IO.

The Trio shell (``peer.node._checkahead``) may run the Ed25519 checks of a
burst of records in a worker thread (libsodium releases the GIL) before it
routes the burst. This module holds the parts that need no I/O. Rules kept
here:

* ``plan`` picks what is worth checking ahead: only what the router would
  check itself. With the router's ``Foresight`` for the link (what the
  shell always passes) it walks the burst as the router will, on copies of
  the counters that decide before the signature, changing none: the link's
  frame and byte budget (planning stops at the frame that would close the
  link), its ``pub`` limit, the seen ids, and the author's limit (muted, or
  without a whole token once what this burst and the bursts in flight were
  planned to spend is taken off: ``reserved``; an answer to our IWANT over
  this link is not looked at by it unless the author is held back, ``_asked``).
  What the router would drop unchecked is never checked ahead, so a hostile
  link cannot make a relay verify more than it would without check-ahead. Besides those: each
  envelope whose id no other check of this burst (or one in flight, ``busy``)
  covers. Anything it cannot read is left to the router, which refuses it
  as usual; a ``pub`` that does not split ends the plan (the router closes
  the link there), and so does any frame but ``pub`` and the plain gossip
  frames (an ``error``, a stray handshake, catch-up or DHT frame may end
  the link), and a ``sub`` that may pass the link's topic cap.
* ``run_checks`` returns the ``Vouch`` entries of the checks that passed:
  message id -> (author key, signature), in burst order up to the first
  that fails, which it names (``Verdicts.refuted``) and after which it
  checks nothing: the router closes the link at that envelope, refusing it
  without a second check, so a burst of forgeries costs one check, as
  without check-ahead. It only calls libsodium, so it may run in a worker
  thread; it touches no shared state.
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
  checks: a wrong guess costs a second check, never a skipped one. A fooled
  scan is planned within the limits of the author it names, so it costs no
  more checks than envelopes really signed by fresh identities would.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from peer.wire._envelope import check_signature, message_id, split_wire
from peer.wire._errors import ErrorCode, ProtocolError
from peer.wire._frametypes import (
    AnyFrame,
    Graft,
    IHave,
    IWant,
    Ping,
    Pong,
    Prune,
    Pub,
    Sub,
    Unsub,
)
from peer.wire._identity import peer_id_of
from peer.wire._limits import GossipParams

from ._asked import AskBook
from ._gossiptypes import LinkState
from ._score import Buckets

Vouch = Mapping[bytes, tuple[bytes, bytes]]  # message id -> (author key, signature)
NO_VOUCHES: Vouch = MappingProxyType({})
NO_RESERVED: Mapping[bytes, int] = MappingProxyType({})
# frames the router takes without ending the link (planning stops at any other)
_PLAIN = frozenset({Graft, IHave, IWant, Ping, Pong, Prune, Sub, Unsub})
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


class Foresight:
    """The router's drops before the signature, foreseen for one link's burst.

    Built by ``Vouching.foresight`` from the router's state at ``now``; it
    keeps its own copies of the counters it spends, so the router is never
    changed by planning. Every frame is counted against the link's budget
    (blob answers too, which the shell does not charge): where it guesses,
    it guesses towards fewer checks ahead, never more.
    """

    def __init__(
        self, router: Vouching, peer: bytes, now: float, reserved: Mapping[bytes, int]
    ) -> None:
        p = router.params
        link = router._links.get(peer)
        self.open = link is not None and not link.graylisted and router.verify
        self.frame_tokens = self.byte_tokens = 0.0
        if link is not None:  # refilled as the router's ``_charge`` will
            dt = max(0.0, now - link.refilled)
            self.frame_tokens = min(p.frame_burst, link.frame_tokens + dt * p.frames_per_second)
            self.byte_tokens = min(p.byte_burst, link.byte_tokens + dt * p.bytes_per_second)
        self.pub_tokens = router._link_pubs.peek(peer, now)
        # topics the link may still add before a ``sub`` closes it (counted as all new)
        self.topic_room = 0 if link is None else router.topic_cap - len(link.interest)
        self._senders = router._senders
        self._asked, self._peer = router._asked, peer
        self._now = now
        self._reserved = reserved
        self._authors: dict[bytes, float] = {}

    def frame(self, size: int) -> bool:
        """A frame of ``size`` bytes: False from the one that would close the link on."""
        self.frame_tokens -= 1
        self.byte_tokens -= size
        if self.frame_tokens < 0 or self.byte_tokens < 0:
            self.open = False
        return self.open

    def sub(self, topics: int) -> bool:
        """A ``sub`` of ``topics`` topics: False if it may pass the link's topic cap."""
        self.topic_room -= topics
        return self.topic_room >= 0

    def pub(self) -> bool:
        """A ``pub`` frame: False if the link's ``pub`` limit drops it."""
        if self.pub_tokens < 1.0:
            return False
        self.pub_tokens -= 1.0
        return True

    def author(self, sender: bytes, mid: bytes = b"") -> bool:
        """A new envelope of ``sender`` (id ``mid``): False if its limit drops it
        unchecked (an answer we asked this link for passes, spending nothing, unless
        its author is held back)."""
        now = self._now
        if mid and self._asked.asked(self._peer, mid, now) and not self._senders.holding(
            sender, now
        ):
            return True
        tokens = self._authors.get(sender)
        if tokens is None:
            tokens = self._senders.peek(sender, self._now) - self._reserved.get(sender, 0)
        if tokens < 1.0:
            self._authors[sender] = tokens
            return False
        self._authors[sender] = tokens - 1.0
        return True


def plan(
    burst: Iterable[tuple[AnyFrame, int]],
    seen: Callable[[bytes], bool],
    busy: Iterable[bytes] = (),
    ahead: Foresight | None = None,
) -> list[Check]:
    """The checks worth running ahead for ``burst`` (frames and their plaintext sizes,
    in order; each id once); with ``ahead``, only those the router would make."""
    checks: list[Check] = []
    taken = set(busy)
    for frame, size in burst:
        if ahead is not None and not ahead.frame(size):
            break  # the router closes the link at this frame
        if type(frame) is not Pub:
            if isinstance(frame, Sub) and ahead is not None and not ahead.sub(len(frame.topics)):
                break  # over the topic cap: the router closes the link here
            if type(frame) not in _PLAIN:
                break  # an error, a stray handshake, catch-up or DHT: may end the link
            continue
        if ahead is not None and not ahead.pub():
            continue
        try:
            signed, sig = split_wire(frame.envelope)
        except ProtocolError:
            break  # the router refuses it and closes the link
        mid = message_id(signed)
        if mid in taken or seen(mid):
            continue
        key = author_key(signed)
        if key is None or (ahead is not None and not ahead.author(peer_id_of(key), mid)):
            continue
        taken.add(mid)
        checks.append(Check(mid, key, signed, sig))
    return checks


class Verdicts(dict[bytes, tuple[bytes, bytes]]):
    """The vouches of the checks that passed; ``refuted``: the (id, key, signature) of
    the one that failed, after which nothing was checked (the router closes the link
    there, so it would check nothing after it either)."""

    refuted: tuple[bytes, bytes, bytes] | None = None


def run_checks(checks: Iterable[Check]) -> Verdicts:
    """The vouches of the checks that pass, in order up to the first that fails
    (thread-safe: libsodium only)."""
    verdicts = Verdicts()
    for check in checks:
        try:
            check_signature(check.key, check.signed, check.sig)
        except ProtocolError:
            verdicts.refuted = (check.mid, check.key, check.sig)
            break
        verdicts[check.mid] = (check.key, check.sig)
    return verdicts


class Vouching:
    """The router's side of check-ahead (``GossipRouter`` inherits it)."""

    _seen: OrderedDict[bytes, float]
    _links: dict[bytes, LinkState]
    topic_cap: int
    _link_pubs: Buckets
    _senders: Buckets
    _asked: AskBook
    params: GossipParams
    verify: bool
    vouched: Vouch = NO_VOUCHES  # set by the shell while it routes one checked burst

    def seen(self, msg_id: bytes) -> bool:
        return msg_id in self._seen

    def foresight(
        self, peer: bytes, now: float, reserved: Mapping[bytes, int] = NO_RESERVED
    ) -> Foresight:
        """What this router will drop unchecked from ``peer``'s next frames (``plan``);
        ``reserved``: envelopes per author already planned in bursts in flight."""
        return Foresight(self, peer, now, reserved)

    def check_envelope(self, key: bytes, mid: bytes, signed: bytes, sig: bytes) -> None:
        """``check_signature``, unless exactly this envelope was checked ahead (passed:
        nothing to do; failed: refused without checking it twice)."""
        vouched = self.vouched
        if vouched.get(mid) == (key, sig):
            return
        if getattr(vouched, "refuted", None) == (mid, key, sig):
            raise ProtocolError(ErrorCode.BAD_SIGNATURE, "envelope signature does not verify")
        check_signature(key, signed, sig)
