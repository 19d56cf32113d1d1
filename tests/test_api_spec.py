"""The API refuses what it cannot honour, and /openapi.json matches the routes."""

from __future__ import annotations

import httpx
from starlette.routing import Route, WebSocketRoute

from peer.api._api import LocalApi
from peer.api._spec import ENDPOINTS
from peer.wire._envelope import Content

from .test_api import TOKEN, Pair, pair, running_pair  # noqa: F401  (pair: the fixture)


async def test_unknown_fields_and_params_are_refused_by_name(pair: Pair) -> None:  # noqa: F811
    for field in ("attachments", "time_to_live", "expires", "send_at"):
        r = await pair.api_a.post("/send", json={"channel": "lobby", "body": "x", field: 1})
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "unknown-field"
        assert repr(field) in r.json()["error"]["message"]
    r = await pair.api_a.post("/subscribe", json={"channel": "x", "mute": True})
    assert r.status_code == 400 and "'mute'" in r.json()["error"]["message"]
    r = await pair.api_a.get("/messages", params={"since": 3})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "unknown-param"
    assert "'since'" in r.json()["error"]["message"]


async def test_channel_with_to_is_refused_not_posted(pair: Pair) -> None:  # noqa: F811
    r = await pair.api_a.post(
        "/send", json={"channel": "lobby", "to": pair.b.identity.peer_id_hex, "body": "secret"}
    )
    assert r.status_code == 400
    assert "not both" in r.json()["error"]["message"]
    assert not any(m.body == "secret" for m in pair.a.inbox)


async def test_messages_filter_by_thread_and_tell_count_and_more(pair: Pair) -> None:  # noqa: F811
    root = pair.b.publish("lobby", Content(body="root"))
    pair.b.publish("lobby", Content(body="off topic"))
    for i in range(3):
        pair.b.publish("lobby", Content(body=f"reply {i}", thread=root.id))
    r = await pair.api_a.get("/messages", params={"thread": root.id.hex(), "wait": 5, "limit": 2})
    assert [m["body"] for m in r.json()] == ["root", "reply 0"]
    assert r.headers["X-Clawmesh-Count"] == "2"
    assert r.headers["X-Clawmesh-More"] == "true"
    after = r.headers["X-Clawmesh-Cursor"]
    r = await pair.api_a.get(
        "/messages", params={"thread": root.id.hex(), "after": after, "wait": 5}
    )
    while len(r.json()) < 2:  # the last reply may still be on its way
        r = await pair.api_a.get(
            "/messages", params={"thread": root.id.hex(), "after": after, "wait": 5}
        )
    assert [m["body"] for m in r.json()] == ["reply 1", "reply 2"]
    assert r.headers["X-Clawmesh-More"] == "false"
    r = await pair.api_a.get("/messages", params={"thread": "nope"})
    assert r.status_code == 400


async def test_openapi_describes_every_route_and_the_error_shape(pair: Pair) -> None:  # noqa: F811
    api = LocalApi(pair.a, TOKEN)
    routes = set()
    for route in api.app.routes:
        if isinstance(route, WebSocketRoute):
            routes.add(("get", route.path))
        elif isinstance(route, Route):
            routes |= {(m.lower(), route.path) for m in route.methods or () if m != "HEAD"}
    bare = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api.app), base_url="http://127.0.0.1"
    )
    async with bare:
        r = await bare.get("/openapi.json")  # open: no token
    assert r.status_code == 200
    doc = r.json()
    described = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert described == routes
    error = doc["components"]["schemas"]["Error"]
    assert error["properties"]["error"]["required"] == ["code", "message"]
    for spec in ENDPOINTS:
        op = doc["paths"][spec.path][spec.method.lower()]
        names = {p["name"] for p in op.get("parameters", []) if p["in"] == "query"}
        assert names == {f.name for f in spec.params}
        if spec.body:
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            assert schema["additionalProperties"] is False
            assert set(schema["properties"]) == {f.name for f in spec.body}
        assert op["responses"]["400"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"
        }
        assert ("security" in op) == (not spec.open)


async def test_every_error_answer_has_the_documented_shape(pair: Pair) -> None:  # noqa: F811
    bad = [
        await pair.api_a.get("/messages", params={"limit": "x"}),
        await pair.api_a.get("/nowhere"),
        await pair.api_a.post("/send", json={"to": "00" * 32, "body": "x", "extra": 1}),
        await pair.api_a.post("/send", content=b"[1]"),
        await pair.api_a.delete("/send"),
    ]
    for r in bad:
        assert r.status_code >= 400
        assert set(r.json()) == {"error"}
        assert set(r.json()["error"]) == {"code", "message"}
