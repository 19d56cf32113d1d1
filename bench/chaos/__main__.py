"""``python -m bench.chaos``: the fault harness (see bench/README.md)."""

from ._cli import main

raise SystemExit(main())
