"""`kproxy sysctls`: write the sysctls this configuration needs, then exit.

The agent itself needs no write access to /proc/sys: an unprivileged container has it
read-only (the DaemonSet's), and so does systemd's ProtectKernelTunables=yes. This command,
run with the same flags or --config before the agent (a privileged init container;
ExecStartPre=+ in the unit), sets net.ipv4.conf.all.route_localnet=1 for iptables mode's
localhost NodePorts and the conntrack sysctls the flags ask for. The agent then finds them
set and writes nothing; a value it would still need to write is a warning that turns the
dependent feature off, never a crash.
"""

from __future__ import annotations

import argparse
import sys

import structlog

from kproxy.backends.iptables.localnet import enable_route_localnet
from kproxy.cli.errors import EXIT_FAILED
from kproxy.cli.wiring import apply_conntrack_sysctls

log = structlog.get_logger("kproxy")


def set_sysctls(args: argparse.Namespace) -> int:
    failed = {f"net.netfilter.{name}": why for name, why in apply_conntrack_sysctls(args).items()}
    if args.proxy_mode == "iptables" and args.iptables_localhost_nodeports:
        try:
            enable_route_localnet()
        except OSError as err:
            failed["net.ipv4.conf.all.route_localnet"] = err.strerror or str(err)
    if failed:
        sys.stderr.write("kproxy: error: cannot set " + "; ".join(f"{k}: {v}" for k, v in failed.items()) + "\n")
        return EXIT_FAILED
    log.info("sysctls in place", proxy_mode=args.proxy_mode)
    return 0
