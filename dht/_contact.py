"""Contacts: what the DHT knows about another node, and the XOR metric.

A contact is a node id, the Ed25519 public key it is derived from, the
addresses (ws URLs) the node listens on and its capabilities, plus two
facts local to one routing table: when we last heard from it and how many
requests in a row it has missed.

Rules this module keeps:

* A contact is only *bound* (``is_bound``) when ``id == peer_id_of(pk)``;
  nothing that is not bound enters a routing table or a lookup.
* On the wire a contact is the CBOR array ``[id, pk, addrs, caps]``;
  :func:`contact_from_wire` checks every field's type and size and raises
  :class:`peer.ProtocolError` for anything else. It does *not* check the
  binding: the lookup does, so it can count the liar that sent it.
* :func:`address_ranges` maps addresses to the ranges the routing table
  limits (IPv4 /24, IPv6 /48, otherwise the lower-cased host name).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from peer.wire._errors import ErrorCode, ProtocolError
from peer.wire._identity import peer_id_of

from ._config import ID_LEN, MAX_ADDR_BYTES, MAX_ADDRS, MAX_CAP_BYTES, MAX_CAPS


def as_int(node_id: bytes) -> int:
    return int.from_bytes(node_id, "big")


def distance(a: bytes, b: bytes) -> int:
    """The XOR distance between two ids, as an integer."""
    return as_int(a) ^ as_int(b)


@dataclass(slots=True, eq=False)
class Contact:
    """Another DHT node as one routing table or lookup sees it."""

    id: bytes
    public_key: bytes
    addrs: tuple[str, ...] = ()
    caps: tuple[str, ...] = ()
    last_seen: float = 0.0
    failures: int = 0
    num: int = field(init=False, repr=False)  # ``id`` as an integer, for XOR

    def __post_init__(self) -> None:
        self.num = as_int(self.id)

    @classmethod
    def of_key(
        cls, public_key: bytes, addrs: Iterable[str] = (), caps: Iterable[str] = ()
    ) -> Contact:
        """The contact of a public key (its id derived, so it is bound)."""
        return cls(peer_id_of(public_key), public_key, tuple(addrs), tuple(caps))

    def is_bound(self) -> bool:
        """True if the id is the hash of the public key."""
        return len(self.public_key) == ID_LEN and peer_id_of(self.public_key) == self.id

    def copy(self) -> Contact:
        twin = Contact.__new__(Contact)
        twin.id, twin.public_key, twin.num = self.id, self.public_key, self.num
        twin.addrs, twin.caps = self.addrs, self.caps
        twin.last_seen, twin.failures = self.last_seen, self.failures
        return twin

    def to_wire(self) -> list[Any]:
        return [self.id, self.public_key, list(self.addrs[:MAX_ADDRS]), list(self.caps[:MAX_CAPS])]


def _fail(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.MALFORMED, message)


def check_texts(values: list[Any], what: str, max_bytes: int) -> tuple[str, ...]:
    """Every element a non-empty text string of at most ``max_bytes`` UTF-8 bytes."""
    short = max_bytes // 4  # a string this long or shorter fits in any case
    for value in values:
        if type(value) is not str or not value:
            raise _fail(f"{what} must be non-empty text strings")
        if len(value) > short and len(value.encode()) > max_bytes:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"{what} entry over {max_bytes} bytes")
    return tuple(values)


def contact_from_wire(obj: object) -> Contact:
    """A contact from its wire array; ProtocolError if the shape is wrong."""
    if not isinstance(obj, list) or len(obj) != 4:
        raise _fail("a contact is the array [id, pk, addrs, caps]")
    node_id, public_key, addrs, caps = obj
    if not isinstance(node_id, bytes) or len(node_id) != ID_LEN:
        raise _fail("contact id must be 32 bytes")
    if not isinstance(public_key, bytes) or len(public_key) != ID_LEN:
        raise _fail("contact public key must be 32 bytes")
    if not isinstance(addrs, list) or not isinstance(caps, list):
        raise _fail("contact addrs and caps are arrays")
    if len(addrs) > MAX_ADDRS or len(caps) > MAX_CAPS:
        raise ProtocolError(ErrorCode.TOO_LARGE, "too many addresses or capabilities")
    return Contact(
        node_id,
        public_key,
        check_texts(addrs, "addrs", MAX_ADDR_BYTES),
        check_texts(caps, "caps", MAX_CAP_BYTES),
    )


@functools.lru_cache(maxsize=4096)
def address_range(addr: str) -> str:
    """The range an address belongs to: IPv4 /24, IPv6 /48, or the host name."""
    try:
        host = urlsplit(addr).hostname
    except ValueError:
        host = None
    if not host:
        return "addr:" + addr.lower()
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "host:" + host.lower()
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def address_ranges(addrs: Iterable[str]) -> frozenset[str]:
    return frozenset(address_range(a) for a in addrs)
