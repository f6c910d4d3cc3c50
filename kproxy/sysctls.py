"""Conntrack sysctls kube-proxy can set, applied only when asked for by a flag.

Upstream sets nf_conntrack_max to max(--conntrack-max-per-core * CPUs, --conntrack-min)
when --conntrack-max-per-core is above 0 (--conntrack-min alone sets nothing), and the
TCP/UDP timeouts and be_liberal when given. kproxy leaves every value alone unless
its flag is passed: a node's conntrack tuning is often someone else's decision. Values are
per network namespace except nf_conntrack_max, which only the host's namespace may write.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

PROC = Path("/proc/sys/net/netfilter")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConntrackSettings:
    max_per_core: int | None = None
    min: int | None = None
    tcp_timeout_established: float | None = None
    tcp_timeout_close_wait: float | None = None
    tcp_be_liberal: bool = False
    udp_timeout: float | None = None
    udp_timeout_stream: float | None = None


def desired_sysctls(settings: ConntrackSettings, cpus: int) -> dict[str, int]:
    """sysctl name (under net/netfilter) -> value. Pure."""
    wanted: dict[str, int] = {}
    if settings.max_per_core:  # upstream's getConntrackMax: min is only a floor for per-core
        wanted["nf_conntrack_max"] = max(settings.max_per_core * cpus, settings.min or 0)
    for name, seconds in (
        ("nf_conntrack_tcp_timeout_established", settings.tcp_timeout_established),
        ("nf_conntrack_tcp_timeout_close_wait", settings.tcp_timeout_close_wait),
        ("nf_conntrack_udp_timeout", settings.udp_timeout),
        ("nf_conntrack_udp_timeout_stream", settings.udp_timeout_stream),
    ):
        if seconds:
            wanted[name] = int(seconds)
    if settings.tcp_be_liberal:
        wanted["nf_conntrack_tcp_be_liberal"] = 1
    return wanted


def apply_sysctls(wanted: Mapping[str, int], root: Path = PROC) -> dict[str, str]:
    """Write each value that differs; returns the ones that failed, with why."""
    failed: dict[str, str] = {}
    for name, value in wanted.items():
        path = root / name
        try:
            if path.read_text().strip() == str(value):
                continue
            path.write_text(f"{value}\n")
            log.info("set sysctl", sysctl=f"net.netfilter.{name}", value=value)
        except OSError as err:
            failed[name] = err.strerror or str(err)
            log.warning(f"cannot set sysctl net.netfilter.{name}={value} ({failed[name]}); the kernel's value "
                        "stays. Set it before the agent starts (`kproxy sysctls`, as the DaemonSet's init "
                        "container and the systemd unit's ExecStartPre do)")
    return failed
