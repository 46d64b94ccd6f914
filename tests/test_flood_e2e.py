"""Flood protection through the real ``sipdlg serve`` (OpenSIPS pike), inside a network
namespace with three loopback addresses: a flood of INVITEs from 127.0.0.2 is cut to the
limit and answered with nothing, while SIPp's calls from 127.0.0.3 (neither our address nor
the next hop, so counted like any phone) all complete; the block is logged once, counted in
``/metrics``, listed by ``pike_list``, and released once the source goes quiet."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from helpers import SipdlgProcess, Sipp
from helpers.udp_peer import UdpPeer
from lifecycle_kit import http_get, mi, wait_for

pytestmark = pytest.mark.sipp

FLOODER = "127.0.0.2"
PHONES = "127.0.0.3"
PROBER = "127.0.0.4"
LIMIT = 80
WINDOW = 4
FLOOD = 800


def invite(n: int, peer: UdpPeer, max_forwards: int = 70) -> str:
    return (
        f"INVITE sip:{n}@example.com SIP/2.0\n"
        f"Via: SIP/2.0/UDP {peer.hostport};branch=z9hG4bK-flood-{n}\n"
        f"Max-Forwards: {max_forwards}\n"
        f"From: <sip:scanner@example.com>;tag=s{n}\n"
        f"To: <sip:{n}@example.com>\n"
        f"Call-ID: flood-{n}@{peer.host}\n"
        f"CSeq: 1 INVITE\n"
        f"Contact: <sip:scanner@{peer.hostport}>\n"
        f"Content-Length: 0\n\n"
    )


def probe(peer: UdpPeer) -> str:
    """A request sipdlg answers itself (483 for Max-Forwards 0), from another address: once
    its answer is back, everything sent before it has been handled (one socket, in order)."""
    return (
        f"OPTIONS sip:x@example.com SIP/2.0\n"
        f"Via: SIP/2.0/UDP {peer.hostport};branch=z9hG4bK-probe\n"
        f"Max-Forwards: 0\n"
        f"From: <sip:probe@example.com>;tag=p\n"
        f"To: <sip:x@example.com>\n"
        f"Call-ID: probe@{peer.host}\n"
        f"CSeq: 1 OPTIONS\n"
        f"Content-Length: 0\n\n"
    )


def metric(server: SipdlgProcess, name: str) -> float:
    status, text = http_get(server, "/metrics")
    assert status == 200
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


@pytest.mark.netns
def test_a_flood_from_one_address_is_limited_while_another_address_calls(
    sipdlg_server: Callable[..., SipdlgProcess],
    sipp: Callable[..., Sipp],
    sipp_uas: Callable[..., Sipp],
) -> None:
    uas = sipp_uas("uas")
    server = sipdlg_server(uas_port=uas.port, db="none", pike_requests=LIMIT, pike_window=WINDOW)
    proxy = (server.host, server.port)
    # 4 calls/s of INVITE, ACK and BYE: 48 requests per 4 s, under the limit.
    phones = sipp("uac", remote=server.sip_address, local_ip=PHONES, calls=20, rate=4)
    phones.start()

    flooder, prober = UdpPeer(FLOODER), UdpPeer(PROBER)
    try:
        for n in range(FLOOD):
            flooder.send(invite(n, flooder), proxy)
        prober.send(probe(prober), proxy)
        prober.expect(lambda m: m.status == 483, "483 to the probe")
        flooder.quiet_for(0.2, lambda m: True)  # read what is already there
        answered = {m.call_id for m in flooder.received}
        assert len(answered) == LIMIT  # the rest got nothing at all
        # (read within the window: a source quiet for two windows is released by itself)
        assert mi(server, "pike_list") == {"IPs": [FLOODER]}
        assert metric(server, "sipdlg_pike_blocked_total") == FLOOD - LIMIT
        assert metric(server, "sipdlg_pike_blocked_sources") == 1
        log = server.log_text()
        assert log.count(f"pike: blocking {FLOODER}") == 1, server.log_tail()
        assert "WARNING" in next(line for line in log.splitlines() if "pike: blocking" in line)

        result = phones.wait(timeout=120)
        assert result.ok and result.successful == 20, result.describe()

        # Quiet now: released, and its requests pass again.
        def answered_again() -> bool:
            flooder.send(invite(FLOOD + 1, flooder, max_forwards=0), proxy)
            try:
                flooder.expect(lambda m: m.status == 483, "483", timeout=0.5)
            except AssertionError:
                return False
            return True

        wait_for(answered_again, timeout=30, what="the flooder released")
        assert server.log_text().count(f"pike: releasing {FLOODER}") == 1
        assert mi(server, "pike_list") == {"IPs": []}
        assert metric(server, "sipdlg_pike_blocked_sources") == 0
        assert PHONES not in server.log_text()  # the phones were never blocked
        assert "Traceback" not in server.log_text()
    finally:
        flooder.close()
        prober.close()
