"""The next hops of initial requests: a destination set with failover, as OpenSIPS's
dispatcher module keeps one (``ds_select_dst``, ``ds_next_dst``, ``ds_list``).

Destinations are tried by ascending ``priority`` (as DNS SRV orders its targets), and among
equal priorities in a random order drawn by ``weight``.  A destination that refuses, times out
or answers 503 goes to ``Probing``: it is tried only after every active one, and probed with
OPTIONS (when a probe interval is set) until it answers again.  ``Inactive`` is set only by
the operator (MI ``ds_set_state``) and is never used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from random import Random
from typing import Final, TypeVar

from .address import parse_uri, split_hostport
from .dialog import bracket
from .errors import SipError
from .locator import Query, Target, destination


class DsState:
    ACTIVE: Final = "Active"
    PROBING: Final = "Probing"
    INACTIVE: Final = "Inactive"


@dataclass(slots=True, eq=False)
class Destination:
    """One next hop: an address or a domain name (then resolved by RFC 3263)."""

    proto: str | None
    host: str
    port: int | None
    priority: int = 0
    weight: int = 1
    state: str = DsState.ACTIVE
    #: How many requests chose it first (OpenSIPS ``first_hit_counter``).
    first_hit_counter: int = 0
    #: Why it was last marked down ("" while up).
    reason: str = ""

    @property
    def uri(self) -> str:
        port = f":{self.port}" if self.port else ""
        transport = f";transport={self.proto}" if self.proto and self.proto != "udp" else ""
        return f"sip:{bracket(self.host)}{port}{transport}"

    def where(self, default_proto: str) -> tuple[Target, ...] | Query:
        return destination(self.host, self.port, self.proto, default_proto)


def parse_destination(text: str, priority: int = 0, weight: int = 1) -> Destination:
    """``[proto:]HOST[:PORT]`` or a ``sip:`` URI; ``;priority=N;weight=N`` may follow."""
    spec, _, ptext = text.strip().partition(";")
    for part in filter(None, ptext.split(";")):
        name, _, value = part.partition("=")
        if name.strip() not in ("priority", "weight") or not value.strip().isdecimal():
            raise ValueError(f"{text!r}: expected ;priority=N or ;weight=N, got {part!r}")
        if name.strip() == "priority":
            priority = int(value)
        else:
            weight = int(value)
    proto: str | None = None
    if spec.lower().startswith(("sip:", "sips:")):
        u = parse_uri(spec)
        proto = "tls" if u.scheme == "sips" else u.transport
        host, port = u.host, u.port
    else:
        head, sep, rest = spec.partition(":")
        if sep and head.lower() in ("udp", "tcp", "tls", "sctp", "ws", "wss"):
            proto, spec = head.lower(), rest
        host, port = _host_port(spec)
    if proto is not None and proto not in ("udp", "tcp", "tls"):
        raise ValueError(f"{text!r}: unsupported transport {proto} (udp, tcp or tls)")
    if weight < 0:
        raise ValueError(f"{text!r}: weight must not be negative")
    return Destination(proto, host, port, priority, weight)


def _host_port(text: str) -> tuple[str, int | None]:
    try:
        return split_hostport(text)
    except SipError as exc:
        raise ValueError(f"{text!r}: {exc.reason}") from None


T = TypeVar("T")


def weighted_order(items: list[T], rank: Callable[[T], tuple[int, int]], rng: Random) -> list[T]:
    """RFC 2782's order, used for SRV records and next hops alike: ascending priority, and
    within a priority a random order in which each item comes first in proportion to its
    weight.  ``rank`` gives an item's (priority, weight)."""
    if len(items) < 2:
        return list(items)
    out: list[T] = []
    for priority in sorted({rank(i)[0] for i in items}):
        group = [i for i in items if rank(i)[0] == priority]
        while group:
            pick = rng.uniform(0, sum(rank(i)[1] for i in group))
            chosen = len(group) - 1
            for n, item in enumerate(group):
                pick -= rank(item)[1]
                if pick <= 0:
                    chosen = n
                    break
            out.append(group.pop(chosen))
    return out


def _rank(dest: Destination) -> tuple[int, int]:
    return dest.priority, dest.weight


class DestinationSet:
    """Set 1 of OpenSIPS's dispatcher: the destinations every initial request is sent to."""

    def __init__(self, destinations: list[Destination], rng: Random) -> None:
        self.id = 1
        self.destinations = destinations
        self.rng = rng

    def order(self) -> list[Destination]:
        """The destinations to try, first choice first: active ones by priority, weighted at
        random within a priority, then the probing ones as a last resort (a call is a probe
        too: with no probing configured, that is how a recovered destination comes back)."""
        active = [d for d in self.destinations if d.state == DsState.ACTIVE]
        probing = [d for d in self.destinations if d.state == DsState.PROBING]
        ordered = weighted_order(active, _rank, self.rng) + weighted_order(probing, _rank, self.rng)
        if ordered:
            ordered[0].first_hit_counter += 1
        return ordered

    def mark(self, dest: Destination, state: str, reason: str = "", by_mi: bool = False) -> bool:
        """Set a destination's state; True if it changed.  Only the MI takes a destination
        out of ``Inactive``."""
        if dest.state == state or dest.state == DsState.INACTIVE and not by_mi:
            return False
        dest.state = state
        dest.reason = reason if state != DsState.ACTIVE else ""
        return True

    def find(self, address: str) -> Destination | None:
        """A destination by its URI or ``host[:port]`` (MI ``ds_set_state``)."""
        for d in self.destinations:
            if address in (d.uri, f"{bracket(d.host)}:{d.port}", d.host):
                return d
        return None
