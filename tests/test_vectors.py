"""The protocol test vectors (protocol-spec/vectors/*.json) against the reference code.

This file: the spec text against the code, and the vector files against the
generator; the vectors themselves are checked by layer in
test_vectors_{handshake,envelope,catchup,rejected}.py.

Two kinds of check: the code, fed the vectors' seeds and injected randomness,
reproduces every byte; and the bytes follow from the spec's constructions
recomputed here with hashlib and libsodium directly (domain tags, length
prefixes, key derivation, nonces), so the prose in protocol-spec/ and the code
cannot drift apart silently. Every refused vector must raise ``ProtocolError``
with exactly the listed code (or close the link with it, for session frames).
Catch-up pages are rebuilt by ``build_page`` from the carrier log the vectors
list, read through a small in-memory source written here from catchup.md.
"""

from __future__ import annotations

import importlib.util
import re

from peer import (
    ErrorCode,
)
from peer.wire import _limits
from peer.wire._envelope import MAX_RECEIPT_IDS
from tests._vectors import SPEC, VECTORS

# -- the spec text and the files -------------------------------------------------------------


def test_readme_limits_match_the_code() -> None:
    text = (SPEC / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| ([0-9_]+) \|", text, flags=re.MULTILINE))
    names = [n for n in dir(_limits) if n.startswith("MAX_")]
    assert names and set(names) <= set(rows)
    for name in names:
        assert int(rows[name].replace("_", "")) == getattr(_limits, name), name
    assert int(rows["MAX_RECEIPT_IDS"]) == MAX_RECEIPT_IDS  # kept in peer/wire/_envelope.py
    params = _limits.GossipParams()
    grows = dict(re.findall(r"^\| `([a-z_]+)` \| (-?[0-9_.]+) \|", text, flags=re.MULTILINE))
    for name, value in vars(params).items():
        assert float(grows[name].replace("_", "")) == float(value), name


def test_readme_lists_every_error_code() -> None:
    text = (SPEC / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `([a-z-]+)` \|", text, flags=re.MULTILINE))
    assert {c.value for c in ErrorCode} <= listed


def test_vector_files_are_current() -> None:
    """generate.py, run now, writes exactly the committed files (and is deterministic)."""
    spec = importlib.util.spec_from_file_location("clawmesh_vector_generator",
                                                  VECTORS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    first: dict[str, str] = module.build()
    assert first == module.build()
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in VECTORS.glob("*.json")}
    assert first == on_disk
