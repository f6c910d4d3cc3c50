"""Run one command as root inside a throwaway qemu VM booting a cached Debian kernel.

The guest's userland is this machine's own root, read-only over 9p below a tmpfs overlay, so
it has the same Python, venv, nft, iptables and checkout, and every write vanishes at power
off. It has a fresh /run, the kernel's modules tree, no network card at all, and the
directories given with `rw` shared read-write at the same path (for results). The command runs
in the caller's cwd with the caller's PATH, HOME and venv; in the guest KPROXY_VM=1,
KPROXY_VM_KERNEL=<release> and KPROXY_VM_TIME_SCALE=<factor> tell tests where they are
(software emulation is 10-15 times slower than the host for Python). KPROXY_VM_CPU picks
the emulated CPU model (default max: every feature qemu emulates, AVX2 included).

Stdlib only: runs with the system's Python 3 (tests/vm/run-in-vm) and inside pytest
(tests/vm/test_kernels.py).
"""

from __future__ import annotations

import codecs
import os
import re
import selectors
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import vmkernels

HERE = Path(__file__).resolve().parent

# Exit statuses of run() besides the command's own.
TIMEOUT = 124
VM_FAILED = 125
NO_CWD = 126

# Always passed into the guest when set here. Not PYTHONDONTWRITEBYTECODE: in the guest,
# bytecode goes to the throwaway overlay, and compiling kproxy again in every one of the
# dozens of processes a test run starts costs ~1 s each under emulation.
PASSED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TERM", "VIRTUAL_ENV",
              "PYTHONPATH", "PYTEST_ADDOPTS", "CI", "NO_COLOR")

# How much slower than the host a guest is, for tests that scale their timeouts.
TCG_TIME_SCALE = 10
KVM_TIME_SCALE = 2

KERNEL_ARGS = (
    "console=ttyS0 loglevel=4 panic=-1 oops=panic "
    # speed: no speculation mitigations to emulate, no TSC calibration loop, trust RDRAND so
    # the random pool is ready at once (5.10 blocks getrandom() until it is)
    "mitigations=off tsc=reliable no_timer_check random.trust_cpu=on 8250.nr_uarts=1 "
    "nokaslr"
)


