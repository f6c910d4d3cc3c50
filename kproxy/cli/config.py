"""`kproxy config --print`: the effective configuration as a KubeProxyConfiguration."""

from __future__ import annotations

import argparse
import sys

from kproxy.cli.config_file import dump_config


def print_config(args: argparse.Namespace) -> int:
    sys.stdout.write(dump_config(args))
    return 0
