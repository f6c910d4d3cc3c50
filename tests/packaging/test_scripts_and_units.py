"""Every shell script passes shellcheck; the systemd unit passes systemd-analyze verify."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]


def shell_scripts() -> list[Path]:
    found = []
    for path in sorted((TOP / "scripts").iterdir()):
        if path.is_file():
            first = path.read_bytes()[:64].split(b"\n", 1)[0]
            if first.startswith(b"#!") and (b"bash" in first or first.endswith(b"/sh")):
                found.append(path)
    return found


def test_the_kind_scripts_are_found():
    names = {p.name for p in shell_scripts()}
    assert {"kind-up.sh", "kind-down.sh", "setup-env", "test"} <= names


@pytest.mark.parametrize("script", shell_scripts(), ids=lambda p: p.name)
def test_shellcheck(script):
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed (scripts/setup-env installs it)")
    result = subprocess.run(["shellcheck", "-x", str(script)], capture_output=True, text=True,
                            timeout=60, cwd=TOP)
    assert result.returncode == 0, result.stdout + result.stderr


def test_systemd_unit_verifies(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is not installed")
    unit = (TOP / "systemd" / "kproxy.service").read_text()
    assert "ExecStart=/opt/kproxy/bin/kproxy run $KPROXY_ARGS" in unit
    # ProtectKernelTunables makes /proc/sys read-only: the sysctls are set before, unsandboxed
    assert "ProtectKernelTunables=yes" in unit and "ExecStartPre=+/opt/kproxy/bin/kproxy sysctls $KPROXY_ARGS" in unit
    # verify checks that ExecStart exists: point it at a binary that does
    (tmp_path / "kproxy.service").write_text(unit.replace("/opt/kproxy/bin/kproxy", "/bin/true"))
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "kproxy.service")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    caps = next(line for line in unit.splitlines() if line.startswith("CapabilityBoundingSet="))
    assert caps.split("=", 1)[1].split() == ["CAP_NET_ADMIN", "CAP_NET_RAW"]
    env = (TOP / "systemd" / "kproxy.env").read_text()
    assert "KPROXY_ARGS=" in env and "--config=" in env
