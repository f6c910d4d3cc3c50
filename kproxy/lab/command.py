"""`kproxy lab up|status|walk|curl|exec|scale|down`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from kproxy.lab import namespaces as netns
from kproxy.lab.build import DEFAULT_NAME, Lab
from kproxy.lab.spec import LabError

EXIT_FAILED = 1


def add_lab_parser(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    lab = sub.add_parser("lab", parents=[common], help="a cluster of network namespaces on this machine (root)",
                         description="A Kubernetes-like cluster made of network namespaces: nodes running "
                                     "kproxy, pods, an L4 load balancer, an ingress controller, cluster DNS.")
    name_help = f"lab name, the prefix of its namespaces ({DEFAULT_NAME}); before or after the action"
    lab.add_argument("--name", default=DEFAULT_NAME, help=name_help)
    # --name after the action too (`kproxy lab up --name x`); given there, it wins
    named = argparse.ArgumentParser(add_help=False)
    named.add_argument("--name", default=argparse.SUPPRESS, help=name_help)
    # not required here: kproxy's parser says which action is missing, after naming any bad flag
    actions = lab.add_subparsers(dest="lab_command", metavar="ACTION")
    up = actions.add_parser("up", parents=[named],
                            help="build the lab (removing the leftovers of an earlier one) and walk a request")
    up.add_argument("--nodes", type=int, default=3, help="number of nodes (3)")
    up.add_argument("--manifests", type=Path, metavar="DIR",
                    help="your Deployments, Services and Ingresses instead of the two websites")
    up.add_argument("--proxy-mode", choices=("nftables", "iptables", "ipvs"), default="nftables")
    up.add_argument("--no-walk", action="store_true", help="skip the walks at the end")
    actions.add_parser("status", parents=[named], help="nodes, pods, Services and agents")
    actions.add_parser("walk", parents=[named], help="walk one request end to end with kproxy trace on each hop")
    curl = actions.add_parser("curl", parents=[named], help="GET a URL from the client or a pod, and show who answered")
    curl.add_argument("url")
    curl.add_argument("--from", dest="source", default="client", metavar="NODE_OR_POD", help="(client)")
    curl.add_argument("-n", "--count", type=int, default=6)
    scale = actions.add_parser("scale", parents=[named], help="change a Deployment's replicas; slices and rules follow")
    scale.add_argument("deployment", help="name or namespace/name")
    scale.add_argument("replicas", type=int)
    run = actions.add_parser("exec", parents=[named], help="run a command inside a node, pod, lb or client")
    run.add_argument("target", metavar="NODE_OR_POD")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD")
    actions.add_parser("down", parents=[named], help="remove every namespace, process and file of the lab")


def say(message: str) -> None:
    print(f"lab: {message}", flush=True)


def lab_command(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        sys.stderr.write("kproxy lab: needs root (it creates network namespaces)\n")
        return EXIT_FAILED
    try:
        lab = Lab(args.name)
        action = args.lab_command
        if action == "up":
            try:
                lab.up(args.nodes, args.manifests, args.proxy_mode, say)
            except BaseException:
                kept = lab.keep_logs()
                lab.down(lambda _m: None, keep_failed_logs=True)
                sys.stderr.write(f"kproxy lab: up failed; removed what it made (logs kept in {kept})\n")
                raise
            print(status(lab))
            if not args.no_walk:
                from kproxy.lab.walk import walks
                print(walks(lab))
            lab_cmd = "kproxy lab" + (f" --name {args.name}" if args.name != DEFAULT_NAME else "")
            say(f"up. Next: {lab_cmd} status | curl URL [--from POD] | scale DEPLOYMENT N | "
                f"exec NODE_OR_POD -- CMD | walk | down")
        elif action == "status":
            print(status(lab))
        elif action == "walk":
            from kproxy.lab.walk import walks
            lab.load()
            print(walks(lab))
        elif action == "curl":
            from kproxy.lab.walk import format_requests, real_requests
            lab.find(args.source)
            if not 1 <= args.count <= 1000:
                raise LabError("--count must be between 1 and 1000")
            results = real_requests(lab, args.source, args.url, args.count)
            print(format_requests(args.source, args.url, results), end="")
            return 0 if results and all(r.get("status") == 200 for r in results) else EXIT_FAILED
        elif action == "scale":
            lab.scale(args.deployment, args.replicas, say)
        elif action == "exec":
            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            if not cmd:
                raise LabError("exec: a command is needed after --")
            # kproxy's own directory first, so `kproxy lab exec node1 -- kproxy dump` works from a venv
            path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
            os.execvpe("ip", ["ip", "netns", "exec", lab.find(args.target), *cmd], {**os.environ, "PATH": path})
        elif action == "down":
            lab.down(say)
    except LabError as err:
        sys.stderr.write(f"kproxy lab: {err}\n")
        return EXIT_FAILED
    return 0


def status(lab: Lab) -> str:
    state = lab.load()
    alive = set(netns.existing())
    lines = [f"lab {lab.name}: {state.nodes} node(s), {state.proxy_mode} mode, files in {lab.dir}"]
    for node in lab.nodes():
        ns = lab.ns(node.name)
        agent = "agent running" if ns in alive and _agent_running(ns) else "AGENT NOT RUNNING"
        lines.append(f"  {node.name:8} {node.ip!s:12} pods {node.pod_cidr!s:15} {node.zone:7} {agent}")
    lines.append("  pods:")
    for pod in sorted(lab.pods(), key=lambda p: (p.namespace, p.name)):
        ports = ",".join(f"{c.port}/{c.protocol.lower()}" for c in pod.ports)
        lines.append(f"    {pod.namespace + '/' + pod.name:40} {pod.ip!s:12} {pod.node:7} {pod.role:8} {ports}")
    lines.append("  services:")
    for svc in lab.services():
        spec = svc["spec"]
        ports = ", ".join(f"{p['port']}/{p.get('protocol', 'TCP').lower()}"
                          + (f" (NodePort {p['nodePort']})" if p.get("nodePort") else "")
                          for p in spec.get("ports") or [])
        vips = [i["ip"] for i in ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []]
        name = f"{svc['metadata'].get('namespace', 'default')}/{svc['metadata']['name']}"
        lines.append(f"    {name:40} {spec.get('type', 'ClusterIP'):12} {spec.get('clusterIP')!s:12} {ports}"
                     + (f"  LB {', '.join(vips)}" if vips else ""))
    return "\n".join(lines) + "\n"


def _agent_running(ns: str) -> bool:
    for pid in netns.pids(ns):
        try:
            if b"kproxy\x00run" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False
