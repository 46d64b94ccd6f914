"""A per-source request rate limit, as OpenSIPS's pike module: flood protection at the door.

Every request counts against its source IP (responses do not); a source sending more than
``requests`` in ``window`` seconds is *blocked*: its requests are dropped without an answer,
since a scanner or a flood should get nothing back, except in-dialog requests (a To-tag) of
calls we hold, so that a call already up can still be hung up.  It is released once its rate
has fallen to half the limit (no flapping at the edge).  Our own addresses, the next hops and
the ``trusted`` networks are never counted: our own trunks must not be limited.

Sans-I/O like the rest of the engine: time comes in as ``now``.  The rate is a sliding
window estimated from two fixed buckets (this window's count, plus the last window's
weighted by how much of it still overlaps).  Memory is bounded: a source silent for two
windows is forgotten (found from the oldest end, a few per request), and at most
``max_sources`` are tracked (the least recently seen goes first).  Blocking and release are
reported once each, as :class:`~engine.events.SourceBlocked`/``SourceReleased`` effects.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from .dlg_table import DialogTable
from .events import Event, SourceBlocked, SourceReleased
from .message import SipError, SipMessage

#: Forgotten sources looked at per request: more than one, so the table shrinks as fast as
#: it can grow.
SWEEP_PER_REQUEST = 2


@dataclass(frozen=True, slots=True)
class PikeConfig:
    """OpenSIPS pike's ``reqs_density_per_unit`` per ``sampling_time_unit``."""

    #: Requests allowed per window from one source IP.
    requests: int = 30
    #: Seconds.
    window: float = 2.0
    #: Networks (CIDRs or addresses) never limited, besides the next hop(s).
    trusted: tuple[str, ...] = ()
    #: Most sources tracked at once (memory bound).
    max_sources: int = 65536


class _Source:
    """One source IP's counts: this window's, the last one's, and whether it is blocked."""

    __slots__ = ("start", "current", "previous", "blocked", "seen")

    def __init__(self, now: float) -> None:
        self.start = now
        self.current = 0
        self.previous = 0
        self.blocked = False
        self.seen = now

    def rate(self, now: float, window: float) -> float:
        """Requests in the ``window`` seconds before ``now`` (estimated; a pure read)."""
        elapsed = now - self.start
        if elapsed >= 2 * window:
            return 0.0
        if elapsed >= window:
            return self.current * (2 - elapsed / window)
        return self.previous * (1 - elapsed / window) + self.current

    def count(self, now: float, window: float) -> float:
        """Count one request at ``now``; the rate including it."""
        elapsed = now - self.start
        if elapsed >= window:
            self.previous = self.current if elapsed < 2 * window else 0
            self.current = 0
            self.start = now - elapsed % window
        self.current += 1
        self.seen = now
        return self.rate(now, window)


class Pike:
    """The limiter: :meth:`drops` says, for each request, whether to drop it."""

    def __init__(self, config: PikeConfig, exempt: Iterable[str] = ()) -> None:
        if config.requests <= 0 or config.window <= 0:
            raise ValueError("pike: requests and window must be positive")
        self.limit = config.requests
        self.window = float(config.window)
        self.release_at = config.requests / 2
        self.max_sources = max(1, config.max_sources)
        self._trusted = tuple(ipaddress.ip_network(net, strict=False) for net in config.trusted)
        self._exempt = {_canonical(host) for host in exempt}
        self._is_exempt: dict[str, bool] = {}
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self._blocked: set[str] = set()
        #: Requests dropped because their source was blocked (``sipdlg_pike_blocked_total``).
        self.dropped = 0
        #: Times a source became blocked.
        self.blocks = 0

    def drops(
        self, msg: SipMessage, source: str, now: float, events: list[Event], calls: DialogTable
    ) -> bool:
        """Count a request from ``source``; True if it must be dropped without an answer:
        its source is blocked and it is not a request inside one of ``calls`` (a To-tag
        alone is not enough, or a flood would carry one).  Blocking and release are
        appended to ``events``."""
        if self._exempt_source(source):
            return False
        self._forget_silent(now, events)
        sources = self._sources
        src = sources.get(source)
        if src is None:
            if len(sources) >= self.max_sources:
                self._forget(*sources.popitem(last=False), events)
            src = sources[source] = _Source(now)
        else:
            sources.move_to_end(source)
        rate = src.count(now, self.window)
        if src.blocked:
            if rate <= self.release_at:
                self._release(source, src, events)
        elif rate > self.limit:
            src.blocked = True
            self._blocked.add(source)
            self.blocks += 1
            events.append(SourceBlocked(source, self.limit, self.window))
        if not src.blocked or _in_call(msg, calls):
            return False
        self.dropped += 1
        return True

    def blocked(self, now: float) -> list[str]:
        """The sources blocked at ``now`` (OpenSIPS ``pike_list``), a pure read: a source
        that went quiet shows as released here before the next request notices it."""
        window = self.window
        sources = self._sources
        return sorted(ip for ip in self._blocked if sources[ip].rate(now, window) > self.release_at)

    def __len__(self) -> int:
        return len(self._sources)

    # -- internals -------------------------------------------------------------------------

    def _exempt_source(self, source: str) -> bool:
        hit = self._is_exempt.get(source)
        if hit is None:
            hit = source in self._exempt
            if not hit and self._trusted:
                try:
                    address = ipaddress.ip_address(source)
                except ValueError:
                    address = None
                hit = address is not None and any(address in net for net in self._trusted)
            if len(self._is_exempt) >= self.max_sources:
                self._is_exempt.clear()
            self._is_exempt[source] = hit
        return hit

    def _forget_silent(self, now: float, events: list[Event]) -> None:
        """Drop up to SWEEP_PER_REQUEST sources silent for two windows (their rate is 0)."""
        sources = self._sources
        horizon = now - 2 * self.window
        for _ in range(SWEEP_PER_REQUEST):
            if not sources:
                return
            ip, src = next(iter(sources.items()))
            if src.seen > horizon:
                return
            del sources[ip]
            self._forget(ip, src, events)

    def _forget(self, ip: str, src: _Source, events: list[Event]) -> None:
        if src.blocked:
            self._release(ip, src, events)

    def _release(self, ip: str, src: _Source, events: list[Event]) -> None:
        src.blocked = False
        self._blocked.discard(ip)
        events.append(SourceReleased(ip))


def pike_for(
    config: PikeConfig | None, local_hosts: Iterable[str], next_hops: Iterable[str]
) -> Pike | None:
    """The engine's limiter, or None when off; our own addresses and the next hops are
    exempt (next hops given by name: the shell lists their addresses in ``trusted``)."""
    if config is None:
        return None
    return Pike(config, [*local_hosts, *next_hops])


def _canonical(host: str) -> str:
    """An address as a socket reports a peer (``2001:db8::1``, not ``[2001:DB8:0::1]``)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).compressed
    except ValueError:
        return host


def _in_call(msg: SipMessage, calls: DialogTable) -> bool:
    """Whether a request belongs to a dialog we hold (a To-tag and a known Call-ID); an
    unreadable To or Call-ID counts as none."""
    try:
        return bool(msg.to.tag) and bool(calls.by_callid(msg.callid))
    except SipError:
        return False
