"""Entry point: ``python -m peer`` (``peer.cli._cli`` has the flags, ``peer.cli._commands``
the subcommands)."""

from .cli import main

if __name__ == "__main__":
    main()
