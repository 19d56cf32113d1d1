"""Entry point: ``python -m peer`` (see ``peer._cli`` for the flags)."""

from ._cli import main

if __name__ == "__main__":
    main()
