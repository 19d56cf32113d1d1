"""What the inbox pins in channel retention (``peer.node._inboxlog.inbox_pins``), with
the store's retention skipping pinned records (``store._retention``).

The ``~inbox`` log refers to a channel message's record in its channel log, so that
record is kept while the reference is; a DM's record is not (the inbox holds DMs
whole), and the records behind a pinned one are trimmed as usual.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import trio

from peer.node._inboxlog import INBOX_LOG, inbox_key, inbox_pins, ref_key, sweep_rules
from peer.wire._envelope import PRESENCE_TOPIC, inbox_topic
from store import (
    AppendItem,
    KeepRules,
    MessageStore,
    RetentionPolicy,
    StoredMessage,
    open_store_service,
)

DM_LOG = inbox_topic(b"\x07" * 32)


def _item(topic: str, n: int) -> AppendItem:
    wire = hashlib.sha256(b"%s %d" % (topic.encode(), n)).digest() * 4
    return AppendItem(hashlib.sha256(wire).digest(), topic, b"\x05" * 32, n, 1000 + n, wire, 0)


def _inbox_copy(of: AppendItem, n: int) -> AppendItem:
    """The inbox's record of ``of`` (a reference or a full copy: the same id)."""
    return AppendItem(inbox_key(of.msg_id), INBOX_LOG, bytes(32), 0, 1000 + n, b"r" * 40, 0)


def test_only_channel_logs_are_pinned() -> None:
    for topic in ("lobby", "team/dev"):
        pins = inbox_pins(topic)
        assert pins is not None
        m = StoredMessage(topic, 3, b"\x01" * 32, b"\x05" * 32, 3, 1000, 0, b"w")
        # a reference's key now, and the one references had before ``ref_key``
        assert list(pins(m)) == [ref_key(m.sender, topic, 3, m.msg_id), inbox_key(m.msg_id)]
    assert inbox_pins(DM_LOG) is None  # the inbox keeps its own copy of a DM
    assert inbox_pins(INBOX_LOG) is None
    assert inbox_pins(PRESENCE_TOPIC) is None


async def test_the_inbox_holds_neither_a_dm_log_nor_what_is_behind_a_pinned_record(
    tmp_path: Path,
) -> None:
    """Channels and DMs kept 0 ms, the inbox 100 messages: the one channel message the
    inbox refers to stays and the nine behind it go; the DMs go though the inbox holds
    them; the inbox keeps everything."""
    lobby = [_item("lobby", n) for n in range(1, 11)]
    dms = [_item(DM_LOG, n) for n in range(1, 6)]
    inbox = [_inbox_copy(lobby[0], 1)] + [_inbox_copy(d, 2 + i) for i, d in enumerate(dms)]
    rules, pins = sweep_rules(KeepRules(default=RetentionPolicy(max_age_ms=0)), 100)
    with trio.fail_after(30):
        async with open_store_service(str(tmp_path / "s"), sync=False) as service:
            await service.append_many(lobby + dms + inbox)
            deleted = await service.retention_sweep(rules, now_ms=10, pinned=pins)
            assert deleted == 9 + 5
            assert [m.seq for m in await service.read_log("lobby")] == [1]
            assert await service.read_log(DM_LOG) == []
            assert len(await service.read_log(INBOX_LOG)) == 6
            assert await service.read(MessageStore.check) == []
