#!/usr/bin/env bash
# Delete the kind cluster scripts/kind-up.sh created.
set -euo pipefail

cluster=${KIND_CLUSTER_NAME:-kproxy}
command -v kind >/dev/null || { echo "kind-down: kind is required" >&2; exit 1; }
kind delete cluster --name "$cluster"
