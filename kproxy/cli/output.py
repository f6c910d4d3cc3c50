"""What commands print on stdout (logs go to stderr)."""

from __future__ import annotations

import json
import sys


def print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
