"""The fault harness (issue 12, item 7): real peers, kill -9 churn, offline spells,
partitions and lossy links, then a Jepsen-style check of every acknowledged message.

Run it as ``python -m bench.chaos`` (or ``make chaos ARGS=...``); see bench/README.md.
"""

from ._cli import main

__all__ = ["main"]
