"""Strict CBOR for network input, canonical CBOR for output.

Rules this module keeps (protocol-spec/README.md, "CBOR profile"):

* Output is always canonical (RFC 8949 section 4.2.1 core deterministic
  encoding: shortest forms, definite lengths, sorted map keys).
* Input must be exactly what we would have written: one data item, no
  trailing bytes, no semantic tags, no indefinite lengths, no duplicate map
  keys, map keys that are text or byte strings only, no simple values but
  false, true and null, nesting at most
  ``MAX_DEPTH``, at most ``max_items`` data items, and canonical encoding
  (decode, re-encode, compare bytes).
* The only exception that leaves :func:`decode` is :class:`ProtocolError`.

The item count is checked by a cheap header scan before cbor2 builds any
object: a megabyte of empty arrays would otherwise cost tens of megabytes of
Python objects. Byte and text string contents are skipped in O(1), so a large
envelope carried as a byte string scans in a handful of steps.

:func:`bstr_at` reads one canonical byte-string header in place: the fast
paths for the hottest shapes (the ``pub`` frame, the envelope array) check
their exact canonical bytes with it and hand anything else to :func:`decode`.
"""

from __future__ import annotations

import itertools
from typing import Any, NoReturn

import cbor2

from ._errors import ErrorCode, ProtocolError

MAX_DEPTH = 16
DEFAULT_MAX_ITEMS = 4096


def _reject_tag(tag: int) -> Any:
    def reject(_decoder: object) -> NoReturn:
        raise cbor2.CBORDecodeError(f"semantic tag {tag} is not allowed")

    return reject


class _RejectAllTags(dict[int, Any]):
    """A ``semantic_decoders`` mapping that claims, and refuses, every tag.

    cbor2 decodes its built-in tags (datetimes, bignums, decimals, shared
    references, sets, ...) without consulting ``tag_hook``; only an override in
    ``semantic_decoders`` stops it.
    """

    def __missing__(self, tag: int) -> Any:
        return _reject_tag(tag)

    def get(self, tag: int, default: Any = None) -> Any:
        return self[tag]

    def __contains__(self, tag: object) -> bool:
        return True


_REJECT_TAGS = _RejectAllTags()


def _tag_hook(_decoder: object, tag: object) -> NoReturn:
    raise cbor2.CBORDecodeError("semantic tags are not allowed")


def encode(obj: object) -> bytes:
    """Encode ``obj`` as canonical CBOR."""
    return cbor2.dumps(obj, canonical=True)


def count_items(data: bytes, max_items: int) -> int:
    """Count the data items in ``data`` by walking CBOR headers only.

    Raises ProtocolError as soon as the count exceeds ``max_items``, on
    truncated input and on indefinite lengths. Does not check anything else:
    the full decode that follows does.
    """
    pos = 0
    end = len(data)
    items = 0
    pending = 1  # data items still to read at the current level, flattened
    while pending:
        if pos >= end:
            raise ProtocolError(ErrorCode.MALFORMED, "truncated CBOR")
        pending -= 1
        items += 1
        if items > max_items:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"more than {max_items} CBOR items")
        initial = data[pos]
        pos += 1
        major = initial >> 5
        info = initial & 0x1F
        if info < 24:
            arg = info
        elif info <= 27:
            width = 1 << (info - 24)
            if pos + width > end:
                raise ProtocolError(ErrorCode.MALFORMED, "truncated CBOR")
            arg = int.from_bytes(data[pos : pos + width], "big")
            pos += width
        else:
            raise ProtocolError(ErrorCode.MALFORMED, "indefinite length or reserved CBOR header")
        if major in (2, 3):  # byte or text string: skip the contents
            pos += arg
            if pos > end:
                raise ProtocolError(ErrorCode.MALFORMED, "truncated CBOR string")
        elif major == 4:
            pending += arg
        elif major == 5:
            pending += 2 * arg
        elif major == 6:
            raise ProtocolError(ErrorCode.MALFORMED, "semantic tags are not allowed")
        elif major == 7 and (info < 20 or info in (23, 24)):
            raise ProtocolError(ErrorCode.MALFORMED, "only false, true, null and floats are simple")
        # majors 0, 1 and 7 carry no children
        if pending > max_items:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"more than {max_items} CBOR items")
    if pos != end:
        raise ProtocolError(ErrorCode.MALFORMED, "trailing bytes after CBOR item")
    return items


def bstr_at(data: bytes, pos: int) -> tuple[int, int] | None:
    """The ``(start, end)`` of the byte string whose header is at ``data[pos]``.

    None unless the header is a definite-length byte string in its shortest
    (canonical) form and its contents fit in ``data``.
    """
    end = len(data)
    if pos >= end:
        return None
    initial = data[pos]
    if initial < 0x40 or initial > 0x5A:
        return None
    if initial < 0x58:
        start, size = pos + 1, initial - 0x40
    elif initial == 0x58:
        start, size = pos + 2, data[pos + 1] if pos + 1 < end else 0
        if size < 24:
            return None
    elif initial == 0x59:
        start = pos + 3
        size = int.from_bytes(data[pos + 1 : start], "big")
        if size < 0x100 or start > end:
            return None
    else:  # 0x5A
        start = pos + 5
        size = int.from_bytes(data[pos + 1 : start], "big")
        if size < 0x10000 or start > end:
            return None
    if start + size > end:
        return None
    return start, start + size


