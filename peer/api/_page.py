"""The web page every peer serves at its API address, and its sign-in routes.

``GET /`` is the page (``static/index.html``), ``GET /static/<name>`` its
files (only those shipped in ``peer/api/static``, nothing else on disk);
``GET /login?code=...`` takes a one-time code (``_session``), sets the
session cookie and redirects to ``/`` (a bad or used code redirects to
``/?login=failed``: the page says what to do). ``POST /logout`` clears the
cookie; ``POST /login-link`` mints a new login link. The page is open (it
holds no data); everything it shows comes from the API, which wants the
cookie. Every answer carries a strict Content-Security-Policy: the page runs
only its own scripts and talks only to this origin.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from ._session import Sessions

PAGE_ROUTES = ("/", "/static/{name}", "/login")  # the page, not API: not in /openapi.json
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
MAX_CODE = 200
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "media-src 'self' blob:; connect-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


def _static_files() -> dict[str, bytes]:
    """Every file the page needs, read once from the package."""
    root = resources.files("peer.api").joinpath("static")
    out = {}
    for entry in root.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in STATIC_TYPES:
            out[entry.name] = entry.read_bytes()
    return out


class Page:
    """The page's routes around the API's :class:`Sessions`."""

    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions
        self.files = _static_files()

    def routes(self) -> dict[str, Callable[[Request], Awaitable[Response]]]:
        """The open page routes (they are behind the Host/Origin checks only)."""
        routes = (self.index, self.static, self.login)
        return dict(zip(PAGE_ROUTES, routes, strict=True))

    def handlers(self) -> dict[str, Callable[[Request], Awaitable[Response]]]:
        """The page's API endpoints (declared in ``_spec``)."""
        return {"/logout": self.logout, "/login-link": self.login_link}

    def _file(self, name: str) -> Response:
        body = self.files.get(name)
        if body is None:
            return JSONResponse(
                {"error": {"code": "not-found", "message": f"no file {name}"}}, status_code=404
            )
        media = STATIC_TYPES["." + name.rpartition(".")[2]]
        return Response(body, media_type=media, headers=SECURITY_HEADERS)

    async def index(self, request: Request) -> Response:
        return self._file("index.html")

    async def static(self, request: Request) -> Response:
        return self._file(str(request.path_params["name"]))

    async def login(self, request: Request) -> Response:
        code = request.query_params.get("code", "")
        if not code or len(code) > MAX_CODE or not self.sessions.take(code):
            return RedirectResponse("/?login=failed", status_code=303, headers=SECURITY_HEADERS)
        response = RedirectResponse("/", status_code=303, headers=SECURITY_HEADERS)
        secure = request.url.scheme == "https"
        cookie = self.sessions.cookie_header(self.sessions.new_cookie(), secure=secure)
        response.headers.append("set-cookie", cookie)
        return response

    async def logout(self, request: Request) -> Response:
        response = JSONResponse({"signed_in": False})
        response.headers.append("set-cookie", self.sessions.cookie_header(""))
        return response

    async def login_link(self, request: Request) -> Response:
        return JSONResponse({"url": self.sessions.mint()})
