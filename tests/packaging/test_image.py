"""The agent image: built from the Dockerfile with podman (no Docker engine here) and run in
a throw-away network namespace, as docs/DESIGN.md §6 describes.

The Dockerfile's `FROM debian:bookworm-slim` is replaced by a local base made with
debootstrap (no registry is contacted). That base, localhost/debian:bookworm-min, is kept
between runs on purpose (~30 s to make); everything else the test creates is removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BASE = "localhost/debian:bookworm-min"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
"""

pytestmark = pytest.mark.image


def sh(*argv: str, env: dict[str, str] | None = None, timeout: float = 120,
       check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=input is None, env=env, timeout=timeout,
                            input=input)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def podman_env(tmp_path_factory) -> dict[str, str]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, rootful podman)")
    missing = [t for t in ("podman", "runc", "debootstrap") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run scripts/setup-env")
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def ensure_base(env: dict[str, str], tmp: Path) -> None:
    if sh("podman", "image", "exists", BASE, env=env, check=False).returncode == 0:
        return
    rootfs = tmp / "rootfs"
    sh("debootstrap", "--variant=minbase", "bookworm", str(rootfs), timeout=600)
    tar = subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."], capture_output=True,
                         check=True, timeout=300).stdout
    sh("podman", "import", "-", BASE, env=env, input=tar, timeout=300)
    shutil.rmtree(rootfs, ignore_errors=True)


@pytest.fixture(scope="module")
def image(podman_env, tmp_path_factory):
    tag = f"localhost/kproxy:test-{uuid.uuid4().hex[:8]}"
    ensure_base(podman_env, tmp_path_factory.mktemp("base"))
    # --network=host for the build only: the default bridge would change the host's NAT
    # tables and ip_forward. --layers=false leaves no cached intermediate images behind.
    build = ["podman", "build", "--pull=never", "--from", BASE, "--layers=false", "--network=host",
             "-t", tag, str(TOP)]
    if Path(CA_BUNDLE).exists():
        build[2:2] = ["-v", f"{CA_BUNDLE}:/etc/pip-ca.crt:ro", "--build-arg", "PIP_CERT=/etc/pip-ca.crt"]
    try:
        sh(*build, env=podman_env, timeout=900)
        yield tag
    finally:
        sh("podman", "rmi", "-f", tag, env=podman_env, check=False)


@pytest.fixture
def netns():
    name = f"kp-img-{uuid.uuid4().hex[:8]}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "-n", name, "addr", "add", "10.77.0.2/32", "dev", "lo")
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


def in_ns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *argv, check=check, timeout=30)


def run_args(ns: str) -> list[str]:
    return ["podman", "run", "--network", f"ns:/run/netns/{ns}", "--cap-drop", "ALL",
            "--cap-add", "NET_ADMIN,NET_RAW", "--read-only",
            "-v", f"{HERE / 'manifests'}:/manifests:ro"]


def test_image_programs_the_namespace_and_serves_health_and_metrics(podman_env, image, netns):
    host_tables = sh("nft", "list", "tables").stdout

    # one-shot sync, with the capabilities the DaemonSet grants and a read-only root
    sh(*run_args(netns), "--rm", image, "sync", "--once", "--manifests", "/manifests",
       "--node-ip", "10.77.0.2", env=podman_env)
    assert "table ip kproxy" in in_ns(netns, "nft", "list", "tables").stdout
    assert sh("nft", "list", "tables").stdout == host_tables  # the host is untouched

    # the agent: metrics and health answer inside the namespace; SIGTERM exits 0
    name = f"kproxy-{netns}"
    try:
        sh(*run_args(netns), "-d", "--name", name, image, "run", "--manifests", "/manifests",
           "--node-ip", "10.77.0.2", "--log-format", "json", env=podman_env)
        deadline = time.monotonic() + 30
        healthz = None
        while time.monotonic() < deadline:
            healthz = in_ns(netns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                            "http://127.0.0.1:10256/healthz", check=False)
            if healthz.stdout == "200":
                break
            time.sleep(0.5)
        assert healthz is not None and healthz.stdout == "200", healthz
        assert in_ns(netns, "curl", "-s", "http://127.0.0.1:10249/proxyMode").stdout == "nftables"
        # at least the first sync (a busy machine may see a second one before this reads);
        # /healthz answers 200 from the start, as upstream's does, so the sync may still run
        pattern = r'kubeproxy_sync_proxy_rules_duration_seconds_count\{ip_family="IPv4"\} ([0-9.]+)'
        while True:
            metrics = in_ns(netns, "curl", "-s", "http://127.0.0.1:10249/metrics").stdout
            count = re.search(pattern, metrics)
            if (count is not None and float(count.group(1)) >= 1.0) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert count is not None and float(count.group(1)) >= 1.0, metrics
        sh("podman", "stop", "-t", "20", name, env=podman_env)
        exit_code = sh("podman", "inspect", "-f", "{{.State.ExitCode}}", name, env=podman_env).stdout.strip()
        assert exit_code == "0"
        logs = sh("podman", "logs", name, env=podman_env).stderr.splitlines()
        events = [json.loads(line)["event"] for line in logs if line.startswith("{")]
        assert "synced" in events and events[-1].startswith("stopped")
    finally:
        sh("podman", "rm", "-f", name, env=podman_env, check=False)
    assert "table ip kproxy" in in_ns(netns, "nft", "list", "tables").stdout  # rules stay


