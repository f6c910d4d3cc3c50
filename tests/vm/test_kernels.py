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
from dataclasses import dataclass
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

# A few data-plane scenarios in both modes: what fits, for three kernels, in scripts/test's
# time budget (the whole data-plane suite takes 6-7 minutes per mode and kernel here).
SMOKE = "cluster_ip_from_pod or (node_port and default) or (reject_and_drop and pod1) or udp_cluster_ip"

GROUPS: dict[str, Group] = {
    "ruleset": Group(("tests/vm/test_ruleset_loads.py",), budget=360,
                     doc="kproxy's every-feature ruleset loads (both modes); nft -c agrees with the kernel"),
    "dataplane": Group(("tests/netns/test_netns_dataplane.py", "-k", SMOKE), budget=480,
                       modules=LAB_MODULES, doc="four data-plane scenarios, both modes"),
    "nftables": Group(("tests/netns/test_netns_dataplane.py", "-k", "nftables"), budget=900,
                      modules=LAB_MODULES, doc="every data-plane scenario, nftables mode"),
    "iptables": Group(("tests/netns/test_netns_dataplane.py", "tests/netns/test_netns_iptables.py",
                       "-k", "iptables"), budget=1200, modules=LAB_MODULES,
                      doc="every data-plane scenario and the iptables specifics, iptables mode"),
    "ipvs": Group(("tests/netns/test_netns_dataplane.py", "tests/netns/test_netns_policies.py",
                   "tests/netns/test_netns_ipvs.py", "tests/netns/test_netns_ipvs_rules.py", "-k", "ipvs or aux"),
                  budget=2400, modules=(*LAB_MODULES, "ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "sctp"),
                  doc="every data-plane scenario and the IPVS specifics, IPVS mode"),
}
# What scripts/test runs when KPROXY_VM_GROUPS does not say (its 25-minute budget).
DEFAULT_GROUPS = ("ruleset", "dataplane")


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


def requested_groups() -> list[str]:
    value = os.environ.get("KPROXY_VM_GROUPS", "").replace(",", " ").split()
    if value == ["all"]:
        return list(GROUPS)
    return value or list(DEFAULT_GROUPS)


def matrix() -> list:
    kernels = requested_kernels()
    shown = kernels if kernels else list(vmkernels.SERIES)
    params = []
    for kernel in shown:
        for group in requested_groups():
            marks = []
            if kernels is None:
                marks.append(pytest.mark.skip(
                    reason="VM kernels not requested: scripts/test runs them (KPROXY_KERNELS=all|5.10,6.1,..)"))
            elif not kernels:
                marks.append(pytest.mark.skip(reason="host-only run (KPROXY_KERNELS=none)"))
            # pyproject's 300 s per test would stop the VM run midway: the group's budget
            # (after which vmrun kills the VM) plus time to boot and report
            budget = GROUPS[group].budget if group in GROUPS else 60
            marks.append(pytest.mark.timeout(budget + 120))
            params.append(pytest.param(kernel, group, id=f"{kernel}-{group}", marks=marks))
    return params


@pytest.mark.parametrize(("kernel", "group"), matrix())
def test_kernel(kernel: str, group: str, tmp_path: Path, vm_runs: list) -> None:
    if os.environ.get("KPROXY_VM"):
        pytest.skip("already inside a VM")
    if kernel not in vmkernels.SERIES and vmkernels.find(kernel) is None:
        pytest.fail(f"unknown kernel {kernel!r}: one of {', '.join(vmkernels.SERIES)}")
    if group not in GROUPS:
        pytest.fail(f"unknown VM test group {group!r}: one of {', '.join(GROUPS)}")
    if os.geteuid() != 0:
        pytest.fail("the VM tests need root (qemu serves the whole root filesystem to the guest)")
    spec = GROUPS[group]
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
        "status": result.status, "summary": outcome.counts() if outcome else "no junit report",
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
    seconds = 0.0
    for suite in root.iter("testsuite"):
        seconds += float(suite.get("time") or 0)
    for case in root.iter("testcase"):
        tests += 1
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        for tag in ("failure", "error"):
            for node in case.findall(tag):
                text = (node.text or "").strip().splitlines()
                message = node.get("message", "").strip()
                body = "\n".join(text[-25:]) if text else message
                label = f"[{tag} in {'setup/teardown' if tag == 'error' else 'test'}]"
                failures.append((name, f"{label} {body}"))
        for node in case.findall("skipped"):
            skipped.append((name, node.get("message", "")))
    return Outcome(tests=tests, failures=failures, skipped=skipped, seconds=seconds)


def indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
