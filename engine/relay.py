"""Which addresses taken from a message the proxy may send to: no open relay.

The next hops in the settings are always ours to use, and so are the contacts and route sets
of dialogs this proxy created.  Anything else a message names (a Request-URI routed without a
next hop, a Route of a dialog we do not track) is used only when its host is in the allowed
networks or domains (``relay_allow``): a scanner cannot make the proxy a springboard.
"""

from __future__ import annotations

import ipaddress

from .locator import Query, Target


class RelayPolicy:
    def __init__(self, allow: tuple[str, ...], extra_hosts: tuple[str, ...] = ()) -> None:
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.domains: list[str] = []
        for item in allow:
            try:
                self.networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                self.domains.append(item.lower().lstrip("*").lstrip("."))
        self.hosts = set(extra_hosts)
        self._seen: dict[str, bool] = {}

    def allows(self, where: tuple[Target, ...] | Query) -> bool:
        if type(where) is Query:
            return self.allows_host(where.host)
        return all(self.allows_host(t.host) for t in where)  # type: ignore[union-attr]

    def allows_host(self, host: str) -> bool:
        hit = self._seen.get(host)
        if hit is None:
            hit = self._check(host)
            if len(self._seen) > 10000:
                self._seen.clear()
            self._seen[host] = hit
        return hit

    def _check(self, host: str) -> bool:
        if host in self.hosts:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return any(host == d or host.endswith("." + d) for d in self.domains)
        return any(address in net for net in self.networks)
