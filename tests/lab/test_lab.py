"""`kproxy lab` for real: the default lab comes up, real HTTPS requests go through the load
balancer to both websites, cluster DNS and ClusterIPs work, `kproxy trace` on each hop
agrees with where requests really landed and the source address they arrived with,
scaling moves the rules, and `down` leaves nothing behind."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

KPROXY = [sys.executable, "-m", "kproxy"]


class LabRun:
    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root
        self.env = {**os.environ, "KPROXY_LAB_DIR": str(root)}

    def kproxy(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*KPROXY, "lab", "--name", self.name, *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kproxy lab {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def kproxy_raw(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`kproxy lab ACTION ...` as given (say, --name after the action)."""
        proc = subprocess.run([*KPROXY, "lab", *args], capture_output=True, text=True, env=self.env, timeout=120)
        assert proc.returncode == 0, f"kproxy lab {' '.join(args)} exited {proc.returncode}\n{proc.stderr}"
        return proc

    def state(self) -> dict:
        return json.loads((self.root / self.name / "state.json").read_text())

    def pods(self, prefix: str = "") -> dict[str, dict]:
        return {p["name"]: p for p in self.state()["pods"] if p["name"].startswith(prefix)}

    def requests(self, url: str, source: str = "client", count: int = 20) -> list[dict]:
        ns = f"{self.name}-{source}"
        argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "kproxy.lab.request", url,
                "--count", str(count), "--json"]
        if url.startswith("https"):
            argv += ["--cacert", str(self.root / self.name / "certs" / "bundle.pem")]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10 + 4 * count).stdout
        return [json.loads(line) for line in out.splitlines()]

    def trace(self, node: str, src: str, to: str) -> dict:
        out = self.kproxy("exec", node, "--", "kproxy", "trace", "--from", src, "--to", to, "--json").stdout
        return json.loads(out)

    def namespaces(self) -> list[str]:
        listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return [line.split()[0] for line in listing.splitlines() if line.startswith(f"{self.name}-")]

    def processes(self) -> list[str]:
        """Command lines of every process that mentions this lab's files."""
        found = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if str(self.root / self.name) in cmdline:
                    found.append(cmdline)
        return found


def pod_of(body: str) -> tuple[str, str, str]:
    """'website1fe-2 on node1 (saw 10.244.2.10)' -> (pod, node, source)."""
    pod, _on, node, _saw, source = body.split()
    return pod, node, source.rstrip(")")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabRun]:
    run = LabRun(f"kpt{secrets.token_hex(3)}", tmp_path_factory.mktemp("labs"))
    try:
        up = run.kproxy("up")
        run.up_output = up.stdout  # type: ignore[attr-defined]
        yield run
    finally:
        run.kproxy("down", check=False)


def test_https_through_the_load_balancer_reaches_both_websites_on_several_nodes(lab):
    pods = lab.pods()
    for site in ("website1", "website2"):
        results = lab.requests(f"https://{site}.com/", count=24)
        assert len(results) == 24 and all(r["status"] == 200 for r in results), results
        landed = {pod_of(r["body"])[:2] for r in results}
        # TLS was verified against the site's own certificate (each names only its host);
        # every answer comes from that site's pods, which are spread over the nodes.
        assert {p for p, _ in landed} <= {n for n in pods if n.startswith(f"{site}fe-")}
        assert len(landed) >= 2 and len({node for _, node in landed}) >= 2
        assert {pods[p]["node"] for p, _ in landed} == {node for _, node in landed}
        assert {r["ingress"].split()[0] for r in results} == {"ingress-nginx-controller-1"}


def test_cluster_dns_and_cluster_ip_from_pods_on_different_nodes(lab):
    services = {line.split()[0]: line.split() for line in lab.kproxy("status").stdout.splitlines()
                if line.startswith("    default/")}
    cluster_ip = services["default/website2fe"][2]
    callers = [p for p in lab.pods("website1fe-").values()]
    assert len({p["node"] for p in callers}) >= 2
    for caller in callers[:2]:
        answer = lab.kproxy("exec", caller["name"], "--", "getent", "ahostsv4",
                            "website2fe.default.svc.cluster.local").stdout.split()
        assert answer[0] == cluster_ip
        results = lab.requests("http://website2fe/", source=caller["name"], count=10)  # search path too
        assert all(r["status"] == 200 for r in results), results
        assert {pod_of(r["body"])[2] for r in results} == {caller["ip"]}  # pod to ClusterIP: no SNAT


