"""Which inbox messages a request wants: ``channel``, ``peer``, ``thread``,
``unread``, ``outgoing``, shared by ``/messages``, the streams and webhooks.

A thread is named by its first message's id: ``thread=<id>`` keeps that
message and every message whose ``thread`` is that id.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection

from peer.node._inbox import Inbox, InboxMessage, StatusChange
from peer.wire._envelope import dm_topic

from ._values import ApiError, bool_param, channel_name, hex_id


@dataclass(frozen=True, slots=True)
class MessageFilter:
    topic: str | None = None  # a channel's topic, or the DM topic with one peer
    dm_peer: bytes | None = None
    thread: bytes | None = None
    unread: bool | None = None
    outgoing: bool = True

    def wants(self, message: InboxMessage) -> bool:
        if self.topic is not None and message.topic != self.topic:
            return False
        if self.thread is not None and self.thread not in (message.thread, message.id):
            return False
        if self.unread is not None and message.read == self.unread:
            return False
        return self.outgoing or not message.outgoing

    def wants_status(self, change: StatusChange, inbox: Inbox) -> bool:
        """A status change of one of our DMs (our own messages: ``outgoing``)."""
        if not self.outgoing or self.unread:
            return False
        if self.topic is not None and (self.dm_peer is None or change.peer != self.dm_peer):
            return False
        if self.thread is not None:
            message = inbox.get(change.id)
            return message is not None and self.wants(message)
        return True


def message_filter(request: HTTPConnection, me: bytes, *, unread: bool = False) -> MessageFilter:
    """The filter a request's ``channel``, ``peer``, ``thread`` (and ``unread``,
    ``outgoing``) parameters ask for; 400 for a bad value or channel with peer."""
    params = request.query_params
    topic = dm_peer = thread = None
    if params.get("channel") and params.get("peer"):
        raise ApiError(
            400, "invalid", "channel and peer together match nothing: a DM is in no channel"
        )
    if params.get("channel"):
        topic = channel_name(params["channel"])
    elif params.get("peer"):
        dm_peer = hex_id(params["peer"], "peer")
        topic = dm_topic(me, dm_peer)
    if params.get("thread"):
        thread = hex_id(params["thread"], "thread")
    outgoing = bool_param(request, "outgoing")
    return MessageFilter(
        topic=topic,
        dm_peer=dm_peer,
        thread=thread,
        unread=bool_param(request, "unread") if unread else None,
        outgoing=True if outgoing is None else outgoing,
    )


def select(
    inbox: Inbox, wanted: MessageFilter, after: int, limit: int
) -> tuple[list[InboxMessage], bool]:
    """Up to ``limit`` wanted messages past cursor ``after``, in cursor order, and
    whether more wanted ones follow them."""
    out: list[InboxMessage] = []
    if inbox.last_cursor <= after:
        return out, False
    for message in inbox:
        if message.cursor <= after or not wanted.wants(message):
            continue
        if len(out) == limit:
            return out, True
        out.append(message)
    return out, False
