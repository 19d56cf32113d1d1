"""The A2A gateway's JSON-RPC edge without processes: bad input is a JSON-RPC error,
never a 500, nothing is sent before the request is checked, stream slots never leak."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
import trio
from starlette.requests import Request

from peer.api._a2a import A2aGateway

AGENT = b"\x0b" * 32


def _gateway() -> A2aGateway:
    peer: Any = SimpleNamespace(log=structlog.get_logger(), peer_id=b"\x0a" * 32,
                                tasks=SimpleNamespace(by_id={}, change_count=0))
    return A2aGateway(peer)


def _request(body: bytes) -> Request:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": f"/a2a/{AGENT.hex()}", "headers": [],
             "query_string": b"", "path_params": {"peer": AGENT.hex()}}
    return Request(scope, receive)


async def _rpc(gateway: A2aGateway, body: bytes) -> dict[str, Any]:
    response = await gateway.rpc(_request(body))
    assert response.status_code == 200
    answer: dict[str, Any] = json.loads(bytes(response.body))
    return answer


@pytest.mark.parametrize("body", [
    b'{"jsonrpc":"2.0","id":NaN,"method":"GetTask","params":{}}',
    b'{"jsonrpc":"2.0","id":1e400,"method":"GetTask","params":{}}',
    b'{"jsonrpc":"2.0","id":{"a":1},"method":"GetTask","params":{}}',
])
async def test_unanswerable_ids_are_json_rpc_errors(body: bytes) -> None:
    answer = await _rpc(_gateway(), body)
    assert answer["id"] is None and answer["error"]["code"] in (-32700, -32600)


async def test_a_bad_configuration_is_refused_before_anything_is_sent() -> None:
    gateway = _gateway()
    sent: list[Any] = []

    async def send(params: Any, peer_id: bytes) -> Any:
        sent.append(params)
        raise AssertionError("sent")

    gateway._send = send  # type: ignore[method-assign]
    message = {"messageId": "m", "role": "ROLE_USER", "parts": [{"text": "x"}]}
    for method in ("SendMessage", "SendStreamingMessage"):
        answer = await _rpc(gateway, json.dumps({
            "jsonrpc": "2.0", "id": 1, "method": method,
            "params": {"message": message, "configuration": "x"}}).encode())
        assert answer["error"]["code"] == -32602
    assert sent == [] and gateway.streams == 0


async def test_a_non_ascii_page_token_is_ignored() -> None:
    answer = await _rpc(_gateway(), json.dumps({
        "jsonrpc": "2.0", "id": 2, "method": "ListTasks",
        "params": {"pageToken": "\u00b2"}}).encode())
    assert answer["result"]["tasks"] == [] and answer["result"]["totalSize"] == 0


async def test_a_client_gone_before_the_stream_starts_frees_its_slot() -> None:
    gateway = _gateway()
    fake: Any = SimpleNamespace()
    gateway._task = lambda params, peer_id: fake  # type: ignore[method-assign]
    for _ in range(3):
        response = await gateway._open_stream("subscribe", True, {"id": "x"}, AGENT, 1)
        assert gateway.streams == 1

        async def receive() -> dict[str, Any]:
            await trio.sleep_forever()
            raise AssertionError

        async def send(message: Any) -> None:
            raise OSError("client gone")

        scope = {"type": "http", "asgi": {"spec_version": "2.4"}}
        with pytest.raises(Exception):  # noqa: B017 - starlette's ClientDisconnect or OSError
            await response(scope, receive, send)
        assert gateway.streams == 0
