"""`kproxy`: parse the command line (and the --config file under it), set up logging
once, run one subcommand and map its outcome to an exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import structlog

from kproxy.cli.cleanup import cleanup
from kproxy.cli.config import print_config
from kproxy.cli.config_file import ConfigError, apply_config_file
from kproxy.cli.dump import dump
from kproxy.cli.errors import EXIT_USAGE, UsageError
from kproxy.cli.logs import configure_logging
from kproxy.cli.parser import build_parser
from kproxy.cli.run import run, sync
from kproxy.cli.trace import trace
from kproxy.lab.command import lab_command

log = structlog.get_logger("kproxy")

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": run, "sync": sync, "dump": dump, "cleanup": cleanup, "config": print_config, "trace": trace,
    "lab": lab_command,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "log_format", "text"), getattr(args, "verbose", False))
    try:
        if getattr(args, "config", None):
            args, ignored = apply_config_file(args, sys.argv[1:] if argv is None else list(argv), build_parser)
            configure_logging(getattr(args, "log_format", "text"), getattr(args, "verbose", False))
            for field in ignored:
                log.warning("config field not implemented by kproxy; ignored", file=args.config, field=field)
        return COMMANDS[args.command](args)
    except (UsageError, ConfigError) as err:
        sys.stderr.write(f"kproxy: error: {err}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
