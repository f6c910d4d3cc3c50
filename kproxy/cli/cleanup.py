"""`kproxy cleanup`: remove everything kproxy programmed, in every mode."""

from __future__ import annotations

import argparse

import structlog

from kproxy.backends.registry import cleanup_all

log = structlog.get_logger("kproxy")


def cleanup(_args: argparse.Namespace) -> int:
    removed = cleanup_all()
    log.info("cleanup", removed_table=removed["nftables"], removed_iptables_rules=removed["iptables"])
    return 0
