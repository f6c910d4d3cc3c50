"""`kproxy dump --stats` and `kproxy top` with real connections in node1: held TCP
connections through a ClusterIP and a NodePort show as established on the frontend and on
the endpoint that answered; fresh connections during the --rate window as new per second;
UDP flows too. Both backends."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest
import traffic
from kproxy_lab import Kproxy
from topology import NODE1_IP, TIME_SCALE, Cluster

from manifests import endpoint, endpoint_slice, port, service, slice_port

pytestmark = pytest.mark.netns

CLUSTER_IP = "10.96.0.95"


def objects(cluster: Cluster) -> list[dict]:
    return [
        service("web", CLUSTER_IP, [port(80, 8080, name="http", node_port=30095),
                                    port(53, 8080, name="dns", protocol="UDP")], type="NodePort"),
        endpoint_slice("web", [endpoint(cluster.pods[p]) for p in ("pod2", "pod4")],
                       [slice_port(8080, name="http"), slice_port(8080, name="dns", protocol="UDP")]),
    ]


def frontend(stats: dict, kind: str, proto: str) -> dict:
    (found,) = [f for f in stats["frontends"] if f["kind"] == kind and f["protocol"] == proto]
    return found


def test_dump_stats_counts_real_connections(cluster: Cluster, kproxy: Kproxy) -> None:
    kproxy.sync(objects(cluster))
    pod1 = cluster.ns("pod1")
    held = [traffic.Holder(pod1, CLUSTER_IP, 80) for _ in range(3)]
    held.append(traffic.Holder(cluster.client, NODE1_IP, 30095))
    try:
        answered = [h.greeting.split()[0] for h in held]
        ips = {name: f"{cluster.pods[name].ip}:8080" for name in ("pod2", "pod4")}
        assert not traffic.udp(pod1, CLUSTER_IP, 53, count=2).failures

        stats = json.loads(kproxy.cli("dump", "--stats", "--json").stdout)
        assert stats["window_seconds"] is None
        cip = frontend(stats, "ClusterIP", "TCP")
        assert cip["address"] == f"{CLUSTER_IP}:80" and cip["established"] == 3, cip
        per_endpoint = {e["endpoint"]: e["established"] for e in cip["endpoints"]}
        assert per_endpoint == {ips[p]: answered[:3].count(p) for p in ("pod2", "pod4")}, (per_endpoint, answered)
        nodeport = frontend(stats, "NodePort", "TCP")
        assert nodeport["established"] == 1 and {e["endpoint"]: e["established"] for e in nodeport["endpoints"]} \
            == {ips[p]: int(answered[3] == p) for p in ("pod2", "pod4")}, nodeport
        udp = frontend(stats, "ClusterIP", "UDP")
        assert udp["established"] + udp["other"] == 2, udp  # two flows from fresh sockets

        # new connections during a window: 12 short ones, 3 s after the start of a --rate 6s
        # (its first read comes well before, its second well after; both stretched in an
        # emulated VM kernel, where kproxy alone takes seconds to start)
        window = 6 * TIME_SCALE
        burst = subprocess.Popen(["sh", "-c", f'sleep {3 * TIME_SCALE}; exec "$@"', "sh", "ip", "netns", "exec",
                                  pod1, sys.executable, str(traffic.PROBE), "tcp", CLUSTER_IP, "80", "--count", "12"],
                                 stdout=subprocess.DEVNULL)
        stats = json.loads(kproxy.cli("dump", "--stats", "--rate", f"{window:g}s", "--json").stdout)
        burst.wait(timeout=20 * TIME_SCALE)
        cip = frontend(stats, "ClusterIP", "TCP")
        assert stats["window_seconds"] == window and cip["new_per_second"] == round(12 / window, 2), cip
        assert cip["established"] == 3 and cip["other"] == 12, cip  # the short ones are in TIME_WAIT

        text = kproxy.cli("dump", "--stats").stdout
        assert f"  ClusterIP {CLUSTER_IP}:80" in text and f"    -> {ips['pod2']}" in text, text
    finally:
        for h in held:
            h.close()


def test_top_plain_lines_and_full_screen(cluster: Cluster, kproxy: Kproxy) -> None:
    kproxy.sync(objects(cluster))
    holder = traffic.Holder(cluster.ns("pod1"), CLUSTER_IP, 80)
    try:
        out = kproxy.cli("top", "--interval", "0.3s", "--iterations", "2").stdout
        assert out.count("--- ") == 2 and "\x1b[" not in out, out  # not a terminal: plain lines
        assert f"  ClusterIP {CLUSTER_IP}:80" in out and "new/s" in out

        # on a terminal: the alternate screen, frames drawn over each other, Ctrl-C restores it
        main, child = pty.openpty()
        proc = subprocess.Popen(["ip", "netns", "exec", cluster.node1, kproxy.binary, "top", "--interval", "0.2s"],
                                stdin=child, stdout=child, stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(child)
        try:
            screen = b""
            deadline = time.monotonic() + 15 * TIME_SCALE  # an emulated guest takes seconds to import kproxy
            while screen.count(b"\x1b[H") < 3 and time.monotonic() < deadline:
                if select.select([main], [], [], 0.5)[0]:
                    screen += os.read(main, 65536)
            assert screen.count(b"\x1b[H") >= 3, screen[-2000:]  # drawing: its Ctrl-C handler is set
            os.killpg(proc.pid, signal.SIGINT)
            assert proc.wait(timeout=10 * TIME_SCALE) == 0
        finally:
            if proc.poll() is None:  # a failed check must not leave top running
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        while select.select([main], [], [], 0.3)[0]:
            try:
                screen += os.read(main, 65536)
            except OSError:
                break
        os.close(main)
        assert screen.startswith(b"\x1b[?1049h\x1b[?25l") and screen.endswith(b"\x1b[?25h\x1b[?1049l"), screen[-80:]
        assert screen.count(b"\x1b[H") >= 3 and b"\x1b[2J" not in screen  # redrawn in place, never wiped
        assert f"ClusterIP {CLUSTER_IP}:80".encode() in screen
    finally:
        holder.close()
