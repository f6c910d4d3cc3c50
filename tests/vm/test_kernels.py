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


def both_modes(path: str, test: str, *params: str) -> tuple[str, ...]:
    """Node ids of one test in nftables and iptables mode (and each extra parameter)."""
    return tuple(f"{path}::{test}[{mode}{'-' + p if p else ''}]"
                 for mode in ("nftables", "iptables") for p in (params or ("",)))


IPVS_MODULES = (*LAB_MODULES, "ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "sctp")


def ipvs_mode(path: str, test: str, param: str = "") -> str:
    return f"{path}::{test}[ipvs{'-' + param if param else ''}]"


GROUPS: dict[str, Group] = {
    "ruleset": Group(("tests/vm/test_no_nftables.py", "tests/vm/test_ruleset_loads.py"), budget=420,
                     doc="no nf_tables: exit 2 with one line; kproxy's every-feature ruleset loads "
                         "(both modes); nft -c agrees with the kernel on 52 constructs"),
    # The core of every kernel: a kernel that nf_tables is missing from, kproxy's every-feature
    # rules, and the basic packet flows with real packets, SCTP included, in both modes.
    "core": Group((
        "tests/vm/test_no_nftables.py", "tests/vm/test_ruleset_loads.py::test_every_feature_ruleset_loads",
        *both_modes(DP, "test_cluster_ip_from_pod_reaches_ready_endpoints_unmasqueraded"),
        *both_modes(DP, "test_node_port_is_masqueraded_and_only_on_nodeport_addresses", "default"),
        *both_modes(DP, "test_reject_and_drop", "client"),
        *both_modes(POL, "test_sctp_services_are_programmed"),
    ), budget=600, modules=LAB_MODULES,
        doc="no nf_tables -> exit 2; every-feature rules load (both modes); ClusterIP from a pod, NodePort, "
            "reject/drop, SCTP ClusterIP + NodePort: real packets, both modes"),
    # One more slice per kernel, so that each feature meets a Debian kernel (see DEFAULT_MATRIX)
    "external": Group((
        *both_modes(DP, "test_external_ip_and_load_balancer_ip_from_client_are_masqueraded", "loadBalancerIP"),
        *both_modes(DP, "test_hairpin_pod_reaches_itself_masqueraded"),
    ), budget=300, modules=LAB_MODULES, doc="LB IP from outside (masqueraded), hairpin, both modes"),
    "policies": Group((
        *both_modes(POL, "test_external_policy_local_short_circuits_pods_and_the_node"),
        *both_modes(POL, "test_load_balancer_source_ranges"),
    ), budget=300, modules=LAB_MODULES,
        doc="externalTrafficPolicy Local short-circuit (the node's own traffic masqueraded), "
            "loadBalancerSourceRanges, both modes"),
    "dualstack": Group((
        *both_modes(DUAL, "test_ipv6_cluster_ip_from_a_pod_is_not_masqueraded"),
        *both_modes(DUAL, "test_ipv6_from_off_cluster_and_node_port_are_masqueraded"),
    ), budget=300, modules=LAB_MODULES, doc="IPv6 ClusterIP, NodePort and off-cluster traffic, both modes"),
    "affinity": Group(both_modes(POL, "test_client_ip_affinity_sticks_per_client_and_spreads_clients"),
                      budget=300, modules=LAB_MODULES, doc="ClientIP session affinity, both modes"),
    # IPVS mode's core on every kernel (this host's kernel has no IP_VS)
    "ipvs-core": Group((
        ipvs_mode(DP, "test_cluster_ip_from_pod_reaches_ready_endpoints_unmasqueraded"),
        ipvs_mode(DP, "test_node_port_is_masqueraded_and_only_on_nodeport_addresses", "default"),
        ipvs_mode(DP, "test_reject_and_drop", "client"),
        ipvs_mode(DP, "test_udp_cluster_ip"),
        ipvs_mode(POL, "test_sctp_services_are_programmed"),
        ipvs_mode(POL, "test_external_policy_local_short_circuits_pods_and_the_node"),
        ipvs_mode(POL, "test_client_ip_affinity_sticks_per_client_and_spreads_clients"),
        "tests/netns/test_netns_ipvs.py::test_graceful_termination_keeps_a_live_connection_on_a_removed_endpoint",
    ), budget=600, modules=IPVS_MODULES,
        doc="IPVS mode: ClusterIP from a pod, NodePort, reject/drop, UDP, SCTP, externalTrafficPolicy Local "
            "(client address kept), ClientIP affinity, graceful termination on a live connection"),
    # the whole data-plane suite of one mode (by hand: 6-7 minutes per mode and kernel here)
    "nftables": Group((DP, POL, DUAL, "-k", "nftables"), budget=1500, modules=LAB_MODULES,
                      doc="every data-plane, policy and dual-stack scenario, nftables mode"),
    "iptables": Group((DP, POL, DUAL, "tests/netns/test_netns_iptables.py", "-k", "iptables"), budget=1800,
                      modules=LAB_MODULES, doc="every data-plane, policy and dual-stack scenario and the "
                                               "iptables specifics, iptables mode"),
    "ipvs": Group(("tests/netns/test_netns_dataplane.py", "tests/netns/test_netns_policies.py",
                   "tests/netns/test_netns_ipvs.py", "tests/netns/test_netns_ipvs_rules.py", "-k", "ipvs or aux"),
                  budget=2400, modules=IPVS_MODULES,
                  doc="every data-plane scenario and the IPVS specifics, IPVS mode"),
}
# What scripts/test runs when KPROXY_VM_GROUPS does not say: one boot per kernel (groups
# joined by "+"), the core everywhere and one more slice each, within its 25-minute budget.
DEFAULT_MATRIX = {
    "5.10": ("core", "external"),
    "6.1": ("core", "policies"),
    "6.12": ("core", "dualstack"),
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
        sys.executable, "-m", "pytest", "-q", "-rfE", "--tb=short", "-p", "no:cacheprovider",
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
            mode = "iptables" if "[iptables" in name else "nftables"
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
