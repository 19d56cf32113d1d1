"""Agent cards: what an agent can do, signed as a DHT record and indexed by skill and tag.

An **agent card** (protocol-spec/dht.md, "Agent cards") names an agent,
describes it, lists its skills (id, name, description, tags, input and output
media types), its availability and the interfaces it answers. Field names are
A2A's ``AgentCard`` names where the two overlap, so a gateway can serve the
same card at ``/.well-known/agent-card.json``.

A **card record** is the canonical CBOR array ``[body, sig]`` like the other
records (``_records.py``), signed over ``"clawmesh/dht/agent-card/v1" || body``.
Its body holds the owner's id, key, addresses and relays, the card, a
sequence number and an expiry. It is stored under each of its **index keys**:
``SHA-256("clawmesh/dht/skill/v1" || skill id)`` for every skill and
``SHA-256("clawmesh/dht/tag/v1" || tag)`` for every tag; the keys are derived
from the card, never sent, so a record cannot be filed under a skill it does
not declare.

Rules this module keeps:

* :func:`check_card` is the one validator of a card, for cards from the
  network (CBOR) and from the local API (JSON): exact field set (unknown
  fields refused), every string and list bounded, skill ids and tags in a
  small lower-case alphabet, at most ``MAX_CARD_KEYS`` index keys. It raises
  :class:`RecordError` (``malformed`` or ``too-large``) and nothing else.
* :func:`verify_card_record` checks cheapest first (size, shape, id binding,
  wanted key, expiry, signature), like the other records.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from peer.wire._cbor import decode as cbor_decode
from peer.wire._cbor import encode
from peer.wire._errors import ErrorCode, ProtocolError
from peer.wire._identity import Identity, verify_signature

from ._config import MAX_CARD_RECORD_BYTES, DhtConfig
from ._records import (
    RECORD_VERSION,
    Reason,
    RecordError,
    Relay,
    _common,
    _relay_wire,
    check_expiry,
)

CARD_RECORD_TAG = b"clawmesh/dht/agent-card/v1"
SKILL_KEY_TAG = b"clawmesh/dht/skill/v1"
TAG_KEY_TAG = b"clawmesh/dht/tag/v1"

MAX_CARD_ITEMS = 1024  # CBOR data items in a card record's body
MAX_SKILLS = 16
MAX_TAGS = 8  # per skill
MAX_MODES = 8  # media types per list
MAX_EXAMPLES = 4
MAX_INTERFACES = 4
MAX_CARD_KEYS = 32  # distinct skill ids and tags of one card
AVAILABILITY = ("available", "busy", "away")

_LABEL_RE = re.compile(r"[a-z0-9][a-z0-9._:+/-]{0,63}")  # a skill id or a tag
_MEDIA_RE = re.compile(r"[!-~]{1,63}/[!-~]{1,63}")  # type/subtype, printable ASCII

_BODY_KEYS = frozenset({"v", "id", "pk", "addrs", "relays", "card", "seq", "exp"})
_CARD_REQUIRED = frozenset({"name", "skills"})
_CARD_OPTIONAL = frozenset(
    {
        "description",
        "version",
        "availability",
        "defaultInputModes",
        "defaultOutputModes",
        "supportedInterfaces",
    }
)
_SKILL_REQUIRED = frozenset({"id", "name"})
_SKILL_OPTIONAL = frozenset({"description", "tags", "inputModes", "outputModes", "examples"})
_IFACE_REQUIRED = frozenset({"protocolBinding", "url"})
_IFACE_OPTIONAL = frozenset({"protocolVersion"})


def skill_key(skill_id: str) -> bytes:
    """The DHT key under which the agents declaring ``skill_id`` are indexed."""
    return hashlib.sha256(SKILL_KEY_TAG + skill_id.encode()).digest()


def tag_key(tag: str) -> bytes:
    """The DHT key under which the agents with a skill tagged ``tag`` are indexed."""
    return hashlib.sha256(TAG_KEY_TAG + tag.encode()).digest()


# -- the card -------------------------------------------------------------------------


def _bad(message: str) -> RecordError:
    return RecordError(Reason.MALFORMED, message)


def _fields(m: object, required: frozenset[str], optional: frozenset[str], what: str) -> None:
    if not isinstance(m, dict):
        raise _bad(f"{what} must be a map")
    keys = set(m)
    if not required <= keys:
        raise _bad(f"{what} lacks {', '.join(sorted(required - keys))}")
    unknown = keys - required - optional
    if unknown:
        raise _bad(f"{what} has unknown field {sorted(map(str, unknown))[0]!r}")


def _text(m: dict[str, Any], key: str, max_bytes: int, *, empty: bool = False) -> None:
    value = m.get(key)
    if not isinstance(value, str):
        raise _bad(f"{key} must be a text string")
    if not value and not empty:
        raise _bad(f"{key} must not be empty")
    if len(value.encode()) > max_bytes:
        raise RecordError(Reason.TOO_LARGE, f"{key} over {max_bytes} bytes")


def _texts(m: dict[str, Any], key: str, max_len: int, check: re.Pattern[str] | int) -> None:
    if key not in m:
        return
    value = m[key]
    if not isinstance(value, list):
        raise _bad(f"{key} must be a list")
    if len(value) > max_len:
        raise RecordError(Reason.TOO_LARGE, f"{key} has more than {max_len} entries")
    for entry in value:
        if not isinstance(entry, str) or not entry:
            raise _bad(f"{key} entries must be non-empty text strings")
        if isinstance(check, int):
            if len(entry.encode()) > check:
                raise RecordError(Reason.TOO_LARGE, f"{key} entry over {check} bytes")
        elif check.fullmatch(entry) is None:
            raise _bad(f"{key} entry {entry[:70]!r} is not a valid {_KIND[key]}")
    if len(set(value)) != len(value):
        raise _bad(f"{key} lists an entry twice")


_KIND = {
    "tags": "tag (lower-case a-z, 0-9 and ._:+/-, 1 to 64 characters)",
    "inputModes": "media type",
    "outputModes": "media type",
    "defaultInputModes": "media type",
    "defaultOutputModes": "media type",
}


def _check_skill(skill: object) -> None:
    _fields(skill, _SKILL_REQUIRED, _SKILL_OPTIONAL, "a skill")
    assert isinstance(skill, dict)
    sid = skill["id"]
    if not isinstance(sid, str) or _LABEL_RE.fullmatch(sid) is None:
        raise _bad(
            f"skill id {str(sid)[:70]!r} must be lower-case a-z, 0-9 and ._:+/-, 1 to 64 characters"
        )
    _text(skill, "name", 64)
    if "description" in skill:
        _text(skill, "description", 512, empty=True)
    _texts(skill, "tags", MAX_TAGS, _LABEL_RE)
    _texts(skill, "inputModes", MAX_MODES, _MEDIA_RE)
    _texts(skill, "outputModes", MAX_MODES, _MEDIA_RE)
    _texts(skill, "examples", MAX_EXAMPLES, 200)


def _check_interface(iface: object) -> None:
    _fields(iface, _IFACE_REQUIRED, _IFACE_OPTIONAL, "an interface")
    assert isinstance(iface, dict)
    _text(iface, "protocolBinding", 32)
    _text(iface, "url", 256)
    if "protocolVersion" in iface:
        _text(iface, "protocolVersion", 16)


def check_card(card: object) -> dict[str, Any]:
    """``card`` if it is a valid agent card; RecordError (malformed, too-large) otherwise."""
    _fields(card, _CARD_REQUIRED, _CARD_OPTIONAL, "an agent card")
    assert isinstance(card, dict)
    _text(card, "name", 64)
    if "description" in card:
        _text(card, "description", 1024, empty=True)
    if "version" in card:
        _text(card, "version", 32)
    if "availability" in card and card["availability"] not in AVAILABILITY:
        raise _bad(f"availability must be one of {', '.join(AVAILABILITY)}")
    _texts(card, "defaultInputModes", MAX_MODES, _MEDIA_RE)
    _texts(card, "defaultOutputModes", MAX_MODES, _MEDIA_RE)
    skills = card["skills"]
    if not isinstance(skills, list):
        raise _bad("skills must be a list")
    if len(skills) > MAX_SKILLS:
        raise RecordError(Reason.TOO_LARGE, f"more than {MAX_SKILLS} skills")
    for skill in skills:
        _check_skill(skill)
    if len({s["id"] for s in skills}) != len(skills):
        raise _bad("two skills have the same id")
    ifaces = card.get("supportedInterfaces", [])
    if not isinstance(ifaces, list):
        raise _bad("supportedInterfaces must be a list")
    if len(ifaces) > MAX_INTERFACES:
        raise RecordError(Reason.TOO_LARGE, f"more than {MAX_INTERFACES} interfaces")
    for iface in ifaces:
        _check_interface(iface)
    labels = card_labels(card)
    if len(labels[0]) + len(labels[1]) > MAX_CARD_KEYS:
        raise RecordError(
            Reason.TOO_LARGE, f"more than {MAX_CARD_KEYS} distinct skill ids and tags"
        )
    return card


def card_labels(card: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The skill ids and the distinct tags of a (checked) card, in card order."""
    skills = [s["id"] for s in card["skills"]]
    tags = list(dict.fromkeys(t for s in card["skills"] for t in s.get("tags", [])))
    return skills, tags


