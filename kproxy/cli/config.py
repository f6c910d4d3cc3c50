"""`kproxy config --print`: the effective configuration as a KubeProxyConfiguration."""

from __future__ import annotations

import argparse
import sys

from kproxy.cli.config_file import dump_config
from kproxy.cli.wiring import node_name


def print_config(args: argparse.Namespace) -> int:
    sys.stdout.write(dump_config(args, hostname=node_name(args)))  # the name in effect, $NODE_NAME included
    return 0
