"""A small authoritative DNS server on loopback for the RFC 3263 tests (dnspython).

``DnsServer({("_sip._udp.example.test", "SRV"): ["10 0 5080 a.example.test."], ...})``
answers those records over UDP, NXDOMAIN for any other name; it counts the queries it got, so
a test can see the proxy's cache at work.  Run it inside ``@pytest.mark.netns`` tests only.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from types import TracebackType

import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from .ports import LOOPBACK


class DnsServer:
    def __init__(
        self, records: Mapping[tuple[str, str], Sequence[str]], ttl: int = 60, port: int = 0
    ) -> None:
        self.records = {
            (n.rstrip(".").lower(), t.upper()): list(v) for (n, t), v in records.items()
        }
        self.ttl = ttl
        self.queries: Counter[tuple[str, str]] = Counter()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, port))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> DnsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:
                continue
            self.sock.sendto(self._answer(query).to_wire(), peer)

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        reply = dns.message.make_response(query)
        reply.flags |= 0x0400  # authoritative
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries[(name, rdtype)] += 1
        values = self.records.get((name, rdtype))
        if values:
            reply.answer.append(
                dns.rrset.from_text_list(question.name, self.ttl, "IN", rdtype, values)
            )
        elif not any(n == name for n, _ in self.records):
            reply.set_rcode(dns.rcode.NXDOMAIN)
        return reply
