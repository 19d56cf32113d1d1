"""How hard the property tests push: ``make fuzz`` sets CLAWMESH_FUZZ to scale them up."""

from __future__ import annotations

import os


def fuzz_scale(examples: int) -> int:
    """``examples`` for a normal run; that many times CLAWMESH_FUZZ under ``make fuzz``."""
    factor = int(os.environ.get("CLAWMESH_FUZZ", "1") or "1")
    return examples * max(1, factor)
