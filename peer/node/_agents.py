"""The agent directory of one peer: our own agent card, and the cards found in the DHT.

``AgentDirectory`` is a part of ``peer.node._node.Peer``. It keeps the card
our agent declares (from ``--card``/``--skill`` or ``PUT /card``), hands it to
the DHT node, which signs it and keeps it published under every skill and tag
key (``dht/_card.py``), and answers "who can do this?" by a card lookup.

Rules kept here:

* A card is checked by ``dht.check_card`` before anything changes; the mesh
  interface (``clawmesh:<peer id>``) is added to ``supportedInterfaces`` when
  the card does not name it, and ``availability`` defaults to ``available``.
* Cards found are remembered (at most ``MAX_REMEMBERED``, least recently
  found forgotten first, never past their expiry) so ``/agents`` without a
  filter and ``/peers?feature=`` can answer without a lookup.
* Lookups are bounded in time by the caller; without a DHT only our own
  card and those remembered are known.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from dht import DhtService
from dht._card import (
    CardRecord,
    card_labels,
    check_card,
    sign_card_record,
    skill_key,
    tag_key,
)
from dht._cards import CardLimits
from peer.protocols._presence import MAX_SKILL_TEXT, MAX_SKILLS, valid_skill_id
from peer.wire._identity import Identity

from ._inbox import Directory, PeerInfo

MAX_REMEMBERED = 2048  # cards of other agents kept from lookups
RECENT_FOR = 1.0  # seconds a lookup's answer serves the same question again
MAX_RECENT = 64
MESH_BINDING = "clawmesh"


class AgentsPeer(Protocol):
    """What the directory needs from its peer."""

    @property
    def peer_id(self) -> bytes: ...
    @property
    def identity(self) -> Identity: ...
    @property
    def directory(self) -> Directory: ...
    @property
    def dht(self) -> DhtService | None: ...
    def wall_time(self) -> float: ...
    def is_online(self, info: PeerInfo, now_ms: int | None = None) -> bool: ...


@dataclass(frozen=True, slots=True)
class AgentEntry:
    """One agent as ``/agents`` lists it."""

    peer_id: bytes
    card: dict[str, Any]
    seq: int  # the card record's sequence: the ms time it was signed, roughly
    expires: int  # seconds since the Unix epoch
    online: bool
    last_seen_ms: int | None
    own: bool

    def to_json(self, iso: Any) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id.hex(),
            "name": self.card.get("name"),
            "online": self.online,
            "last_seen": None if self.last_seen_ms is None else iso(self.last_seen_ms),
            "expires": iso(self.expires * 1000),
            "self": self.own,
            "card": self.card,
        }


def with_defaults(card: dict[str, Any], peer_id: bytes) -> dict[str, Any]:
    """``card`` with our mesh interface and an availability, checked (RecordError)."""
    out = copy.deepcopy(card)
    ifaces = out.get("supportedInterfaces", [])
    if isinstance(ifaces, list) and not any(
        isinstance(i, dict) and i.get("protocolBinding") == MESH_BINDING for i in ifaces
    ):
        out["supportedInterfaces"] = [
            {"protocolBinding": MESH_BINDING, "url": f"clawmesh:{peer_id.hex()}"},
            *ifaces,
        ]
    out.setdefault("availability", "available")
    return check_card(out)


def card_from_skills(
    name: str, skills: Iterable[tuple[str, str]], base: dict[str, Any] | None
) -> dict[str, Any]:
    """A card from ``--card`` (``base``) plus ``--skill`` (id, description) pairs whose
    ids are not already in it (a description given is kept)."""
    card: dict[str, Any] = copy.deepcopy(base) if base is not None else {"name": name or "agent"}
    listed = card.setdefault("skills", [])
    if not isinstance(listed, list):
        return card  # check_card names the problem
    have = {s.get("id") for s in listed if isinstance(s, dict)}
    for sid, text in skills:
        if sid not in have:
            listed.append({"id": sid, "name": sid, **({"description": text} if text else {})})
            have.add(sid)
    return card


def card_skills(card: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """A card's skills as presence announces them: (id, description), those whose id
    fits an announcement, the description cut to its limit and made one line."""
    out = []
    for skill in card.get("skills") or ():
        sid = skill.get("id") if isinstance(skill, dict) else None
        if not isinstance(sid, str) or not valid_skill_id(sid):
            continue
        text = skill.get("description")
        text = text if isinstance(text, str) else ""
        text = "".join(c if c.isprintable() else " " for c in text)[:MAX_SKILL_TEXT]
        out.append((sid, text))
    return tuple(out[:MAX_SKILLS])


class AgentDirectory:
    def __init__(self, peer: AgentsPeer) -> None:
        self.peer = peer
        self._card: dict[str, Any] | None = None
        self._local: CardRecord | None = None  # our signed card without a DHT
        self._known: OrderedDict[bytes, CardRecord] = OrderedDict()
        self._recent: OrderedDict[bytes, tuple[float, list[CardRecord]]] = OrderedDict()
        self.lookups = 0

    # -- our card --

    @property
    def card(self) -> dict[str, Any] | None:
        return self._card

    def declared_skills(self, flags: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        """The skills we announce (presence, our A2A card): the current card's when one
        is declared (``--card``/``--skill`` at start, ``PUT /card`` since), else the
        ``--skill`` ``flags`` (none when the card was withdrawn)."""
        return flags if self._card is None else card_skills(self._card)

    def set_card(self, card: dict[str, Any] | None) -> dict[str, Any] | None:
        """Declare (or with None withdraw) our card; RecordError if it is invalid.
        With a DHT it is signed and published at once, then kept refreshed."""
        checked = None if card is None else with_defaults(card, self.peer.peer_id)
        dht = self.peer.dht
        if dht is not None:
            dht.node.set_card(checked, self.peer.wall_time())
            dht.wake_upkeep()
        self._card = checked
        return checked

    def start(self) -> None:
        """The DHT came up: publish the card declared before it."""
        dht = self.peer.dht
        if dht is not None and self._card is not None:
            dht.node.set_card(self._card, self.peer.wall_time())

    def own_record(self) -> CardRecord | None:
        """Our signed card record: the DHT node's, or (without a DHT) one signed here."""
        dht = self.peer.dht
        if dht is not None:
            return dht.node.own_card_record
        if self._card is None:
            return None
        now = self.peer.wall_time()
        if self._local is None or self._local.card is not self._card or self._local.expires <= now:
            self._local = sign_card_record(
                self.peer.identity,
                self._card,
                seq=int(now * 1000),
                expires=int(now + CardLimits().card_ttl),
            )
        return self._local

    # -- finding agents --

    async def find(self, skill: str | None, tag: str | None) -> list[CardRecord]:
        """Cards declaring ``skill`` and a skill tagged ``tag`` (either may be None;
        both None: every card known). Asks the DHT when a filter is given."""
        now = self.peer.wall_time()
        dht = self.peer.dht
        records = [r for r in self._known.values() if r.expires > now]
        if dht is not None and (skill or tag):
            key = skill_key(skill) if skill else tag_key(tag or "")
            records = await self._lookup(dht, key, now)  # what the DHT says, not what we knew
        mine = self._own_card_now()
        if mine is not None:
            records = [r for r in records if r.id != self.peer.peer_id] + [mine]
        return [r for r in records if matches(r.card, skill, tag)]

    async def _lookup(self, dht: DhtService, key: bytes, now: float) -> list[CardRecord]:
        """A card lookup; an answer under ``RECENT_FOR`` s old serves again (an agent
        polling /agents in a loop must not spend the request budgets others give us)."""
        recent = self._recent.get(key)
        if recent is not None and now - recent[0] < RECENT_FOR:
            return recent[1]
        self.lookups += 1
        records = await dht.find_cards(key)
        for record in records:
            self._remember(record)
        self._recent.pop(key, None)
        self._recent[key] = (self.peer.wall_time(), records)
        while len(self._recent) > MAX_RECENT:
            self._recent.popitem(last=False)
        return records

    def _own_card_now(self) -> CardRecord | None:
        record = self.own_record()
        if record is None or self._card is None:
            return None
        return record

    def _remember(self, record: CardRecord) -> None:
        held = self._known.pop(record.id, None)
        self._known[record.id] = record if held is None or record.seq >= held.seq else held
        while len(self._known) > MAX_REMEMBERED:
            self._known.popitem(last=False)

    def skills_of(self, peer_id: bytes) -> tuple[str, ...]:
        """The skill ids a known card of ``peer_id`` declares (ours included)."""
        if peer_id == self.peer.peer_id:
            return () if self._card is None else tuple(card_labels(self._card)[0])
        record = self._known.get(peer_id)
        if record is None or record.expires <= self.peer.wall_time():
            return ()
        return tuple(card_labels(record.card)[0])

    def entry(self, record: CardRecord, now_ms: int) -> AgentEntry:
        own = record.id == self.peer.peer_id
        info = self.peer.directory.get(record.id)
        online = own or (info is not None and self.peer.is_online(info, now_ms))
        last = now_ms if own else (None if info is None else info.last_seen_ms)
        return AgentEntry(record.id, record.card, record.seq, record.expires, online, last, own)


def matches(card: dict[str, Any], skill: str | None, tag: str | None) -> bool:
    """True if ``card`` declares ``skill`` and has a skill tagged ``tag`` (None: any)."""
    skills = card.get("skills", [])
    if skill and not any(s.get("id") == skill for s in skills):
        return False
    return not tag or any(tag in s.get("tags", ()) for s in skills)
