"""ocmesh's documented agent flow, unchanged, against ``--compat ocmesh`` peers.

The commands are the ones in ocmesh's SKILL.md (its port, 7432, is ours too;
here each peer gets a free one): real ``curl`` when it is installed, else
httpx sending the same requests. No token anywhere, as ocmesh agents do.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests._procs import PeerProcess, running, start_peer, wait_ready

CURL = shutil.which("curl")


def curl(*args: str) -> tuple[int, Any]:
    """``curl ARGS`` (or the same request with httpx): the status and JSON body."""
    if CURL is not None:
        out = subprocess.run(
            [CURL, "-s", "-w", "\n%{http_code}", *args],
            check=True,
            capture_output=True,
            timeout=30,
        ).stdout.decode()
        body, _, status = out.rpartition("\n")
        return int(status), json.loads(body)
    method, url, headers, data = "GET", "", {}, None
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "-X":
            method = rest.pop(0)
        elif arg == "-H":
            name, _, value = rest.pop(0).partition(": ")
            headers[name] = value
        elif arg == "-d":
            data = rest.pop(0).encode()
        else:
            url = arg
    r = httpx.request(method, url, headers=headers, content=data, timeout=30)
    return r.status_code, r.json()


def base(p: PeerProcess) -> str:
    return f"http://127.0.0.1:{p.api_port}"


def test_the_ocmesh_curl_flow_passes_unchanged(tmp_path: Path) -> None:
    alice = start_peer(tmp_path, "alice", "--compat", "ocmesh", "--name", "alice", "--no-dht")
    wait_ready(alice)
    bob = start_peer(tmp_path, "bob", "--compat", "ocmesh", "--name", "bob", "--no-dht",
                     bootstrap=alice.ws_url)
    with running(alice, bob):
        wait_ready(bob)
        # Check if daemon is running and how many peers are connected
        status, body = curl(f"{base(alice)}/status")
        assert status == 200 and body["peer_count"] >= 0
        assert isinstance(body["uptime_seconds"], int)
        assert isinstance(body["relay_status"], list) and body["pubkey"]
        # List online peers (bob's name comes in his signed presence)
        end = time.monotonic() + 30
        while True:
            status, peers = curl(f"{base(alice)}/peers?online=true")
            assert status == 200
            if peers and peers[0]["name"] == "bob":
                break
            assert time.monotonic() < end, peers
            time.sleep(0.2)
        (peer,) = peers
        assert peer["online"] is True and peer["last_seen"] and "features" in peer
        # Send a message to a peer, by the pubkey /peers lists
        payload = json.dumps({"to": peer["pubkey"], "content": "hello"})
        status, sent = curl(
            "-X", "POST", f"{base(alice)}/send",
            "-H", "Content-Type: application/json",
            "-d", payload,
        )
        assert status == 200, sent
        assert sent["id"] and sent["timestamp"] and sent["to"] == bob.peer_id
        # Read unread messages from other agents
        end = time.monotonic() + 30
        while True:
            status, messages = curl(f"{base(bob)}/messages?unread=true")
            assert status == 200
            if messages:
                break
            assert time.monotonic() < end
            time.sleep(0.2)
        (message,) = messages
        assert message["content"] == "hello" and message["read"] is False
        assert message["from"] == alice.peer_id and message["id"] == sent["id"]
        # ocmesh's limits and errors
        status, err = curl(
            "-X", "POST", f"{base(alice)}/send", "-H", "Content-Type: application/json",
            "-d", json.dumps({"to": peer["pubkey"], "content": "x" * 4097}),
        )
        assert (status, err["error"]["code"]) == (413, "too-large")
        status, err = curl(
            "-X", "POST", f"{base(alice)}/send", "-H", "Content-Type: application/json",
            "-d", json.dumps({"to": "ab" * 32, "content": "hello"}),
        )
        assert status == 400 and "peer unknown" in err["error"]["message"]
        # what the switch does not open: other endpoints, other Hosts
        status, err = curl(f"{base(alice)}/channels")
        assert (status, err["error"]["code"]) == (401, "unauthorised")
        status, err = curl("-H", "Host: evil.example", f"{base(alice)}/status")
        assert (status, err["error"]["code"]) == (403, "host")


def test_without_the_switch_the_token_is_wanted(tmp_path: Path) -> None:
    p = start_peer(tmp_path, "p", "--no-dht")
    with running(p):
        wait_ready(p)
        status, body = curl(f"{base(p)}/peers?online=true")
        assert (status, body["error"]["code"]) == (401, "unauthorised")
        status, body = curl(f"{base(p)}/status")
        assert status == 200 and body["compat"] is None
