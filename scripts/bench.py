"""Benchmark kproxy's nftables, iptables or IPVS backend at scale, in throwaway network namespaces.

Run as root with the venv's Python:

    .venv/bin/python scripts/bench.py [--services 1000,10000,50000] [--endpoints 10] [--source manifests|api]

For each size, in a fresh namespace (deleted afterwards, also on failure):

--source manifests (the default):
  1. cold `kproxy sync --once` from a generated manifests file: wall time and the
     fields of its "synced" log line (plan_ms, apply_ms, total_ms, operations, ...), and
     the nft floor (`nft -f` of the ruleset it left, into an empty namespace);
  2. `kproxy cleanup`, then `kproxy run --manifests FILE` in the background: its first
     sync, then CHANGES rewrites of the file each moving one endpoint of one slice to a
     new IP, timing the "synced" line each causes (median and max) and end to end from
     the file write to that line;
  3. the agent's peak RSS (VmHWM) and CPU time, and the size of the ruleset it left.

--source api (the production path):
  1. the fake API server (tests/api/fake_apiserver.py) in the namespace, serving the same
     objects by list (in pages) and watch; `kproxy run --kubeconfig` watching it: start ->
     first sync (wall time), and RSS then; with --starts N, N agents in turn, each on an
     empty namespace, and the median of their first syncs (start-up varies from run to run
     on a shared machine);
  2. CHANGES (default 50) EndpointSlice writes, each moving one endpoint to a new IP:
     write -> kernel (`nft monitor` in the namespace shows the new element; nftables mode
     only) and write -> "synced" line, p50/p99/max;
  3. the agent's peak RSS (VmHWM) and CPU time.
  With --foreign-commits S another program commits to a table of its own in the
  namespace every S seconds while the changes are measured (as kubelet and CNIs using
  iptables-nft do on real nodes); with --tamper, after the changes, one element of
  kproxy's table is deleted behind its back and the next sync (caused by one more write)
  is timed: the drift check and the repair.
kproxy's modules are byte-compiled first, as an installed kproxy's are; the fake API
server encodes each object once, when stored (a real server serves lists from its cache).
Progress goes to stderr; stdout gets exactly one JSON object.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

TOP = Path(__file__).resolve().parent.parent
SERVICE_BASE = ipaddress.IPv4Address("10.96.0.0")  # inside 10.96.0.0/12
POD_BASE = ipaddress.IPv4Address("10.128.0.0")  # inside 10.128.0.0/9
MOVED_BASE = ipaddress.IPv4Address("10.250.0.0")  # changed endpoints, also inside 10.128.0.0/9
NODEPORT_FIRST, NODEPORT_SERVICES = 30000, 2000  # NodePorts fit 30000-32767
NODE_FLAGS = [
    "--hostname-override", "bench",
    "--node-ip", "10.0.0.1",
    "--cluster-cidr", "10.128.0.0/9",
    "--service-cluster-ip-range", "10.96.0.0/12",
]  # fmt: skip


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- manifests


def service(i: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": "ClusterIP",
        "clusterIP": str(SERVICE_BASE + 10 + i),
        "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}],
    }
    if i < NODEPORT_SERVICES:
        spec["type"] = "NodePort"
        spec["ports"][0]["nodePort"] = NODEPORT_FIRST + i
    spec["clusterIPs"] = [spec["clusterIP"]]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"svc-{i}", "namespace": "bench"},
        "spec": spec,
    }


def endpoint_slice(i: int, endpoints: int, moved: dict[int, int]) -> dict[str, Any]:
    eps = []
    for j in range(endpoints):
        ip = POD_BASE + 1 + i * endpoints + j
        if j == 0 and i in moved:
            ip = MOVED_BASE + moved[i]
        eps.append(
            {
                "addresses": [str(ip)],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": "bench" if j % 2 == 0 else "other",
            }
        )
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"svc-{i}-abcde",
            "namespace": "bench",
            "labels": {"kubernetes.io/service-name": f"svc-{i}"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        "endpoints": eps,
    }


def write_manifests(path: Path, services: int, endpoints: int, moved: dict[int, int]) -> None:
    """Write a kubectl-style List, atomically (rename), so a watcher never reads half a file."""
    items = [service(i) for i in range(services)]
    items += [endpoint_slice(i, endpoints, moved) for i in range(services)]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    tmp.replace(path)


# ---------------------------------------------------------------- processes


class Netns:
    """A namespace of our own with an uplink carrying the node IP; removed on exit."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> Netns:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        try:
            self.run("ip", "link", "set", "lo", "up")
            # A veth pair with both ends inside (the dummy module may be missing).
            self.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer")
            self.run("ip", "addr", "add", "10.0.0.1/24", "dev", "eth0")
            self.run("ip", "link", "set", "eth0-peer", "up")
            self.run("ip", "link", "set", "eth0", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], check=False)

    def argv(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, *cmd: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*cmd), check=True, capture_output=True, text=True, timeout=timeout
        )


