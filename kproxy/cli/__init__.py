"""`kproxy`: parse the command line (and the --config file under it), set up logging
once, run one subcommand and map its outcome to an exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO, cast

import structlog

from kproxy.cli.cleanup import cleanup
from kproxy.cli.config import print_config
from kproxy.cli.config_file import ConfigError, apply_config_file
from kproxy.cli.dump import dump
from kproxy.cli.errors import EXIT_USAGE, UsageError
from kproxy.cli.logs import configure_logging
from kproxy.cli.node_sysctls import set_sysctls
from kproxy.cli.output import ClosedPipeGuard
from kproxy.cli.parser import build_parser, parse_command_line
from kproxy.cli.run import run, sync
from kproxy.cli.top import top
from kproxy.cli.trace import trace
from kproxy.lab.command import lab_command

log = structlog.get_logger("kproxy")

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": run, "sync": sync, "dump": dump, "cleanup": cleanup, "config": print_config, "trace": trace,
    "lab": lab_command, "sysctls": set_sysctls, "top": top,
}


def main(argv: Sequence[str] | None = None) -> int:
    with _quiet_when_the_reader_goes_away():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    args = parse_command_line(argv)
    configure_logging(getattr(args, "log_format", "text"), getattr(args, "verbose", False))
    try:
        if getattr(args, "config", None):
            args, cfg = apply_config_file(args, sys.argv[1:] if argv is None else list(argv), build_parser)
            configure_logging(getattr(args, "log_format", "text"), getattr(args, "verbose", False))
            for field in cfg.unknown:
                # upstream's loader decodes such a file leniently too, with a warning
                log.warning("unknown config field; ignored", file=args.config, field=field)
            for field in cfg.ignored_fields():
                log.warning("config field not implemented by kproxy; ignored", file=args.config, field=field)
        return COMMANDS[args.command](args)
    except (UsageError, ConfigError) as err:
        sys.stderr.write(f"kproxy: error: {err}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


@contextmanager
def _quiet_when_the_reader_goes_away() -> Iterator[None]:
    """Every command's stdout and stderr, guarded once here (see ClosedPipeGuard)."""
    saved = sys.stdout, sys.stderr
    sys.stdout = cast(TextIO, ClosedPipeGuard(sys.stdout))
    sys.stderr = cast(TextIO, ClosedPipeGuard(sys.stderr))
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
