"""Logging set up once, at the entry point: key=value for people, JSON for machines."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(fmt: str = "text", verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        # keys in the order the code logs them (README shows the `synced` line so)
        renderer = structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0, sort_keys=False)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # looked up per logger, so a replaced sys.stderr (tests, daemons) is honoured
        logger_factory=lambda *_args: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