def json_lines(text: str) -> list[dict[str, Any]]:
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                pass
    return found


def synced_fields(line: dict[str, Any]) -> dict[str, Any]:
    """The measurements of a "synced" line: everything but the log boilerplate."""
    return {k: v for k, v in line.items() if k not in ("event", "level", "timestamp", "logger", "bench_at")}


class Agent:
    """`kproxy run` in the background; its JSON log lines arrive on a queue."""

    def __init__(self, ns: Netns, kproxy: str, source: list[str]) -> None:
        """`source`: ["--manifests", FILE] or ["--kubeconfig", FILE]."""
        # IPVS: a moved endpoint's old real server drains at weight 0 and goes at the next
        # periodic sync, a second sync that must not be taken for the next change's
        periodic = ["--ipvs-sync-period", "1h"] if proxy_mode() == "ipvs" else []
        argv = ns.argv(
            kproxy, "--log-format", "json", "run", *source,
            "--min-sync-period", "0.1s", *periodic, *NODE_FLAGS,
        )  # fmt: skip
        # ip netns exec execs kproxy, so this pid is the agent itself.
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.tail: list[str] = []
        self.drift_checks: list[dict[str, Any]] = []  # "drift checked" lines (kproxy's reads for drift)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.tail = (self.tail + [raw.rstrip()])[-20:]
            for line in json_lines(raw):
                line["bench_at"] = time.monotonic()  # when it arrived, for the start-up breakdown
                if line.get("event") == "drift checked":
                    self.drift_checks.append(synced_fields(line))
                self.lines.put(line)

    def drain(self) -> None:
        while not self.lines.empty():
            self.lines.get_nowait()

    def next_synced(self, timeout: float, *, skip_noop: bool = False,
                    seen: list[dict[str, Any]] | None = None) -> tuple[dict[str, Any], float]:
        """The next "synced" line and when it arrived (monotonic); the lines before it go to `seen`."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"agent exited ({self.proc.returncode}): {self.tail}") from None
                continue
            if line.get("event") == "synced" and not (skip_noop and line.get("operations") == 0):
                return line, time.monotonic()
            if seen is not None:
                seen.append(line)
        raise TimeoutError(f"no synced line within {timeout} s; last output: {self.tail}")

    def status(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for row in f:
                key, _, value = row.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    found[key] = round(int(value.split()[0]) / 1024, 1)  # kB -> MiB
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        found["cpu_s"] = round((int(fields[11]) + int(fields[12])) / ticks, 2)  # utime + stime
        return found

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


# ---------------------------------------------------------------- measurements


def iptables_ruleset_size(ns: Netns) -> dict[str, Any]:
    """Chains and rules kproxy left, from iptables-save of the variant holding them."""
    counts: dict[str, Any] = {}
    for variant in ("nft", "legacy"):
        started = time.monotonic()
        text = ns.run(f"iptables-{variant}-save").stdout
        if ":KUBE-SERVICES" not in text:
            continue
        counts["variant"] = variant
        counts["save_ms"] = round((time.monotonic() - started) * 1000)
        lines = text.splitlines()
        counts["chains"] = sum(1 for line in lines if line.startswith(":KUBE-"))
        counts["rules"] = sum(1 for line in lines if line.startswith("-A "))
        counts["ruleset_lines"] = len(lines)
    return counts


def proxy_mode() -> str:
    return NODE_FLAGS[NODE_FLAGS.index("--proxy-mode") + 1] if "--proxy-mode" in NODE_FLAGS else "nftables"


def nft_floor(ns: Netns, path: Path, cold_wall: float) -> dict[str, Any]:
    """The floor under any nftables proxy: `nft -f` of the very ruleset kproxy programmed,
    into an empty namespace, timed here; and kproxy's cold sync as a multiple of it."""
    path.write_text(ns.run("nft", "list", "ruleset").stdout)
    ns.run("nft", "flush", "ruleset")
    started = time.monotonic()
    ns.run("nft", "-f", str(path))
    floor = time.monotonic() - started
    path.unlink()
    return {"nft_f_s": round(floor, 2), "cold_sync_over_floor": round(cold_wall / floor, 2)}


