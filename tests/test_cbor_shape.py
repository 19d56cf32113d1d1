"""``_shape`` skips a map's or array's look at each value when all of them are plain
scalars: it answers what a walk over every value answers."""

from __future__ import annotations

from typing import Any

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.wire import _cbor
from tests._fuzz import fuzz_scale


def _walk(obj: Any) -> Any:
    """The shape, every value looked at (the walk before the shortcut)."""
    shape = _cbor._PLAIN_SORTED
    stack = [obj]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            if shape is _cbor._PLAIN_SORTED and not _cbor._text_keys_in_order(tuple(item)):
                shape = _cbor._PLAIN_OTHER
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        elif kind is float:
            shape = _cbor._PLAIN_OTHER
        elif kind not in _cbor._PLAIN:
            return _cbor._REFUSED
    return shape


_LEAVES = st.one_of(
    st.integers(-(2**64), 2**64 - 1), st.binary(max_size=4), st.text(max_size=3), st.booleans(),
    st.none(), st.floats(allow_nan=False), st.just(cbor2.CBORSimpleValue(99)),
    st.just(cbor2.undefined),
)
_VALUES = st.recursive(
    _LEAVES,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.one_of(st.text(max_size=3), st.integers(0, 9)), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=fuzz_scale(400), deadline=None)
@given(_VALUES)
def test_shape_matches_a_walk_over_every_value(obj: Any) -> None:
    assert _cbor._shape(obj) is _walk(obj)
