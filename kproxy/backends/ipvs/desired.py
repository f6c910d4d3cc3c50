"""The IPVS state the plans ask for, kept up to date one Service port at a time. Pure.

A sync after a change renders only the Service ports the planner says changed
(Plan.changed) and learns which virtual servers and kube-ipvs0 addresses they touched, so
the diff against the kernel looks at those alone: a one-endpoint change costs the same at
10 Services as at 10,000. The result is always what render.render_state makes of the whole
plan (tests/unit/test_ipvs_incremental.py): when two Service ports claim one frontend, the
smallest name wins, whatever order the changes came in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from kproxy.backends.ipvs.objects import IpvsState, VirtualKey, VirtualServer
from kproxy.backends.ipvs.render import fwmark_virtuals, render_service_port
from kproxy.model import IPAddress, ServicePortName
from kproxy.plan import ServicePortPlan


class DesiredIpvs:
    def __init__(self, family: int, scheduler: str, nodeport_ips: tuple[IPAddress, ...]) -> None:
        self.family = family
        self.scheduler = scheduler
        self.nodeport_ips = nodeport_ips  # a change of these re-renders everything
        self._plans: dict[ServicePortName, ServicePortPlan] = {}
        self._claims: dict[VirtualKey, dict[ServicePortName, VirtualServer]] = {}
        self._addresses: Counter[IPAddress] = Counter()
        # externalTrafficPolicy Local ports with short-circuit targets: few, so their
        # firewall-mark virtual servers are rendered again on every sync
        self._short_circuited: dict[ServicePortName, ServicePortPlan] = {}
        self._fwmarks: dict[VirtualKey, VirtualServer] = {}

    def names(self) -> Iterator[ServicePortName]:
        return iter(self._plans)

    def plan(self, name: ServicePortName) -> ServicePortPlan | None:
        return self._plans.get(name)

    def update(self, name: ServicePortName, new: ServicePortPlan | None,
               keys: set[VirtualKey], ips: set[IPAddress]) -> None:
        """Make `name`'s plan `new` (None: gone), adding the virtual servers and addresses
        whose desired state may have changed to `keys` and `ips`."""
        old = self._plans.get(name)
        if old is new or old == new:
            return
        if old is not None:
            for key, _server in render_service_port(old, self.nodeport_ips, self.scheduler):
                claims = self._claims[key]
                claims.pop(name, None)
                if not claims:
                    del self._claims[key]
                keys.add(key)
            for ip in _ips(old):
                self._addresses[ip] -= 1
                if not self._addresses[ip]:
                    del self._addresses[ip]
                ips.add(ip)
        if new is None:
            self._plans.pop(name, None)
            self._short_circuited.pop(name, None)
            return
        self._plans[name] = new
        for key, server in render_service_port(new, self.nodeport_ips, self.scheduler):
            self._claims.setdefault(key, {})[name] = server
            keys.add(key)
        for ip in _ips(new):
            self._addresses[ip] += 1
            ips.add(ip)
        if new.external_policy_local and new.short_circuit_targets:
            self._short_circuited[name] = new
        else:
            self._short_circuited.pop(name, None)

    def refresh_fwmarks(self, keys: set[VirtualKey]) -> None:
        """Render the firewall-mark virtual servers again; their keys, old and new, go to `keys`."""
        old = self._fwmarks
        self._fwmarks = fwmark_virtuals(self._short_circuited.values(), self.nodeport_ips,
                                        self.family, self.scheduler)
        keys.update(old, self._fwmarks)

    def virtual(self, key: VirtualKey) -> VirtualServer | None:
        if key.fwmark:
            return self._fwmarks.get(key)
        claims = self._claims.get(key)
        return None if claims is None else claims[min(claims)]

    def has_address(self, ip: IPAddress) -> bool:
        return ip in self._addresses

    def keys(self) -> set[VirtualKey]:
        return {*self._claims, *self._fwmarks}

    def addresses(self) -> frozenset[IPAddress]:
        return frozenset(self._addresses)

    def short_circuited(self) -> list[ServicePortPlan]:
        return list(self._short_circuited.values())

    def state(self) -> IpvsState:
        """The whole desired state (tests compare it with render_state)."""
        virtuals = {key: server for key in self._claims if (server := self.virtual(key)) is not None}
        return IpvsState(virtuals={**virtuals, **self._fwmarks}, addresses=self.addresses())


def _ips(sp: ServicePortPlan) -> set[IPAddress]:
    return {fe.ip for fe in sp.frontends if fe.ip is not None}