def ipvs_size(ns: Netns) -> dict[str, Any]:
    """Virtual and real servers, kube-ipvs0's addresses, the auxiliary table's elements."""
    started = time.monotonic()
    lines = ns.run("ipvsadm", "-Ln").stdout.splitlines()
    counts: dict[str, Any] = {"list_ms": round((time.monotonic() - started) * 1000)}
    counts["virtual_servers"] = sum(1 for line in lines if line.startswith(("TCP", "UDP", "SCTP")))
    counts["real_servers"] = sum(1 for line in lines if line.strip().startswith("->")) - 1  # less the header
    counts["kube_ipvs0_addresses"] = ns.run("ip", "-o", "addr", "show", "dev", "kube-ipvs0").stdout.count("\n")
    full = json.loads(ns.run("nft", "-j", "list", "ruleset").stdout)["nftables"]
    counts["aux_set_elements"] = sum(len(obj.get("set", {}).get("elem", ())) for obj in full)
    return counts


def ruleset_size(ns: Netns) -> dict[str, Any]:
    mode = proxy_mode()
    if mode == "iptables":
        return iptables_ruleset_size(ns)
    if mode == "ipvs":
        return ipvs_size(ns)
    counts: dict[str, int] = {}
    terse = json.loads(ns.run("nft", "-j", "-t", "list", "ruleset").stdout)["nftables"]
    for obj in terse:
        kind = next(iter(obj))
        if kind != "metainfo":
            counts[kind + "s"] = counts.get(kind + "s", 0) + 1
    started = time.monotonic()
    full = json.loads(ns.run("nft", "-j", "list", "ruleset").stdout)["nftables"]
    counts["list_json_ms"] = round((time.monotonic() - started) * 1000)
    counts["set_and_map_elements"] = sum(
        len(obj.get(kind, {}).get("elem", ())) for obj in full for kind in ("set", "map")
    )
    counts["ruleset_lines"] = len(ns.run("nft", "list", "ruleset").stdout.splitlines())
    return counts


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "max": max(values), "min": min(values)}


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    at = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": round(at(0.5), 1), "p99": round(at(0.99), 1), "max": round(ordered[-1], 1),
            "min": round(ordered[0], 1), "n": len(ordered)}


MONITOR_START_S = 300.0