_PLAIN = frozenset({int, bytes, str, bool, float, type(None)})
# plain values that leave a shape as it is: a container holding only these needs
# no look at each of them (one pass in C over their types instead)
_SCALARS = frozenset({int, bytes, str, bool, type(None)})


def _loads(data: bytes) -> Any:
    return cbor2.loads(
        data,
        tag_hook=_tag_hook,
        semantic_decoders=_REJECT_TAGS,
        max_depth=MAX_DEPTH,
        allow_indefinite=False,
        allow_duplicate_keys=False,
        strict_hashable_types=True,
    )


_REFUSED: Any = object()
_PLAIN_SORTED: Any = object()  # no floats, and every map's keys are text in canonical order
_PLAIN_OTHER: Any = object()  # plain, but only a canonical re-encoding can tell the rest

_KEY_ORDER: dict[tuple[Any, ...], bool] = {}  # a map's keys, in order -> canonical?
_KEY_ORDER_MAX = 1024  # key tuples remembered, each ...
_KEY_ORDER_BYTES = 256  # ... of at most this many key bytes: a few MiB at worst


def _shape(obj: Any) -> Any:
    """What a decoded value needs to be checked as canonical.

    ``_REFUSED`` if it holds a simple value other than false, true and null
    (cbor2 decodes the others to ``CBORSimpleValue`` or ``undefined`` and
    re-encodes them unchanged). ``_PLAIN_SORTED`` if cbor2's plain encoding
    gives the canonical bytes (it writes shortest integers and lengths in any
    mode): no float needs shortening and no map needs sorting.
    """
    shape = _PLAIN_SORTED
    stack = [obj]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            if shape is _PLAIN_SORTED and not _text_keys_in_order(tuple(item)):
                shape = _PLAIN_OTHER
            values = item.values()
            if not _SCALARS.issuperset(map(type, values)):  # else nothing to look into
                stack.extend(values)
        elif kind is list:
            if not _SCALARS.issuperset(map(type, item)):
                stack.extend(item)
        elif kind is float:
            shape = _PLAIN_OTHER
        elif kind not in _PLAIN:
            return _REFUSED
    return shape


def _text_keys_in_order(keys: tuple[Any, ...]) -> bool:
    """Text keys only, in canonical order. For text keys alone, bytewise order of
    the encoded keys (RFC 8949) and shorter-first order (RFC 7049) agree: the
    header grows with the length, and UTF-8 sorts as code points do. Answers
    for small key sets are remembered: maps of one kind share their keys."""
    ok = _KEY_ORDER.get(keys)
    if ok is not None:
        return ok
    if not all(type(k) is str for k in keys):
        return False
    encoded = [k.encode("utf-8") for k in keys]
    ok = all((len(a), a) < (len(b), b) for a, b in itertools.pairwise(encoded))
    if sum(map(len, encoded)) <= _KEY_ORDER_BYTES:  # maps of the protocol's own kinds
        if len(_KEY_ORDER) >= _KEY_ORDER_MAX:
            _KEY_ORDER.clear()
        _KEY_ORDER[keys] = ok
    return ok


def _decode_short(data: bytes) -> Any:
    """The fast way for input no longer than its item bound (every item takes at
    least a byte, so the count cannot be over): cbor2 refuses tags, indefinite
    lengths, duplicate keys, depth and truncation, the re-encoding trailing
    bytes and non-canonical forms, and :func:`_shape` other simple values.
    ``_NOT_SHORT`` if anything is off: :func:`decode` then takes the full way
    for the exact error.
    """
    try:
        obj = _loads(data)
        shape = _shape(obj)
        if shape is _PLAIN_SORTED:
            if cbor2.dumps(obj) == data:  # about 2.5 times faster than sorting maps again
                return obj
        elif shape is _PLAIN_OTHER and encode(obj) == data:
            return obj
    except Exception:  # the full way says what is wrong
        pass
    return _NOT_SHORT


_NOT_SHORT: Any = object()


def decode(data: bytes, *, max_items: int = DEFAULT_MAX_ITEMS) -> Any:
    """Decode one strict, canonical CBOR data item from ``data``."""
    if len(data) <= max_items:
        obj = _decode_short(data)
        if obj is not _NOT_SHORT:
            return obj
    return _decode_scanned(data, max_items)


def _decode_scanned(data: bytes, max_items: int) -> Any:
    """The reference way: bound the items by a header scan, then decode and compare."""
    count_items(data, max_items)
    try:
        obj = _loads(data)
    except cbor2.CBORDecodeError as exc:
        raise ProtocolError(ErrorCode.MALFORMED, f"bad CBOR: {exc}") from None
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as exc:
        raise ProtocolError(ErrorCode.MALFORMED, f"bad CBOR: {exc!r}") from None
    try:
        again = encode(obj)
    except (cbor2.CBOREncodeError, ValueError, TypeError) as exc:
        raise ProtocolError(ErrorCode.MALFORMED, f"CBOR does not re-encode: {exc}") from None
    if again != data:
        raise ProtocolError(ErrorCode.NON_CANONICAL, "CBOR is not in canonical form")
    return obj
