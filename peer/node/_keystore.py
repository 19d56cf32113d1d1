"""The key directory: the peer's Ed25519 seed and the local API token.

Both files are created on first run with mode 0600 (written to a temporary
name, then renamed, so a crash never leaves half a key) and reused after.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from peer.wire._identity import Identity
from store import private_dir

KEY_FILE = "ed25519.seed"
TOKEN_FILE = "api-token"


class KeyStoreError(Exception):
    """The key directory holds something that is not a usable key."""


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _ensure_dir(key_dir: Path) -> None:
    private_dir(key_dir)


def load_or_create_identity(key_dir: Path) -> tuple[Identity, bool]:
    """Load the identity in ``key_dir``, creating it if absent.

    Returns the identity and whether it was created now.
    """
    _ensure_dir(key_dir)
    path = key_dir / KEY_FILE
    if path.exists():
        text = path.read_text().strip()
        try:
            seed = bytes.fromhex(text)
        except ValueError:
            raise KeyStoreError(f"{path} does not hold a hex Ed25519 seed") from None
        if len(seed) != 32:
            raise KeyStoreError(f"{path} does not hold a 32-byte Ed25519 seed")
        return Identity.from_seed(seed), False
    identity = Identity.generate()
    _write_private(path, identity.seed.hex().encode() + b"\n")
    return identity, True


def load_or_create_token(key_dir: Path) -> str:
    """The bearer token for the local API, created on first use."""
    _ensure_dir(key_dir)
    path = key_dir / TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        if len(token) >= 16:
            return token
    token = secrets.token_urlsafe(32)
    _write_private(path, token.encode() + b"\n")
    return token
