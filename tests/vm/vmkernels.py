"""Debian kernels for the VM tests: choose, download, unpack and cache them.

Runs with the system's Python 3 (stdlib only), as root. Nothing is installed on the host:
each kernel package is fetched with a private apt configuration (its own sources list,
package lists and download directory, so the machine's apt state is never touched) and
unpacked with `dpkg-deb -x` into the cache:

    $KPROXY_VM_CACHE (default /var/cache/kproxy-vm)/
        5.10 -> 5.10.0-NN-amd64        one link per series: the kernel chosen at fetch time
        5.10.0-NN-amd64/
            package                    what was chosen: package, version, suite, when
            vmlinuz                    the package's bzImage
            vmlinux                    the uncompressed ELF inside it (PVH entry: boots without
                                       decompressing under software emulation, ~3 s faster)
            lib/modules/5.10.0-NN-amd64/   the modules tree, depmod'ed
            initramfs-<hash>.cpio      built from guest/init by initramfs() when first needed

The mirror is the one the machine's own apt configuration names (read at fetch time, never
written anywhere). Which package of a series to take is asked of apt at fetch time: the
newest `linux-image-<series>...-amd64` any of the suites offers.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import io
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_CACHE = Path("/var/cache/kproxy-vm")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

# The series the matrix tests, the package names that belong to each (the stock amd64
# flavour only: no -rt, -cloud, -dbg or -unsigned) and the Debian suites that carry them.
SERIES: dict[str, re.Pattern[str]] = {
    "5.10": re.compile(r"^linux-image-(5\.10\.0-\d+-amd64)$"),
    "6.1": re.compile(r"^linux-image-(6\.1\.0-\d+-amd64)$"),
    "6.12": re.compile(r"^linux-image-(6\.12\.\d+\+deb12(?:\.\d+)?-amd64)$"),
}
ARCHIVE_SUITES = ("bullseye", "bookworm", "bookworm-backports")
SECURITY_SUITES = ("bullseye-security", "bookworm-security")

# Loaded by the initramfs to reach the host's root: virtio PCI, 9p over virtio, overlayfs.
INITRAMFS_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")


class KernelError(Exception):
    """A kernel could not be chosen, fetched or prepared; the message says what to do."""


def cache_dir() -> Path:
    return Path(os.environ.get("KPROXY_VM_CACHE") or DEFAULT_CACHE)


@dataclass(frozen=True, slots=True)
class Kernel:
    """One unpacked kernel in the cache."""

    series: str
    release: str  # `uname -r` in the guest, e.g. 6.1.0-57-amd64
    root: Path

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.release

    @property
    def image(self) -> Path:
        """The uncompressed vmlinux when it could be extracted, else the bzImage."""
        vmlinux = self.root / "vmlinux"
        return vmlinux if vmlinux.is_file() else self.root / "vmlinuz"

    @property
    def package(self) -> str:
        return (self.root / "package").read_text().strip()


def find(series: str) -> Kernel | None:
    """The cached kernel of a series ("6.1") or of a release ("6.1.0-57-amd64"), if ready."""
    link = cache_dir() / series
    if not link.exists():
        return None
    root = link.resolve()
    if not (root / ".complete").exists():
        return None
    release = root.name
    found = next((s for s, pattern in SERIES.items() if pattern.match(f"linux-image-{release}")), series)
    return Kernel(series=found, release=release, root=root)


def require(series: str) -> Kernel:
    kernel = find(series)
    if kernel is None:
        raise KernelError(
            f"kernel {series} is not in {cache_dir()}: run scripts/fetch-kernels {series} "
            f"(as root; scripts/setup-env --vm fetches every series)")
    return kernel


# --- the machine's mirror ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]
    signed_by: str | None


def host_apt_sources(etc: Path = Path("/etc/apt")) -> list[AptSource]:
    """The `deb` entries of the machine's apt configuration (deb822 and one-line style)."""
    found: list[AptSource] = []
    for path in sorted((etc / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, str] = {}
            key = None
            for line in stanza.splitlines():
                if line.startswith("#") or not line.strip():
                    continue
                if line[0] in " \t" and key:
                    fields[key] += " " + line.strip()
                    continue
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
                continue
            signed = fields.get("signed-by")
            signed = signed if signed and signed.startswith("/") else None
            for uri in fields.get("uris", "").split():
                found.append(AptSource(uri, tuple(fields.get("suites", "").split()), signed))
    lists = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list"))]
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = line.split("#", 1)[0].split()
            if not words or words[0] != "deb":
                continue
            words = words[1:]
            signed = None
            if words and words[0].startswith("["):
                options = []
                while words:
                    word = words.pop(0)
                    options.append(word)
                    if word.endswith("]"):
                        break
                for option in " ".join(options).strip("[]").split():
                    if option.startswith("signed-by="):
                        signed = option.split("=", 1)[1]
            if len(words) >= 2:
                found.append(AptSource(words[0], (words[1],), signed))
    return found


def private_sources_list(sources: list[AptSource]) -> str:
    """A sources list for the kernel suites, on the mirrors the machine already uses.

    The Debian archive is the entry that lists a plain release suite (no '-' in it), the
    security archive the one listing a '-security' suite.
    """
    archive = next((s for s in sources if any("-" not in suite for suite in s.suites)), None)
    security = next((s for s in sources if any(suite.endswith("-security") for suite in s.suites)), None)
    if archive is None:
        raise KernelError("no Debian archive in /etc/apt/sources.list{,.d}: cannot fetch kernels")
    lines = []
    for source, suites in ((archive, ARCHIVE_SUITES), (security, SECURITY_SUITES)):
        if source is None:
            continue
        keyring = source.signed_by or KEYRING
        lines += [f"deb [signed-by={keyring}] {source.uri} {suite} main" for suite in suites]
    return "\n".join(lines) + "\n"


class PrivateApt:
    """apt-get/apt-cache with their own sources, lists and cache in one directory."""

    def __init__(self, workdir: Path, sources_list: str) -> None:
        self.workdir = workdir
        for sub in ("lists/partial", "archives/partial", "download"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        # apt downloads as the unprivileged _apt user: it must be able to write here.
        for path in (workdir, workdir / "lists", workdir / "archives"):
            path.chmod(0o755)
        for path in (workdir / "lists/partial", workdir / "archives/partial", workdir / "download"):
            path.chmod(0o1777)
        (workdir / "sources.list").write_text(sources_list)
        self.options = [
            "-o", f"Dir::Etc::SourceList={workdir / 'sources.list'}",
            "-o", "Dir::Etc::SourceParts=-",
            "-o", f"Dir::State::Lists={workdir / 'lists'}",
            "-o", f"Dir::Cache={workdir}",
            "-o", f"Dir::Cache::Archives={workdir / 'archives'}",
            "-o", "Dir::State::status=/dev/null",
            "-o", "Debug::NoLocking=1",
        ]

    def run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        result = subprocess.run([tool, *self.options, *args], capture_output=True, text=True,
                                cwd=cwd, timeout=900)
        if result.returncode != 0:
            raise KernelError(f"{tool} {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
        return result.stdout

    def update(self) -> None:
        self.run("apt-get", "-q", "update")

    def newest(self, series: str) -> tuple[str, str, str]:
        """(package, version, suite) of the newest kernel package of a series."""
        names = [n for n in self.run("apt-cache", "pkgnames", "linux-image-").split()
                 if SERIES[series].match(n)]
        if not names:
            raise KernelError(f"no linux-image package of series {series} in the configured suites")
        offers: list[tuple[str, str, str]] = []
        for line in self.run("apt-cache", "madison", *names).splitlines():
            parts = [p.strip() for p in line.split("|")]
            # "name | version | URI suite/component arch Packages": keep the suite, not the URI
            if len(parts) == 3 and parts[0] in names and len(parts[2].split()) >= 2:
                offers.append((parts[0], parts[1], parts[2].split()[1].split("/")[0]))
        if not offers:
            raise KernelError(f"apt offers no version of {names}")
        return max(offers, key=functools.cmp_to_key(lambda a, b: compare_versions(a[1], b[1])))

    def download(self, package: str, version: str) -> Path:
        target = self.workdir / "download"
        self.run("apt-get", "-q", "download", f"{package}={version}", cwd=target)
        debs = sorted(target.glob(f"{package}_*.deb"))
        if len(debs) != 1:
            raise KernelError(f"apt-get download {package} left {debs}")
        return debs[0]


def compare_versions(a: str, b: str) -> int:
    if a == b:
        return 0
    lower = subprocess.run(["dpkg", "--compare-versions", a, "lt", b], timeout=30).returncode == 0
    return -1 if lower else 1


# --- unpacking ---------------------------------------------------------------------------


def unpack(deb: Path, release: str, root: Path) -> None:
    """dpkg-deb -x, the modules tree at lib/modules/<release>, depmod, vmlinux."""
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, timeout=600)
    modules = root / "lib/modules" / release
    usr_modules = root / "usr/lib/modules" / release
    if not modules.is_dir() and usr_modules.is_dir():  # merged-/usr packages
        modules.parent.mkdir(parents=True, exist_ok=True)
        usr_modules.rename(modules)
    if not modules.is_dir():
        raise KernelError(f"{deb.name} has no lib/modules/{release}")
    # modules.dep is normally made at install time; modprobe in the guest needs it.
    subprocess.run(["depmod", "-b", str(root), release], check=True, timeout=600)
    bzimage = root / "boot" / f"vmlinuz-{release}"
    if not bzimage.is_file():
        raise KernelError(f"{deb.name} has no boot/vmlinuz-{release}")
    os.replace(bzimage, root / "vmlinuz")
    vmlinux = extract_vmlinux((root / "vmlinuz").read_bytes())
    if vmlinux is not None:
        (root / "vmlinux").write_bytes(vmlinux)


def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """The ELF kernel inside a bzImage compressed with XZ (5.10, 6.1) or zstd (6.12), or None.

    qemu boots that ELF through its PVH entry, so the guest skips decompressing itself (about
    3 s of every boot under emulation for XZ).
    """
    for magic, decompress in ((b"\xfd7zXZ\x00", unxz), (b"\x28\xb5\x2f\xfd", unzstd)):
        start = bzimage.find(magic)
        while start != -1:
            data = decompress(bzimage[start:])
            if data is not None and elf_complete(data):
                return data
            start = bzimage.find(magic, start + 1)
    return None


def unxz(data: bytes) -> bytes | None:
    try:  # stops at the end of the first stream: what follows the payload is ignored
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
    except lzma.LZMAError:
        return None


def unzstd(data: bytes) -> bytes | None:
    if shutil.which("zstd") is None:
        return None
    # zstd exits non-zero on the bytes after the payload; the frame before them is complete
    # when the ELF's segments all fit (checked by the caller).
    result = subprocess.run(["zstd", "-dcq"], input=data, capture_output=True, timeout=120)
    return result.stdout or None


def elf_complete(data: bytes) -> bool:
    """A 64-bit ELF whose loadable segments all lie within data."""
    if not data.startswith(b"\x7fELF\x02") or len(data) < 64:
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    if phnum == 0 or phoff + phentsize * phnum > len(data):
        return False
    for i in range(phnum):
        _type, _flags, offset, _vaddr, _paddr, filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if offset + filesz > len(data):
            return False
    return True


# --- initramfs ------------------------------------------------------------------------------


def initramfs(kernel: Kernel) -> Path:
    """The kernel's initramfs for the current guest/init, built when missing (~0.2 s)."""
    init = (HERE / "guest" / "init").read_bytes()
    busybox = Path("/bin/busybox")
    if not busybox.is_file():
        raise KernelError("/bin/busybox is missing: apt-get install busybox-static (scripts/setup-env --vm)")
    tag = hashlib.sha256(init + busybox.read_bytes()).hexdigest()[:12]
    target = kernel.root / f"initramfs-{tag}.cpio"
    if target.exists():
        return target
    files: list[tuple[str, int, bytes]] = [("init", 0o755, init), ("bin/busybox", 0o755, busybox.read_bytes())]
    order = []
    for path in module_load_order(kernel):
        name = Path(path).name
        data = Path(path).read_bytes()
        if name.endswith(".xz"):
            name, data = name[:-3], lzma.decompress(data)
        elif name.endswith((".zst", ".gz")):
            raise KernelError(f"{name}: only plain or .xz modules are supported in the initramfs")
        files.append((f"modules/{name}", 0o644, data))
        order.append(name)
    files.append(("modules/order", 0o644, ("\n".join(order) + "\n").encode()))
    dirs = ["bin", "dev", "proc", "sys", "modules", "share", "lower", "upper", "newroot"]
    for old in kernel.root.glob("initramfs-*.cpio"):
        old.unlink(missing_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(newc_archive(dirs, files))
    os.replace(tmp, target)
    return target


def module_load_order(kernel: Kernel) -> list[str]:
    """The .ko files of INITRAMFS_MODULES and their dependencies, in load order."""
    order: list[str] = []
    for module in INITRAMFS_MODULES:
        result = subprocess.run(
            ["modprobe", "-d", str(kernel.root), "-S", kernel.release, "--show-depends", module],
            capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise KernelError(f"modprobe --show-depends {module}: {result.stderr.strip()}")
        for line in result.stdout.splitlines():
            words = line.split()
            if words[:1] == ["insmod"] and words[1] not in order:
                order.append(words[1])
    return order


def newc_archive(dirs: list[str], files: list[tuple[str, int, bytes]]) -> bytes:
    """An uncompressed cpio archive (newc format), as the kernel unpacks an initramfs."""
    out = io.BytesIO()

    def entry(name: str, mode: int, data: bytes, ino: int) -> None:
        name_bytes = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name_bytes), 0)
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.write(name_bytes)
        out.write(b"\0" * (-(110 + len(name_bytes)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))

    ino = 1
    for d in dirs:
        entry(d, 0o040755, b"", ino)
        ino += 1
    for name, mode, data in files:
        entry(name, 0o100000 | mode, data, ino)
        ino += 1
    entry("TRAILER!!!", 0, b"", 0)
    return out.getvalue()


# --- fetch ------------------------------------------------------------------------------------


def fetch(series_list: list[str], refresh: bool = False, log=print) -> list[Kernel]:
    """Make every series ready in the cache; ask apt only for those missing (or all: refresh)."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    wanted = [s for s in series_list if refresh or find(s) is None]
    if wanted:
        with tempfile.TemporaryDirectory(prefix="apt-", dir=cache) as tmp:
            apt = PrivateApt(Path(tmp), private_sources_list(host_apt_sources()))
            apt.update()
            for series in wanted:
                fetch_one(apt, series, log)
    kernels = [require(s) for s in series_list]
    for kernel in kernels:
        initramfs(kernel)
    return kernels


def fetch_one(apt: PrivateApt, series: str, log) -> None:
    cache = cache_dir()
    package, version, suite = apt.newest(series)
    release = SERIES[series].match(package).group(1)
    root = cache / release
    if not (root / ".complete").exists():
        log(f"fetch-kernels: {series}: {package} {version} ({suite})")
        shutil.rmtree(root, ignore_errors=True)
        deb = apt.download(package, version)
        unpack(deb, release, root)
        sha = hashlib.sha256(deb.read_bytes()).hexdigest()
        when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        (root / "package").write_text(f"{package} {version} {suite} sha256={sha} fetched={when}\n")
        (root / ".complete").touch()
        deb.unlink()
    link = cache / series
    previous = link.resolve() if link.is_symlink() else None
    tmp_link = cache / f".{series}.new"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(release)
    os.replace(tmp_link, link)
    if previous is not None and previous != root and previous.parent == cache:
        shutil.rmtree(previous, ignore_errors=True)  # the kernel this series used before


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="scripts/fetch-kernels",
        description="Download and cache Debian's stock kernels for the VM tests (tests/vm).")
    ap.add_argument("series", nargs="*", help=f"series to fetch (default: all of {', '.join(SERIES)})")
    ap.add_argument("--refresh", action="store_true",
                    help="ask apt again and take a newer package if there is one")
    ap.add_argument("--list", action="store_true", help="print the cached kernels and exit")
    ap.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    args = ap.parse_args(argv)
    series_list = args.series or list(SERIES)
    unknown = [s for s in series_list if s not in SERIES]
    if unknown:
        ap.error(f"unknown series {unknown}; known: {', '.join(SERIES)}")
    if args.list:
        for series in series_list:
            kernel = find(series)
            print(f"{series}: {kernel.package if kernel else 'not fetched'}")
        return 0
    if os.geteuid() != 0:
        print("fetch-kernels: run as root (it writes the cache and runs apt)", file=sys.stderr)
        return 1
    try:
        kernels = fetch(series_list, refresh=args.refresh,
                        log=(lambda _msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr)))
    except (KernelError, subprocess.SubprocessError, OSError) as exc:
        print(f"fetch-kernels: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        for kernel in kernels:
            print(f"{kernel.series}: {kernel.package}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
