"""This host's own IP addresses, for sockets bound to a wildcard address.

A request sent to any of them reaches a ``0.0.0.0``/``::`` socket, so the engine must take
each for itself (a Request-URI or Route naming it is ours, not a hop to forward to).  Read
from Linux's ``/proc/net/fib_trie`` (IPv4 host routes marked LOCAL) and ``/proc/net/if_inet6``;
elsewhere the advertised addresses alone are known.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path


def local_addresses(proc: Path = Path("/proc/net")) -> list[str]:
    found: list[str] = []
    try:
        last = ""
        for line in (proc / "fib_trie").read_text().splitlines():
            text = line.strip()
            if text.startswith("|-- "):
                last = text[4:]
            elif text == "/32 host LOCAL" and last and last not in found:
                found.append(last)
    except OSError:
        pass
    try:
        for line in (proc / "if_inet6").read_text().splitlines():
            raw = line.split()[0]
            address = ipaddress.IPv6Address(int(raw, 16)).compressed
            if address not in found:
                found.append(address)
    except (OSError, ValueError, IndexError):
        pass
    return found
