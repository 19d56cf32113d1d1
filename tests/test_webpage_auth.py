"""The web page's sign-in: one-time login codes, the session cookie, and the
same-origin rule for cookie-authenticated requests (CSRF)."""

from __future__ import annotations

from pathlib import Path

import httpx

from peer.api._api import LocalApi
from peer.api._session import Sessions
from peer.node._node import Peer

from .test_api import TOKEN, Pair, pair  # noqa: F401  (pair: the fixture)

ORIGIN = "http://127.0.0.1"


def _client(api: LocalApi) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=api.app), base_url=ORIGIN)


def _api(peer: Peer, key_dir: Path | None = None) -> LocalApi:
    api = LocalApi(
        peer, TOKEN, sessions=Sessions(TOKEN, peer.identity.peer_id_hex, key_dir=key_dir)
    )
    api.api_url = ORIGIN
    return api


async def _signed_in(api: LocalApi, web: httpx.AsyncClient) -> str:
    link = api.sessions.mint()
    r = await web.get(link)
    assert r.status_code == 303 and r.headers["location"] == "/"  # no code left in the URL
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert cookie.startswith(api.sessions.cookie_name + "=")
    return cookie.split(";")[0].split("=", 1)[1]


async def test_page_is_served_with_a_strict_policy(pair: Pair) -> None:  # noqa: F811
    async with _client(_api(pair.a)) as web:
        page = await web.get("/")
        assert page.status_code == 200 and "<title>clawmesh</title>" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        js = await web.get("/static/app.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        missing = await web.get("/static/..%2F_api.py")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not-found"
        foreign = await web.get("/", headers={"host": "evil.example"})
        assert foreign.status_code == 403


async def test_login_code_works_once_and_the_cookie_opens_the_api(
    pair: Pair,  # noqa: F811
    tmp_path: Path,
) -> None:
    api = _api(pair.a, tmp_path)
    async with _client(api) as web:
        assert (await web.get("/channels")).status_code == 401
        link = api.sessions.mint()
        code_url = link.removeprefix(ORIGIN)
        first = await web.get(code_url)
        assert first.status_code == 303
        again = await web.get(code_url)  # one time only
        assert again.status_code == 303 and again.headers["location"] == "/?login=failed"
        # a fresh, unused link is kept in the key directory for `clawmesh web`
        kept = (tmp_path / "login-url").read_text().strip()
        assert kept.startswith(ORIGIN + "/login?code=") and kept != link
        assert (tmp_path / "login-url").stat().st_mode & 0o077 == 0
        web.cookies.set(api.sessions.cookie_name, first.cookies[api.sessions.cookie_name])
        assert (await web.get("/channels")).status_code == 200
        # a state-changing request with the cookie must come from the page's own origin
        r = await web.post("/subscribe", json={"channel": "x"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "origin", r.text
        assert "own origin" in r.json()["error"]["message"]
        r = await web.post("/subscribe", json={"channel": "x"}, headers={"origin": ORIGIN})
        assert r.status_code == 200, r.text
        other_port = {"origin": "http://127.0.0.1:9999"}
        assert (
            await web.post("/subscribe", json={"channel": "y"}, headers=other_port)
        ).status_code == 403
        cross = {"origin": ORIGIN, "sec-fetch-site": "same-site"}
        assert (
            await web.post("/subscribe", json={"channel": "y"}, headers=cross)
        ).status_code == 403
        assert (
            await web.get("/channels", headers={"sec-fetch-site": "same-site"})
        ).status_code == 403


async def test_a_tampered_or_expired_cookie_is_refused(pair: Pair) -> None:  # noqa: F811
    api = _api(pair.a)
    sessions = api.sessions
    good = sessions.new_cookie()
    assert sessions.valid(good)
    expiry, nonce, mac = good.split(".")
    assert not sessions.valid(f"{int(expiry) + 1}.{nonce}.{mac}")
    assert not sessions.valid(sessions.new_cookie(now=0.0))  # long expired
    assert not Sessions("another-token-0123456789", pair.a.identity.peer_id_hex).valid(good)
    async with _client(api) as web:
        web.cookies.set(sessions.cookie_name, good[:-1] + ("0" if good[-1] != "0" else "1"))
        assert (await web.get("/channels")).status_code == 401


async def test_login_link_endpoint_and_logout(pair: Pair) -> None:  # noqa: F811
    api = _api(pair.a)
    async with _client(api) as web:
        minted = await web.post("/login-link", headers={"authorization": f"Bearer {TOKEN}"})
        assert minted.status_code == 200
        url = minted.json()["url"]
        assert url.startswith(ORIGIN + "/login?code=")
        assert (await web.post("/login-link")).status_code == 401
        r = await web.get(url.removeprefix(ORIGIN))
        web.cookies.set(api.sessions.cookie_name, r.cookies[api.sessions.cookie_name])
        out = await web.post("/logout", headers={"origin": ORIGIN})
        assert out.status_code == 200 and "Max-Age=0" in out.headers["set-cookie"]
