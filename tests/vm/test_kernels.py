"""The kernel matrix: each test boots one Debian kernel under qemu and runs a group of this
repository's tests inside it, as root, with the host's checkout and venv (tests/vm/README.md).

Which kernels: KPROXY_KERNELS ("5.10,6.1", "all", "none"), set by `scripts/test --kernel K`
or `--host-only`. Unset, the matrix runs under CI=true and is skipped otherwise (a bare
`pytest tests` by hand). Which groups: KPROXY_VM_GROUPS ("ruleset,nftables", "all"; default
DEFAULT_GROUPS).

Whenever a kernel is asked for, nothing is skipped: a kernel missing from the cache, a VM
that does not boot, a guest run that skipped or ran no test, or a timeout fails the test,
with the guest's failed tests and their short tracebacks as the message.
"""

from __future__ import annotations

import os
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TOP = HERE.parent.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import vmkernels  # noqa: E402
import vmrun  # noqa: E402

# Per-test timeout inside the guest: pyproject's 300 s, times 3. The slowest netns test
# takes ~25 s in a guest (about 15 times the host); the VM's own timeout (Group.budget)
# bounds the whole run anyway.
GUEST_TEST_TIMEOUT = 900


@dataclass(frozen=True)
class Group:
    """A set of tests run in one boot."""

    args: tuple[str, ...]  # pytest arguments (paths, -k) inside the guest
    budget: float  # seconds before the VM is killed (measured time x ~2)
    modules: tuple[str, ...] = ()  # loaded before the tests
    doc: str = ""


# The namespace lab needs br_netfilter, as every Kubernetes node does: a pod reaching a
# Service that picks another pod on the same bridge gets its reply straight over the bridge
# unless bridged IPv4 passes netfilter (the host's kernel has br_netfilter built in; Debian's
# has it as a module, not loaded by default).
LAB_MODULES = ("br_netfilter",)

DP = "tests/netns/test_netns_dataplane.py"
POL = "tests/netns/test_netns_policies.py"
DUAL = "tests/netns/test_netns_dualstack.py"


MODES = ("nftables", "iptables", "ipvs")


def in_modes(path: str, test: str, param: str = "", modes: tuple[str, ...] = MODES) -> tuple[str, ...]:
    """Node ids of one test in each proxy mode (the VM kernels have IPVS: all three by default)."""
    return tuple(f"{path}::{test}[{mode}{'-' + param if param else ''}]" for mode in modes)


