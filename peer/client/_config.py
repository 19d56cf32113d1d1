"""Where the local API is and which token it wants, found the way ``python -m peer`` left them.

The key directory is ``key_dir``, else ``$MESH_KEY_DIR``, else
``~/.clawmesh/keys``; the token is its ``api-token`` file (``$MESH_API_TOKEN``
overrides). The API address is ``api`` (``HOST:PORT`` or a URL), else
``$MESH_API_URL``, else the ``api-url`` file the running peer wrote into its
key directory (the most specific: the peer that owns these keys), else
``http://127.0.0.1:$MESH_API_PORT``, else ``http://127.0.0.1:7432``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_KEY_DIR = Path("~/.clawmesh/keys")
DEFAULT_API_URL = "http://127.0.0.1:7432"
TOKEN_FILE = "api-token"
URL_FILE = "api-url"


@dataclass(frozen=True)
class Endpoint:
    """A peer's API: its base ``url``, the ``token`` (None if none was found) and
    where each came from, for error messages."""

    url: str
    token: str | None
    key_dir: Path
    token_source: str


def api_url(text: str) -> str:
    """``HOST:PORT``, ``:PORT`` or an ``http(s)://`` URL, as a base URL without a trailing /."""
    text = text.strip()
    if "://" not in text:
        host, _, port = text.rpartition(":")
        text = f"http://{host or '127.0.0.1'}:{port}"
    return text.rstrip("/")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def discover(
    api: str | None = None, *, key_dir: str | Path | None = None, token: str | None = None
) -> Endpoint:
    """The API endpoint and token, from the arguments, the environment and the key directory."""
    keys = Path(key_dir or os.environ.get("MESH_KEY_DIR") or DEFAULT_KEY_DIR).expanduser()
    source = "given"
    if token is None:
        token = os.environ.get("MESH_API_TOKEN") or None
        source = "$MESH_API_TOKEN"
    if token is None:
        token = _read(keys / TOKEN_FILE)
        source = str(keys / TOKEN_FILE)
    url = api or os.environ.get("MESH_API_URL") or _read(keys / URL_FILE)
    if not url and os.environ.get("MESH_API_PORT", "").isdigit():
        url = f"127.0.0.1:{os.environ['MESH_API_PORT']}"
    url = url or DEFAULT_API_URL
    return Endpoint(api_url(url), token, keys, source)
