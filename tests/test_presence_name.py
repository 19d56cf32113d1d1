"""A peer's display name travels in its signed presence; the webhook secret file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import trio

from peer import Identity, Peer, PeerOptions, memory_link_pair
from peer.api._webhooks import load_or_create_secret, shown_url, sign, verify
from peer.protocols._presence import parse_presence, presence_name, presence_payload


def test_the_name_is_optional_and_bounded() -> None:
    assert "name" not in presence_payload(["ws://a/"], ("relay",))
    payload = presence_payload(["ws://a/"], ("relay",), "alice")
    assert presence_name(payload) == "alice"
    assert parse_presence(payload) == (("ws://a/",), ("relay",))  # older readers unaffected
    for bad in ("", "x" * 65, "tab\there", 7, None):
        assert presence_name({"name": bad}) is None
    assert presence_name(["not", "a", "map"]) is None


async def test_peers_learn_each_others_names(nursery: trio.Nursery) -> None:
    a = Peer(Identity.generate(), PeerOptions(seed=1, name="alice", presence_interval=0.2))
    b = Peer(Identity.generate(), PeerOptions(seed=2, name="bob", presence_interval=0.2))
    await nursery.start(a.run)
    await nursery.start(b.run)
    ta, tb = memory_link_pair()
    a.start_link(ta, initiator=True)
    b.start_link(tb, initiator=False)
    with trio.fail_after(10):
        while (info := a.directory.get(b.peer_id)) is None or info.name != "bob":
            await a.wait_changed()
        while (info := b.directory.get(a.peer_id)) is None or info.name != "alice":
            await b.wait_changed()


def test_webhook_secret_is_created_private_and_kept(tmp_path: Path) -> None:
    secret = load_or_create_secret(tmp_path)
    mode = stat.S_IMODE(os.stat(tmp_path / "webhook-secret").st_mode)
    assert mode == 0o600 and len(secret) >= 32
    assert load_or_create_secret(tmp_path) == secret
    body = b'{"event":"message"}'
    assert verify(secret, body, sign(secret, body))
    assert not verify(secret, body + b" ", sign(secret, body))


def test_status_shows_webhook_urls_without_their_secrets() -> None:
    url = "https://user:pw@hooks.example:8443/in?token=s3cret#x"
    assert shown_url(url) == "https://hooks.example:8443/in"
