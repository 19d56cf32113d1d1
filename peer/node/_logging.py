"""Logging set-up: structlog, key=value on a terminal, JSON when asked.

Every logger the peer makes is bound to its peer id (see ``Peer.log``), so
each line says which peer wrote it. Logs never go to standard output unless
a program asks (an agent may speak a protocol over stdio): the CLI calls
``configure_logging`` (standard error); a program that configured structlog
itself gets its configuration; otherwise ``peer_logger`` writes warnings and
errors to standard error.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def peer_logger(peer_hex: str) -> Any:
    """The logger a peer uses, bound to its id (see the module docstring)."""
    if structlog.is_configured():
        logger = structlog.get_logger("clawmesh")
    else:
        logger = structlog.wrap_logger(
            structlog.PrintLogger(file=sys.stderr),
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.format_exc_info,
                structlog.dev.ConsoleRenderer(colors=False),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        )
    return logger.bind(peer=peer_hex[:16])


def configure_logging(*, json: bool = False, level: str = "info") -> None:
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer: structlog.typing.Processor
    if json:
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # hypercorn and httpx log through the standard library
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr)
