"""Bootstrap specs: peer addresses, bootstrap.json lists, files, and the key directory."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from peer import Identity
from peer.node._bootstrap import (
    BootstrapError,
    BootstrapPeer,
    bootstrap_entry,
    classify,
    fetch_bootstrap,
    parse_peer_address,
    parse_peer_list,
)
from peer.node._keystore import KEY_FILE, TOKEN_FILE, load_or_create_identity, load_or_create_token

PID = "ab" * 32


def test_peer_addresses() -> None:
    assert parse_peer_address("ws://h:1") == BootstrapPeer("ws://h:1/")
    assert parse_peer_address("h:7433") == BootstrapPeer("ws://h:7433/")
    pinned = parse_peer_address(f"wss://h:9/mesh#{PID}")
    assert pinned == BootstrapPeer("wss://h:9/mesh", bytes.fromhex(PID))
    assert str(pinned) == f"wss://h:9/mesh#{PID}"
    for bad in ("http://h:1", "h", "ws://:1", "ws://h:x", "ws://h:1#nothex", "h:port"):
        with pytest.raises(BootstrapError):
            parse_peer_address(bad)


def test_bootstrap_json_shapes() -> None:
    doc = {
        "version": 1,
        "peers": [
            {"peer_id": PID, "ws_url": "ws://a:1"},
            {"peer_id": "other-format-id", "ws_url": "ws://b:2"},
            {"no_url": True},
            "c:3",
            7,
        ],
    }
    assert parse_peer_list(doc) == [
        BootstrapPeer("ws://a:1/", bytes.fromhex(PID)),
        BootstrapPeer("ws://b:2/"),
        BootstrapPeer("ws://c:3/"),
    ]
    with pytest.raises(BootstrapError):
        parse_peer_list({"version": 1})


def test_classify() -> None:
    assert classify("ws://h:1") == "peer"
    assert classify("https://example.invalid/bootstrap.json") == "url"
    assert classify("peers.json") == "file"
    assert classify("h:1") == "peer"


async def test_file_spec(tmp_path: Path) -> None:
    identity = Identity.generate()
    entry = bootstrap_entry(identity, ["ws://127.0.0.1:9/"], ("relay",))
    listing = tmp_path / "bootstrap.json"
    listing.write_text(json.dumps({"version": 1, "peers": [entry]}))
    assert await fetch_bootstrap(str(listing)) == [
        BootstrapPeer("ws://127.0.0.1:9/", identity.peer_id)
    ]
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(BootstrapError):
        await fetch_bootstrap(str(tmp_path / "bad.json"))
    with pytest.raises(BootstrapError):
        await fetch_bootstrap(str(tmp_path / "missing.json"))


def test_key_directory_is_private_and_stable(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    first, created = load_or_create_identity(keys)
    assert created
    again, created_again = load_or_create_identity(keys)
    assert not created_again
    assert again.peer_id == first.peer_id
    token = load_or_create_token(keys)
    assert load_or_create_token(keys) == token
    for name in (KEY_FILE, TOKEN_FILE):
        assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600
    (keys / KEY_FILE).write_text("not hex")
    with pytest.raises(Exception, match="hex"):
        load_or_create_identity(keys)
