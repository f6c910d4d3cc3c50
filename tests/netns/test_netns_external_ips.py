"""--external-ip-cidrs with real packets, in both backends: an externalIP inside the list
reaches the Service's endpoint; one outside it is not programmed (the node routes the
packet on, as for any address it does not serve) and is named once in the log."""

from __future__ import annotations

import pytest
import traffic

from manifests import endpoint, endpoint_slice, port, service, slice_port

pytestmark = pytest.mark.netns

ALLOWED, REFUSED = "203.0.113.50", "203.0.113.60"


def test_only_external_ips_inside_the_allow_list_are_programmed(cluster, kproxy):
    objects = [service("ext", "10.96.0.50", [port(80, 8080)], external_ips=[ALLOWED, REFUSED]),
               endpoint_slice("ext", [endpoint(cluster.pods["pod4"])], [slice_port(8080)])]
    client = cluster.ns("client")
    kproxy.sync(objects)  # no allow-list: both are programmed, as upstream
    for ip in (ALLOWED, REFUSED):
        r = traffic.tcp(client, ip, 80, count=3)
        assert set(r.pods) == {"pod4"} and not r.failures, r
    done = kproxy.sync(objects, "--external-ip-cidrs", "203.0.113.48/29")
    r = traffic.tcp(client, ALLOWED, 80, count=3)
    assert set(r.pods) == {"pod4"} and not r.failures, r
    r = traffic.tcp(client, REFUSED, 80, count=3)
    # not ours: routed on, and the lan answers "no route" (ICMP rate limits may swallow some)
    assert not r.pods and "UNREACHABLE" in r.failures, r
    warned = [line for line in done.stderr.splitlines() if "externalIPs outside --external-ip-cidrs" in line]
    assert len(warned) == 1 and "default/ext" in warned[0] and REFUSED in warned[0], done.stderr
