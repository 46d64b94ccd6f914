"""sipdlg on a real network, with real sockets and SIPp: advertised addresses, IPv6 and calls
that cross families, next hops with failover and OPTIONS probes, RFC 3263 routing against a
DNS server of the test's own, fast failures, and no open relay.

Tests that bind wildcard or extra addresses, or run a DNS server, run inside a network
namespace with only ``lo`` (``@pytest.mark.netns``)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from helpers import LOOPBACK, REPO_ROOT, SipdlgProcess, Sipp, free_port
from helpers.dns_server import DnsServer
from lifecycle_kit import http_get, mi, wait_ended, wait_for, wait_state

Factory = Callable[..., Sipp]
Server = Callable[..., SipdlgProcess]


def ds_states(server: SipdlgProcess) -> dict[str, str]:
    result = mi(server, "ds_list")
    (partition,) = result["PARTITIONS"]
    (dset,) = partition["SETS"]
    return {d["URI"]: d["state"] for d in dset["Destinations"]}


def invites(party: Sipp) -> list[Any]:
    return [m for m in party.received() if m.method == "INVITE"]


# ----------------------------------------------------------------- addresses and IPv6


@pytest.mark.netns
def test_wildcard_listen_writes_only_the_advertised_address(
    sipp: Factory, sipp_uas: Factory, sipdlg_server: Server
) -> None:
    port = free_port("both")
    callee = sipp_uas("uas")
    server = sipdlg_server(
        port=port,
        listen=[
            f"udp:0.0.0.0:{port} as 127.0.0.2:{port}",
            f"tcp:0.0.0.0:{port} as 127.0.0.2:{port}",
        ],
        next_hop=callee.address,
        db="none",
    )
    caller = sipp("uac", remote=server.sip_address, calls=2, timeout=30)
    res = caller.run()
    assert res.ok and res.successful == 2, res.describe()
    (inv, _) = invites(callee)
    assert inv.header("Via").startswith(f"SIP/2.0/UDP 127.0.0.2:{port};")
    assert inv.header("Record-Route").startswith(f"<sip:127.0.0.2:{port};lr;")
    for party in (caller, callee):
        for m in party.received():
            assert "0.0.0.0" not in str(m), m
    # The ACKs and BYEs reached the proxy at its advertised address.
    assert [m.method for m in callee.received()].count("BYE") == 2


@pytest.mark.netns
def test_call_from_ipv4_to_ipv6_is_double_record_routed_and_ended_by_mi(
    sipp: Factory, sipp_uas: Factory, sipdlg_server: Server
) -> None:
    port = free_port("both")
    callee = sipp_uas("uas_answer", local_ip="::1")
    server = sipdlg_server(
        port=port,
        listen=[f"udp:{LOOPBACK}:{port}", f"udp:[::1]:{port}"],
        next_hop=callee.address,
        db="none",
    )
    caller = sipp("uac_wait_bye", remote=server.sip_address, calls=1, timeout=40)
    caller.start()
    d = wait_state(server, 4)
    (inv,) = invites(callee)
    rr = inv.header_values("Record-Route")
    assert rr[0].startswith(f"<sip:[::1]:{port};lr;did=")
    assert rr[1].startswith(f"<sip:{LOOPBACK}:{port};lr;did=")
    assert inv.header("Via").startswith(f"SIP/2.0/UDP [::1]:{port};branch=")
    assert mi(server, "dlg_end_dlg", {"dialog_id": d["ID"]}) == "OK"
    res = caller.wait(45)
    assert res.ok, res.describe()  # the IPv4 caller got its BYE
    assert callee.wait_received(method="BYE")  # and so did the IPv6 callee
    (rec,) = wait_ended(server)
    assert rec["end_reason"] == "MI Termination"


@pytest.mark.netns
def test_calls_over_ipv6_only(sipp: Factory, sipp_uas: Factory, sipdlg_server: Server) -> None:
    port = free_port("both")
    callee = sipp_uas("uas", local_ip="::1")
    server = sipdlg_server(
        port=port,
        listen=[f"udp:[::1]:{port}", f"tcp:[::1]:{port}"],
        next_hop=callee.address,
        db="none",
    )
    caller = sipp("uac", remote=f"[::1]:{port}", local_ip="::1", calls=3, timeout=30)
    res = caller.run()
    assert res.ok and res.successful == 3, res.describe()
    assert server.running


# ---------------------------------------------------------------------- failover, ds_list


def test_failover_to_the_second_next_hop_and_back_when_the_first_returns(
    sipp: Factory, sipp_uas: Factory, sipdlg_server: Server
) -> None:
    first = sipp_uas("uas_probe_or_call")
    second = sipp_uas("uas_probe_or_call")
    server = sipdlg_server(
        next_hop=[f"{first.address};priority=0", f"{second.address};priority=1"],
        probe_interval=1,
        db="none",
    )
    a, b = f"sip:{first.address}", f"sip:{second.address}"
    assert ds_states(server) == {a: "Active", b: "Active"}
    res = sipp("uac", remote=server.sip_address, calls=4, timeout=30).run()
    assert res.ok and res.successful == 4, res.describe()
    assert len(invites(first)) == 4 and not invites(second)

    first.stop(grace=0.1)  # the first next hop dies
    res = sipp("uac", remote=server.sip_address, calls=6, rate=3, timeout=30).run()
    assert res.ok and res.successful == 6, res.describe()  # none waited 32 s for a 408
    assert len(invites(second)) == 6
    assert wait_for(lambda: ds_states(server)[a] == "Probing" or None, what="A down")
    _, metrics = http_get(server, "/metrics")
    assert f'sipdlg_next_hop_up{{uri="{a}"}} 0.0' in metrics
    assert server.log_text().count(f"next hop {a} is down") == 1

    revived = sipp_uas("uas_probe_or_call", local_port=first.port)
    assert wait_for(lambda: ds_states(server)[a] == "Active" or None, what="A up again")
    res = sipp("uac", remote=server.sip_address, calls=2, timeout=30).run()
    assert res.ok and len(invites(revived)) == 2
    assert f"next hop {a} is up" in server.log_text()


def test_ds_set_state_takes_a_next_hop_out_of_rotation(
    sipp: Factory, sipp_uas: Factory, sipdlg_server: Server
) -> None:
    first = sipp_uas("uas")
    second = sipp_uas("uas")
    server = sipdlg_server(next_hop=[first.address, f"{second.address};priority=1"], db="none")
    params = {"state": "i", "group": 1, "address": first.address}
    assert mi(server, "ds_set_state", params) == "OK"
    res = sipp("uac", remote=server.sip_address, calls=2, timeout=30).run()
    assert res.ok and not invites(first) and len(invites(second)) == 2
    full = mi(server, "ds_list", {"full": "1"})["PARTITIONS"][0]["SETS"][0]["Destinations"]
    assert [(d["state"], d["priority"], d["weight"]) for d in full] == [
        ("Inactive", 0, 1),
        ("Active", 1, 1),
    ]
    assert full[1]["first_hit_counter"] == 2


# ----------------------------------------------------------------- fast, correct failures


def test_tcp_next_hop_refusing_the_connection_gets_503_at_once(
    sipp: Factory, sipdlg_server: Server
) -> None:
    dead = free_port("tcp")
    server = sipdlg_server(next_hop=f"tcp:{LOOPBACK}:{dead}", db="none")
    caller = sipp("uac_expect_503", remote=server.sip_address, calls=1, timeout=20)
    started = time.monotonic()
    res = caller.run()
    assert res.ok, res.describe()
    assert time.monotonic() - started < 16  # a transport error, not Timer B's 32 s
    (final,) = [m for m in caller.received() if m.status == 503]
    assert "Connection refused" in (final.header("Reason") or "")


def test_unsupported_next_hop_transport_and_bare_wildcard_are_refused_at_start(
    tmp_path: Any,
) -> None:
    for args, expected in (
        (["--next-hop", "sctp:127.0.0.1:5080"], "unsupported transport sctp"),
        (["--listen", "udp:0.0.0.0:5060"], "wildcard address"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "app.cli", "serve", "--db", "none", *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 2, proc.stderr
        assert expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------- RFC 3263 DNS


@pytest.mark.netns
def test_srv_priorities_failover_and_answers_cached_for_their_ttl(
    sipp: Factory, sipp_uas: Factory, sipdlg_server: Server
) -> None:
    dead = free_port("udp")
    callee = sipp_uas("uas")
    records = {
        ("_sip._udp.pbx.test", "SRV"): [
            f"10 0 {dead} a.pbx.test.",
            f"20 0 {callee.port} b.pbx.test.",
        ],
        ("a.pbx.test", "A"): [LOOPBACK],
        ("b.pbx.test", "A"): [LOOPBACK],
    }
    with DnsServer(records) as dns:
        server = sipdlg_server(next_hop="pbx.test", dns_server=dns.address, db="none")
        res = sipp("uac", remote=server.sip_address, calls=3, rate=3, timeout=30).run()
        assert res.ok and res.successful == 3, res.describe()
        assert len(invites(callee)) == 3
        assert dns.queries[("_sip._udp.pbx.test", "SRV")] == 1  # cached for its TTL
        assert server.log_text().count("next hop sip:pbx.test is down") == 0  # B took them


@pytest.mark.netns
def test_next_hop_that_does_not_resolve_gets_503_within_a_second_or_so(
    sipp: Factory, sipdlg_server: Server
) -> None:
    with DnsServer({("other.test", "A"): [LOOPBACK]}) as dns:
        server = sipdlg_server(next_hop="udp:no.such.test:5080", dns_server=dns.address, db="none")
        caller = sipp("uac_expect_503", remote=server.sip_address, calls=1, timeout=20)
        started = time.monotonic()
        res = caller.run()
        elapsed = time.monotonic() - started
        assert res.ok, res.describe()
        assert elapsed < 16, elapsed  # not the 32 s of Timer B
        (final,) = [m for m in caller.received() if m.status == 503]
        assert "no.such.test" in (final.header("Reason") or "")
        assert server.log_text().count("no.such.test: DNS: no address") == 1


# ------------------------------------------------------------------------- no open relay


def _request(method: str, ruri: str, to_tag: str = "") -> bytes:
    tag = f";tag={to_tag}" if to_tag else ""
    return (
        f"{method} {ruri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {LOOPBACK}:{{port}};branch=z9hG4bK-relay-{method}{to_tag}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:scanner@{LOOPBACK}>;tag=s1\r\n"
        f"To: <{ruri}>{tag}\r\nCall-ID: relay-{method}-{to_tag}@test\r\n"
        f"CSeq: 1 {method}\r\nContact: <sip:scanner@{LOOPBACK}>\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _final_status(sock: socket.socket) -> int:
    while True:
        data, _ = sock.recvfrom(65536)
        status = int(data.split(b" ", 2)[1])
        if status >= 200:
            return status


@pytest.mark.netns
def test_requests_for_foreign_hosts_are_refused_and_never_reach_them(
    sipdlg_server: Server,
) -> None:
    foreign = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    foreign.bind(("127.0.0.2", 0))
    foreign.settimeout(1.0)
    target = f"sip:victim@127.0.0.2:{foreign.getsockname()[1]}"
    server = sipdlg_server(next_hop=[], relay_allow="127.0.0.1/32", db="none")
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind((LOOPBACK, 0))
    client.settimeout(5.0)
    port = client.getsockname()[1]
    to_proxy = (LOOPBACK, server.port)
    cases = [("INVITE", "", 403), ("MESSAGE", "", 403), ("BYE", "t1", 404), ("INVITE", "t2", 404)]
    for method, to_tag, expected in cases:
        data = _request(method, target, to_tag).replace(b"{port}", str(port).encode())
        client.sendto(data, to_proxy)
        assert _final_status(client) == expected, (method, to_tag)
    with pytest.raises(TimeoutError):
        foreign.recvfrom(65536)  # nothing reached the foreign host
    foreign.close()
    client.close()
