"""kproxy with /proc/sys read-only, as an unprivileged container (the DaemonSet) and
systemd's ProtectKernelTunables=yes give it: in iptables mode, localhost NodePorts need
net.ipv4.conf.all.route_localnet=1. Without it and unable to set it, the agent warns once,
programs everything else and leaves localhost NodePorts off; once `kproxy sysctls` (the
init container, ExecStartPre=+) has set it, the read-only agent serves them too."""

from __future__ import annotations

import subprocess

import pytest
import traffic
from kproxy_lab import NODE_FLAGS, Kproxy
from topology import NODE1_IP, Cluster

from manifests import endpoint, endpoint_slice, port, service, slice_port

pytestmark = [pytest.mark.netns, pytest.mark.parametrize("kproxy", ["iptables"], indirect=True)]


def web(cluster: Cluster) -> list[dict]:
    return [service("web", "10.96.0.10", [port(80, 8080, node_port=30080)], type="NodePort"),
            endpoint_slice("web", [endpoint(cluster.pods["pod2"])], [slice_port(8080)])]


def sync_read_only(kproxy: Kproxy, *extra: str) -> subprocess.CompletedProcess[str]:
    """`kproxy sync` in node1 with /proc/sys bind-mounted read-only in a mount namespace of
    its own (the host's mounts are untouched)."""
    inner = " ".join(["mount --bind -o ro /proc/sys /proc/sys &&", "exec ip netns exec", kproxy.cluster.node1,
                      kproxy.binary, "sync", "--manifests", str(kproxy.manifests), *NODE_FLAGS, *extra])
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", inner],
                          capture_output=True, text=True, timeout=60)


def route_localnet(kproxy: Kproxy) -> str:
    return kproxy.cluster.run("node1", "sysctl", "-n", "net.ipv4.conf.all.route_localnet").stdout.strip()


def test_read_only_proc_sys_is_a_warning_and_kproxy_sysctls_fixes_it(cluster: Cluster, kproxy: Kproxy) -> None:
    kproxy.write(web(cluster))
    out = sync_read_only(kproxy, "--conntrack-tcp-be-liberal")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    warnings = [line for line in out.stderr.splitlines() if "[warning" in line]
    assert len(warnings) == 2, out.stderr
    assert any("cannot set net.ipv4.conf.all.route_localnet=1 (Read-only file system): NodePorts on 127.0.0.1 "
               "are off" in w for w in warnings), out.stderr
    assert any("nf_conntrack_tcp_be_liberal=1 (Read-only file system)" in w for w in warnings), out.stderr
    assert route_localnet(kproxy) == "0"
    assert set(traffic.tcp(cluster.client, NODE1_IP, 30080, count=3).pods) == {"pod2"}  # NodePorts work
    assert traffic.tcp(cluster.node1, "127.0.0.1", 30080, count=1, timeout=0.5).failures  # not on localhost

    # the init container's step, then the same read-only agent
    kproxy.cli("sysctls", *NODE_FLAGS)
    assert route_localnet(kproxy) == "1"
    out = sync_read_only(kproxy)
    assert out.returncode == 0 and "[warning" not in out.stderr, out.stderr
    r = traffic.tcp(cluster.node1, "127.0.0.1", 30080, count=3)
    assert set(r.pods) == {"pod2"} and not r.failures, r
