#!/usr/bin/env python3
"""Generate the clawmesh protocol test vectors in this directory.

Run from the repository root:

    .venv/bin/python protocol-spec/vectors/generate.py          # (re)write the JSON files
    .venv/bin/python protocol-spec/vectors/generate.py --check  # exit 1 if a file is stale

Every value comes from fixed seeds and from an injected deterministic random
source (``Handshake(random=...)``, ``seal_dm(nonce=...)``); Ed25519 signatures
are deterministic, so two runs write identical files. The catch-up pages come
from ``build_page`` over a small in-memory carrier log (vectorgen/catchup.py).
This file is the driver; each vector file has its generator module in
``vectorgen/`` (``rejected.json`` four of them). The reference code in
``peer/`` produces the bytes; the generator asserts a few cross-checks on the
way (both handshake sides agree, every refused vector is refused), and
``tests/test_vectors.py`` checks the files against the code independently.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for _path in (str(ROOT), str(HERE)):  # the peer package, and the vectorgen package beside us
    if _path not in sys.path:
        sys.path.insert(0, _path)

from vectorgen.catchup import build_catchup  # noqa: E402
from vectorgen.cbor import build_cbor  # noqa: E402
from vectorgen.common import SPEC_REVISION, Json, identities  # noqa: E402
from vectorgen.envelope import build_dm, build_envelope  # noqa: E402
from vectorgen.handshake import HandshakeRun, build_handshake  # noqa: E402
from vectorgen.identity import build_identity  # noqa: E402
from vectorgen.meta import build_meta  # noqa: E402
from vectorgen.rejected import build_rejected  # noqa: E402

# -- driver -------------------------------------------------------------------------------


def dump(doc: Json) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=True) + "\n"


def build() -> dict[str, str]:
    """Every vector file's name and its exact text."""
    ids = identities()
    run = HandshakeRun(ids)
    envelope, msgs = build_envelope(ids)
    dm, dm_env = build_dm(ids, msgs["root"].id)
    docs: dict[str, Json] = {
        "identity.json": build_identity(),
        "handshake.json": build_handshake(ids, run),
        "envelope.json": envelope,
        "dm.json": dm,
        "catchup.json": build_catchup(ids, msgs, dm_env),
        "cbor.json": build_cbor(),
        "rejected.json": build_rejected(ids, run, msgs, dm_env),
        "meta.json": build_meta(ids),
    }
    for doc in docs.values():
        doc.setdefault("spec_revision", SPEC_REVISION)
    return {name: dump(doc) for name, doc in docs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--out", type=Path, default=HERE, help="directory to write to")
    args = parser.parse_args(argv)
    stale: list[str] = []
    for name, text in build().items():
        path: Path = args.out / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path} ({len(text)} bytes)")
    if stale:
        print("stale vector files: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
