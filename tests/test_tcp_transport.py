"""SIP over TCP on real sockets: framing across reads, a peer's garbage closes only its own
connection, idle connections are closed, and TCP calls keep flowing beside all of it."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from helpers import LOOPBACK, SipdlgProcess

Factory = Callable[..., SipdlgProcess]


def options(n: int, max_forwards: int = 0) -> bytes:
    """An OPTIONS with Max-Forwards 0: the proxy itself answers 483 on the same connection."""
    return (
        f"OPTIONS sip:probe@{LOOPBACK} SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP {LOOPBACK}:1;branch=z9hG4bK-tcp-{n}\r\n"
        f"From: <sip:probe@{LOOPBACK}>;tag=t{n}\r\n"
        f"To: <sip:probe@{LOOPBACK}>\r\n"
        f"Call-ID: tcp-{n}@{LOOPBACK}\r\n"
        f"CSeq: 1 OPTIONS\r\n"
        f"Max-Forwards: {max_forwards}\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def connect(server: SipdlgProcess) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, server.port), timeout=5)
    sock.settimeout(5)
    return sock


def read_responses(sock: socket.socket, count: int) -> list[bytes]:
    """Read until ``count`` complete responses (all with Content-Length: 0) arrived."""
    data = b""
    deadline = time.monotonic() + 5
    while data.count(b"\r\n\r\n") < count and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return [m + b"\r\n\r\n" for m in data.split(b"\r\n\r\n") if m]


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_messages_split_and_batched_across_reads(sipdlg_server: Factory) -> None:
    server = sipdlg_server(next_hop=f"{LOOPBACK}:9")
    with connect(server) as sock:
        first, second, third = options(1), options(2), options(3)
        sock.sendall(first[:20])
        time.sleep(0.1)
        sock.sendall(first[20:] + second + third[:-5])
        time.sleep(0.1)
        sock.sendall(third[-5:])
        replies = read_responses(sock, 3)
    assert [r.split(b"\r\n", 1)[0] for r in replies] == [b"SIP/2.0 483 Too Many Hops"] * 3
    assert [b"tcp-1@" in replies[0], b"tcp-2@" in replies[1], b"tcp-3@" in replies[2]] == [True] * 3


def test_garbage_closes_only_that_connection(sipdlg_server: Factory) -> None:
    server = sipdlg_server(next_hop=f"{LOOPBACK}:9")
    with connect(server) as good, connect(server) as bad:
        good.sendall(options(10))
        assert read_responses(good, 1)[0].startswith(b"SIP/2.0 483")
        bad.sendall(b"INVITE sip:x@y SIP/2.0\r\nContent-Length: -5\r\n\r\n")
        assert closed_by_peer(bad, 5), "a stream with a broken length must be closed"
        good.sendall(options(11))
        assert read_responses(good, 1)[0].startswith(b"SIP/2.0 483")
    with connect(server) as again:
        again.sendall(options(12))
        assert read_responses(again, 1)[0].startswith(b"SIP/2.0 483")


def test_oversized_stream_message_closes_connection(sipdlg_server: Factory) -> None:
    server = sipdlg_server(next_hop=f"{LOOPBACK}:9", max_message_size=4096)
    with connect(server) as sock:
        sock.sendall(b"OPTIONS sip:x@y SIP/2.0\r\nX-Pad: " + b"a" * 8000)
        assert closed_by_peer(sock, 5)


def test_idle_connection_closed(sipdlg_server: Factory) -> None:
    server = sipdlg_server(next_hop=f"{LOOPBACK}:9", tcp_idle_timeout=1)
    with connect(server) as sock:
        sock.sendall(options(20))
        assert read_responses(sock, 1)[0].startswith(b"SIP/2.0 483")
        assert closed_by_peer(sock, 6), "an idle connection must be closed after the timeout"
