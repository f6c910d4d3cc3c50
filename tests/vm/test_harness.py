"""The VM harness's own pure parts, without qemu or root: apt sources, the initramfs archive,
vmlinux extraction, the guest's report, scripts/test's options."""

from __future__ import annotations

import lzma
import os
import struct
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOP = HERE.parent.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import vmkernels  # noqa: E402
from test_kernels import read_junit  # noqa: E402


def test_apt_sources_of_both_formats_give_the_archive_and_security_entries(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: file:///srv/archive\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb-src\nURIs: file:///srv/sources\nSuites: bookworm\nComponents: main\n")
    (tmp_path / "sources.list").write_text(
        "# deb file:///srv/commented bookworm main\n"
        "deb [arch=amd64 signed-by=/etc/keys/sec.gpg] file:///srv/security bookworm-security main\n")
    sources = vmkernels.host_apt_sources(tmp_path)
    assert [s.uri for s in sources] == ["file:///srv/archive", "file:///srv/security"]
    assert sources[1].signed_by == "/etc/keys/sec.gpg"
    listing = vmkernels.private_sources_list(sources).splitlines()
    assert listing[0] == ("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
                          "file:///srv/archive bullseye main")
    assert "deb [signed-by=/etc/keys/sec.gpg] file:///srv/security bookworm-security main" in listing
    assert len(listing) == len(vmkernels.ARCHIVE_SUITES) + len(vmkernels.SECURITY_SUITES)


def test_series_patterns_take_the_stock_flavour_only() -> None:
    names = ["linux-image-6.1.0-57-amd64", "linux-image-6.1.0-57-rt-amd64", "linux-image-6.1.0-57-cloud-amd64",
             "linux-image-6.1.0-57-amd64-dbg", "linux-image-6.12.90+deb12.1-amd64", "linux-image-6.12-amd64",
             "linux-image-5.10.0-46-amd64-unsigned", "linux-image-5.10.0-46-amd64"]
    chosen = {s: [n for n in names if p.match(n)] for s, p in vmkernels.SERIES.items()}
    assert chosen == {"5.10": ["linux-image-5.10.0-46-amd64"], "6.1": ["linux-image-6.1.0-57-amd64"],
                      "6.12": ["linux-image-6.12.90+deb12.1-amd64"]}


def test_initramfs_archive_is_newc_the_kernel_can_unpack(tmp_path: Path) -> None:
    archive = vmkernels.newc_archive(["bin"], [("init", 0o755, b"#!/bin/sh\n"), ("bin/x", 0o644, b"abc")])
    entries = []
    offset = 0
    while True:
        header = archive[offset:offset + 110]
        assert header[:6] == b"070701"
        fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = archive[offset + 110:offset + 110 + namesize - 1].decode()
        offset += 110 + namesize
        offset += -offset % 4
        data = archive[offset:offset + size]
        offset += size + (-size % 4)
        if name == "TRAILER!!!":
            break
        entries.append((name, oct(mode), data))
    assert entries == [("bin", "0o40755", b""), ("init", "0o100755", b"#!/bin/sh\n"), ("bin/x", "0o100644", b"abc")]
    assert offset == len(archive)


def fake_elf(payload: bytes) -> bytes:
    """An ELF64 header with one loadable segment covering payload."""
    phoff, phentsize = 64, 56
    header = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    header += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, phoff, 0, 0, 64, phentsize, 1, 0, 0, 0)
    segment = struct.pack("<IIQQQQQQ", 1, 5, phoff + phentsize, 0, 0, len(payload), len(payload), 0)
    return header + segment + payload


def test_vmlinux_is_found_after_the_xz_magic_and_must_be_complete() -> None:
    elf = fake_elf(b"kernel" * 100)
    bzimage = b"setup code \xfd7zXZ\x00 not a stream " + lzma.compress(elf, format=lzma.FORMAT_XZ) + b"trailer"
    assert vmkernels.extract_vmlinux(bzimage) == elf
    assert vmkernels.elf_complete(elf)
    assert not vmkernels.elf_complete(elf[:-10])
    assert vmkernels.extract_vmlinux(b"no payload here") is None


def test_guest_report_lists_failures_skips_and_errors(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite tests="4" time="12.5">'
        '<testcase classname="tests.netns.t" name="ok"/>'
        '<testcase classname="tests.netns.t" name="bad"><failure message="assert 1 == 2">trace\nE assert 1 == 2'
        '</failure></testcase>'
        '<testcase classname="tests.netns.t" name="setup"><error message="boom">E boom</error></testcase>'
        '<testcase classname="tests.netns.t" name="skip"><skipped message="needs root"/></testcase>'
        '</testsuite></testsuites>')
    outcome = read_junit(junit)
    assert outcome is not None
    assert outcome.counts() == "1 passed, 2 failed, 1 skipped" and outcome.seconds == 12.5
    problems = "\n".join(outcome.problems())
    assert "FAILED tests.netns.t::bad\n    [failure in test] trace\n    E assert 1 == 2" in problems
    assert "[error in setup/teardown] E boom" in problems
    assert "SKIPPED (counts as a failure in the VM) tests.netns.t::skip: needs root" in problems
    assert read_junit(tmp_path / "missing.xml") is None


def parse_test_args(*args: str, kernels: str | None = None) -> str:
    script = (f". {TOP / 'tests/vm/test-options.bash'}; vm_parse_args \"$@\" || exit $?; "
              'echo "$KPROXY_KERNELS|${pytest_args[*]}|${setup_env_args[*]}"')
    env = {k: v for k, v in os.environ.items() if k != "KPROXY_KERNELS"}  # scripts/test exports it
    if kernels is not None:
        env["KPROXY_KERNELS"] = kernels
    return subprocess.run(["bash", "-c", script, "test", *args], capture_output=True, text=True,
                          timeout=30, env=env).stdout.strip()


def test_scripts_test_options() -> None:
    assert parse_test_args("-k", "nodeport", "-x") == "all|-k nodeport -x|--vm"
    assert parse_test_args("--kernel", "6.1", "tests/vm", "--kernel=5.10") == "6.1,5.10|tests/vm|--vm 6.1 5.10"
    assert parse_test_args("--host-only", "-x") == "none|-x|"
    assert parse_test_args(kernels="6.12") == "6.12||--vm 6.12"
    assert parse_test_args("--kernel") == ""
