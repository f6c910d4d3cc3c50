"""Soak kproxy: a real agent in a throwaway network namespace, fed through the fake API
server with steady churn, for a bounded time. Not part of CI.

Run as root with the venv's Python:

    .venv/bin/python scripts/soak.py [--duration 10m] [--rate 10] [--services 200] [--proxy-mode nftables]

What it does:
  1. creates one namespace (deleted afterwards, also on failure or Ctrl-C) and starts the
     fake API server (tests/api/fake_apiserver.py) inside it, with --services Services of
     --endpoints endpoints each;
  2. runs `kproxy run --kubeconfig` in that namespace (bench.py's Agent) and waits for its
     first sync;
  3. for --duration, makes --rate changes a second (an endpoint moves: 80%; a Service and
     its slice are deleted or created again: 20%), then stops changing and waits for the
     agent to catch up, and checks that the kernel holds the store's final Services;
  4. prints one JSON object: RSS (MiB) at the first sync and at the end, peak RSS, CPU
     seconds, sync count and p50/p99 of the "synced" lines' total_ms, changes made,
     warnings and errors the agent logged (by event), and whether it converged.
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TOP = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(TOP), str(TOP / "scripts")]

from bench import NODE_FLAGS, Agent, Netns  # noqa: E402

from kproxy.values import parse_duration  # noqa: E402
from tests.api.fake_apiserver import FakeApiServer, Store, in_netns, write_kubeconfig  # noqa: E402
from tests.builders import endpoint_slice, service  # noqa: E402


def log(message: str) -> None:
    print(f"soak: {message}", file=sys.stderr, flush=True)


def kproxy_binary() -> str:
    beside = Path(sys.executable).parent / "kproxy"
    return str(beside if beside.exists() else TOP / ".venv" / "bin" / "kproxy")


class Cluster:
    """The store's Services and slices, and the random changes made to them."""

    def __init__(self, store: Store, services: int, endpoints: int, rng: random.Random) -> None:
        self.store = store
        self.endpoints = endpoints
        self.rng = rng
        self.present = set(range(services))
        self.absent: set[int] = set()
        self.next_ip = 0
        for i in range(services):
            self.create(i)

    def pod_ips(self, n: int) -> list[str]:
        ips = []
        for _ in range(n):
            self.next_ip += 1
            ips.append(f"10.{128 + (self.next_ip >> 16) % 64}.{(self.next_ip >> 8) & 255}.{self.next_ip & 255}")
        return ips

    def create(self, i: int) -> None:
        self.store.apply(service(f"svc{i}", cluster_ip=f"10.96.{i >> 8}.{i & 255}", ports=[80]))
        self.store.apply(endpoint_slice(f"svc{i}", self.pod_ips(self.endpoints), port=8080))
        self.present.add(i)
        self.absent.discard(i)

    def change(self) -> str:
        roll = self.rng.random()
        if roll < 0.1 and len(self.present) > 1:
            i = self.rng.choice(sorted(self.present))
            self.store.delete("Service", f"svc{i}")
            self.store.delete("EndpointSlice", f"svc{i}-abc12")
            self.present.discard(i)
            self.absent.add(i)
            return "delete"
        if roll < 0.2 and self.absent:
            self.create(self.rng.choice(sorted(self.absent)))
            return "create"
        i = self.rng.choice(sorted(self.present))
        ips = self.pod_ips(self.endpoints)  # every endpoint moves: one slice update
        self.store.apply(endpoint_slice(f"svc{i}", ips, port=8080))
        return "move"


def rss(pid: int) -> dict[str, float]:
    found: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for row in f:
            key, _, value = row.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = round(int(value.split()[0]) / 1024, 1)
    return found


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