# --- every mode, with exactly the DaemonSet's security context ---------------------------------

def daemonset_podman_flags(container: str) -> list[str]:
    """podman flags for one container of manifests/daemonset.yaml, from its securityContext
    (so the test follows the manifest): privileged, capabilities, read-only root, no new
    privileges. Without `privileged`, podman (like every runtime) mounts /proc/sys read-only."""
    import yaml

    pod = yaml.safe_load((TOP / "manifests" / "daemonset.yaml").read_text())["spec"]["template"]["spec"]
    (spec,) = [c for c in pod.get("initContainers", []) + pod["containers"] if c["name"] == container]
    sc = spec["securityContext"]
    flags = ["--privileged"] if sc.get("privileged") else []
    caps = sc.get("capabilities", {})
    if caps.get("drop"):
        flags += ["--cap-drop", ",".join(caps["drop"])]
    if caps.get("add"):
        flags += ["--cap-add", ",".join(caps["add"])]
    if sc.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    if sc.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    return flags


def pod_run(ns: str, container: str) -> list[str]:
    return ["podman", "run", "--network", f"ns:/run/netns/{ns}", *daemonset_podman_flags(container),
            "-v", f"{HERE / 'manifests'}:/manifests:ro"]


def sysctl(ns: str) -> str:
    return in_ns(ns, "sysctl", "-n", "net.ipv4.conf.all.route_localnet").stdout.strip()


def wait_healthy(ns: str) -> str:
    deadline = time.monotonic() + 30
    code = ""
    while time.monotonic() < deadline and code != "200":
        code = in_ns(ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:10256/healthz",
                     check=False).stdout
        time.sleep(0.3)
    return code


@pytest.mark.parametrize("mode", ["nftables", "iptables"])
def test_the_daemonsets_security_context_works_in_every_mode(podman_env, image, netns, mode):
    host_localnet = Path("/proc/sys/net/ipv4/conf/all/route_localnet").read_text()
    flags = ["--manifests", "/manifests", "--node-ip", "10.77.0.2", "--proxy-mode", mode]
    in_ns(netns, "sysctl", "-q", "-w", "net.ipv4.conf.all.route_localnet=0")

    # the agent's context: /proc/sys is read-only in it
    probe = sh(*pod_run(netns, "kproxy"), "--rm", "--entrypoint", "sh", image, "-c",
               "echo 1 > /proc/sys/net/ipv4/conf/all/route_localnet", env=podman_env, check=False)
    assert probe.returncode != 0 and "Read-only file system" in probe.stderr, probe

    # without the init container: no traceback; iptables mode warns once, localhost NodePorts off
    out = sh(*pod_run(netns, "kproxy"), "--rm", image, "sync", *flags, env=podman_env, check=False)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    warned = [line for line in out.stderr.splitlines() if "cannot set net.ipv4.conf.all.route_localnet=1" in line]
    assert len(warned) == (1 if mode == "iptables" else 0), out.stderr
    if mode == "iptables":
        saved = in_ns(netns, "iptables-nft-save").stdout
        assert "--dport 30080" in saved and "127.0.0.0/8" not in saved, saved
    else:
        assert "table ip kproxy" in in_ns(netns, "nft", "list", "tables").stdout

    # the init container (privileged, from the same image) sets what the config needs
    sh(*pod_run(netns, "sysctls"), "--rm", image, "sysctls", *flags, env=podman_env)
    assert sysctl(netns) == ("1" if mode == "iptables" else "0")

    # then the agent, as the DaemonSet runs it: healthy, nothing to warn about, localhost NodePorts on
    name = f"kproxy-{netns}-{mode}"
    try:
        sh(*pod_run(netns, "kproxy"), "-d", "--name", name, image, "run", *flags, env=podman_env)
        assert wait_healthy(netns) == "200"
        assert in_ns(netns, "curl", "-s", "http://127.0.0.1:10249/proxyMode").stdout == mode
        if mode == "iptables":
            assert "-d 127.0.0.0/8" in in_ns(netns, "iptables-nft-save").stdout
        sh("podman", "stop", "-t", "20", name, env=podman_env)
        assert sh("podman", "inspect", "-f", "{{.State.ExitCode}}", name, env=podman_env).stdout.strip() == "0"
        logs = sh("podman", "logs", name, env=podman_env).stderr
        assert "Traceback" not in logs and "[warning" not in logs and "[error" not in logs, logs
    finally:
        sh("podman", "rm", "-f", name, env=podman_env, check=False)
    assert Path("/proc/sys/net/ipv4/conf/all/route_localnet").read_text() == host_localnet  # host untouched
