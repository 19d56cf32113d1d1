"""A typed Python client for a running peer's local API, sync (:class:`Client`) and
async (:class:`AsyncClient`), over httpx.

The API address and token are found as ``python -m peer`` left them (the key
directory's ``api-token`` and ``api-url`` files; ``$MESH_KEY_DIR``,
``$MESH_API_URL``, ``$MESH_API_PORT``, ``$MESH_API_TOKEN``)::

    from peer.client import Client

    with Client() as mesh:
        mesh.join("lobby")
        mesh.send("lobby", "hello")
        for message in mesh.messages(unread=True):
            print(message.sender[:16], message.body)

API errors raise :class:`ApiError` subclasses carrying the API's ``code`` and
``message``; no answer at all raises :class:`PeerUnreachable`.
"""

from ._agenttypes import AgentCard, AgentInfo
from ._async import AsyncClient
from ._config import Endpoint, discover
from ._errors import (
    ApiError,
    ClawmeshError,
    InvalidRequest,
    NotFound,
    PeerUnreachable,
    ProtocolMismatch,
    TooLarge,
    Unauthorised,
    UnknownPeer,
)
from ._sse import SseEvent, SseParser
from ._sync import Client
from ._types import AckResult, Event, Gap, Message, PeerInfo, SendResult, Status, StatusChange

__all__ = [
    "AckResult",
    "AgentCard",
    "AgentInfo",
    "ApiError",
    "AsyncClient",
    "ClawmeshError",
    "Client",
    "Endpoint",
    "Event",
    "Gap",
    "InvalidRequest",
    "Message",
    "NotFound",
    "PeerInfo",
    "PeerUnreachable",
    "ProtocolMismatch",
    "SendResult",
    "SseEvent",
    "SseParser",
    "Status",
    "StatusChange",
    "TooLarge",
    "Unauthorised",
    "UnknownPeer",
    "discover",
]
