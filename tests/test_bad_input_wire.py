"""Malformed numbers and oversized requests sent to a running ``sipdlg serve`` over real UDP
and TCP: each gets its answer (400, 513), nothing reaches the next hop, the server logs no
traceback and still routes a good request afterwards.  Hostile input: inside a network
namespace (``@pytest.mark.netns``)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest
from helpers import LOOPBACK, SipdlgProcess, SipMessage, free_port

Server = Callable[..., SipdlgProcess]

pytestmark = pytest.mark.netns


def request(n: int, port: int, *, max_forwards: str = "70", cseq: str = "1", pad: int = 0) -> str:
    """An OPTIONS from 127.0.0.1:``port`` with the given header numbers and ``pad`` bytes of
    an extra header."""
    extra = f"X-Pad: {'a' * pad}\r\n" if pad else ""
    return (
        f"OPTIONS sip:bob@{LOOPBACK} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {LOOPBACK}:{port};branch=z9hG4bK-bad{n}\r\n"
        f"Max-Forwards: {max_forwards}\r\n"
        f"From: <sip:alice@{LOOPBACK}>;tag=bad{n}\r\n"
        f"To: <sip:bob@{LOOPBACK}>\r\n"
        f"Call-ID: bad{n}@wire\r\n"
        f"CSeq: {cseq} OPTIONS\r\n"
        f"{extra}"
        f"Content-Length: 0\r\n\r\n"
    )


class Hop:
    """The next hop: a UDP socket that answers 200 to what reaches it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, free_port("udp")))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.seen: list[SipMessage] = []

    def pump(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(70000)
            except BlockingIOError:
                return
            msg = SipMessage(data.decode("utf-8", "surrogateescape"))
            self.seen.append(msg)
            if msg.is_request:
                vias = "".join(f"Via: {v}\r\n" for v in msg.header_values("via"))
                reply = (
                    f"SIP/2.0 200 OK\r\n{vias}From: {msg.header('from')}\r\n"
                    f"To: {msg.header('to')};tag=hop\r\nCall-ID: {msg.call_id}\r\n"
                    f"CSeq: {msg.header('cseq')}\r\nContent-Length: 0\r\n\r\n"
                )
                self.sock.sendto(reply.encode(), addr)


def final_reply(read: Callable[[], bytes], hop: Hop) -> SipMessage:
    """The first non-100 response, pumping the hop meanwhile."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        hop.pump()
        try:
            data = read()
        except (BlockingIOError, TimeoutError):
            time.sleep(0.01)
            continue
        msg = SipMessage(data.decode("utf-8", "surrogateescape"))
        if msg.status != 100:
            return msg
    raise AssertionError("no final response")


def test_bad_numbers_and_sizes_get_answers(sipdlg_server: Server) -> None:
    hop = Hop()
    server = sipdlg_server(next_hop=f"udp:{LOOPBACK}:{hop.port}", mi=False, db="none")
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((LOOPBACK, 0))
    udp.setblocking(False)
    me = udp.getsockname()[1]

    def over_udp(text: str) -> SipMessage:
        udp.sendto(text.encode("utf-8"), (LOOPBACK, server.port))
        return final_reply(lambda: udp.recv(70000), hop)

    cases = [
        (dict(max_forwards="²"), "400 Malformed Max-Forwards"),
        (dict(max_forwards="١٢"), "400 Malformed Max-Forwards"),
        (dict(max_forwards="9" * 5000), "400 Max-Forwards too large"),
        (dict(cseq="²"), "400 Malformed CSeq"),
        (dict(cseq="4294967296"), "400 CSeq too large"),
        # Arrives in one datagram (65,480 bytes), but not once our Via is on it: 513, not a
        # sendto() that fails unseen.
        (dict(pad=65480 - len(request(5, me, pad=1)) + 1), "513 Message Too Large"),
    ]
    for n, (numbers, expected) in enumerate(cases):
        reply = over_udp(request(n, me, **numbers))  # type: ignore[arg-type]
        assert reply.start_line == f"SIP/2.0 {expected}", (numbers, reply.start_line)
    hop.pump()
    assert hop.seen == []

    # A TCP peer whose Content-Length no message can have: 513, then the connection closes.
    tcp = socket.create_connection((LOOPBACK, server.port), timeout=10)
    head = request(99, me).replace("Content-Length: 0", "Content-Length: 99999999999")
    tcp.sendall(head.encode())
    data = b""
    while chunk := tcp.recv(65535):
        data += chunk
    tcp.close()
    assert data.startswith(b"SIP/2.0 513 Message Too Large\r\n")

    # The server is fine: a good request is routed, and no traceback was ever logged.
    assert over_udp(request(100, me)).start_line == "SIP/2.0 200 OK"
    assert [m.method for m in hop.seen] == ["OPTIONS"]
    log = server.log_text()
    assert "Traceback" not in log and "ERROR" not in log
