"""Where a request for a URI goes (RFC 3263 §4), as far as a sans-I/O engine can say.

A URI whose host is an IP address names its target outright.  A domain name needs DNS: the
engine asks the shell for a :class:`Query` (an event, :class:`engine.events.Resolve`), the
shell runs NAPTR → SRV → A/AAAA without blocking and answers with
:meth:`engine.proxy.Engine.resolved`; the answer is cached here for its TTL, a failure for
``negative_ttl`` seconds, so that a warm cache costs one dictionary lookup per call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from .address import parse_uri
from .errors import SipError


class Target(NamedTuple):
    """One address to send to: a transport, an IP address and a port."""

    proto: str
    host: str
    port: int


class Query(NamedTuple):
    """A domain name to resolve as RFC 3263 says.

    ``port`` given: A/AAAA only.  ``proto`` given without port: SRV for that transport.
    Neither: NAPTR, then SRV for each transport, then A/AAAA over ``default_proto``.
    ``secure`` (a ``sips:`` URI) admits TLS targets only.
    """

    host: str
    port: int | None
    proto: str | None
    default_proto: str
    secure: bool


#: Transports a target may use (RFC 3261 §18; TLS is a stream like TCP).
TRANSPORTS = frozenset({"udp", "tcp", "tls"})
DEFAULT_PORT = {"udp": 5060, "tcp": 5060, "tls": 5061}


def is_ip(host: str) -> bool:
    """Whether ``host`` is an IP address (IPv6 hosts are unbracketed here)."""
    if ":" in host:
        return True
    parts = host.split(".")
    return len(parts) == 4 and all(p.isdigit() and p.isascii() for p in parts)


def locate(uri: str, default_proto: str) -> tuple[Target, ...] | Query:
    """The target of a ``sip:``/``sips:`` URI when its host is an address, else the query."""
    u = parse_uri(uri)
    if u.scheme not in ("sip", "sips"):
        raise SipError(416, "Unsupported URI Scheme")
    secure = u.scheme == "sips"
    proto = u.transport
    if proto is not None and proto not in TRANSPORTS:
        raise SipError(503, f"Unsupported transport {proto}")
    return destination(u.host, u.port, proto, default_proto, secure)


def destination(
    host: str, port: int | None, proto: str | None, default_proto: str, secure: bool = False
) -> tuple[Target, ...] | Query:
    """Like :func:`locate` for parts already split (a next hop from the settings)."""
    if secure:
        proto = "tls"
    if is_ip(host):
        chosen = proto or default_proto
        return (Target(chosen, host, port or DEFAULT_PORT[chosen]),)
    return Query(host, port, proto, default_proto, secure)


class Locator:
    """The engine's cache of resolved queries and the requests waiting for an answer."""

    def __init__(self, negative_ttl: float = 5.0, max_entries: int = 10000) -> None:
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._cache: dict[Query, tuple[float, tuple[Target, ...]]] = {}
        self._waiting: dict[Query, list[Callable[[], None]]] = {}

    def lookup(self, query: Query, now: float) -> tuple[Target, ...] | None:
        """The cached targets (empty: the name does not resolve), or None if unknown."""
        hit = self._cache.get(query)
        if hit is None:
            return None
        if hit[0] <= now:
            del self._cache[query]
            return None
        return hit[1]

    def wait(self, query: Query, resume: Callable[[], None]) -> bool:
        """Park ``resume`` until ``query`` is answered; True if the shell must be asked."""
        waiting = self._waiting.get(query)
        if waiting is not None:
            waiting.append(resume)
            return False
        self._waiting[query] = [resume]
        return True

    def store(
        self, query: Query, targets: tuple[Target, ...], ttl: float, now: float
    ) -> list[Callable[[], None]]:
        """Cache an answer; returns the requests to resume."""
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        ttl = ttl if targets else min(ttl, self.negative_ttl) if ttl > 0 else self.negative_ttl
        self._cache[query] = (now + max(ttl, 0.0), targets)
        return self._waiting.pop(query, [])

    def pending(self) -> int:
        return len(self._waiting)
