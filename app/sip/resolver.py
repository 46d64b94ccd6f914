"""RFC 3263 lookups for the engine's ``Resolve`` queries: NAPTR → SRV → A/AAAA.

dnspython's asyncio resolver does the asking, so a slow or dead DNS server never blocks the
event loop, and every answer comes back with the smallest TTL met on its way, which the
engine caches for exactly that long (:mod:`engine.locator`).  ``dns_servers`` in the settings
points it at given servers; by default it reads ``/etc/resolv.conf``.
"""

from __future__ import annotations

import random
import time
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from engine.dispatcher import weighted_order
from engine.locator import DEFAULT_PORT, Query, Target

#: NAPTR services (RFC 3263 §4.1) and the SRV prefix of each transport (§4.2).
NAPTR_SERVICES = {"sip+d2u": "udp", "sip+d2t": "tcp", "sips+d2t": "tls"}
SRV_PREFIX = {"udp": "_sip._udp", "tcp": "_sip._tcp", "tls": "_sips._tcp"}
#: Seconds a failed lookup is remembered (the engine's negative cache).
FAILURE_TTL = 5.0
_NO_ANSWER = (
    dns.resolver.NXDOMAIN,
    dns.resolver.NoAnswer,
    dns.resolver.NoNameservers,
    dns.exception.Timeout,
    dns.resolver.LifetimeTimeout,
)


class Resolver:
    """Answers :class:`engine.locator.Query` with the targets in the order to try them."""

    def __init__(
        self,
        servers: list[tuple[str, int]],
        transports: set[str],
        families: set[int],
        timeout: float = 2.0,
    ) -> None:
        self._dns = dns.asyncresolver.Resolver(configure=not servers)
        if servers:
            self._dns.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in servers]
        self._dns.lifetime = timeout
        self._dns.timeout = timeout
        self.transports = transports
        self.families = families
        self._hosts: dict[str, tuple[float, str | None]] = {}
        self._rng = random.Random()

    async def locate(self, q: Query) -> tuple[list[Target], float]:
        """(targets, ttl): empty targets when nothing resolves."""
        if q.port is not None:
            return await self._addresses(q.host, q.proto or q.default_proto, q.port)
        if q.proto is not None:
            found, ttl = await self._srv(q.host, q.proto)
            if found:
                return found, ttl
            return await self._addresses(q.host, q.proto, DEFAULT_PORT[q.proto])
        found, ttl = await self._naptr(q.host, q.secure)
        if found:
            return found, ttl
        for proto in ("tls",) if q.secure else ("udp", "tcp", "tls"):
            if proto in self.transports:
                found, ttl = await self._srv(q.host, proto)
                if found:
                    return found, ttl
        proto = "tls" if q.secure else q.default_proto
        return await self._addresses(q.host, proto, DEFAULT_PORT[proto])

    async def address(self, host: str) -> str | None:
        """One address of ``host`` (a name in a Contact or a stored route), cached."""
        now = time.monotonic()
        hit = self._hosts.get(host)
        if hit is not None and hit[0] > now:
            return hit[1]
        found, ttl = await self._addresses(host, "udp", 5060)
        address = found[0].host if found else None
        if len(self._hosts) > 10000:
            self._hosts.clear()
        self._hosts[host] = (now + (ttl if found else FAILURE_TTL), address)
        return address

    async def _naptr(self, host: str, secure: bool) -> tuple[list[Target], float]:
        answer = await self._query(host, "NAPTR")
        if answer is None:
            return [], FAILURE_TTL
        records = []
        for r in answer:
            proto = NAPTR_SERVICES.get(r.service.decode("ascii", "replace").lower())
            if proto is None or proto not in self.transports or secure and proto != "tls":
                continue
            if r.flags.decode("ascii", "replace").lower() != "s":
                continue
            records.append((r.order, r.preference, proto, r.replacement.to_text(True)))
        ttl = float(answer.rrset.ttl) if answer.rrset is not None else FAILURE_TTL
        for _, _, proto, name in sorted(records):
            found, srv_ttl = await self._srv_records(name, proto)
            if found:
                return found, min(ttl, srv_ttl)
        return [], FAILURE_TTL

    async def _srv(self, host: str, proto: str) -> tuple[list[Target], float]:
        return await self._srv_records(f"{SRV_PREFIX[proto]}.{host}", proto)

    async def _srv_records(self, name: str, proto: str) -> tuple[list[Target], float]:
        answer = await self._query(name, "SRV")
        if answer is None:
            return [], FAILURE_TTL
        ttl = float(answer.rrset.ttl) if answer.rrset is not None else FAILURE_TTL
        targets: list[Target] = []
        records = [(r.priority, r.weight, r.port, r.target) for r in answer]
        for _, _, port, target in weighted_order(records, _rank, self._rng):
            found, a_ttl = await self._addresses(target.to_text(True), proto, port)
            targets += found
            if found:
                ttl = min(ttl, a_ttl)
        return targets, ttl

    async def _addresses(self, host: str, proto: str, port: int) -> tuple[list[Target], float]:
        targets: list[Target] = []
        ttl = FAILURE_TTL
        ttls = []
        for family, rdtype in ((4, "A"), (6, "AAAA")):
            if family not in self.families:
                continue
            answer = await self._query(host, rdtype)
            if answer is None:
                continue
            if answer.rrset is not None:
                ttls.append(float(answer.rrset.ttl))
            targets += [Target(proto, r.address, port) for r in answer]
        if ttls:
            ttl = min(ttls)
        return targets, ttl

    async def _query(self, name: str, rdtype: str) -> dns.resolver.Answer | None:
        try:
            return await self._dns.resolve(name, rdtype, search=False)
        except _NO_ANSWER:
            return None


def _rank(record: tuple[int, int, Any, Any]) -> tuple[int, int]:
    return record[0], record[1]
