"""Entry point: ``python -m peer`` (see ``peer.cli._cli`` for the flags)."""

from .cli._cli import main

if __name__ == "__main__":
    main()
