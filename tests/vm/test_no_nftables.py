"""A kernel that cannot run nftables mode: kproxy says so in one line and exits 2 before
touching anything, instead of crash-looping on the kernel's "Invalid argument".

Only inside a VM of the matrix (group "ruleset", run first in its boot): the guest's
Debian kernel has nf_tables as a module, and the test stops module loading for its
duration, so nf_tables is really absent. The host's kernel has it built in.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

MODPROBE = Path("/proc/sys/kernel/modprobe")


def loaded(module: str) -> bool:
    return any(line.split()[0] == module for line in Path("/proc/modules").read_text().splitlines())


@pytest.fixture
def no_module_loading():
    if not os.environ.get("KPROXY_VM"):
        pytest.skip("runs in the VM matrix (tests/vm/test_kernels.py, group ruleset): the host's nf_tables is built in")
    if loaded("nf_tables") or not Path(f"/lib/modules/{os.uname().release}").is_dir():
        pytest.fail("nf_tables is already loaded in this guest: run this test first in its boot")
    before = MODPROBE.read_text().strip()
    MODPROBE.write_text("/bin/false\n")  # the guest's own setting: the kernel's module requests fail
    try:
        yield
    finally:
        MODPROBE.write_text(f"{before}\n")


def test_nftables_mode_without_nf_tables_exits_2_with_one_line(no_module_loading, tmp_path):
    manifests = tmp_path / "services.yaml"
    manifests.write_text("")
    done = subprocess.run(["unshare", "-n", sys.executable, "-m", "kproxy", "sync", "--proxy-mode", "nftables",
                           "--manifests", str(manifests), "--node-ip", "10.0.0.1"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("kproxy: error:")]
    assert errors == [line for line in done.stderr.splitlines() if "error" in line.lower()], done.stderr
    (line,) = errors
    assert line.startswith(f"kproxy: error: nftables mode cannot work on kernel {os.uname().release}: "
                           "the kernel has no usable nf_tables (")
    assert line.endswith("; use --proxy-mode iptables")
    assert not loaded("nf_tables")