NFT_IPT = ("nftables", "iptables")
IPVS_MODULES = (*LAB_MODULES, "ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "sctp")
IPVS = "tests/netns/test_netns_ipvs.py"
TAKEOVER = "tests/netns/test_netns_takeover.py"

# Each group is a few tests that take 15-30 s each in an emulated guest; DEFAULT_MATRIX puts
# the core and two or three more on every kernel, so each feature meets a Debian kernel.
GROUPS: dict[str, Group] = {
    # every kernel: nf_tables missing, kproxy's every-feature rules, and real packets
    # (TCP ClusterIP from a pod; SCTP ClusterIP from a pod and NodePort from outside) in
    # all three modes
    "core": Group((
        "tests/vm/test_no_nftables.py", "tests/vm/test_ruleset_loads.py::test_every_feature_ruleset_loads",
        *in_modes(DP, "test_cluster_ip_from_pod_reaches_ready_endpoints_unmasqueraded"),
        *in_modes(POL, "test_sctp_services_are_programmed"),
    ), budget=420, modules=IPVS_MODULES,
        doc="no nf_tables -> exit 2; every-feature rules load; TCP ClusterIP from a pod, SCTP ClusterIP "
            "from a pod and NodePort from outside: real packets, all three modes"),
    "load": Group(("tests/netns/test_netns_nft_load.py",), budget=300,
                  doc="nftables: the every-feature Services' elements sent over netlink leave what nft -f "
                      "of them leaves; a refill is one transaction; a refused load changes nothing"),
    "nodeport": Group(in_modes(DP, "test_node_port_is_masqueraded_and_only_on_nodeport_addresses", "default"),
                      budget=240, modules=IPVS_MODULES, doc="TCP NodePort (masqueraded, only on NodePort "
                                                            "addresses), all three modes"),
    "reject": Group(in_modes(DP, "test_reject_and_drop", "client"), budget=240, modules=IPVS_MODULES,
                    doc="no-endpoint reject and unallocated-IP drop from outside, all three modes"),
    "udp": Group(in_modes(DP, "test_udp_cluster_ip"), budget=240, modules=IPVS_MODULES,
                 doc="UDP ClusterIP, all three modes"),
    "local": Group(in_modes(POL, "test_external_policy_local_short_circuits_pods_and_the_node"), budget=300,
                   modules=IPVS_MODULES, doc="externalTrafficPolicy Local: client address kept, pods and the "
                                              "node short-circuited (the node's own traffic masqueraded)"),
    "ipvs-state": Group((
        *in_modes(POL, "test_client_ip_affinity_sticks_per_client_and_spreads_clients", modes=("ipvs",)),
        f"{IPVS}::test_graceful_termination_keeps_a_live_connection_on_a_removed_endpoint",
        *in_modes(DP, "test_udp_cluster_ip", modes=("ipvs",)),
    ), budget=300, modules=IPVS_MODULES, doc="IPVS: ClientIP affinity (persistence), graceful termination "
                                             "on a live connection, UDP ClusterIP"),
    "ipvs-detect": Group(tuple(
        f"tests/netns/test_netns_local_detection.py::{t}[ipvs]" for t in (
            "test_cluster_cidr_mode_source_in_the_cluster_cidr_is_local",
            "test_bridge_interface_mode_only_traffic_from_the_bridge_is_local",
            "test_interface_name_prefix_mode_only_traffic_from_matching_interfaces_is_local",
            "test_node_cidr_mode_follows_the_nodes_pod_cidrs")),
        budget=400, modules=IPVS_MODULES, doc="IPVS: every local-traffic detector with real packets (by hand)"),
    "ipvs-stats": Group(("tests/netns/test_netns_stats.py::test_dump_stats_counts_real_connections[ipvs]",),
                        budget=300, modules=IPVS_MODULES, doc="IPVS: dump --stats counts real connections"),
    "ipvs-top": Group(("tests/netns/test_netns_stats.py::test_top_plain_lines_and_full_screen[ipvs]",),
                      budget=300, modules=IPVS_MODULES, doc="IPVS: top, plain lines and full screen (by hand)"),
    # one takeover here (~140 s under emulation); the host runs all three upstream modes for
    # the other proxy modes, and "ipvs-takeover" all three for IPVS (by hand)
    "ipvs-ops": Group((
        *in_modes(TAKEOVER, "test_takeover_from_kube_proxy_drops_no_connection", modes=("ipvs-iptables-nft",)),
        *(f"tests/netns/test_netns_ipvs_netlink.py::{t}" for t in (
            "test_thousands_of_servers_in_one_apply_read_back_changed_refused_and_deleted",
            "test_ipv6_and_firewall_mark_servers_and_their_settings")),
    ), budget=450, modules=IPVS_MODULES,
        doc="IPVS: takeover from upstream's iptables-nft rules, batched netlink requests (14,000 in one "
            "apply), IPv6 and firewall-mark servers"),
    "ipvs-takeover": Group(in_modes(TAKEOVER, "test_takeover_from_kube_proxy_drops_no_connection",
                                    modes=("ipvs-iptables-nft", "ipvs-iptables-legacy", "ipvs-nftables")),
                           budget=700, modules=IPVS_MODULES,
                           doc="IPVS: takeover from upstream's rules in each of its three modes (by hand)"),
    "ranges": Group(in_modes(POL, "test_load_balancer_source_ranges", modes=NFT_IPT), budget=240,
                    modules=LAB_MODULES, doc="loadBalancerSourceRanges, nftables and iptables"),
    "dualstack": Group((
        *in_modes(DUAL, "test_ipv6_cluster_ip_from_a_pod_is_not_masqueraded", modes=NFT_IPT),
        *in_modes(DUAL, "test_ipv6_from_off_cluster_and_node_port_are_masqueraded", modes=NFT_IPT),
    ), budget=300, modules=LAB_MODULES, doc="IPv6 ClusterIP, NodePort and off-cluster traffic, nftables and "
                                            "iptables (by hand)"),
    "external": Group((
        *in_modes(DP, "test_external_ip_and_load_balancer_ip_from_client_are_masqueraded", "loadBalancerIP"),
        *in_modes(DP, "test_hairpin_pod_reaches_itself_masqueraded"),
    ), budget=420, modules=IPVS_MODULES, doc="LB IP from outside (masqueraded), hairpin, all three modes (by hand)"),
    "affinity": Group(in_modes(POL, "test_client_ip_affinity_sticks_per_client_and_spreads_clients"),
                      budget=300, modules=IPVS_MODULES, doc="ClientIP session affinity, all three modes (by hand)"),
    "ruleset": Group(("tests/vm/test_no_nftables.py", "tests/vm/test_ruleset_loads.py"), budget=420,
                     doc="no nf_tables: exit 2 with one line; kproxy's every-feature ruleset loads "
                         "(both modes); nft -c agrees with the kernel on 52 constructs (by hand)"),
    # the whole data-plane suite of one mode (by hand: 6-7 minutes per mode and kernel here)
    "nftables": Group((DP, POL, DUAL, "-k", "nftables"), budget=1500, modules=LAB_MODULES,
                      doc="every data-plane, policy and dual-stack scenario, nftables mode (by hand)"),
    "iptables": Group((DP, POL, DUAL, "tests/netns/test_netns_iptables.py", "-k", "iptables"), budget=1800,
                      modules=LAB_MODULES, doc="every data-plane, policy and dual-stack scenario and the "
                                               "iptables specifics, iptables mode (by hand)"),
    "ipvs": Group((DP, POL, IPVS, "tests/netns/test_netns_ipvs_rules.py", "-k", "ipvs or aux"),
                  budget=2400, modules=IPVS_MODULES,
                  doc="every data-plane scenario and the IPVS specifics, IPVS mode (by hand)"),
}
# What scripts/test runs when KPROXY_VM_GROUPS does not say: one boot per kernel (groups
# joined by "+"), the core everywhere and more slices each, within its 25-minute budget.
# 5.10 and 6.1 refused kproxy's short-circuit rules once (docs/kernels.md), 6.12 its
# source-range set: each runs what would show it again.
DEFAULT_MATRIX = {
    "5.10": ("core", "local", "ipvs-state", "reject"),
    "6.1": ("core", "local", "nodeport", "load"),
    "6.12": ("core", "ranges", "ipvs-ops", "ipvs-stats"),
}
DEFAULT_GROUPS = ("core",)  # for a kernel DEFAULT_MATRIX does not name


def requested_kernels() -> list[str] | None:
    """The kernels asked for; None when nobody asked (bare pytest outside CI)."""
    value = os.environ.get("KPROXY_KERNELS")
    if value is None:
        return list(vmkernels.SERIES) if os.environ.get("CI") == "true" else None
    value = value.strip().lower()
    if value in ("", "none"):
        return []
    if value == "all":
        return list(vmkernels.SERIES)
    return [k for k in value.replace(",", " ").split()]


def requested_groups(kernel: str) -> list[str]:
    """The boots of one kernel, each "group" or "group+group" (KPROXY_VM_GROUPS="core,affinity"
    boots twice; "core+affinity" once; "all": every group, one boot each)."""
    value = os.environ.get("KPROXY_VM_GROUPS", "").replace(",", " ").split()
    if value == ["all"]:
        return list(GROUPS)
    return value or ["+".join(DEFAULT_MATRIX.get(kernel, DEFAULT_GROUPS))]


def combined(name: str) -> Group:
    """One boot's group: "core+policies" runs both groups' tests in one VM."""
    parts = [GROUPS[n] for n in name.split("+")]
    if len(parts) == 1:
        return parts[0]
    if any("-k" in g.args for g in parts):
        raise KeyError(f"{name}: a group selected with -k (nftables, iptables) boots alone")
    return Group(args=tuple(a for g in parts for a in g.args), budget=sum(g.budget for g in parts),
                 modules=tuple(dict.fromkeys(m for g in parts for m in g.modules)))


def matrix() -> list:
    kernels = requested_kernels()
    shown = kernels if kernels else list(vmkernels.SERIES)
    params = []
    for kernel in shown:
        for group in requested_groups(kernel):
            marks = []
            if kernels is None:
                marks.append(pytest.mark.skip(
                    reason="VM kernels not requested: scripts/test runs them (KPROXY_KERNELS=all|5.10,6.1,..)"))
            elif not kernels:
                marks.append(pytest.mark.skip(reason="host-only run (KPROXY_KERNELS=none)"))
            # pyproject's 300 s per test would stop the VM run midway: the group's budget
            # (after which vmrun kills the VM) plus time to boot and report
            budget = combined(group).budget if all(n in GROUPS for n in group.split("+")) else 60
            marks.append(pytest.mark.timeout(budget + 120))
            params.append(pytest.param(kernel, group, id=f"{kernel}-{group}", marks=marks))
    return params


@pytest.mark.parametrize(("kernel", "group"), matrix())
def test_kernel(kernel: str, group: str, tmp_path: Path, vm_runs: list) -> None:
    if os.environ.get("KPROXY_VM"):
        pytest.skip("already inside a VM")
    if kernel not in vmkernels.SERIES and vmkernels.find(kernel) is None:
        pytest.fail(f"unknown kernel {kernel!r}: one of {', '.join(vmkernels.SERIES)}")
    unknown = [n for n in group.split("+") if n not in GROUPS]
    if unknown:
        pytest.fail(f"unknown VM test group {unknown[0]!r}: one of {', '.join(GROUPS)}")
    if os.geteuid() != 0:
        pytest.fail("the VM tests need root (qemu serves the whole root filesystem to the guest)")
    try:
        spec = combined(group)
    except KeyError as exc:
        pytest.fail(str(exc.args[0]))
    try:
        vmkernels.require(kernel)
    except vmkernels.KernelError as exc:
        pytest.fail(str(exc))

    junit = tmp_path / "junit.xml"
    command = [
        sys.executable, "-m", "pytest", "-q", "-rfE", "--tb=short", "-p", "no:cacheprovider", "--durations=0",
        "-o", f"timeout={GUEST_TEST_TIMEOUT}", f"--junitxml={junit}",
        # the guest's own temporary tree, on its fresh /run: it must not number or clean up
        # the host's /tmp/pytest-of-root, where the read-write share with the report lives
        "--basetemp=/run/kproxy-vm-pytest", *spec.args,
    ]
    started = time.monotonic()
    result = vmrun.run(command, kernel=kernel, rw=[tmp_path], modules=spec.modules, cwd=TOP,
                       timeout=spec.budget)
    (tmp_path / "console.log").write_text(result.console)
    outcome = read_junit(junit)
    vm_runs.append({
        "kernel": kernel, "release": result.kernel, "group": group, "boot": result.boot_seconds,
        "guest": outcome.seconds if outcome else None, "wall": time.monotonic() - started,
        "status": result.status,
        "summary": f"{outcome.counts()} ({outcome.by_mode()})" if outcome else "no junit report",
    })

    where = f"kernel {result.kernel} ({kernel}), group {group}, console: {tmp_path / 'console.log'}"
    if result.timed_out:
        pytest.fail(f"{where}: the VM was killed after {spec.budget:.0f} s\n"
                    f"--- last console lines ---\n{result.tail(40)}", pytrace=False)
    if outcome is None:
        pytest.fail(f"{where}: the guest wrote no test report (exit status {result.status})\n"
                    f"{'; '.join(result.notes)}\n--- last console lines ---\n{result.tail(40)}", pytrace=False)
    problems = outcome.problems()
    if result.status != 0 or problems:
        pytest.fail(f"{where}: {outcome.counts()}, exit status {result.status}\n\n" + "\n\n".join(problems),
                    pytrace=False)


@dataclass
class Outcome:
    tests: int
    failures: list[tuple[str, str]]  # (test id, message and short traceback)
    skipped: list[tuple[str, str]]
    seconds: float
    names: list[str] = field(default_factory=list)

    def by_mode(self) -> str:
        """Passed/run per proxy mode (the parameter in the test id; none: nftables checks)."""
        bad = {n for n, _ in self.failures} | {n for n, _ in self.skipped}
        counts: dict[str, list[int]] = {}
        for name in self.names:
            mode = next((m for m in ("iptables", "ipvs") if f"[{m}" in name), "nftables")
            c = counts.setdefault(mode, [0, 0])
            c[0] += name not in bad
            c[1] += 1
        return ", ".join(f"{mode} {p}/{t}" for mode, (p, t) in sorted(counts.items()))

    def counts(self) -> str:
        passed = self.tests - len(self.failures) - len(self.skipped)
        return f"{passed} passed, {len(self.failures)} failed, {len(self.skipped)} skipped"

    def problems(self) -> list[str]:
        """Failures, then skips (a skip inside the VM is a test that did not run: a
        failure here), then no tests at all."""
        by_text: dict[str, list[str]] = {}  # e.g. a failed fixture: one message for all
        for name, text in self.failures:
            by_text.setdefault(text, []).append(name)
        found = []
        for text, names in by_text.items():
            also = f"\n  the same in: {', '.join(names[1:])}" if len(names) > 1 else ""
            found.append(f"FAILED {names[0]}{also}\n{indent(text)}")
        found += [f"SKIPPED (counts as a failure in the VM) {name}: {why}" for name, why in self.skipped]
        if self.tests == 0:
            found.append("no test ran in the guest")
        return found


def read_junit(path: Path) -> Outcome | None:
    if not path.is_file():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return None
    failures, skipped = [], []
    tests = 0
    names = []
    seconds = 0.0
    for suite in root.iter("testsuite"):
        seconds += float(suite.get("time") or 0)
    for case in root.iter("testcase"):
        tests += 1
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        names.append(name)
        for tag in ("failure", "error"):
            for node in case.findall(tag):
                text = (node.text or "").strip().splitlines()
                message = node.get("message", "").strip()
                body = "\n".join(text[-25:]) if text else message
                label = f"[{tag} in {'setup/teardown' if tag == 'error' else 'test'}]"
                failures.append((name, f"{label} {body}"))
        for node in case.findall("skipped"):
            skipped.append((name, node.get("message", "")))
    return Outcome(tests=tests, failures=failures, skipped=skipped, seconds=seconds, names=names)


def indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
