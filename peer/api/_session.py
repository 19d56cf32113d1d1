"""Sign-in for the web page: one-time login links and the session cookie.

Rules kept here:

* A login link carries a one-time code (``/login?code=...``): it is taken
  once, then forgotten; at most ``MAX_CODES`` are outstanding (the oldest
  goes). The peer mints one at start-up (printed, and written to the key
  directory's ``login-url``, 0600) and a fresh one each time one is used, so
  that file always holds a link that works; ``POST /login-link`` (bearer
  token) mints more.
* The session cookie is ``<expiry>.<nonce>.<HMAC-SHA256>`` keyed by a secret
  derived from the API token: it outlives a restart of the peer, and changing
  the api-token file ends every session. It is HttpOnly, SameSite=Strict,
  Path=/, and named after the peer (cookies do not separate ports, so two
  peers on one host keep theirs apart).
* CSRF: a request that authenticates by the cookie only (no bearer token)
  must be same-origin: a browser's ``Sec-Fetch-Site``, when sent, must be
  ``same-origin`` (or ``none``), and its ``Origin``, when sent, must be this
  API's own origin; a state-changing one (not GET/HEAD) and a WebSocket must
  carry that ``Origin``. Another page on the same host (another port is the
  same *site*, so SameSite lets the cookie through) is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections import OrderedDict
from pathlib import Path

from starlette.requests import HTTPConnection

SESSION_DAYS = 30
MAX_CODES = 16
COOKIE_PREFIX = "clawmesh-"


class Sessions:
    """Login codes (in memory) and session cookies (signed, stateless)."""

    def __init__(self, token: str, peer_id_hex: str, *, key_dir: Path | None = None) -> None:
        self._key = hashlib.sha256(b"clawmesh/web-session/v1" + token.encode()).digest()
        self.cookie_name = COOKIE_PREFIX + peer_id_hex[:16]
        self.key_dir = key_dir
        self._codes: OrderedDict[str, None] = OrderedDict()
        self.api_url = ""

    # -- one-time codes --------------------------------------------------------------

    def mint(self) -> str:
        """A new login link (``api_url`` must be set)."""
        code = secrets.token_urlsafe(24)
        self._codes[code] = None
        while len(self._codes) > MAX_CODES:
            self._codes.popitem(last=False)
        return f"{self.api_url}/login?code={code}"

    def take(self, code: str) -> bool:
        """Use a code up: True once per code that was minted."""
        for known in self._codes:
            if hmac.compare_digest(known.encode(), code.encode()):
                del self._codes[known]
                self.write_link()
                return True
        return False

    def write_link(self) -> str | None:
        """Mint a link and keep it in the key directory's ``login-url`` (0600)."""
        if not self.api_url:
            return None
        link = self.mint()
        if self.key_dir is not None:
            write_private(self.key_dir / "login-url", link + "\n")
        return link

    # -- the cookie ------------------------------------------------------------------

    def _sign(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()

    def new_cookie(self, now: float | None = None) -> str:
        expiry = int((time.time() if now is None else now) + SESSION_DAYS * 86400)
        body = f"{expiry}.{secrets.token_hex(8)}"
        return f"{body}.{self._sign(body)}"

    def valid(self, value: str, now: float | None = None) -> bool:
        body, _, mac = value.rpartition(".")
        expiry = body.partition(".")[0]
        if not (expiry.isascii() and expiry.isdigit() and len(mac) == 64):
            return False
        if not hmac.compare_digest(self._sign(body), mac):
            return False
        return int(expiry) > (time.time() if now is None else now)

    def cookie_header(self, value: str, *, secure: bool = False) -> str:
        parts = [
            f"{self.cookie_name}={value}",
            "Path=/",
            "HttpOnly",
            "SameSite=Strict",
            f"Max-Age={SESSION_DAYS * 86400 if value else 0}",
        ]
        if secure:
            parts.append("Secure")
        return "; ".join(parts)

    def signed_in(self, conn: HTTPConnection) -> bool:
        value = conn.cookies.get(self.cookie_name)
        return value is not None and self.valid(value)


def same_origin(conn: HTTPConnection, *, changing: bool) -> bool:
    """Whether a cookie-authenticated request comes from this API's own page."""
    site = conn.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = conn.headers.get("origin")
    if origin is None:
        return not changing
    scheme = "https" if conn.url.scheme in ("https", "wss") else "http"
    return origin.lower() == f"{scheme}://{conn.headers.get('host', '').lower()}"


def write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
