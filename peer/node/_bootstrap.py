"""Bootstrap specs: where a peer finds its first neighbours.

A spec is one of:

* a peer address: ``ws://host:port`` or ``wss://...`` (optionally
  ``#<peer id>`` to pin who must answer), or a bare ``host:port``;
* an HTTP(S) URL of a JSON peer list in OpenClaw Messaging's bootstrap.json
  shape: ``{"version": 1, "peers": [{"peer_id": ..., "ws_url": ...}, ...]}``;
* a local file holding such a list.

Parsing is pure; only :func:`fetch_bootstrap` touches the network.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio

from peer.wire._identity import Identity, parse_peer_id

MAX_BOOTSTRAP_BYTES = 1024 * 1024
MAX_BOOTSTRAP_PEERS = 256


class BootstrapError(Exception):
    """A bootstrap spec or list that cannot be used."""


@dataclass(frozen=True)
class BootstrapPeer:
    url: str
    peer_id: bytes | None = None
    ocm: bool = False  # an OpenClaw Messaging peer (JSON frames), dialled by the OCM gateway

    def __str__(self) -> str:
        return self.url if self.peer_id is None else f"{self.url}#{self.peer_id.hex()}"


def parse_peer_address(text: str) -> BootstrapPeer:
    """A ``ws://`` URL (with an optional ``#peerid``) or ``host:port``."""
    text = text.strip()
    if "://" not in text:
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise BootstrapError(f"not a peer address: {text!r} (want ws://host:port or host:port)")
        text = f"ws://{text}"
    url, _, fragment = text.partition("#")
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise BootstrapError(f"not a WebSocket address: {text!r}")
    try:
        _ = parts.port
    except ValueError:
        raise BootstrapError(f"bad port in {text!r}") from None
    peer_id = None
    if fragment:
        try:
            peer_id = parse_peer_id(fragment)
        except ValueError:
            raise BootstrapError(f"#{fragment} is not a 64-hex-digit peer id") from None
    if not parts.path:
        url = url + "/"
    return BootstrapPeer(url, peer_id)


def parse_peer_list(data: Any) -> list[BootstrapPeer]:
    """Peers from a bootstrap.json document (or a bare list of entries/addresses)."""
    entries = data.get("peers") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise BootstrapError('a bootstrap list is {"version": 1, "peers": [...]}')
    peers: list[BootstrapPeer] = []
    for entry in entries[:MAX_BOOTSTRAP_PEERS]:
        if isinstance(entry, str):
            peers.append(parse_peer_address(entry))
            continue
        if not isinstance(entry, dict):
            continue
        url = entry.get("ws_url") or entry.get("url")
        if not isinstance(url, str):
            continue
        peer = parse_peer_address(url)
        if "capabilities" in entry and "protocol" not in entry and "caps" not in entry:
            peers.append(BootstrapPeer(peer.url, None, ocm=True))  # OCM's entry shape
            continue
        pid = entry.get("peer_id")
        if isinstance(pid, str) and peer.peer_id is None:
            with contextlib.suppress(ValueError):  # another mesh's id format: do not pin
                peer = BootstrapPeer(peer.url, parse_peer_id(pid))
        peers.append(peer)
    return peers


def classify(spec: str) -> str:
    """``"peer"``, ``"url"`` or ``"file"``."""
    spec = spec.strip()
    scheme = urlsplit(spec).scheme.lower()
    if scheme in ("ws", "wss"):
        return "peer"
    if scheme in ("http", "https"):
        return "url"
    if os.path.exists(spec) or spec.endswith(".json"):
        return "file"
    return "peer"


async def fetch_bootstrap(spec: str) -> list[BootstrapPeer]:
    """Resolve one spec to peer addresses (fetching or reading a list if needed)."""
    kind = classify(spec)
    if kind == "peer":
        return [parse_peer_address(spec)]
    if kind == "file":
        try:
            raw = (await trio.Path(spec).read_bytes())[:MAX_BOOTSTRAP_BYTES]
        except OSError as exc:
            raise BootstrapError(f"cannot read {spec}: {exc}") from None
        return _parse_json(raw, spec)
    try:
        async with (
            httpx.AsyncClient(timeout=10.0, follow_redirects=True) as client,
            client.stream("GET", spec) as response,
        ):
            response.raise_for_status()
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_BOOTSTRAP_BYTES:
                    raise BootstrapError(f"{spec} is over {MAX_BOOTSTRAP_BYTES} bytes")
    except httpx.HTTPError as exc:
        raise BootstrapError(f"cannot fetch {spec}: {exc}") from None
    return _parse_json(bytes(body), spec)


def _parse_json(raw: bytes, where: str) -> list[BootstrapPeer]:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise BootstrapError(f"{where} is not JSON: {exc}") from None
    return parse_peer_list(data)


def bootstrap_entry(
    identity: Identity, ws_urls: list[str], caps: tuple[str, ...]
) -> dict[str, Any]:
    """This peer's entry for a bootstrap.json list."""
    return {
        "peer_id": identity.peer_id_hex,
        "ws_url": ws_urls[0] if ws_urls else None,
        "ws_urls": ws_urls,
        "public_key": identity.public_key.hex(),
        "caps": list(caps),
        "protocol": 1,
    }