def kvm_usable() -> bool:
    """KVM only with hardware virtualization: a /dev/kvm without vmx/svm (e.g. kvm-pvm, a
    software nested hypervisor) starts qemu but never boots a stock kernel."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.M) is not None


@dataclass(slots=True)
class VmResult:
    status: int
    console: str  # everything the guest printed on its serial console
    wall_seconds: float
    boot_seconds: float | None  # guest uptime when the command started
    accel: str
    kernel: str
    timed_out: bool = False
    notes: list[str] = field(default_factory=list)

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.console.splitlines()[-lines:])


def run(
    command: list[str],
    *,
    kernel: str = "6.1",
    rw: Iterable[str | Path] = (),
    modules: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float = 900,
    mem_mb: int = 1024,
    cpus: int | None = None,
    accel: str = "auto",
    stream: TextIO | None = None,
    keep: bool = False,
) -> VmResult:
    """Boot `kernel`, run `command` in it, power off; the command's exit status.

    `env` adds or overrides variables for the command; `stream` receives the console as it
    comes (None: only collected). On timeout qemu is killed and the status is TIMEOUT.
    """
    found = vmkernels.require(kernel)
    initrd = vmkernels.initramfs(found)
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise vmkernels.KernelError("qemu-system-x86_64 is missing: scripts/setup-env --vm installs it")
    if accel == "auto":
        accel = "kvm" if kvm_usable() else "tcg"
    if cpus is None:
        # Under emulation each vCPU is a host thread next to qemu's 9p I/O: on a 2-core host
        # a second vCPU makes boots slower and jittery.
        cpus = 1 if accel == "tcg" and (os.cpu_count() or 1) <= 2 else 2
    cwd = Path(cwd or os.getcwd()).resolve()
    rw_dirs = [Path(d).resolve() for d in rw]
    for d in rw_dirs:
        if not d.is_dir():
            raise vmkernels.KernelError(f"--rw {d}: not a directory")

    rundir = Path(tempfile.mkdtemp(prefix="kproxy-vm-"))
    try:
        guest_env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
        if stream is None or not stream.isatty():
            guest_env.update(TERM="dumb", NO_COLOR="1")
        guest_env.update(env or {})
        guest_env.update(
            KPROXY_VM="1",
            KPROXY_VM_KERNEL=found.release,
            KPROXY_VM_TIME_SCALE=str(TCG_TIME_SCALE if accel == "tcg" else KVM_TIME_SCALE),
        )
        write_run_share(rundir, found, command, guest_env, cwd, rw_dirs, modules)
        argv = qemu_argv(qemu, found, initrd, rundir, rw_dirs, accel, cpus, mem_mb)
        result = boot(argv, timeout, stream)
        result.accel, result.kernel = accel, found.release
        status_file = rundir / "status"
        if result.timed_out:
            result.status = TIMEOUT
            result.notes.append(f"timeout: qemu killed after {timeout:.0f} s")
        elif status_file.is_file() and status_file.read_text().strip().isdigit():
            result.status = int(status_file.read_text())
        else:
            marker = re.findall(r"^KPROXY_VM_EXIT=(\d+)", result.console, re.M)
            result.status = int(marker[-1]) if marker else VM_FAILED
            if not marker:
                result.notes.append("the guest ended without an exit status (see the console)")
        return result
    finally:
        if keep:
            print(f"run-in-vm: run directory kept: {rundir}", file=sys.stderr)
        else:
            shutil.rmtree(rundir, ignore_errors=True)


def write_run_share(rundir: Path, kernel: vmkernels.Kernel, command: list[str], env: Mapping[str, str],
                    cwd: Path, rw_dirs: list[Path], modules: Iterable[str]) -> None:
    shutil.copy(HERE / "guest" / "main.sh", rundir / "main.sh")
    (rundir / "config").write_text(
        f"release={shlex.quote(kernel.release)}\nmodules={shlex.quote(' '.join(modules))}\n")
    (rundir / "rw").write_text("".join(f"kpvm-rw{i} {d}\n" for i, d in enumerate(rw_dirs)))
    lines = ["# the command, written by vmrun.py; run by main.sh in the guest"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in sorted(env.items())]
    lines.append(f"cd {shlex.quote(str(cwd))} || exit {NO_CWD}")
    lines.append("exec " + shlex.join(command))
    (rundir / "cmd.sh").write_text("\n".join(lines) + "\n")


def qemu_argv(qemu: str, kernel: vmkernels.Kernel, initrd: Path, rundir: Path, rw_dirs: list[Path],
              accel: str, cpus: int, mem_mb: int) -> list[str]:
    argv = [qemu, "-machine", "pc", "-smp", str(cpus), "-m", str(mem_mb)]
    if accel == "kvm":
        argv += ["-accel", "kvm", "-cpu", "host"]
    else:
        # The translation cache defaults to 1 GiB of host memory; 256 MiB is as fast here.
        argv += ["-accel", "tcg,tb-size=256", "-cpu", os.environ.get("KPROXY_VM_CPU", "max")]
    argv += [
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-nic", "none",
        "-kernel", str(kernel.image), "-initrd", str(initrd), "-append", KERNEL_ARGS,
        "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
    ]
    shares = [("kpvm-host", Path("/"), True), ("kpvm-modules", kernel.modules, True),
              ("kpvm-run", rundir, False)]
    shares += [(f"kpvm-rw{i}", d, False) for i, d in enumerate(rw_dirs)]
    for tag, path, readonly in shares:
        fsdev = f"local,id={tag},path={path},security_model=none,multidevs=remap"
        argv += ["-fsdev", fsdev + (",readonly=on" if readonly else ""),
                 "-device", f"virtio-9p-pci,fsdev={tag},mount_tag={tag}"]
    return argv


def boot(argv: list[str], timeout: float, stream: TextIO | None) -> VmResult:
    """Run qemu, collecting (and streaming) the console, killing it at the deadline."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    chunks: list[str] = []
    timed_out = False
    decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
    try:
        timed_out = _follow(proc, start + timeout, chunks, decode, stream)
    finally:  # also when interrupted (Ctrl-C, a test timeout): no qemu outlives us
        if timed_out or proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    console = "".join(chunks) + decode(b"", final=True)
    ready = re.search(r"^KPROXY_VM_READY uptime=([\d.]+)", console, re.M)
    return VmResult(status=VM_FAILED, console=console, wall_seconds=time.monotonic() - start,
                    boot_seconds=float(ready.group(1)) if ready else None, accel="", kernel="",
                    timed_out=timed_out)


def _follow(proc: subprocess.Popen, deadline: float, chunks: list[str], decode, stream: TextIO | None) -> bool:
    """Collect (and stream) the console until qemu exits (False) or the deadline (True)."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            if not sel.select(timeout=min(left, 1.0)):
                continue
            data = os.read(proc.stdout.fileno(), 65536)
            if not data:
                return False
            text = decode(data).replace("\r", "")
            chunks.append(text)
            if stream is not None:
                stream.write(text)
                stream.flush()
