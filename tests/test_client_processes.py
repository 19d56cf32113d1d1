"""``peer.client`` against real ``python -m peer`` processes, with good and bad input.

Every refusal is a typed exception with the API's code and message; after
them the peer still answers and every message that was acknowledged arrived.
The live stream test needs ``GET /events``: it is skipped while the peer
answers 404 there (the stream endpoint lands on another branch).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from peer.client import (
    AsyncClient,
    Client,
    InvalidRequest,
    Message,
    PeerUnreachable,
    TooLarge,
    Unauthorised,
    UnknownPeer,
)
from peer.client._calls import Call
from tests._mesh_pair import Pair, pair_fixture
from tests._procs import free_port, kill_hard, start_peer, stop, wait_ready


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    yield from pair_fixture(tmp_path_factory.mktemp("client"))


@pytest.fixture(autouse=True)
def _no_mesh_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MESH_KEY_DIR", "MESH_API_URL", "MESH_API_PORT", "MESH_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def test_the_client_finds_api_and_token_in_the_key_directory(pair: Pair) -> None:
    with Client(key_dir=pair.keys(pair.a)) as mesh:
        assert mesh.endpoint.url == pair.a.api  # from the api-url file the peer wrote
        status = mesh.status()
    assert status.peer_id == pair.a.peer_id
    assert "lobby" in status.channels and status.peer_count >= 1


def test_channel_messages_acks_and_membership(pair: Pair) -> None:
    with Client(key_dir=pair.keys(pair.a)) as a, Client(key_dir=pair.keys(pair.b)) as b:
        assert "dev" in b.join("#dev") and "dev" in b.channels()
        sent = a.send("lobby", "hello b", payload={"n": 1, "raw": {"$b64": "AAE="}})
        assert sent.channel == "lobby" and len(sent.id) == 64 and sent.stored
        got = b.messages(unread=True, channel="lobby", wait=20, peek=True)
        assert [m.body for m in got] == ["hello b"]
        message = got[0]
        assert message.sender == pair.a.peer_id
        assert message.payload == {"n": 1, "raw": {"$b64": "AAE="}}
        assert b.messages(unread=True, channel="lobby", peek=True)  # peek marked nothing
        acked = b.ack(ids=[message.id])
        assert acked.marked == 1
        assert b.messages(unread=True, channel="lobby") == []
        # everything after a cursor, read or not
        after = b.messages(channel="lobby", after=message.cursor - 1)
        assert [m.id for m in after] == [message.id]
        assert "dev" not in b.leave("dev")


def test_a_dm_arrives_and_is_receipted(pair: Pair) -> None:
    with Client(key_dir=pair.keys(pair.a)) as a, Client(key_dir=pair.keys(pair.b)) as b:
        sent = a.send_dm(pair.b.peer_id, "just for you")
        assert sent.to == pair.b.peer_id
        got = b.messages(unread=True, peer=pair.a.peer_id, wait=20)
        assert [(m.body, m.sender, m.peer) for m in got] == [
            ("just for you", pair.a.peer_id, pair.a.peer_id)
        ]
        deadline = time.monotonic() + 20
        while True:
            mine = [m for m in a.messages(peer=pair.b.peer_id, wait=1) if m.id == sent.id]
            if mine and mine[0].status == "delivered":
                break
            assert time.monotonic() < deadline, mine
        peers = a.peers(online=True)
        assert [p.peer_id for p in peers] == [pair.b.peer_id] and peers[0].linked


def test_bad_input_is_a_typed_error_and_the_peer_keeps_going(pair: Pair) -> None:
    with Client(key_dir=pair.keys(pair.a)) as a, Client(key_dir=pair.keys(pair.b)) as b:
        before = a.send("lobby", "before the errors")
        with Client(pair.a.api, token="not-the-token-at-all") as stranger:
            with pytest.raises(Unauthorised) as refused:
                stranger.channels()
            assert refused.value.status == 401 and refused.value.code == "unauthorised"
        with pytest.raises(UnknownPeer) as unknown:
            a.send_dm("ab" * 32, "anyone there?")
        assert unknown.value.code == "unknown-peer" and "ab" * 32 in unknown.value.message
        with pytest.raises(TooLarge) as big:
            a.send("lobby", "x" * (64 * 1024 + 1))
        assert big.value.status == 413 and big.value.code == "too-large"
        with pytest.raises(InvalidRequest, match="not a channel name"):
            a.send("no spaces allowed", "hi")
        with pytest.raises(InvalidRequest, match="64-hex-digit"):
            a.send_dm("zz", "hi")
        with pytest.raises(InvalidRequest, match="through"):
            a.ack(through=-1)
        after = a.send("lobby", "after the errors")
        # nothing lost: both acknowledged posts reach b, in order, nothing else new
        want = {before.id, after.id}
        got: list[Message] = []
        deadline = time.monotonic() + 20
        while {m.id for m in got} != want:
            got += b.messages(unread=True, channel="lobby", wait=2)
            assert time.monotonic() < deadline, got
        assert [m.id for m in got] == [before.id, after.id]
        assert a.status().peer_id == pair.a.peer_id  # still running


def test_an_unknown_field_is_refused_once_the_api_checks_fields(pair: Pair) -> None:
    with Client(key_dir=pair.keys(pair.a)) as a:
        call = Call("POST", "/send", body={"channel": "lobby", "body": "x", "ttl": 60})
        try:
            a._do(call)
        except InvalidRequest as exc:
            assert "ttl" in exc.message
        else:
            pytest.skip("this peer still ignores unknown fields (the API change is on s1)")


def test_no_peer_is_peer_unreachable() -> None:
    with (
        Client(f"127.0.0.1:{free_port()}", token="whatever-token-123") as mesh,
        pytest.raises(PeerUnreachable) as gone,
    ):
        mesh.status()
    assert "is it running?" in str(gone.value)


async def test_the_async_client_does_the_same(pair: Pair) -> None:
    async with (
        AsyncClient(key_dir=pair.keys(pair.a)) as a,
        AsyncClient(key_dir=pair.keys(pair.b)) as b,
    ):
        assert (await a.status()).peer_id == pair.a.peer_id
        assert "ops" in await a.join("ops")
        assert "ops" in await b.join("ops")
        with trio.fail_after(30):
            while True:  # until b's subscription has reached a
                sent = await a.send("ops", "async hello")
                got = await b.messages(unread=True, channel="ops", wait=2)
                if any(m.id == sent.id for m in got):
                    break
        with pytest.raises(UnknownPeer):
            await a.send_dm("cd" * 32, "nobody")
        assert [p.peer_id for p in await b.peers()] == [pair.a.peer_id]
        assert "ops" not in await a.leave("ops")
        await b.leave("ops")


def _events_served(api: str, token: str) -> bool:
    with httpx.stream(
        "GET", api + "/events", headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as response:
        return response.status_code != 404


def test_stream_gets_every_message_once_across_a_kill_9(tmp_path: Path) -> None:
    """Stream from cursor 0 while the peer is killed with -9 and restarted in the middle."""
    a = start_peer(tmp_path, "a", "--no-dht", "--channel", "lobby")
    wait_ready(a)
    try:
        if not _events_served(a.api, a.token):
            pytest.skip("GET /events is not on this branch yet (s1 builds it)")
        got: list[int] = []
        failures: list[BaseException] = []

        def follow() -> None:
            try:
                with Client(key_dir=a.home / "keys") as mesh:
                    for event in mesh.stream(after=0, give_up_after=30):
                        if isinstance(event, Message):
                            got.append(int(event.body))
                            if len(got) == 40:
                                return
            except BaseException as exc:  # surfaced by the assertion below
                failures.append(exc)

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        for i in range(20):
            assert a.post("/send", {"channel": "lobby", "body": str(i)}).status_code == 200
        kill_hard(a)
        ports = (a.mesh_port, a.api_port)
        a = start_peer(tmp_path, "a", "--no-dht", "--channel", "lobby", ports=ports)
        wait_ready(a)
        for i in range(20, 40):
            assert a.post("/send", {"channel": "lobby", "body": str(i)}).status_code == 200
        reader.join(timeout=60)
        assert not failures, failures
        assert got == list(range(40))
    finally:
        stop(a)