def test_trace_on_each_hop_matches_where_requests_landed(lab):
    pods = lab.pods()
    controller = pods["ingress-nginx-controller-1"]
    # hop NodePort on node1 (the LB sends there too): external client, masqueraded, to the controller
    t = lab.trace("node1", "198.51.100.100", "10.1.1.10:30443")
    assert (t["verdict"], t["frontend"], t["masquerade"]) == ("dnat", "NodePort", True)
    assert t["endpoints"] == [f"{controller['ip']}:443"]
    # ... and indeed nginx saw node addresses, not the client's (masquerade), on its log
    lab.requests("https://website1.com/", count=6)
    access = (lab.root / lab.name / "pods" / "ingress-nginx-controller-1" / "access.log").read_text()
    sources = {line.split()[0] for line in access.splitlines()}
    assert sources and all(s.startswith(("10.1.1.", "10.244.")) for s in sources)
    assert "198.51.100.100" not in sources
    # hop ClusterIP on the controller's node: the website pods, not masqueraded
    status = lab.kproxy("status").stdout
    cluster_ip = next(line.split()[2] for line in status.splitlines() if line.startswith("    default/website1fe "))
    t = lab.trace(controller["node"], controller["ip"], f"{cluster_ip}:80")
    assert (t["frontend"], t["service_port"], t["masquerade"]) == ("ClusterIP", "default/website1fe:http", False)
    website1 = {f"{p['ip']}:8080" for p in lab.pods("website1fe-").values()}
    assert set(t["endpoints"]) == website1
    results = lab.requests("https://website1.com/", count=20)
    landed = {f"{pods[pod_of(r['body'])[0]]['ip']}:8080" for r in results}
    assert landed <= website1 and len(landed) >= 2
    assert {pod_of(r["body"])[2] for r in results} == {controller["ip"]}
    # the DNS hop
    t = lab.trace(controller["node"], controller["ip"], "10.96.0.10:53/udp")
    assert t["endpoints"] == [f"{pods['coredns-1']['ip']}:53"]


def test_up_prints_both_walks_with_real_answers(lab):
    out = lab.up_output
    walk1, walk2 = out.split("=== Walk 1")[1].split("=== Walk 2")
    for expected in ("[client]", "[lb]", "NodePort frontend of ingress-nginx/ingress-nginx-controller:https",
                     "terminates TLS with the certificate of website1.com",
                     "ClusterIP frontend of kube-system/kube-dns:dns",
                     "ClusterIP frontend of default/website1fe:http", "real requests: GET https://website1.com/"):
        assert expected in walk1
    assert "calls http://website2fe.default.svc.cluster.local/" in walk2
    assert "ClusterIP frontend of default/website2fe:http" in walk2
    assert "FAILED" not in out and "website2fe-" in walk2.split("real requests")[1]


