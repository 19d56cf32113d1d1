"""``python -m peer``: flags in, a running peer out; or a subcommand that uses one.

``main`` dispatches before importing anything heavy: a subcommand (``send``,
``read``, ``mcp``, ...) loads only the client side (click, httpx), and
running a peer loads the Trio shell.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ._names import COMMANDS, COORD_COMMANDS

__all__ = ["COMMANDS", "COORD_COMMANDS", "main"]


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        from . import (
            _blobcmds,  # noqa: F401  (registers `blob` on the command group)
            _coordcmds,  # noqa: F401  (registers its subcommands)
        )
        from ._opscmds import run_command_line  # _commands, with the operator's commands

        run_command_line(args)
        return
    from ._cli import main as run_peer_main

    run_peer_main(args)
