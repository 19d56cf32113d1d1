"""The subcommands of ``python -m peer``: ``main`` dispatches on them, ``--help`` lists them."""

from __future__ import annotations

# agents working together (peer/cli/_coordcmds.py)
COORD_COMMANDS = frozenset(
    {"receipts", "request", "rally", "rallies", "rally-round", "converse", "say", "verdict",
     "conversations", "task", "retry-dead", "alert"}
)

# the subcommands beside running a peer (peer/cli/_commands.py and peer/mcp/)
COMMANDS = frozenset(
    {"send", "dm", "read", "tail", "peers", "status", "channels", "join", "leave", "ack", "mcp",
     "agents", "card", "blob", "web", "schedule", "fleet"}
    | COORD_COMMANDS
)