class Lines:
    """Everything the agent logged, taken off its queue as it comes."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.sync_ms: list[float] = []
        self.problems: dict[str, int] = {}

    def drain(self, wait: float = 0.0) -> list[dict[str, Any]]:
        got = []
        deadline = time.monotonic() + wait
        while True:
            try:
                line = self.agent.lines.get(timeout=max(0.0, deadline - time.monotonic()) if wait else 0.001)
            except queue.Empty:
                return got
            got.append(line)
            if line.get("event") == "synced":
                self.sync_ms.append(float(line.get("total_ms", 0)))
            if line.get("level") in ("warning", "error", "critical"):
                key = f"{line['level']}: {line.get('event')}"
                self.problems[key] = self.problems.get(key, 0) + 1


def kernel_services(ns: Netns, kproxy: str) -> set[str]:
    view = json.loads(ns.run(kproxy, "dump", "--json", timeout=120).stdout)
    return {sp["name"].split(":")[0] for sp in view.get("service_ports", [])}


def soak(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    kproxy = kproxy_binary()
    NODE_FLAGS.extend(["--proxy-mode", args.proxy_mode])
    result: dict[str, Any] = {"duration_s": args.duration, "rate_per_s": args.rate, "services": args.services,
                              "endpoints_per_service": args.endpoints, "proxy_mode": args.proxy_mode}
    with Netns(f"kpsoak-{os.getpid()}") as ns:
        store = Store()
        cluster = Cluster(store, args.services, args.endpoints, rng)
        server = in_netns(ns.name, lambda: FakeApiServer(store))
        kubeconfig = workdir / "kubeconfig"
        write_kubeconfig(kubeconfig, server.url)
        agent = Agent(ns, kproxy, ["--kubeconfig", str(kubeconfig)])
        lines = Lines(agent)
        try:
            agent.next_synced(120)
            lines.sync_ms.clear()
            result["rss_start_mib"] = rss(agent.proc.pid)["VmRSS"]
            log(f"first sync done; churning for {args.duration:.0f}s at {args.rate}/s")
            changes: dict[str, int] = {}
            started = time.monotonic()
            next_at = started
            last_report = started
            while (now := time.monotonic()) - started < args.duration:
                if agent.proc.poll() is not None:
                    raise RuntimeError(f"agent exited {agent.proc.returncode}: {agent.tail}")
                kind = cluster.change()
                changes[kind] = changes.get(kind, 0) + 1
                next_at += 1.0 / args.rate
                lines.drain()
                if now - last_report >= 30:
                    last_report = now
                    log(f"{now - started:.0f}s: {sum(changes.values())} changes, {len(lines.sync_ms)} syncs, "
                        f"rss {rss(agent.proc.pid)['VmRSS']} MiB")
                time.sleep(max(0.0, next_at - time.monotonic()))
            result["changes"] = changes
            # caught up: no change for a while and the kernel holds the store's Services
            lines.drain(wait=3.0)
            want = {f"default/svc{i}" for i in cluster.present}
            deadline = time.monotonic() + 60
            have = kernel_services(ns, kproxy)
            while have != want and time.monotonic() < deadline:
                lines.drain(wait=1.0)
                have = kernel_services(ns, kproxy)
            result["converged"] = have == want
            memory = rss(agent.proc.pid)
            result["rss_end_mib"] = memory["VmRSS"]
            result["rss_peak_mib"] = memory["VmHWM"]
            result["cpu_s"] = agent.status()["cpu_s"]
            result["syncs"] = len(lines.sync_ms)
            result["sync_ms"] = {"p50": percentile(lines.sync_ms, 0.5), "p99": percentile(lines.sync_ms, 0.99),
                                 "max": max(lines.sync_ms, default=0.0),
                                 "mean": round(statistics.fmean(lines.sync_ms), 2) if lines.sync_ms else 0.0}
        finally:
            code = agent.stop()
            server.stop()
        lines.drain()
        result["errors"] = {"agent_exit": code, "by_event": lines.problems,
                            "count": sum(lines.problems.values())}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=parse_duration, default=600.0, metavar="DURATION",
                        help="how long to churn (default 10m; e.g. 2m30s)")
    parser.add_argument("--rate", type=float, default=10.0, help="changes per second (default 10)")
    parser.add_argument("--services", type=int, default=200, help="Services at the start (default 200)")
    parser.add_argument("--endpoints", type=int, default=5, help="endpoints per Service (default 5)")
    parser.add_argument("--proxy-mode", choices=("nftables", "iptables"), default="nftables")
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("soak: must run as root (it creates a network namespace)", file=sys.stderr)
        return 2
    if not 0 < args.duration <= 3600 or not 0 < args.rate <= 1000:
        print("soak: --duration must be within 1h and --rate within 1000/s", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="kproxy-soak-") as tmp:
        try:
            result = soak(args, Path(tmp))
        except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as err:
            print(f"soak: failed: {err}", file=sys.stderr)
            return 1
    print(json.dumps(result, indent=2))
    return 0 if result.get("converged") and result["errors"]["agent_exit"] in (0, None) else 1


if __name__ == "__main__":
    sys.exit(main())