class KernelMonitor:
    """`nft monitor new elements` in the namespace: when each new element reached the
    kernel (nft flushes every event line, so the read time is the commit time plus a
    pipe hop)."""

    def __init__(self, ns: Netns) -> None:
        self.proc = subprocess.Popen(
            ns.argv("nft", "monitor", "new", "elements"),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        # nft monitor loads the ruleset before it listens (seconds at 200,000 elements):
        # an element of a table of our own shows when it listens. (The commit moves the
        # ruleset generation, so the agent's next sync reads the kernel back: the caller
        # makes an uncounted change first.)
        ns.run("nft", "add table ip kproxy-bench-probe")
        ns.run("nft", "add set ip kproxy-bench-probe ready { type ipv4_addr ; }")
        # Each probe moves the generation, which restarts a listing in progress: wait longer
        # each time, or a listing slower than the probe interval never completes (nft lists
        # the 50k table in ~50 s on a slow run).
        deadline = time.monotonic() + MONITOR_START_S
        wait = 1.0
        while time.monotonic() < deadline:
            ns.run("nft", "add element ip kproxy-bench-probe ready { 192.0.2.1 }")
            try:
                self.wait_for("192.0.2.1", wait)
                break
            except TimeoutError:
                ns.run("nft", "delete element ip kproxy-bench-probe ready { 192.0.2.1 }")
                wait = min(wait * 2, MONITOR_START_S / 2)
        else:
            self.stop()  # the caller gets no monitor to stop
            raise TimeoutError(f"nft monitor did not start listening within {MONITOR_START_S:.0f} s")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put((time.monotonic(), raw))

    def wait_for(self, ip: str, timeout: float) -> float:
        """When an element holding `ip` was added (monotonic); bounded by `timeout`."""
        pattern = re.compile(re.escape(ip) + r"(?![\d])")
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                at, line = self.lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if pattern.search(line):
                return at
        raise TimeoutError(f"{ip} did not reach the kernel within {timeout} s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class ForeignCommits:
    """Another program's commits to a table of its own in the namespace, one every
    `interval` seconds (an element added, then deleted), until stopped."""

    def __init__(self, ns: Netns, interval: float) -> None:
        self.ns = ns
        self.interval = interval
        self.commits = 0
        self._stop = threading.Event()
        ns.run("nft", "add table ip kproxy-bench-foreign")
        ns.run("nft", "add set ip kproxy-bench-foreign s { type ipv4_addr ; }")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        verb = "add"
        while not self._stop.wait(self.interval):
            subprocess.run(self.ns.argv("nft", verb, "element", "ip", "kproxy-bench-foreign", "s", "{ 192.0.2.7 }"),
                           capture_output=True, check=False, timeout=60)
            self.commits += 1
            verb = "delete" if verb == "add" else "add"

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(70)
        return self.commits


def next_synced_with(agent: Agent, timeout: float) -> tuple[dict[str, Any], float, list[dict[str, Any]]]:
    """The next "synced" line that did something, when it came, and the lines before it."""
    seen: list[dict[str, Any]] = []
    line, at = agent.next_synced(timeout, skip_noop=True, seen=seen)
    return line, at, seen


def bench_size(
    kproxy: str, services: int, endpoints: int, changes: int, timeout: float, workdir: Path
) -> dict[str, Any]:
    result: dict[str, Any] = {"services": services, "endpoints_per_service": endpoints, "source": "manifests"}
    manifests = workdir / f"bench-{services}.json"
    moved: dict[int, int] = {}
    started = time.monotonic()
    write_manifests(manifests, services, endpoints, moved)
    result["manifests_mib"] = round(manifests.stat().st_size / 2**20, 1)
    result["generate_s"] = round(time.monotonic() - started, 2)

    with Netns(f"kpbench-{os.getpid()}-{services}") as ns:
        log(f"{services} services: cold sync --once")
        started = time.monotonic()
        cold = subprocess.run(
            ns.argv(kproxy, "--log-format", "json", "sync", "--once", "--manifests",
                    str(manifests), *NODE_FLAGS),
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        wall = time.monotonic() - started
        if cold.returncode != 0:
            raise RuntimeError(f"sync --once exited {cold.returncode}: {cold.stderr[-2000:]}")
        synced = [line for line in json_lines(cold.stdout + "\n" + cold.stderr)
                  if line.get("event") == "synced"]  # fmt: skip
        result["cold_sync"] = {"wall_s": round(wall, 2), **(synced_fields(synced[-1]) if synced else {})}
        result["ruleset"] = ruleset_size(ns)
        if proxy_mode() == "nftables":
            result["nft_floor"] = nft_floor(ns, workdir / f"ruleset-{services}.nft", wall)

        ns.run(kproxy, "cleanup", timeout=timeout)
        log(f"{services} services: run, first sync")
        agent = Agent(ns, kproxy, ["--manifests", str(manifests)])
        try:
            started = time.monotonic()
            first, at = agent.next_synced(timeout)
            result["run_first_sync"] = {"wall_s": round(at - started, 2), **synced_fields(first)}
            samples = []
            for n in range(changes):
                slice_index = (n * 7919 + 1) % services  # spread over the services
                moved[slice_index] = n + 1
                agent.drain()
                time.sleep(0.3)  # past min-sync-period, and a distinct mtime
                write_manifests(manifests, services, endpoints, moved)
                written = time.monotonic()
                line, at = agent.next_synced(timeout, skip_noop=True)
                sample = {"e2e_ms": round((at - written) * 1000), **synced_fields(line)}
                samples.append(sample)
                log(f"{services} services: change {n + 1}: {sample}")
            result["endpoint_change"] = {
                "samples": samples,
                **{
                    key: spread([s[key] for s in samples])
                    for key in ("apply_ms", "netlink_ms", "total_ms", "plan_ms", "e2e_ms")
                    if all(isinstance(s.get(key), (int, float)) for s in samples)
                },
                "operations": [s.get("operations") for s in samples],
            }
            result["agent"] = agent.status()
        finally:
            result.setdefault("agent", {})["exit_code"] = agent.stop()
    return result


def settle(agent: Agent, quiet: float = 2.0, limit: float = 120.0) -> int:
    """Wait until the agent has not synced for `quiet` seconds (the Node object, listed
    after the first sync, may cause another full one); how many syncs that took."""
    syncs, deadline = 0, time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            agent.next_synced(quiet)
            syncs += 1
        except TimeoutError:
            return syncs
    return syncs


def first_sync(ns: Netns, kproxy: str, kubeconfig: Path, timeout: float) -> tuple[Agent, dict[str, Any]]:
    """Start an agent on the API server; its first sync and where its start-up went (to its
    first log line: imports, config; its lists)."""
    started = time.monotonic()
    agent = Agent(ns, kproxy, ["--kubeconfig", str(kubeconfig)])
    try:
        before: list[dict[str, Any]] = []
        first, at = agent.next_synced(timeout, seen=before)
    except BaseException:
        agent.stop()
        raise
    return agent, {
        "run_first_sync": {"wall_s": round(at - started, 2), **synced_fields(first)},
        "start_up": {
            "first_log_line_s": round(before[0]["bench_at"] - started, 2) if before else None,
            "listed_ms": {line["kind"]: line["ms"] for line in before if line.get("event") == "listed"},
            "lists_done_s": max((round(line["bench_at"] - started, 2) for line in before
                                 if line.get("event") == "listed"), default=None),
        },
        "agent_at_first_sync": agent.status(),
    }


def bench_api(
    kproxy: str, services: int, endpoints: int, changes: int, timeout: float, workdir: Path,
    foreign_interval: float = 0.0, tamper: bool = False, starts: int = 1,
) -> dict[str, Any]:
    """The agent watching the fake API server: start -> first sync (of `starts` agents in
    turn, each on an empty namespace), write -> kernel, RSS."""
    sys.path.insert(0, str(TOP))  # the fake API server lives with the API tests (soak.py uses it too)
    from tests.api.fake_apiserver import FakeApiServer, Store, in_netns, write_kubeconfig

    result: dict[str, Any] = {"services": services, "endpoints_per_service": endpoints, "source": "api"}
    moved: dict[int, int] = {}
    started = time.monotonic()
    store = Store()
    for i in range(services):
        store.apply(service(i))
        store.apply(endpoint_slice(i, endpoints, moved))
    result["generate_s"] = round(time.monotonic() - started, 2)

    with Netns(f"kpbench-{os.getpid()}-{services}") as ns:
        server = in_netns(ns.name, lambda: FakeApiServer(store))
        monitor: KernelMonitor | None = None
        foreign: ForeignCommits | None = None
        try:
            kubeconfig = workdir / f"kubeconfig-{services}"
            write_kubeconfig(kubeconfig, server.url)
            earlier = []
            for n in range(1, starts):  # agents started only to time their first sync
                log(f"{services} services (api): run, first sync ({n} of {starts})")
                agent, first = first_sync(ns, kproxy, kubeconfig, timeout)
                agent.stop()
                earlier.append(first)
                ns.run(kproxy, "cleanup", timeout=timeout)  # the next starts on an empty namespace
            log(f"{services} services (api): run, first sync")
            agent, first = first_sync(ns, kproxy, kubeconfig, timeout)
            try:
                result.update(first)
                if earlier:
                    walls = [run["run_first_sync"]["wall_s"] for run in [*earlier, first]]
                    result["first_syncs"] = {"wall_s": walls, "median_s": statistics.median(walls),
                                             "earlier": earlier}
                result["syncs_while_settling"] = settle(agent)
                monitor = KernelMonitor(ns) if proxy_mode() == "nftables" else None
                if foreign_interval > 0:
                    foreign = ForeignCommits(ns, foreign_interval)
                samples = []
                for n in range(changes + 1):  # the first, uncounted: it absorbs the probe's readback
                    slice_index = (n * 7919 + 1) % services
                    moved[slice_index] = n + 1
                    ip = str(MOVED_BASE + n + 1)
                    changed = endpoint_slice(slice_index, endpoints, moved)
                    agent.drain()
                    time.sleep(0.2)  # past min-sync-period: the write is not held back by it
                    written = time.monotonic()
                    store.apply(changed)
                    try:
                        kernel_at = monitor.wait_for(ip, min(timeout, 60)) if monitor else None
                    except TimeoutError as err:
                        raise TimeoutError(f"{err}; agent's last output: {agent.tail}") from None
                    line, at = agent.next_synced(timeout, skip_noop=True)
                    sample = {"synced_line_ms": round((at - written) * 1000, 1), **synced_fields(line)}
                    if kernel_at is not None:
                        sample["kernel_ms"] = round((kernel_at - written) * 1000, 1)
                    if n == 0:
                        result["first_change_uncounted"] = sample
                        continue
                    samples.append(sample)
                    if n < 3 or n == changes:
                        log(f"{services} services (api): change {n}: {sample}")
                result["endpoint_change"] = {
                    key: percentiles([s[key] for s in samples])
                    for key in ("kernel_ms", "synced_line_ms", "total_ms", "apply_ms", "plan_ms")
                    if samples and all(isinstance(s.get(key), (int, float)) for s in samples)
                }
                result["endpoint_change"]["operations"] = sorted({s.get("operations") for s in samples}, key=str)
                if foreign is not None:
                    result["foreign_commits"] = {"interval_s": foreign_interval, "commits": foreign.stop()}
                    foreign = None
                # each read of kproxy's table for drift, until now (first sync, settling, changes)
                result["drift_checks"] = list(agent.drift_checks)
                result["agent_after_changes"] = agent.status()
                if tamper and proxy_mode() == "nftables":
                    result["tamper"] = measure_tamper(ns, agent, store, services, endpoints, moved, changes + 1,
                                                      timeout)
                result["agent"] = agent.status()
            finally:
                result.setdefault("agent", {})["exit_code"] = agent.stop()
        finally:
            if foreign is not None:
                foreign.stop()
            if monitor is not None:
                monitor.stop()
            server.stop()
    return result


def measure_tamper(ns: Netns, agent: Agent, store: Any, services: int, endpoints: int,
                   moved: dict[int, int], n: int, timeout: float) -> dict[str, Any]:
    """Delete one endpoint element of kproxy's table behind its back, then write one change:
    the sync it causes finds the drift and repairs it. Its synced line, the time from the
    write, what it reported, and the time the sync spent beyond plan, render and apply
    (the drift check, mostly)."""
    victim = services // 2
    key = f"{SERVICE_BASE + 10 + victim} . tcp . 80 . 1"
    ns.run("nft", "delete", "element", "ip", "kproxy", f"endpoints-{endpoints}", "{", key, "}")
    slice_index = (n * 7919 + 1) % services
    moved[slice_index] = n + 1
    agent.drain()
    time.sleep(0.2)
    written = time.monotonic()
    store.apply(endpoint_slice(slice_index, endpoints, moved))
    line, at, before = next_synced_with(agent, timeout)
    repaired = [entry for entry in before if entry.get("event") == "drift repaired"]
    checks = [synced_fields(entry) for entry in before if entry.get("event") == "drift checked"]
    accounted = sum(float(line.get(k) or 0) for k in ("plan_ms", "render_ms", "apply_ms"))
    back = ns.run("nft", "list", "map", "ip", "kproxy", f"endpoints-{endpoints}").stdout
    return {
        "deleted": key,
        "synced_line_ms": round((at - written) * 1000, 1),
        "synced": synced_fields(line),
        "unaccounted_ms": round(float(line.get("total_ms") or 0) - accounted, 1),
        "drift_repaired": [entry.get("drifted") for entry in repaired],
        "drift_checks": checks,
        "restored": key in back,
        "agent": agent.status(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", default="1000,10000,30000", help="comma-separated sizes")
    parser.add_argument("--endpoints", type=int, default=10, help="endpoints per service")
    parser.add_argument("--changes", type=int, help="one-endpoint changes per size (default 5; api: 50)")
    parser.add_argument("--source", choices=("manifests", "api"), default="manifests",
                        help="where the agent reads the cluster: a manifests file, or the fake API server")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per sync")
    parser.add_argument("--foreign-commits", type=float, default=0.0, metavar="SECONDS",
                        help="api: another program commits to its own nftables table this often while "
                        "the changes are measured (0: never)")
    parser.add_argument("--starts", type=int, default=1, metavar="N",
                        help="api: start N agents in turn, each on an empty namespace, and report each one's "
                             "start -> first sync and their median (the last one goes on to the changes)")
    parser.add_argument("--tamper", action="store_true",
                        help="api, nftables: after the changes, delete one element of kproxy's table and time "
                        "the sync that finds and repairs it")
    parser.add_argument("--kproxy", help="the kproxy to run (default: .venv-run's, made by scripts/setup-env "
                        "--bench: runtime dependencies only, as the image installs them)")
    parser.add_argument("--proxy-mode", choices=("nftables", "iptables", "ipvs"), default="nftables",
                        help="backend to measure (iptables: the variant kproxy detects, nft in a fresh namespace; "
                        "ipvs: only where the kernel has IP_VS, e.g. in tests/vm/run-in-vm)")
    args = parser.parse_args()
    NODE_FLAGS.extend(["--proxy-mode", args.proxy_mode])
    if os.geteuid() != 0:
        print("bench: must run as root (creates network namespaces)", file=sys.stderr)
        return 1
    sizes = [int(s) for s in args.services.split(",") if s]

    commit = subprocess.run(["git", "-C", str(TOP), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    # kproxy is installed editable: uncommitted changes under kproxy/ are what runs.
    dirty = subprocess.run(["git", "-C", str(TOP), "status", "--porcelain", "--", "kproxy"],
                           capture_output=True, text=True).stdout.strip() != ""  # fmt: skip
    changes = args.changes if args.changes is not None else (50 if args.source == "api" else 5)
    if args.kproxy is None:
        # The test tools in .venv bring modules an agent would import (rich via structlog,
        # kubernetes-validate via kubernetes): 0.1 s of start-up no installed kproxy pays.
        subprocess.run([str(TOP / "scripts/setup-env"), "--bench"], check=True)
        args.kproxy = str(TOP / ".venv-run/bin/kproxy")
    # An installed kproxy runs from bytecode (pip compiles it); an editable checkout under
    # PYTHONDONTWRITEBYTECODE would compile every module at each start (0.27 s of start-up).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(TOP / "kproxy")], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip

    def measure(kproxy: str, size: int, endpoints: int, changes: int, timeout: float, workdir: Path) -> dict[str, Any]:
        if args.source == "api":
            return bench_api(kproxy, size, endpoints, changes, timeout, workdir,
                             foreign_interval=args.foreign_commits, tamper=args.tamper, starts=args.starts)
        return bench_size(kproxy, size, endpoints, changes, timeout, workdir)

    report: dict[str, Any] = {
        "commit": commit,
        "proxy_mode": args.proxy_mode,
        "source": args.source,
        "kproxy_uncommitted_changes": dirty,
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "nft": subprocess.run(["nft", "--version"], capture_output=True, text=True).stdout.strip(),
        "python": platform.python_version(),
        "bytecode": "compiled before the runs",
        "kproxy_binary": os.path.relpath(args.kproxy, TOP),
        # other work on the machine skews every figure: the 1/5/15-minute load, before and after
        "loadavg_before": os.getloadavg(),
        "results": [],
    }
    workdir = Path(tempfile.mkdtemp(prefix="kproxy-bench-"))
    os.environ["KPROXY_STATE_DIR"] = str(workdir)  # kproxy's records (route_localnet) go with the namespace
    status = 0
    try:
        for size in sizes:
            try:
                report["results"].append(
                    measure(args.kproxy, size, args.endpoints, changes, args.timeout, workdir)
                )
            except Exception as e:  # noqa: BLE001 - one size failing must not hide the others' numbers
                log(f"{size} services failed: {e}")
                report["results"].append({"services": size, "error": str(e)[-3000:]})
                status = 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["loadavg_after"] = os.getloadavg()
    print(json.dumps(report, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