def test_scaling_changes_slices_and_every_node_follows(lab):
    lab.kproxy("scale", "website2fe", "5")
    assert len(lab.pods("website2fe-")) == 5
    pods = lab.pods("website2fe-")
    for node in ("node1", "node2", "node3"):
        dump = json.loads(lab.kproxy("exec", node, "--", "kproxy", "dump", "--json").stdout)
        eps = next(fe["endpoints"] for sp in dump["service_ports"] if sp["name"] == "default/website2fe:http"
                   for fe in sp["frontends"] if fe["kind"] == "ClusterIP")
        assert set(eps) == {f"{p['ip']}:8080" for p in pods.values()}
    landed = {pod_of(r["body"])[0] for r in lab.requests("https://website2.com/", count=40)}
    assert {"website2fe-4", "website2fe-5"} & landed
    lab.kproxy("scale", "website2fe", "2")
    remaining = set(lab.pods("website2fe-"))
    assert remaining == {"website2fe-1", "website2fe-2"}
    assert not [ns for ns in lab.namespaces() if ns.endswith(("website2fe-3", "website2fe-5"))]
    results = lab.requests("https://website2.com/", count=12)
    assert all(r["status"] == 200 for r in results) and {pod_of(r["body"])[0] for r in results} <= remaining
    # to 0: while every pod is terminating the rules keep them (the fallback); then none
    scaled = lab.kproxy("scale", "website2fe", "0", timeout=90)
    assert "website2fe: 0 replica(s) (+0 -2)" in scaled.stdout, scaled.stdout
    assert lab.pods("website2fe-") == {}
    for node in ("node1", "node2"):
        dump = json.loads(lab.kproxy("exec", node, "--", "kproxy", "dump", "--json").stdout)
        (sp,) = [sp for sp in dump["service_ports"] if sp["name"] == "default/website2fe:http"]
        assert all(fe["endpoints"] == [] for fe in sp["frontends"]), sp
    lab.kproxy("scale", "website2fe", "2")  # the pods come back with the IPs (and MACs) they had
    results = lab.requests("https://website2.com/", count=4)
    assert all(r["status"] == 200 for r in results), results


def test_status_into_a_closed_pipe_ends_quietly(lab):
    proc = subprocess.Popen([*KPROXY, "lab", "status", "--name", lab.name], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=lab.env)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # `| head` that has already gone
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0 and err == "", err


def test_exec_and_bad_input_get_one_line_errors(lab):
    assert "service ports" in lab.kproxy("exec", "node2", "--", "kproxy", "dump").stdout
    bad = lab.kproxy("exec", "node9", "--", "true", check=False)
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0 and "node9" in bad.stderr
    bad = lab.kproxy("scale", "nosuch", "2", check=False)
    assert bad.returncode == 1 and "nosuch" in bad.stderr


