"""Hostile input at the local API: what it refuses, and that what it accepts can
always be read back on every path, with JSON errors throughout."""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from typing import Any

import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.api import _api as api_module
from peer.api._api import LocalApi, cbor_to_json_value

from .test_api import TOKEN, Pair, pair, running_pair  # noqa: F401  (pair: the fixture)


def raw_post(body: bytes) -> dict[str, Any]:
    return {"content": body, "headers": {"content-type": "application/json"}}


async def assert_json_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


async def test_nan_infinity_and_overflow_are_refused(pair: Pair) -> None:  # noqa: F811
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400"):
        body = b'{"channel": "lobby", "body": "x", "payload": ' + literal + b"}"
        await assert_json_error(await pair.api_a.post("/send", **raw_post(body)), 400, "invalid")
    # nothing was stored, and reading still works for everyone
    for api in (pair.api_a, pair.api_b):
        r = await api.get("/messages")
        assert r.status_code == 200 and r.json() == []


async def test_lone_surrogates_and_deep_nesting_are_refused(pair: Pair) -> None:  # noqa: F811
    for body in (
        b'{"channel": "lobby", "body": "\\ud800"}',
        b'{"channel": "lobby", "body": "ok", "payload": {"\\udfff": 1}}',
        b'{"channel": "lobby", "payload": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ):
        await assert_json_error(await pair.api_a.post("/send", **raw_post(body)), 400, "invalid")


async def test_unicode_digits_in_parameters_are_json_errors(pair: Pair) -> None:  # noqa: F811
    for path in ("/messages?after=²", "/messages?limit=٣", "/peers?min=¹"):
        await assert_json_error(await pair.api_a.get(path), 400, "invalid")


async def test_plain_http_to_the_websocket_endpoint_says_upgrade(pair: Pair) -> None:  # noqa: F811
    r = await pair.api_a.get("/ws")
    await assert_json_error(r, 426, "upgrade-required")
    assert r.headers["upgrade"] == "websocket"
    await assert_json_error(await pair.api_a.get("/nowhere"), 404, "not-found")


async def test_unread_messages_stay_unread_until_they_were_rendered(pair: Pair) -> None:  # noqa: F811
    sent = await pair.api_a.post("/send", json={"channel": "lobby", "body": "one"})
    assert sent.status_code == 200
    for _ in range(100):
        got = (await pair.api_b.get("/messages", params={"unread": "true", "peek": "true"})).json()
        if got:
            break
        await pair.b.wait_inbox_changed()
    assert [m["body"] for m in got] == ["one"]
    first = await pair.api_b.get("/messages", params={"unread": "true"})
    assert [m["body"] for m in first.json()] == ["one"]
    assert (await pair.api_b.get("/messages", params={"unread": "true"})).json() == []


def test_whatever_a_peer_received_renders_as_json() -> None:
    """Payloads come from other implementations too: every CBOR value our
    decoder can return has a JSON form."""
    odd = {
        1: float("inf"),
        b"\x00": [float("nan"), -float("inf")],
        2.5: {"ok": True},
    }
    rendered = cbor_to_json_value(odd)
    json.dumps(rendered, allow_nan=False)
    assert rendered["1"] is None and rendered["AA=="] == [None, None]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


async def _send_and_read_back(cases: list[tuple[Any, str]]) -> None:
    async with trio.open_nursery() as nursery, running_pair(nursery) as p:
        for payload, body in cases:
            data = {"channel": "lobby", "body": body, "payload": payload}
            sent = await p.api_a.post("/send", json=data)
            assert sent.status_code == 200, sent.text
            msg_id = sent.json()["id"]
            paths: list[dict[str, str]] = [{}, {"channel": "lobby"}]
            unread = {"unread": "true", "peek": "true"}  # our own messages are read already
            for api, peer, extra in ((p.api_a, p.a, []), (p.api_b, p.b, [unread])):
                with trio.fail_after(10):
                    while peer.inbox.get(bytes.fromhex(msg_id)) is None:
                        await peer.wait_inbox_changed()
                for params in [*paths, *extra]:
                    r = await api.get("/messages", params={**params, "limit": "1000"})
                    assert r.status_code == 200, r.text
                    [mine] = [m for m in r.json() if m["id"] == msg_id]
                    assert mine["body"] == body and mine.get("payload") == payload  # null: none
        nursery.cancel_scope.cancel()


@settings(max_examples=8, deadline=None)
@given(cases=st.lists(st.tuples(json_values, st.text(max_size=40)), min_size=1, max_size=12))
def test_any_accepted_payload_reads_back_on_every_path(cases: list[tuple[Any, str]]) -> None:
    """Whatever /send accepts, /messages gives back equal on both peers, on
    every query path (a property test over generated JSON payloads)."""
    trio.run(_send_and_read_back, cases)


async def test_only_loopback_hosts_and_origins_are_answered(pair: Pair) -> None:  # noqa: F811
    rebinding = {"Host": "evil.example:7432"}
    await assert_json_error(await pair.api_a.get("/status", headers=rebinding), 403, "host")
    page = {"Origin": "http://evil.example"}
    await assert_json_error(await pair.api_a.get("/messages", headers=page), 403, "origin")
    for ok in ({"Host": "localhost:7432"}, {"Host": "[::1]:7432"}, {"Origin": "http://127.0.0.1"}):
        assert (await pair.api_a.get("/status", headers=ok)).status_code == 200, ok
    allowed = LocalApi(pair.a, TOKEN, allowed_hosts=["mesh.lan"]).app
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=allowed), base_url="http://mesh.lan:7432"
    ) as lan:
        assert (await lan.get("/status")).status_code == 200


async def test_a_body_that_never_ends_times_out_with_json(
    pair: Pair,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(api_module, "BODY_TIMEOUT", 0.2)
    app = LocalApi(pair.a, TOKEN).app
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if not messages:
            messages.append({})
            return {"type": "http.request", "body": b'{"chan', "more_body": True}
        await trio.sleep_forever()  # the rest of the body never comes
        raise AssertionError  # pragma: no cover

    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/send",
        "raw_path": b"/send",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"authorization", f"Bearer {TOKEN}".encode()),
            (b"content-type", b"application/json"),
        ],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 7432),
        "client": ("127.0.0.1", 5555),
        "root_path": "",
    }
    with trio.fail_after(5):
        await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert start["status"] == 408 and json.loads(body)["error"]["code"] == "timeout"
