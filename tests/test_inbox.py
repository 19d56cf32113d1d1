"""The local inbox and peer directory (peer/node/_inbox.py): plain data, no I/O."""

from __future__ import annotations

import hashlib
import random

from peer.node._inbox import Directory, Inbox, InboxMessage


def msg(i: int, *, topic: str = "general", read: bool = False) -> InboxMessage:
    return InboxMessage(
        cursor=0,
        id=hashlib.sha256(b"message %d" % i).digest(),
        kind="msg",
        topic=topic,
        channel=topic,
        sender=b"\x01" * 32,
        peer=None,
        body=f"body {i}",
        payload=None,
        has_payload=False,
        reply_to=None,
        thread=None,
        ts=1_700_000_000_000 + i,
        received_ms=1_700_000_000_000 + i,
        outgoing=False,
        read=read,
    )


def bodies(messages: list[InboxMessage]) -> list[str]:
    return [m.body for m in messages]


def test_cursors_increase_in_arrival_order() -> None:
    inbox = Inbox()
    assert inbox.last_cursor == 0
    added = [inbox.add(msg(i)) for i in range(5)]
    assert [m.cursor for m in added if m is not None] == [1, 2, 3, 4, 5]
    assert inbox.last_cursor == 5
    assert [m.cursor for m in inbox] == [1, 2, 3, 4, 5]
    assert len(inbox) == 5


def test_duplicates_are_refused_and_use_no_cursor() -> None:
    inbox = Inbox()
    inbox.add(msg(1))
    assert inbox.add(msg(1)) is None
    assert len(inbox) == 1
    second = inbox.add(msg(2))
    assert second is not None and second.cursor == 2


def test_query_after_a_cursor_with_a_limit() -> None:
    inbox = Inbox()
    for i in range(10):
        inbox.add(msg(i))
    assert bodies(inbox.query(after=7)) == ["body 7", "body 8", "body 9"]
    assert bodies(inbox.query(after=0, limit=3)) == ["body 0", "body 1", "body 2"]
    assert inbox.query(after=10) == []
    assert inbox.query(limit=0) == []  # the local API accepts limit=0
    # paging with the last cursor seen returns everything once, in order
    seen: list[str] = []
    cursor = 0
    while page := inbox.query(after=cursor, limit=4):
        seen.extend(bodies(page))
        cursor = page[-1].cursor
    assert seen == [f"body {i}" for i in range(10)]


def test_query_by_topic() -> None:
    inbox = Inbox()
    for i in range(6):
        inbox.add(msg(i, topic="even" if i % 2 == 0 else "odd"))
    assert bodies(inbox.query(topic="odd")) == ["body 1", "body 3", "body 5"]
    assert bodies(inbox.query(topic="even", after=1, limit=1)) == ["body 2"]
    assert inbox.query(topic="none") == []


def test_unread_filtering_and_mark_read() -> None:
    inbox = Inbox()
    messages = [msg(i) for i in range(6)]
    for m in messages:
        inbox.add(m)
    assert inbox.unread() == 6
    assert inbox.mark_read([messages[1].id, messages[4].id, b"\x00" * 32]) == 2
    assert inbox.mark_read([messages[1].id]) == 0  # already read
    assert inbox.unread() == 4
    assert bodies(inbox.query(unread=True)) == ["body 0", "body 2", "body 3", "body 5"]
    assert bodies(inbox.query(unread=False)) == ["body 1", "body 4"]
    assert len(inbox.query()) == 6
    assert bodies(inbox.query(unread=True, after=3)) == ["body 3", "body 5"]
    found = inbox.get(messages[4].id)
    assert found is not None and found.read


def test_mark_read_through_a_cursor() -> None:
    inbox = Inbox()
    for i in range(5):
        inbox.add(msg(i))
    inbox.mark_read([inbox.query(after=1, limit=1)[0].id])
    assert inbox.mark_read_through(3) == 2  # cursors 1 and 3; 2 was read
    assert [m.read for m in inbox] == [True, True, True, False, False]
    assert inbox.mark_read_through(3) == 0


def test_capacity_evicts_read_messages_first() -> None:
    inbox = Inbox(capacity=3)
    first, second, third = msg(1), msg(2), msg(3)
    for m in (first, second, third):
        inbox.add(m)
    inbox.mark_read([second.id])
    inbox.add(msg(4))
    # the read message goes, although an older unread one exists
    assert inbox.get(second.id) is None
    assert inbox.get(first.id) is not None
    assert bodies(list(inbox)) == ["body 1", "body 3", "body 4"]
    assert inbox.dropped == 0
    # with nothing read, the oldest unread one goes and is counted
    inbox.add(msg(5))
    assert bodies(list(inbox)) == ["body 3", "body 4", "body 5"]
    assert inbox.dropped == 1
    assert len(inbox) == 3


