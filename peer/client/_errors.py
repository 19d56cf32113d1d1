"""The client's exceptions: one class per way a call can fail, never a bare HTTP error.

``ApiError`` carries the API's own ``status``, ``code`` and ``message``
(``{"error": {"code": ..., "message": ...}}``); the common codes have their
own subclasses so a caller can ``except UnknownPeer``. ``PeerUnreachable``
means nothing answered at the API address at all (the peer is not running,
or runs elsewhere). Control flow never reads a message string.
"""

from __future__ import annotations

from typing import Any


class ClawmeshError(Exception):
    """Anything the client raises."""


class PeerUnreachable(ClawmeshError):
    """No peer answers at ``url`` (connection refused, reset or timed out)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"no peer answers at {url} ({reason}); is it running? start one with: python -m peer"
        )
        self.url = url
        self.reason = reason


class ApiError(ClawmeshError):
    """The peer answered with an error: HTTP ``status``, the API's ``code`` and ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class Unauthorised(ApiError):
    """401: no token, or not this peer's token (see its key directory's ``api-token``)."""


class InvalidRequest(ApiError):
    """400: the request was refused as it stands (bad name, bad id, unknown field, ...)."""


class UnknownPeer(InvalidRequest):
    """400 ``unknown-peer``: a DM to a peer whose key was never seen on the mesh."""


class TooLarge(ApiError):
    """413 ``too-large``: a body, payload or request over the limits."""


class NotFound(ApiError):
    """404: no such endpoint on this peer (an older peer, or a wrong address)."""


class ProtocolMismatch(ClawmeshError):
    """The peer answered something that is not the clawmesh API (wrong address?)."""


def error_from_response(status: int, body: Any, fallback: str) -> ApiError:
    """The typed exception for an error response ``body`` (parsed JSON or None)."""
    code, message = f"http-{status}", fallback.strip()[:200] or f"HTTP {status}"
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        code = str(err.get("code") or code)
        message = str(err.get("message") or message)
    cls: type[ApiError] = ApiError
    if status == 401:
        cls = Unauthorised
    elif code == "unknown-peer":
        cls = UnknownPeer
    elif status == 413 or code == "too-large":
        cls = TooLarge
    elif status == 404:
        cls = NotFound
    elif status == 400:
        cls = InvalidRequest
    return cls(status, code, message)
