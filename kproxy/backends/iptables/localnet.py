"""net.ipv4.conf.all.route_localnet, which NodePorts on 127.0.0.1 need: set by kproxy in its
own network namespace (as upstream sets it), and set back by `kproxy cleanup` only when
kproxy was the one that changed it.

The value found before kproxy changed it is recorded, before the change, in a small file
under KPROXY_STATE_DIR (default /run/kproxy, so a reboot forgets it with the setting itself),
named after the network namespace, so agents in different namespaces of one machine keep
apart. With no record (kproxy never changed it, or the record is gone), cleanup leaves the
setting alone: it may be someone else's.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

ROUTE_LOCALNET = Path("/proc/sys/net/ipv4/conf/all/route_localnet")
STATE_DIR = Path(os.environ.get("KPROXY_STATE_DIR", "/run/kproxy"))
SO_NETNS_COOKIE = 71  # Linux 5.14+: a 64-bit id of the socket's network namespace, never reused before reboot


def netns_id() -> str:
    """This process's network namespace: its cookie, else (older kernels) its inode."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            return f"cookie-{int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), 'little')}"
    except OSError:
        return f"inode-{os.stat('/proc/self/ns/net').st_ino}"


def _record(state_dir: Path) -> Path:
    return state_dir / f"route_localnet.{netns_id()}"


def enable_route_localnet(sysctl: Path = ROUTE_LOCALNET, state_dir: Path = STATE_DIR) -> None:
    """Set it to 1, recording the value it had first (an existing record is kept: it holds
    the value from before kproxy's first change). OSError when it cannot be set (a
    read-only /proc/sys: an unprivileged container, systemd's ProtectKernelTunables)."""
    before = sysctl.read_text().strip()
    if before == "1":
        return
    record = _record(state_dir)
    try:
        if not record.exists():
            state_dir.mkdir(parents=True, exist_ok=True)
            record.write_text(f"{before}\n")
    except OSError as err:  # a read-only root: no record, so cleanup will leave the value alone
        log.debug("cannot record route_localnet's value", record=str(record), error=err.strerror)
    sysctl.write_text("1\n")
    log.info("set net.ipv4.conf.all.route_localnet=1 for localhost NodePorts", was=before, record=str(record))


def route_localnet_or_warn(sysctl: Path = ROUTE_LOCALNET, state_dir: Path = STATE_DIR) -> bool:
    """enable_route_localnet; False, with one warning, when it cannot be set: the caller
    then programs no localhost NodePorts (they would not answer)."""
    try:
        enable_route_localnet(sysctl, state_dir)
    except OSError as err:
        log.warning(f"cannot set net.ipv4.conf.all.route_localnet=1 ({err.strerror or err}): NodePorts on "
                    "127.0.0.1 are off; set it before the agent starts (`kproxy sysctls`, as the DaemonSet's "
                    "init container and the systemd unit's ExecStartPre do)")
        return False
    return True


def restore_route_localnet(sysctl: Path = ROUTE_LOCALNET, state_dir: Path = STATE_DIR) -> str | None:
    """Set back the value recorded before kproxy changed it; the value restored, or None
    when there is nothing of kproxy's to undo."""
    record = _record(state_dir)
    try:
        before = record.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        if sysctl.read_text().strip() == "1" and before != "1":  # still kproxy's value
            sysctl.write_text(f"{before}\n")
            log.info(f"set net.ipv4.conf.all.route_localnet back to {before}, as before kproxy changed it")
    except OSError as err:
        log.warning(f"cannot set net.ipv4.conf.all.route_localnet back to {before} ({err.strerror or err}); "
                    "left at 1")
        return None
    record.unlink()
    return before