def index_keys(card: dict[str, Any]) -> tuple[bytes, ...]:
    """The DHT keys a (checked) card is stored under: its skills' then its tags' keys."""
    skills, tags = card_labels(card)
    return tuple([skill_key(s) for s in skills] + [tag_key(t) for t in tags])


# -- the record ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CardRecord:
    """A parsed card record (verified if it came from ``verify_card_record``)."""

    id: bytes
    public_key: bytes
    addrs: tuple[str, ...]
    relays: tuple[Relay, ...]
    card: dict[str, Any] = field(compare=False)
    seq: int
    expires: int
    keys: tuple[bytes, ...] = field(repr=False)  # index keys, derived from the card
    wire: bytes = field(repr=False)
    body: bytes = field(repr=False)
    sig: bytes = field(repr=False)


def _split(wire: bytes) -> tuple[dict[str, Any], bytes, bytes]:
    if not isinstance(wire, bytes):
        raise _bad("a record is a byte string")
    if len(wire) > MAX_CARD_RECORD_BYTES:
        raise RecordError(
            Reason.TOO_LARGE, f"card record of {len(wire)} bytes over {MAX_CARD_RECORD_BYTES}"
        )
    try:
        outer = cbor_decode(wire, max_items=3)
        if (
            not isinstance(outer, list)
            or len(outer) != 2
            or not isinstance(outer[0], bytes)
            or not isinstance(outer[1], bytes)
            or len(outer[1]) != 64
        ):
            raise _bad("a record is [body bytes, 64-byte signature]")
        body, sig = outer
        fields = cbor_decode(body, max_items=MAX_CARD_ITEMS)
    except RecordError:
        raise
    except ProtocolError as exc:
        reason = Reason.TOO_LARGE if exc.code is ErrorCode.TOO_LARGE else Reason.MALFORMED
        raise RecordError(reason, exc.message) from None
    if not isinstance(fields, dict) or fields.keys() != _BODY_KEYS:
        raise _bad("card record body has the wrong fields")
    if fields["v"] != RECORD_VERSION or type(fields["v"]) is not int:
        raise _bad("unknown record version")
    return fields, body, sig


