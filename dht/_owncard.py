"""Our own agent card, as one DHT node keeps it: signed, republished, withdrawn.

``OwnCard`` is a part of :class:`dht.DhtNode`, sans-IO like it: it holds the
card our agent declares and its current signed record, says which (key,
record) pairs are due for publication at ``now``, and when next
(``due``). Rules it keeps (protocol-spec/dht.md section 14):

* the record is re-signed (through the node's ``sign``, which gives it the
  node's next sequence number) when a quarter of its lifetime has passed, and
  stored under every index key every ``republish_interval``, and at once
  when the card changes;
* a card that no longer declares a key is sent once to that key (a
  withdrawal: storers then drop the agent there); a withdrawn card is a card
  with no skills, sent once to every key the old one had.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._card import CardRecord

Sign = Callable[[dict[str, Any], float], CardRecord]
INF = float("inf")


class OwnCard:
    def __init__(self, sign: Sign, ttl: float, republish_interval: float) -> None:
        self._sign = sign
        self.ttl = ttl
        self.every = republish_interval
        self.card: dict[str, Any] | None = None
        self.record: CardRecord | None = None
        self.due = INF
        self._withdrawals: list[tuple[bytes, bytes]] = []  # (key it left, new record)

    def set(self, card: dict[str, Any] | None, now: float) -> CardRecord | None:
        """Declare ``card`` (RecordError before anything changes if it is invalid),
        or withdraw ours with None; publication is due at once either way."""
        old = self.record
        if card is None:
            if old is not None:
                tomb = self._sign({"name": old.card["name"], "skills": []}, now)
                self._withdraw(old, tomb)
            self.card, self.record = None, None
            self.due = now if self._withdrawals else INF
            return None
        record = self._sign(card, now)
        if old is not None:
            self._withdraw(old, record)
        self.card, self.record, self.due = card, record, now
        return record

    def _withdraw(self, old: CardRecord, new: CardRecord) -> None:
        gone = [k for k in old.keys if k not in new.keys]
        self._withdrawals = [w for w in self._withdrawals if w[0] not in new.keys]
        self._withdrawals += [(k, new.wire) for k in gone]

    def due_now(self, now: float) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
        """(withdrawals, publications) due at ``now``, as (key, record bytes) pairs."""
        if now < self.due:
            return [], []
        withdrawals, self._withdrawals = self._withdrawals, []
        if self.card is None:
            self.due = INF
            return withdrawals, []
        record = self.record
        if record is None or record.expires - now < self.ttl * 0.75:
            record = self.record = self._sign(self.card, now)
        self.due = now + self.every
        return withdrawals, [(key, record.wire) for key in record.keys]
