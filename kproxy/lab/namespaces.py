"""Network namespaces, links and processes of a lab, through `ip` and `ip netns exec`.

Nothing here touches the host's own namespace: veth pairs are created inside one lab
namespace with their peer placed straight into another, sysctls are set with
`ip netns exec`, and every process runs inside a lab namespace, so `ip netns pids` finds
them all when the lab comes down.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

NETNS_ETC = Path("/etc/netns")  # `ip netns exec` bind-mounts /etc/netns/<ns>/* over /etc/*


class CommandFailed(RuntimeError):
    pass


def sh(*args: str, check: bool = True, timeout: float = 30,
       input: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise CommandFailed(f"{' '.join(args)}: {proc.stderr.strip() or f'exit {proc.returncode}'}")
    return proc


def in_ns(ns: str, *args: str, check: bool = True, timeout: float = 30,
          input: str | None = None) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *args, check=check, timeout=timeout, input=input)


def ip(ns: str, *args: str) -> None:
    sh("ip", "-n", ns, *args)


def existing() -> list[str]:
    return [line.split()[0] for line in sh("ip", "netns", "list").stdout.splitlines() if line.strip()]


def add(ns: str) -> None:
    sh("ip", "netns", "add", ns)
    ip(ns, "link", "set", "lo", "up")


def sysctls(ns: str, settings: dict[str, str]) -> None:
    in_ns(ns, "sysctl", "-q", "-w", *(f"{k}={v}" for k, v in settings.items()))


def veth(ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
    """A veth pair created in ns_a with its peer moved straight into ns_b."""
    sh("ip", "-n", ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b)
    ip(ns_a, "link", "set", name_a, "up")
    ip(ns_b, "link", "set", name_b, "up")


def bridge(ns: str, name: str, address: str | None = None) -> None:
    ip(ns, "link", "add", name, "type", "bridge")
    if address:
        ip(ns, "addr", "add", address, "dev", name)
    ip(ns, "link", "set", name, "up")


def write_etc(ns: str, name: str, text: str) -> None:
    """A file `ip netns exec` shows as /etc/<name> inside namespace ns (resolv.conf, hosts)."""
    folder = NETNS_ETC / ns
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)


def spawn(ns: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Start a long-running process inside ns, detached from us (it outlives the command
    that started it); returns its pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, **(env or {})})
    return proc.pid


def pids(ns: str) -> list[int]:
    out = sh("ip", "netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def kill_all(namespaces: Sequence[str], grace: float = 3.0) -> None:
    """Every process in these namespaces: TERM, then KILL what is left after `grace`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        targets = [p for ns in namespaces for p in pids(ns)]
        for pid in targets:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while targets and time.monotonic() < deadline:
            targets = [p for p in targets if _alive(p)]
            time.sleep(0.05)
        if not targets:
            return


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is a child of ours
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # a zombie is as good as gone


def delete(ns: str) -> None:
    sh("ip", "netns", "delete", ns, check=False)
    folder = NETNS_ETC / ns
    if folder.is_dir():
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()


def listening(ns: str) -> set[tuple[str, int]]:
    """(protocol, port) of every socket listening inside ns."""
    out = in_ns(ns, "ss", "-Hlntu", check=False).stdout
    found = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 5:
            port = fields[4].rsplit(":", 1)[-1]
            if port.isdigit():
                found.add((fields[0].upper(), int(port)))
    return found
