# kproxy agent image: Debian with the kernel tools kproxy drives, kproxy from this source tree.
#   docker build -t kproxy:dev .
# Runs as the kube-proxy DaemonSet in manifests/ (hostNetwork, NET_ADMIN).
FROM debian:bookworm-slim

# Optional CA bundle for pip behind a TLS-inspecting proxy (a path inside a build mount).
ARG PIP_CERT=""

# nftables + its Python binding (libnftables, not on PyPI), iptables for the iptables mode,
# conntrack to flush stale UDP flows, iproute2 to find node addresses.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        nftables python3-nftables iptables conntrack iproute2 python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml README.md /src/
COPY kproxy /src/kproxy
# --system-site-packages: the venv sees Debian's python3-nftables.
RUN python3 -m venv --system-site-packages /opt/kproxy \
    && if [ -n "$PIP_CERT" ]; then export PIP_CERT; else unset PIP_CERT; fi \
    && /opt/kproxy/bin/pip install --no-cache-dir --disable-pip-version-check /src \
    && rm -rf /src \
    && /opt/kproxy/bin/python -c "import nftables, kproxy.cli"

ENV PATH=/opt/kproxy/bin:$PATH
ENTRYPOINT ["kproxy"]
CMD ["run"]
