"""How a command ends: exit codes, and the one-line error a user gets for bad input."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2  # a bad flag, value or input file: one line naming it


class UsageError(Exception):
    """A bad flag value or an unreadable input: one line, exit 2."""
