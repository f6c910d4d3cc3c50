#!/usr/bin/env bash
# A kind cluster without kube-proxy, kproxy in its place, and a smoke test of Services.
#
#   scripts/kind-up.sh            # cluster "kproxy": build, load, apply manifests/, test
#   KIND_CLUSTER_NAME=x KPROXY_IMAGE=kproxy:try scripts/kind-up.sh
#
# Needs docker, kind and kubectl. Prints PASS or FAIL last; exits 0 only on PASS.
# scripts/kind-down.sh deletes the cluster.
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cluster=${KIND_CLUSTER_NAME:-kproxy}
image=${KPROXY_IMAGE:-kproxy:dev}
context=kind-$cluster
client_image=busybox:1.36
server_image=registry.k8s.io/e2e-test-images/agnhost:2.47

for tool in docker kind kubectl; do
    command -v "$tool" >/dev/null || { echo "kind-up: $tool is required" >&2; exit 1; }
done

k() { kubectl --context "$context" "$@"; }
step() { printf '\n== %s\n' "$*" >&2; }

workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT

step "kind cluster $cluster (kubeProxyMode: none)"
if ! kind get clusters 2>/dev/null | grep -qx "$cluster"; then
    cat >"$workdir/kind.yaml" <<YAML
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  kubeProxyMode: none
nodes:
  - role: control-plane
  - role: worker
YAML
    kind create cluster --name "$cluster" --config "$workdir/kind.yaml"
fi

step "image $image"
docker build -t "$image" "$top"
kind load docker-image "$image" --name "$cluster"

step "kproxy DaemonSet"
# kproxy programs the `kubernetes` Service's ClusterIP itself: it talks to the API server
# at its real address, the control-plane container's name on kind's network.
k -n kube-system create configmap kproxy-apiserver \
    --from-literal=KUBERNETES_SERVICE_HOST="$cluster-control-plane" \
    --from-literal=KUBERNETES_SERVICE_PORT=6443 \
    --dry-run=client -o yaml | k apply -f -
k kustomize "$top/manifests" | sed "s|image: kproxy:dev|image: $image|" | k apply -f -
k -n kube-system rollout status daemonset/kproxy --timeout=180s
k -n kube-system rollout status deployment/coredns --timeout=180s

step "smoke test: a Deployment behind a NodePort Service"
k create deployment kproxy-smoke --image="$server_image" --replicas=2 \
    --dry-run=client -o yaml -- /agnhost netexec --http-port=8080 | k apply -f -
k expose deployment kproxy-smoke --port=80 --target-port=8080 --type=NodePort \
    --dry-run=client -o yaml | k apply -f -
k rollout status deployment/kproxy-smoke --timeout=180s

cluster_ip=$(k get service kproxy-smoke -o jsonpath='{.spec.clusterIP}')
node_port=$(k get service kproxy-smoke -o jsonpath='{.spec.ports[0].nodePort}')
node_ip=$(k get node "$cluster-worker" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')

result=PASS
check() {
    local what=$1
    shift
    local answer
    if answer=$("$@" 2>"$workdir/err"); then
        echo "ok   $what: answered by ${answer:-?}" >&2
    else
        echo "FAIL $what: $(tail -n 3 "$workdir/err")" >&2
        result=FAIL
    fi
}
# From a pod to the ClusterIP (and through cluster DNS to the Service name).
check "pod -> ClusterIP $cluster_ip:80" \
    k run "kproxy-smoke-client-$RANDOM" --rm -i --restart=Never --image="$client_image" \
    -- wget -qO- -T 5 "http://$cluster_ip/hostname"
check "pod -> kproxy-smoke.default.svc (DNS)" \
    k run "kproxy-smoke-dns-$RANDOM" --rm -i --restart=Never --image="$client_image" \
    -- wget -qO- -T 5 "http://kproxy-smoke.default.svc.cluster.local/hostname"
# From the host to the NodePort (kind's node addresses are reachable from a Linux host).
check "host -> NodePort $node_ip:$node_port" \
    curl -fsS --max-time 5 "http://$node_ip:$node_port/hostname"

k delete service,deployment kproxy-smoke --ignore-not-found >/dev/null
echo "$result"
[[ $result == PASS ]]