def test_capacity_evicts_the_oldest_read_message() -> None:
    inbox = Inbox(capacity=4)
    messages = [msg(i) for i in range(4)]
    for m in messages:
        inbox.add(m)
    inbox.mark_read([messages[3].id, messages[1].id])
    inbox.add(msg(10))
    inbox.add(msg(11))
    assert bodies(list(inbox)) == ["body 0", "body 2", "body 10", "body 11"]
    assert inbox.dropped == 0
    assert inbox.unread() == 4


def test_random_operations_keep_the_invariants() -> None:
    rng = random.Random(1234)
    capacity = 20
    inbox = Inbox(capacity=capacity)
    next_id = 0
    for _ in range(2000):
        if rng.random() < 0.6:
            inbox.add(msg(next_id))
            next_id += 1
        elif len(inbox):
            some = rng.sample(list(inbox), min(len(inbox), 3))
            inbox.mark_read([m.id for m in some])
        cursors = [m.cursor for m in inbox]
        assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)
        assert len(inbox) <= capacity
        assert inbox.unread() == len(inbox.query(unread=True, limit=capacity))
        for m in inbox:
            assert inbox.get(m.id) is m
    assert inbox.last_cursor == next_id


def test_message_json() -> None:
    m = msg(1)
    m.payload, m.has_payload, m.reply_to = {"k": 1}, True, b"\x02" * 32
    out = m.to_json()
    assert out["id"] == m.id.hex() and out["channel"] == "general"
    assert out["payload"] == {"k": 1} and out["reply_to"] == "02" * 32
    assert "peer" not in out and "thread" not in out
    assert "payload" not in msg(2).to_json()


# -- directory ----------------------------------------------------------------------


def test_directory_tracks_last_seen() -> None:
    directory = Directory()
    info = directory.see(b"\x01" * 32, b"\x11" * 32, 1000)
    assert directory.see(b"\x01" * 32, b"\x11" * 32, 500) is info
    assert info.last_seen_ms == 1000  # never goes backwards
    directory.see(b"\x01" * 32, b"\x11" * 32, 2000)
    assert info.last_seen_ms == 2000
    assert directory.get(b"\x02" * 32) is None
    assert len(directory) == 1


def test_directory_capacity_keeps_linked_peers() -> None:
    directory = Directory(capacity=3)
    peers = [bytes([i]) * 32 for i in range(1, 6)]
    linked = directory.see(peers[0], b"k" * 32, 0, linking=True)
    for i, p in enumerate(peers[1:5], start=1):
        directory.see(p, b"k" * 32, i)
    # the oldest unlinked peer went; the linked one stayed (and is not counted)
    assert directory.get(peers[0]) is linked
    assert directory.get(peers[1]) is None
    assert len(directory) == 4
    # a peer seen again becomes the most recent, so another one goes next
    directory.see(peers[2], b"k" * 32, 10)
    directory.see(b"\x09" * 32, b"k" * 32, 11)
    assert directory.get(peers[2]) is not None
    assert directory.get(peers[3]) is None
    assert {p.peer_id for p in directory} == {peers[0], peers[4], peers[2], b"\x09" * 32}
    # once unlinked it counts again and, the oldest, goes first
    directory.unlink(peers[0])
    directory.see(b"\x0a" * 32, b"k" * 32, 12)
    assert directory.get(peers[0]) is None
    assert len(directory) == 3


def test_a_seed_with_more_links_than_the_directory_holds_takes_the_next_one() -> None:
    """A seed at 10,000 links crashed on the 10,001st: the new, not yet linked entry
    was the only one it could drop, and was dropped under its own feet."""
    directory = Directory(capacity=3)
    for i in range(10):
        info = directory.see(bytes([i]) * 32, b"k" * 32, i, linking=True)
        assert directory.get(bytes([i]) * 32) is info and info.linked
    assert len(directory) == 10
    for i in range(10, 20):  # peers only heard of stay bounded beside them
        directory.see(bytes([i]) * 32, b"k" * 32, i)
    assert len(directory) == 13
    assert all(directory.get(bytes([i]) * 32) is not None for i in range(10))
