"""kproxy driven inside node1 of the namespace lab (see topology.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from topology import CLUSTER_CIDR, NODE1_IP, SERVICE_CIDR, TIME_SCALE, Cluster

from manifests import write_manifests

HERE = Path(__file__).resolve().parent


def kproxy_binary() -> str:
    beside = Path(sys.executable).parent / "kproxy"
    if beside.exists():
        return str(beside)
    return str(HERE.parent.parent / ".venv" / "bin" / "kproxy")


BASE_NODE_FLAGS = (
    "--hostname-override", "node1",
    "--node-ip", NODE1_IP,
    "--cluster-cidr", CLUSTER_CIDR,
    "--service-cluster-ip-range", SERVICE_CIDR,
)
# The flags of the backend under test follow the node flags; Kproxy(mode=...) sets them
# in place, so tests that build their own command line from NODE_FLAGS get them too.
NODE_FLAGS: list[str] = list(BASE_NODE_FLAGS)


def kernel_has_ipvs() -> bool:
    """IPVS mode is tested where the kernel has it (the VM kernels; not this host's 6.18)."""
    if Path("/sys/module/ip_vs").exists():
        return True
    return subprocess.run(["modprobe", "-n", "-q", "ip_vs"], capture_output=True, check=False).returncode == 0


IPVS_KERNEL = kernel_has_ipvs()
PROXY_MODES = ("nftables", "iptables", "ipvs") if IPVS_KERNEL else ("nftables", "iptables")


class Kproxy:
    """kproxy in node1: one-shot syncs, a background agent, dump, cleanup."""

    def __init__(self, cluster: Cluster, workdir: Path, mode: str = "nftables") -> None:
        self.mode = mode
        NODE_FLAGS[:] = [*BASE_NODE_FLAGS, "--proxy-mode", mode]
        self.cluster = cluster
        self.workdir = workdir
        self.manifests = workdir / "manifests.yaml"
        self.binary = kproxy_binary()
        self.agents: list[tuple[subprocess.Popen, Path]] = []

    def write(self, objects: Iterable[dict]) -> Path:
        write_manifests(self.manifests, objects)
        return self.manifests

    def cli(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["ip", "netns", "exec", self.cluster.node1, self.binary, *args],
            capture_output=True, text=True, timeout=timeout * TIME_SCALE,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kproxy {' '.join(args)} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc

    def sync(self, objects: Iterable[dict], *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        self.write(objects)
        return self.cli("sync", "--once", "--manifests", str(self.manifests), *NODE_FLAGS, *extra, check=check)

    def start(self, objects: Iterable[dict] | None = None, *extra: str) -> subprocess.Popen:
        if objects is not None:
            self.write(objects)
        log = self.workdir / f"agent-{len(self.agents)}.log"
        proc = self.cluster.spawn(
            "node1", self.binary, "run", "--manifests", str(self.manifests), *NODE_FLAGS,
            "--min-sync-period", "0.2s", *extra, log=log,
        )
        self.agents.append((proc, log))
        return proc

    def wait_synced(self, proc: subprocess.Popen, count: int = 1, seconds: float = 15) -> None:
        """Wait (bounded) until the agent's log shows `count` sync lines."""
        log = next(log for p, log in self.agents if p is proc)
        deadline = time.monotonic() + seconds * TIME_SCALE
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"agent exited {proc.returncode}:\n{log.read_text()}")
            if log.read_text(errors="replace").count("synced") >= count:
                return
            time.sleep(0.05)
        raise AssertionError(f"agent did not sync within {seconds}s:\n{log.read_text()}")

    def stop(self, proc: subprocess.Popen) -> int:
        self.cluster.stop(proc)
        return proc.returncode

    def ruleset(self) -> str:
        return self.cluster.run("node1", "nft", "list", "ruleset", check=False).stdout

    def tables(self) -> str:
        """nft's table list; in iptables mode, plus a line "iptables: kproxy chains" while
        kproxy's chains are in node1's nat table (either variant)."""
        out = self.cluster.run("node1", "nft", "list", "tables", check=False).stdout
        if self.mode == "iptables" and "KUBE-SERVICES" in self.iptables_save():
            out += "iptables: kproxy chains\n"
        return out

    def iptables_save(self, variant: str | None = None) -> str:
        variants = (variant,) if variant else ("nft", "legacy")
        return "".join(self.cluster.run("node1", f"iptables-{v}-save", check=False).stdout for v in variants)

    def reset(self) -> None:
        for proc, _log in self.agents:
            self.cluster.stop(proc)
        # Our own namespace: leave nothing for the next test. Plain commands, not `kproxy
        # cleanup`: they remove every mode's state too, and a Python start costs seconds in
        # an emulated VM kernel, twice per test (cleanup itself has its own tests).
        self.cluster.run("node1", "nft", "flush", "ruleset", check=False)  # iptables-nft's too
        for cmd in ("iptables", "ip6tables"):
            if "*" in self.cluster.run("node1", f"{cmd}-legacy-save", check=False).stdout:
                for table in ("nat", "filter", "mangle"):
                    self.cluster.run("node1", f"{cmd}-legacy", "-t", table, "-F", check=False)
                    self.cluster.run("node1", f"{cmd}-legacy", "-t", table, "-X", check=False)
        self.cluster.run("node1", "sysctl", "-q", "-w", "net.ipv4.conf.all.route_localnet=0", check=False)
        self.cluster.run("node1", "conntrack", "-F", check=False)
        if IPVS_KERNEL:
            self.cluster.run("node1", "ipvsadm", "-C", check=False)
            self.cluster.run("node1", "ip", "link", "del", "kube-ipvs0", check=False)

    @classmethod
    @contextmanager
    def in_node1(cls, cluster: Cluster, workdir: Path, mode: str) -> Iterator[Kproxy]:
        """A clean node1 for one test; what the test left is shown on failure, then removed."""
        k = cls(cluster, workdir, mode=mode)
        k.reset()
        try:
            yield k
        finally:
            k.report()  # pytest shows it only when the test failed
            k.reset()

    def report(self) -> None:
        for proc, log in self.agents:
            print(f"---- agent pid {proc.pid} exit {proc.returncode} log {log}")
            print(log.read_text(errors="replace") if log.exists() else "(no log)")
        print("---- nft list ruleset (node1)")
        print(self.ruleset())
        if self.mode == "iptables":
            print("---- iptables-save (node1, nft and legacy)")
            print(self.iptables_save())
            print("---- ip6tables-save (node1, nft and legacy)")
            print("".join(self.cluster.run("node1", f"ip6tables-{v}-save", check=False).stdout
                          for v in ("nft", "legacy")))
        if self.mode == "ipvs":
            print("---- ipvsadm -Ln (node1)")
            print(self.cluster.run("node1", "ipvsadm", "-Ln", check=False).stdout)
        if self.manifests.exists():
            print("---- manifests")
            print(self.manifests.read_text())
