"""manifests/: renders with kustomize, passes the Kubernetes schemas (strict), and says what
replacing kube-proxy needs, no more (capabilities, RBAC)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from kproxy.cli.config_file import parse_config

TOP = Path(__file__).resolve().parents[2]
VERSIONS = ("1.29.0", "1.33.0", kubernetes_validate.latest_version())


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict]:
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is needed to render manifests/ (kubectl kustomize)")
    out = subprocess.run(["kubectl", "kustomize", str(TOP / "manifests")], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    return {doc["kind"]: doc for doc in yaml.safe_load_all(out) if doc}


def test_renders_every_resource_in_kube_system(rendered):
    assert set(rendered) == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"}
    for kind in ("ServiceAccount", "ConfigMap", "DaemonSet"):
        assert rendered[kind]["metadata"]["namespace"] == "kube-system"


@pytest.mark.parametrize("version", VERSIONS)
def test_valid_against_kubernetes_schemas_strict(rendered, version):
    for doc in rendered.values():
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any error


def test_daemonset_replaces_kube_proxy(rendered):
    ds = rendered["DaemonSet"]
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]
    assert pod["serviceAccountName"] == rendered["ServiceAccount"]["metadata"]["name"]
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc.get("privileged") is False
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert "--hostname-override=$(NODE_NAME)" in container["command"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": 10256}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 10256}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert "/run/xtables.lock" in mounts and mounts["/lib/modules"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["xtables-lock"]["hostPath"] == {"path": "/run/xtables.lock", "type": "FileOrCreate"}
    config_flag = next(a for a in container["command"] if a.startswith("--config="))
    assert config_flag == f"--config={mounts['/var/lib/kproxy']['mountPath']}/config.conf"
    # the sysctls the agent cannot write (read-only /proc/sys) are set by a privileged init
    # container from the same config file, with the same image
    (init,) = pod["initContainers"]
    assert init["image"] == container["image"] and init["securityContext"]["privileged"] is True
    assert init["command"] == ["kproxy", "sysctls", config_flag]


def test_configmap_holds_a_config_kproxy_accepts_in_full(rendered):
    cfg = parse_config(rendered["ConfigMap"]["data"]["config.conf"])
    assert cfg.ignored_fields() == []
    assert cfg.get("mode") == "nftables"


def test_rbac_is_least_privilege(rendered):
    rules = rendered["ClusterRole"]["rules"]
    granted = {(group, resource, verb) for r in rules for group in r["apiGroups"]
               for resource in r["resources"] for verb in r["verbs"]}
    assert not any("*" in item for item in granted)
    writes = {g for g in granted if g[2] not in ("get", "list", "watch")}
    assert writes == {("events.k8s.io", "events", "create")}  # start-up events on its Node, nothing else
    reads = {(g, r) for g, r, v in granted if v in ("list", "watch")}
    assert reads == {("", "services"), ("discovery.k8s.io", "endpointslices"), ("", "nodes"),
                     ("networking.k8s.io", "servicecidrs")}
    # every call the code makes is granted: list/watch of the four, get of its own Node
    assert ("", "nodes", "get") in granted
    binding = rendered["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == rendered["ClusterRole"]["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kproxy", "namespace": "kube-system"}]
