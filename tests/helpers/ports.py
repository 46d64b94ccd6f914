"""Free loopback ports for tests (127.0.0.1 only)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Literal

Proto = Literal["udp", "tcp", "both"]

LOOPBACK = "127.0.0.1"

_lock = threading.Lock()
# Ports handed out recently by this process; not handed out again (avoids two
# fixtures of one test getting the same number before either has bound it).
_issued: set[int] = set()


def _bind(kind: int, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    try:
        if kind == socket.SOCK_STREAM:
            # Same semantics a server gets with SO_REUSEADDR: TIME_WAIT is fine.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, port))
    except OSError:
        sock.close()
        raise
    return sock


def free_port(proto: Proto = "both", *, attempts: int = 200) -> int:
    """A port number on 127.0.0.1 that is currently free.

    ``proto`` is ``"udp"``, ``"tcp"`` or ``"both"`` (free for UDP *and* TCP,
    what a SIP listener on ``udp:`` and ``tcp:`` with one port needs).
    The sockets used for probing are closed before returning, so there is an
    unavoidable small race with other processes; numbers are never repeated
    within one test process.
    """
    kinds: list[int]
    if proto == "udp":
        kinds = [socket.SOCK_DGRAM]
    elif proto == "tcp":
        kinds = [socket.SOCK_STREAM]
    elif proto == "both":
        kinds = [socket.SOCK_STREAM, socket.SOCK_DGRAM]
    else:  # pragma: no cover - guarded by the type
        raise ValueError(f"unknown proto {proto!r}")

    with _lock:
        for _ in range(attempts):
            first = _bind(kinds[0], 0)
            port = int(first.getsockname()[1])
            held = [first]
            try:
                if port in _issued:
                    continue
                try:
                    for kind in kinds[1:]:
                        held.append(_bind(kind, port))
                except OSError:
                    continue
                _issued.add(port)
                return port
            finally:
                for s in held:
                    s.close()
    raise RuntimeError(f"no free {proto} port on {LOOPBACK} after {attempts} attempts")


def free_ports(count: int, proto: Proto = "both") -> list[int]:
    """``count`` distinct free ports (see :func:`free_port`)."""
    return [free_port(proto) for _ in range(count)]


def wait_tcp(host: str, port: int, timeout: float = 15.0) -> bool:
    """True once ``host:port`` accepts a TCP connection, False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
