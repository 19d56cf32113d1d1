"""Reader cursors and the peer's opaque state, as small key-value writes.

``_State`` is a part of :class:`~store._log.MessageStore`: the ``cursors``
database (how far each named reader has consumed each topic) and the
``state`` database (subscriptions, unread marks, own sequence, ...). Their
writes are small and keep the peer running, so they use ``reserve=True``
and still succeed when the store is otherwise full.
"""

from __future__ import annotations

from collections.abc import Mapping

import lmdb

from ._env import _StoreEnv
from ._records import _U64, MAX_STATE_VALUE, _check_u64, _name_key, _topic_key, _u64


class _State(_StoreEnv):
    """Cursors (``*_cursor``, ``cursors``) and peer state (``*_state``, ``state_items``)."""

    # -- cursors -----------------------------------------------------------------------

    def set_cursor(self, name: str, topic: str, seq: int) -> None:
        """Remember that reader ``name`` has consumed ``topic`` up to ``seq``."""
        key = _name_key(name, "cursor name") + b"\x00" + _topic_key(topic)
        _check_u64(seq, "seq")
        self._write(lambda txn: txn.put(key, _u64(seq), db=self._cursors), reserve=True)

    def get_cursor(self, name: str, topic: str) -> int:
        """The seq reader ``name`` has consumed ``topic`` up to; 0 if never set."""
        key = _name_key(name, "cursor name") + b"\x00" + _topic_key(topic)
        raw = self._read(lambda txn: txn.get(key, db=self._cursors))
        return 0 if raw is None else int(_U64.unpack(raw)[0])

    def cursors(self, name: str) -> dict[str, int]:
        """Every cursor of reader ``name``, by topic."""
        prefix = _name_key(name, "cursor name") + b"\x00"

        def op(txn: lmdb.Transaction[bytes]) -> dict[str, int]:
            out: dict[str, int] = {}
            cur = txn.cursor(db=self._cursors)
            if cur.set_range(prefix):
                for key, value in cur.iternext():
                    if not key.startswith(prefix):
                        break
                    out[key[len(prefix):].decode("utf-8")] = _U64.unpack(value)[0]
            return out

        return self._read(op)

    def delete_cursor(self, name: str, topic: str) -> bool:
        key = _name_key(name, "cursor name") + b"\x00" + _topic_key(topic)
        return self._write(lambda txn: txn.delete(key, db=self._cursors), reserve=True)

    # -- peer state ----------------------------------------------------------------------

    def put_state(self, key: str, value: bytes) -> None:
        """Store an opaque value (subscriptions, unread marks, own sequence, ...)."""
        raw = _name_key(key, "state key")
        if not isinstance(value, bytes) or len(value) > MAX_STATE_VALUE:
            raise ValueError(f"state value must be bytes of at most {MAX_STATE_VALUE}")
        self._write(lambda txn: txn.put(raw, value, db=self._state), reserve=True)

    def get_state(self, key: str) -> bytes | None:
        raw = _name_key(key, "state key")
        return self._read(lambda txn: txn.get(raw, db=self._state))

    def delete_state(self, key: str) -> bool:
        raw = _name_key(key, "state key")
        return self._write(lambda txn: txn.delete(raw, db=self._state), reserve=True)

    def write_states(self, items: Mapping[str, bytes | None]) -> None:
        """Put each value (``None``: delete the key), all in one commit."""

        def each(store: _State) -> None:
            for key, value in items.items():
                if value is None:
                    store.delete_state(key)
                else:
                    store.put_state(key, value)

        self.atomically(each)

    def state_items(self, prefix: str = "") -> dict[str, bytes]:
        """Every state entry whose key starts with ``prefix``."""
        start = prefix.encode("utf-8")

        def op(txn: lmdb.Transaction[bytes]) -> dict[str, bytes]:
            out: dict[str, bytes] = {}
            cur = txn.cursor(db=self._state)
            if cur.set_range(start):
                for key, value in cur.iternext():
                    if not key.startswith(start):
                        break
                    out[key.decode("utf-8")] = value
            return out

        return self._read(op)
