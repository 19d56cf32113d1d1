"""``python -m bench``: the benchmark harness (see bench/README.md)."""

from ._cli import main

raise SystemExit(main())
