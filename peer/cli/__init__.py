"""``python -m peer``: flags in, a running peer out; or a subcommand that uses one.

``main`` dispatches before importing anything heavy: a subcommand (``send``,
``read``, ``mcp``, ...) loads only the client side (click, httpx), and
running a peer loads the Trio shell.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

# agents working together (peer/cli/_coordcmds.py)
COORD_COMMANDS = frozenset(
    {"receipts", "request", "rally", "rallies", "rally-round", "converse", "say", "verdict",
     "conversations", "task", "retry-dead", "alert"}
)

# the subcommands beside running a peer (peer/cli/_commands.py and peer/mcp/)
COMMANDS = frozenset(
    {"send", "dm", "read", "tail", "peers", "status", "channels", "join", "leave", "ack", "mcp"}
    | COORD_COMMANDS
)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        from . import _coordcmds  # noqa: F401  (registers its subcommands)
        from ._commands import run_command_line

        run_command_line(args)
        return
    from ._cli import main as run_peer_main

    run_peer_main(args)