def parse_card_record(wire: bytes) -> CardRecord:
    """Shape, card and id binding of a card record; no signature or expiry check."""
    fields, body, sig = _split(wire)
    node_id, public_key, addrs, relays, seq, expires = _common(fields)
    card = check_card(fields["card"])
    return CardRecord(
        node_id, public_key, addrs, relays, card, seq, expires, index_keys(card), wire, body, sig
    )


def check_card_signature(record: CardRecord) -> None:
    if not verify_signature(record.public_key, CARD_RECORD_TAG + record.body, record.sig):
        raise RecordError(Reason.BAD_SIGNATURE, "card record signature does not verify")


def verify_card_record(
    wire: bytes,
    now: float,
    *,
    key: bytes | None = None,
    max_ttl: float = DhtConfig.max_record_ttl,
    skew: float = DhtConfig.clock_skew,
) -> CardRecord:
    """A fully validated card record (indexed under ``key`` if given), or RecordError."""
    record = parse_card_record(wire)
    if key is not None and key not in record.keys:
        raise RecordError(Reason.WRONG_KEY, "the card declares no skill or tag of this key")
    check_expiry(record.expires, now, max_ttl, skew)
    check_card_signature(record)
    return record


def sign_card_record(
    identity: Identity,
    card: dict[str, Any],
    *,
    addrs: Iterable[str] = (),
    relays: Iterable[Relay] = (),
    seq: int,
    expires: int,
) -> CardRecord:
    """Sign our card record; RecordError if the card or a field is outside the limits."""
    fields = {
        "v": RECORD_VERSION,
        "id": identity.peer_id,
        "pk": identity.public_key,
        "addrs": list(addrs),
        "relays": _relay_wire(relays),
        "card": check_card(card),
        "seq": seq,
        "exp": expires,
    }
    body = encode(fields)
    return parse_card_record(encode([body, identity.sign(CARD_RECORD_TAG + body)]))
