"""What every frame class shares: ``_Frame`` (its ``"t"``, keys and encoding) and
``_keys``. Its own module so that frame classes can live in several modules
(``._frametypes``, ``._mailframes``) that one registry gathers."""

from __future__ import annotations

from typing import ClassVar

from . import _cbor
from ._fields import Map


class _Frame:
    """What every frame class has: its ``"t"``, its keys, its encoding."""

    __slots__ = ()
    TYPE: ClassVar[str]
    KEYS: ClassVar[frozenset[str]]

    def to_map(self) -> Map:
        """The frame as the CBOR map it is sent as, ``"t"`` included."""
        raise NotImplementedError

    def encode(self) -> bytes:
        """Canonical CBOR of the frame."""
        return _cbor.encode(self.to_map())


def _keys(*names: str) -> frozenset[str]:
    return frozenset({"t", *names})
