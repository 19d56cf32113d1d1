"""The frames that hand envelopes to one peer outside gossip (catchup.md section 9):
``push`` (a DM or receipt to its addressee) and ``deposit``/``deposited`` (an
envelope for a mailbox peer to hold for its recipient, and the answer).

Same rules as every frame class (``._frametypes``): ``from_map`` validates
every field and refuses any other key; the registry is in ``._frametypes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ._fields import Map, need_bytes, need_text, need_uint, only_keys
from ._framebase import _Frame, _keys
from ._limits import MAX_ENVELOPE, MAX_REQUEST_ID


@dataclass(frozen=True, slots=True)
class Push(_Frame):
    """An envelope for the peer itself (a DM or receipt), outside gossip."""

    TYPE: ClassVar[str] = "push"
    KEYS: ClassVar[frozenset[str]] = _keys("e")

    envelope: bytes

    @classmethod
    def from_map(cls, m: Map) -> Push:
        only_keys(m, cls.KEYS)
        return cls(need_bytes(m, "e", max_size=MAX_ENVELOPE))

    def to_map(self) -> Map:
        return {"t": self.TYPE, "e": self.envelope}


@dataclass(frozen=True, slots=True)
class Deposit(_Frame):
    """An envelope its author asks a mailbox peer to hold for its recipient
    (catchup.md section 9.6); sent only to peers that announced ``mailbox``."""

    TYPE: ClassVar[str] = "deposit"
    KEYS: ClassVar[frozenset[str]] = _keys("r", "e")

    r: int
    envelope: bytes

    @classmethod
    def from_map(cls, m: Map) -> Deposit:
        only_keys(m, cls.KEYS)
        return cls(need_uint(m, "r", MAX_REQUEST_ID), need_bytes(m, "e", max_size=MAX_ENVELOPE))

    def to_map(self) -> Map:
        return {"t": self.TYPE, "r": self.r, "e": self.envelope}


@dataclass(frozen=True, slots=True)
class Deposited(_Frame):
    """The answer to one ``deposit``: taken (no ``err``), or refused with a reason."""

    TYPE: ClassVar[str] = "deposited"
    KEYS: ClassVar[frozenset[str]] = _keys("r", "err")

    r: int
    err: str | None = None

    @classmethod
    def from_map(cls, m: Map) -> Deposited:
        only_keys(m, cls.KEYS)
        r = need_uint(m, "r", MAX_REQUEST_ID)
        err = need_text(m, "err", 32) if "err" in m else None
        return cls(r, err)

    def to_map(self) -> Map:
        err = {} if self.err is None else {"err": self.err}
        return {"t": self.TYPE, "r": self.r, **err}