def test_up_after_a_crash_cleans_leftovers_and_down_leaves_nothing(tmp_path):
    run = LabRun(f"kpt{secrets.token_hex(3)}", tmp_path)
    state = tmp_path / run.name / "state.json"
    try:
        # a crash: `up` killed half-way, once pods are being made (namespaces, processes left)
        up = subprocess.Popen([*KPROXY, "lab", "--name", run.name, "up", "--nodes", "2", "--no-walk"],
                              env=run.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while up.poll() is None and time.monotonic() < deadline:
            recorded = json.loads(state.read_text())["namespaces"] if state.exists() else []
            if any("website" in ns for ns in recorded):
                break
            time.sleep(0.05)
        up.kill()
        up.wait(10)
        assert run.namespaces()
        again = run.kproxy("up", "--nodes", "2", "--no-walk")
        assert "removing the leftovers" in again.stdout and "left alone" not in again.stdout
        first = sorted(run.namespaces())
        assert all(r["status"] == 200 for r in run.requests("https://website1.com/", count=4))
        assert sorted(run.state()["namespaces"]) == first
    finally:
        run.kproxy("down", check=False)
    assert run.namespaces() == []
    assert run.processes() == []
    assert not (tmp_path / run.name).exists()
    assert not list(Path("/etc/netns").glob(f"{run.name}-*"))


class Foreign:
    """A namespace someone else made that happens to carry a lab's prefix, with a process
    in it. Made and removed by the test itself (by its own record, never by prefix)."""

    def __init__(self, name: str) -> None:
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.name = name
        self.proc = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "600"])

    def intact(self) -> bool:
        listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return self.proc.poll() is None and self.name in {line.split()[0] for line in listing.splitlines() if line}

    def remove(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        subprocess.run(["ip", "netns", "delete", self.name], check=False)


def test_the_lab_never_touches_namespaces_it_did_not_make(tmp_path):
    """`down` of a lab that never existed, `up` (twice: the second removes the first's
    leftovers) and `down` remove only what the state file records; a namespace that merely
    carries the prefix, and its process, survive every step and are named."""
    run = LabRun(f"kpt{secrets.token_hex(3)}", tmp_path)
    mine = Foreign(f"{run.name}-mine")
    taken = Foreign(f"kpt{secrets.token_hex(3)}-lan")  # a name a lab would need
    try:
        down = run.kproxy("down")
        assert mine.intact() and "nothing removed" in down.stdout and f"left alone: {mine.name}" in down.stdout
        up = run.kproxy("up", "--nodes", "1", "--no-walk")
        assert mine.intact() and mine.name in up.stdout
        assert mine.name not in run.state()["namespaces"]
        # --name after the action works too
        again = run.kproxy_raw("up", "--name", run.name, "--nodes", "1", "--no-walk")
        assert "removing the leftovers" in again.stdout and mine.intact()
        assert all(r["status"] == 200 for r in run.requests("https://website1.com/", count=2))
        down = run.kproxy_raw("down", "--name", run.name)
        assert mine.intact() and f"left alone: {mine.name}" in down.stdout
        assert run.namespaces() == [mine.name]

        # a name the lab needs is someone else's: refused before anything is made
        other = LabRun(taken.name.split("-")[0], tmp_path)
        refused = other.kproxy("up", "--nodes", "1", "--no-walk", check=False)
        assert refused.returncode == 1 and f"namespace(s) {taken.name} exist but are not lab" in refused.stderr
        assert taken.intact() and other.namespaces() == [taken.name]
        assert not (tmp_path / other.name).exists()
    finally:
        run.kproxy("down", check=False)
        mine.remove()
        taken.remove()


def test_own_manifests_local_policy_keeps_the_client_address_and_affinity_holds(tmp_path):
    examples = Path(__file__).resolve().parents[2] / "examples" / "lab-shop"
    run = LabRun(f"kpt{secrets.token_hex(3)}", tmp_path)
    try:
        out = run.kproxy("up", "--nodes", "2", "--manifests", str(examples)).stdout
        assert "no Ingress and ingress controller" in out and "ClusterIP frontend of shop/cart:http" in out
        shops = run.pods("shop-")
        # LoadBalancer with externalTrafficPolicy Local: the LB only uses nodes with a shop
        # pod, no node masquerades, and every shop pod answers
        results = run.requests("http://203.0.113.10/", count=12)
        assert all(r["status"] == 200 for r in results), results
        assert {pod_of(r["body"])[2] for r in results} == {"198.51.100.100"}
        assert {pod_of(r["body"])[0] for r in results} == set(shops)
        # sessionAffinity ClientIP: one caller, one cart pod, though there are three
        assert len(run.pods("cart-")) == 3
        carts = {pod_of(r["body"])[0] for r in run.requests("http://cart.shop/", source="shop-1", count=10)}
        assert len(carts) == 1 and carts <= set(run.pods("cart-"))
    finally:
        run.kproxy("down", check=False)
    assert run.namespaces() == []


def test_iptables_mode_lab_walks_and_serves_both_sites(tmp_path):
    run = LabRun(f"kpt{secrets.token_hex(3)}", tmp_path)
    try:
        out = run.kproxy("up", "--nodes", "2", "--proxy-mode", "iptables").stdout
        # the walk's traces read iptables rules back (their chains are named on the way)
        assert "nat PREROUTING → KUBE-SERVICES → KUBE-NODEPORTS" in out and "FAILED" not in out
        controller = run.pods()["ingress-nginx-controller-1"]
        t = run.trace("node1", "198.51.100.100", "10.1.1.10:30443")
        assert (t["frontend"], t["masquerade"], t["endpoints"]) == ("NodePort", True, [f"{controller['ip']}:443"])
        for site in ("website1", "website2"):
            results = run.requests(f"https://{site}.com/", count=12)
            assert all(r["status"] == 200 for r in results), results
            assert {pod_of(r["body"])[0] for r in results} <= set(run.pods(f"{site}fe-"))
    finally:
        run.kproxy("down", check=False)
    assert run.namespaces() == []
