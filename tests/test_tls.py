"""SIP over TLS and HTTPS for the MI (docs/tls.md), on real sockets.

SIPp from Debian has no TLS: the TLS callers and callees are Python ``ssl`` peers
(tests/helpers/sip_peer.py); the UDP side of a call that leaves over TLS is a real SIPp.
Certificates come from a throwaway CA made by ``trustme`` for this run, never from the repo.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
import trustme
from helpers import LOOPBACK, REPO_ROOT, SipdlgProcess, Sipp, free_port
from helpers.sip_peer import Call, PeerClosed, Uas, connect, serve_uas

from app.config import ConfigError, Settings, load_settings
from app.mi import client as mi_client
from app.tls import load_tls
from engine.address import is_stream, uri_target
from engine.dialog import Socket
from engine.dispatcher import parse_destination
from engine.message import SipError
from engine.proxy import Engine, EngineConfig

Server = Callable[..., SipdlgProcess]
SippFactory = Callable[..., Sipp]


@dataclass
class Pki:
    """The test CA and the files of two certificates it issued (sipdlg's and the callee's),
    plus a callee certificate from a CA nobody trusts."""

    ca_file: Path
    cert: Path
    key: Path
    uas: trustme.LeafCert
    rogue: trustme.LeafCert

    def client(self) -> ssl.SSLContext:
        """What a phone uses to check sipdlg."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def uas_server(self, leaf: trustme.LeafCert | None = None) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        (leaf or self.uas).configure_cert(context)
        return context

    def options(self, **more: Any) -> dict[str, Any]:
        """sipdlg's TLS command-line options."""
        return {
            "tls_cert": str(self.cert),
            "tls_key": str(self.key),
            "tls_ca": str(self.ca_file),
            "db": "none",
            **more,
        }


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    mine = ca.issue_cert("127.0.0.1", "::1", "localhost", "sipdlg.test")
    mine.cert_chain_pems[0].write_to_path(str(folder / "sipdlg.pem"))
    mine.private_key_pem.write_to_path(str(folder / "sipdlg.key"))
    uas = ca.issue_cert("127.0.0.1", "::1", "localhost", "uas.sipdlg.test")
    rogue = trustme.CA().issue_cert("127.0.0.1", "localhost")
    return Pki(folder / "ca.pem", folder / "sipdlg.pem", folder / "sipdlg.key", uas, rogue)


async def tls_server(
    sipdlg_server: Server, pki: Pki, next_hop: str, **opts: Any
) -> tuple[SipdlgProcess, int]:
    """sipdlg with udp and tcp on one port, and tls on the port returned beside it."""
    tls_port = free_port("tcp")
    server = await asyncio.to_thread(
        sipdlg_server,
        next_hop=next_hop,
        extra_args=["--listen", f"tls:{LOOPBACK}:{tls_port}"],
        **pki.options(**opts),
    )
    return server, tls_port


async def mi(server: SipdlgProcess, method: str, params: Any = None) -> Any:
    return await asyncio.to_thread(mi_client.call, server.mi_url, method, params)


def rr_values(msg: Any) -> list[str]:
    return [r.strip() for v in msg.header_values("record-route") for r in v.split(",")]


# -------------------------------------------------------------------------- the engine


def test_streams_and_sips_targets() -> None:
    assert is_stream("tls") and is_stream("tcp") and not is_stream("udp")
    assert uri_target("sips:bob@example.com", "udp") == ("tls", "example.com", 5061)
    assert uri_target("sips:bob@10.0.0.1:5071;transport=tcp", "udp") == ("tls", "10.0.0.1", 5071)
    assert uri_target("sip:bob@10.0.0.1;transport=tls", "udp") == ("tls", "10.0.0.1", 5061)
    assert uri_target("sip:bob@10.0.0.1", "tls") == ("tls", "10.0.0.1", 5061)
    with pytest.raises(SipError) as err:
        uri_target("sips:bob@10.0.0.1;transport=udp", "udp")
    assert err.value.status == 416


def sips_invite() -> bytes:
    return (
        b"INVITE sips:bob@example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bK-sips\r\n"
        b"From: <sips:alice@example.com>;tag=a\r\nTo: <sips:bob@example.com>\r\n"
        b"Call-ID: sips-1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
        b"Contact: <sips:alice@192.0.2.9>\r\nContent-Length: 0\r\n\r\n"
    )


@pytest.mark.parametrize(
    "next_hop,expected",
    [("192.0.2.7:5061", "tls"), ("tls:192.0.2.7:5061", "tls"), ("udp:192.0.2.7:5060", 416)],
)
def test_sips_request_to_next_hop_never_downgraded(next_hop: str, expected: object) -> None:
    """A next hop without a transport is reached over TLS for a sips Request-URI; one
    configured for UDP or TCP refuses the request (416) rather than downgrade it."""
    udp, tls = Socket("udp", "192.0.2.1", 5060), Socket("tls", "192.0.2.1", 5061)
    engine = Engine([udp, tls], EngineConfig(next_hops=[parse_destination(next_hop)]))
    engine.receive(sips_invite(), udp, ("192.0.2.9", 5060), None, 0.0)
    sends = engine.take_sends()
    if expected == 416:
        assert [s.data.split(b"\r\n", 1)[0] for s in sends] == [
            b"SIP/2.0 100 Trying",
            b"SIP/2.0 416 Unsupported URI Scheme",
        ]
        return
    invite = next(s for s in sends if s.data.startswith(b"INVITE"))
    assert invite.socket is tls and (invite.host, invite.port) == ("192.0.2.7", 5061)
    assert b"Record-Route: <sips:192.0.2.1:5061;lr;did=" in invite.data
    assert b"<sip:192.0.2.1:5060;lr;did=" in invite.data  # the UDP side stays sip


def test_record_route_names_tls() -> None:
    tls = Socket("tls", "192.0.2.1", 5061)
    engine = Engine([tls])
    assert engine.record_route(tls, "7") == "<sip:192.0.2.1:5061;transport=tls;lr;did=7>"
    assert engine.record_route(tls, "7", sips=True) == "<sips:192.0.2.1:5061;lr;did=7>"
    udp = Socket("udp", "192.0.2.1", 5060)
    assert engine.record_route(udp, "7", sips=True) == "<sip:192.0.2.1:5060;lr;did=7>"


# ----------------------------------------------------------------------- the settings


def test_tls_settings_from_toml_environment_and_cli(tmp_path: Path) -> None:
    config = tmp_path / "sipdlg.toml"
    config.write_text(
        'listen = ["tls:127.0.0.1:5061 as 203.0.113.5:5061", "udp:[::1]:5060"]\n'
        'tls_cert = "/etc/sipdlg/cert.pem"\ntls_verify = true\n'
    )
    env = {"SIPDLG_TLS_KEY": "/etc/sipdlg/key.pem", "SIPDLG_TLS_VERIFY": "off"}
    settings = load_settings({"tls_ca": "/etc/sipdlg/ca.pem"}, str(config), env)
    assert (settings.tls_cert, settings.tls_key, settings.tls_ca) == (
        "/etc/sipdlg/cert.pem",
        "/etc/sipdlg/key.pem",
        "/etc/sipdlg/ca.pem",
    )
    assert settings.tls_verify is False
    tls = settings.sockets()[0]
    assert (tls.proto, tls.hostport) == ("tls", "203.0.113.5:5061")
    hop = load_settings({"next_hop": "tls:[::1]:5061", "listen": ["tls:[::1]:5061"]}, None, {})
    assert [d.proto for d in hop.destinations()] == ["tls"]
    with pytest.raises(ConfigError, match="no tls socket"):
        load_settings({"next_hop": "tls:127.0.0.1:5061"}, None, {})


def test_verification_defaults(pki: Pki) -> None:
    """On by default (the system's CAs without tls_ca); off only when asked."""

    def client(verify: bool) -> ssl.SSLContext | None:
        settings = Settings(listen=["tls:127.0.0.1:5061"], tls_cert=str(pki.cert))
        settings.tls_key, settings.tls_verify = str(pki.key), verify
        return load_tls(settings).client

    checked, unchecked = client(True), client(False)
    assert checked is not None and checked.verify_mode == ssl.CERT_REQUIRED
    assert checked.check_hostname
    assert unchecked is not None and unchecked.verify_mode == ssl.CERT_NONE
    assert load_tls(Settings()).server is None  # no tls socket, no context


def start_error(tmp_path: Path, *args: str) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--db", "none", *args],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    return proc.returncode, proc.stderr


@pytest.mark.parametrize(
    "case,expected",
    [
        ("missing cert", "tls_cert {dir}/nope.pem: cannot read: No such file or directory"),
        ("bad pem", "tls_cert {dir}/junk.pem: not a valid PEM certificate"),
        ("key mismatch", "tls_key {dir}/other.key: the key does not match the certificate"),
        ("no cert", "a TLS socket needs a certificate: set tls_cert and tls_key"),
        ("bad ca", "tls_ca {dir}/sipdlg.key: no PEM certificate in it"),
        ("mi key mismatch", "mi_tls_key {dir}/other.key: the key does not match"),
    ],
)
def test_bad_certificates_refused_at_start(
    case: str, expected: str, pki: Pki, tmp_path: Path
) -> None:
    folder = pki.cert.parent
    (folder / "junk.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    pki.rogue.private_key_pem.write_to_path(str(folder / "other.key"))
    port = free_port("both")
    listen = ["--listen", f"tls:{LOOPBACK}:{port}", "--mi-listen", f"{LOOPBACK}:{free_port('tcp')}"]
    cert, key = ["--tls-cert", str(pki.cert)], ["--tls-key", str(pki.key)]
    args = {
        "missing cert": [*listen, "--tls-cert", str(folder / "nope.pem"), *key],
        "bad pem": [*listen, "--tls-cert", str(folder / "junk.pem"), *key],
        "key mismatch": [*listen, *cert, "--tls-key", str(folder / "other.key")],
        "no cert": listen,
        "bad ca": [*listen, *cert, *key, "--tls-ca", str(pki.key)],
        "mi key mismatch": [
            *listen,
            *cert,
            *key,
            "--mi-tls-cert",
            str(pki.cert),
            "--mi-tls-key",
            str(folder / "other.key"),
        ],
    }[case]
    code, stderr = start_error(tmp_path, *args)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("sipdlg: ")
    assert expected.format(dir=folder) in lines[0]


# --------------------------------------------------------------------- calls over TLS


async def tls_call_setup(sipdlg_server: Server, pki: Pki) -> tuple[SipdlgProcess, int, Uas, Call]:
    """A TLS callee, sipdlg sending to it over TLS, and a TLS caller whose call is answered,
    acknowledged and listed as confirmed."""
    uas_port = free_port("tcp")
    uas = await serve_uas(LOOPBACK, uas_port, pki.uas_server())
    server, tls_port = await tls_server(sipdlg_server, pki, f"tls:{LOOPBACK}:{uas_port}")
    caller = await connect(LOOPBACK, tls_port, pki.client())
    call = Call(caller, f"sip:callee@{LOOPBACK}:{uas_port}")
    final = await call.invite()
    assert final.status == 200, final.text
    call.ack()
    for _ in range(100):
        listed = (await mi(server, "dlg_list"))["Dialogs"]
        if listed and listed[0]["state"] == 4:
            break
        await asyncio.sleep(0.05)
    assert [(d["callid"], d["state"]) for d in listed] == [(call.callid, 4)]
    return server, tls_port, uas, call


async def test_call_through_tls_socket(sipdlg_server: Server, pki: Pki) -> None:
    server, tls_port, uas, call = await tls_call_setup(sipdlg_server, pki)
    assert [r.status for r in call.responses] == [100, 180, 200]
    invite = uas.received("INVITE")[0]
    top_via = invite.header_values("via")[0]
    assert top_via.startswith(f"SIP/2.0/TLS {LOOPBACK}:{tls_port};branch=z9hG4bK")
    record_route = rr_values(invite)
    assert len(record_route) == 1  # in and out on one socket
    assert record_route[0].startswith(f"<sip:{LOOPBACK}:{tls_port};transport=tls;lr;did=")
    assert rr_values(call.responses[-1]) == record_route
    assert call.routes == record_route
    bye_ok = await call.bye()
    assert bye_ok.status == 200
    assert [m.method for m in uas.received() if m.call_id == call.callid] == [
        "INVITE",
        "ACK",
        "BYE",
    ]
    for msg in uas.received():
        assert msg.header_values("via")[0].startswith("SIP/2.0/TLS ")
    assert len(uas.peers) == 1, "sipdlg reuses its connection to the callee"
    call.peer.close()
    uas.close()


async def test_dlg_end_dlg_byes_both_tls_sides(sipdlg_server: Server, pki: Pki) -> None:
    server, _, uas, call = await tls_call_setup(sipdlg_server, pki)
    dialog_id = (await mi(server, "dlg_list"))["Dialogs"][0]["ID"]
    assert await mi(server, "dlg_end_dlg", [dialog_id]) == "OK"
    bye = await call.expect_request("BYE")
    assert bye.header_values("via")[0].startswith("SIP/2.0/TLS ")

    async def callee_bye() -> None:
        while not uas.received("BYE"):
            await asyncio.sleep(0.05)

    await asyncio.wait_for(callee_bye(), 10)
    assert uas.received("BYE")[0].call_id == call.callid

    async def gone() -> None:
        while (await mi(server, "dlg_list"))["Dialogs"]:
            await asyncio.sleep(0.1)

    await asyncio.wait_for(gone(), 10)
    call.peer.close()
    uas.close()


async def test_sips_request_leaves_over_tls_with_sips_record_route(
    sipdlg_server: Server, pki: Pki
) -> None:
    """A sips: Request-URI sent in over plain TCP still leaves over TLS (RFC 3261 §26.2:
    the next hop has no transport of its own), and the TLS side's Record-Route is sips."""
    uas_port = free_port("tcp")
    uas = await serve_uas(LOOPBACK, uas_port, pki.uas_server())
    server, tls_port = await tls_server(sipdlg_server, pki, f"{LOOPBACK}:{uas_port}")
    caller = await connect(LOOPBACK, server.port)  # TCP
    call = Call(caller, f"sips:callee@{LOOPBACK}:{uas_port}")
    final = await call.invite()
    assert final.status == 200, final.text
    invite = uas.received("INVITE")[0]
    assert invite.header_values("via")[0].startswith(f"SIP/2.0/TLS {LOOPBACK}:{tls_port};")
    out_rr, in_rr = rr_values(invite)[:2]
    assert out_rr.startswith(f"<sips:{LOOPBACK}:{tls_port};lr;did=")
    assert in_rr.startswith(f"<sip:{LOOPBACK}:{server.port};transport=tcp;lr;did=")
    call.ack()
    assert (await call.bye()).status == 200
    caller.close()
    uas.close()


class Zone(asyncio.DatagramProtocol):
    """A DNS server on loopback answering A queries for the names in ``zone``."""

    def __init__(self, zone: dict[str, str]) -> None:
        self.zone = zone
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        reply = dns.message.make_response(query)
        question = query.question[0]
        address = self.zone.get(question.name.to_text(omit_final_dot=True).lower())
        if address is None:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.A:
            reply.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", address))
        assert self.transport is not None
        self.transport.sendto(reply.to_wire(), addr)


async def test_sni_names_the_next_hop(sipdlg_server: Server, pki: Pki) -> None:
    """A next hop given by name gets that name as SNI, and its certificate is checked
    against the name (the engine only hands the shell the address DNS gave)."""
    dns_port = free_port("udp")
    loop = asyncio.get_running_loop()
    zone = {"uas.sipdlg.test": LOOPBACK}
    dns_server, _ = await loop.create_datagram_endpoint(
        lambda: Zone(zone), local_addr=(LOOPBACK, dns_port)
    )
    uas_port = free_port("tcp")
    uas = await serve_uas(LOOPBACK, uas_port, pki.uas_server())
    server, _ = await tls_server(
        sipdlg_server,
        pki,
        f"tls:uas.sipdlg.test:{uas_port}",
        dns_server=f"{LOOPBACK}:{dns_port}",
    )
    caller = await connect(LOOPBACK, server.port, udp=True)
    call = Call(caller, f"sip:callee@uas.sipdlg.test:{uas_port}")
    assert (await call.invite()).status == 200
    assert uas.server_names == ["uas.sipdlg.test"]
    caller.close()
    uas.close()
    dns_server.close()


async def test_verification_off_accepts_any_certificate(sipdlg_server: Server, pki: Pki) -> None:
    uas_port = free_port("tcp")
    uas = await serve_uas(LOOPBACK, uas_port, pki.uas_server(pki.rogue))
    server, _ = await tls_server(
        sipdlg_server, pki, f"tls:{LOOPBACK}:{uas_port}", env={"SIPDLG_TLS_VERIFY": "off"}
    )
    caller = await connect(LOOPBACK, server.port, udp=True)
    call = Call(caller, f"sip:callee@{LOOPBACK}:{uas_port}")
    assert (await call.invite()).status == 200
    caller.close()
    uas.close()


@pytest.mark.netns
async def test_call_over_ipv6_tls(sipdlg_server: Server, pki: Pki) -> None:
    """``tls:[::1]:PORT``: brackets in Via and Record-Route, the callee's certificate checked
    against its IPv6 address."""
    port, uas_port = free_port("both"), free_port("tcp")
    uas = await serve_uas("::1", uas_port, pki.uas_server())
    server = await asyncio.to_thread(
        sipdlg_server,
        port=port,
        listen=[f"tls:[::1]:{port}"],
        next_hop=f"tls:[::1]:{uas_port}",
        **pki.options(),
    )
    caller = await connect("::1", port, pki.client())
    call = Call(caller, f"sip:callee@[::1]:{uas_port}")
    assert (await call.invite()).status == 200
    call.ack()
    assert (await call.bye()).status == 200
    invite = uas.received("INVITE")[0]
    assert invite.header_values("via")[0].startswith(f"SIP/2.0/TLS [::1]:{port};branch=")
    assert rr_values(invite)[0].startswith(f"<sip:[::1]:{port};transport=tls;lr;did=")
    caller.close()
    uas.close()
    assert server.running


async def test_plain_tcp_to_tls_port_and_idle_connections(sipdlg_server: Server, pki: Pki) -> None:
    """A client that speaks plain SIP to the TLS port is dropped without a word in the log,
    an idle TLS connection is closed as a TCP one would be, and calls go on."""
    uas_port = free_port("tcp")
    uas = await serve_uas(LOOPBACK, uas_port, pki.uas_server())
    server, tls_port = await tls_server(
        sipdlg_server, pki, f"tls:{LOOPBACK}:{uas_port}", tcp_idle_timeout=1
    )
    plain = await connect(LOOPBACK, tls_port)
    plain.send("OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(PeerClosed):
        await plain.recv(5)
    idle = await connect(LOOPBACK, tls_port, pki.client())
    with pytest.raises(PeerClosed):
        await idle.recv(15)  # closed by the idle sweep after 1 s (checked every second)
    caller = await connect(LOOPBACK, tls_port, pki.client())
    call = Call(caller, f"sip:callee@{LOOPBACK}:{uas_port}")
    assert (await call.invite()).status == 200
    caller.close()
    uas.close()
    log = server.log_text()
    assert "Traceback" not in log and " ERROR " not in log, log


# ------------------------------------------------------- a TLS next hop behind SIPp's UDP


@pytest.mark.sipp
async def test_udp_sipp_caller_to_tls_next_hop(
    sipdlg_server: Server, sipp: SippFactory, pki: Pki
) -> None:
    uas_port = free_port("tcp")
    uas = await serve_uas(LOOPBACK, uas_port, pki.uas_server())
    server, tls_port = await tls_server(sipdlg_server, pki, f"tls:{LOOPBACK}:{uas_port}")
    uac = sipp("uac_basic", remote=server.sip_address, calls=3, rate=10, timeout=30)
    result = await asyncio.to_thread(uac.run)
    assert result.ok and result.successful == 3, result.describe()
    invites = uas.received("INVITE")
    assert len(invites) == 3
    for invite in invites:
        assert invite.header_values("via")[0].startswith(f"SIP/2.0/TLS {LOOPBACK}:{tls_port};")
        out_rr, in_rr = rr_values(invite)[:2]  # double Record-Route: UDP in, TLS out
        assert out_rr.startswith(f"<sip:{LOOPBACK}:{tls_port};transport=tls;lr;")
        assert in_rr.startswith(f"<sip:{LOOPBACK}:{server.port};lr;")
    assert len(uas.received("ACK")) == 3 and len(uas.received("BYE")) == 3
    assert len(uas.peers) == 1, "one TLS connection carries every call"
    uas.close()


@pytest.mark.sipp
async def test_untrusted_next_hop_refused_with_503(
    sipdlg_server: Server, sipp: SippFactory, pki: Pki
) -> None:
    """A next hop whose certificate no trusted CA signed gets nothing; each caller gets a
    503 at once (not Timer B's 408 after 32 s), and the log says why once."""
    uas_port = free_port("tcp")
    uas = await serve_uas(LOOPBACK, uas_port, pki.uas_server(pki.rogue))
    server, _ = await tls_server(sipdlg_server, pki, f"tls:{LOOPBACK}:{uas_port}")
    uac = sipp("uac_expect_503", remote=server.sip_address, calls=3, rate=10, timeout=20)
    result = await asyncio.to_thread(uac.run)
    assert result.ok and result.successful == 3, result.describe()
    replies = [m for m in result.messages() if m.status == 503]
    assert replies and "certificate" in (replies[0].header("reason") or "")
    assert uas.received() == []
    cause = f"127.0.0.1:{uas_port}: tls: TLS certificate not accepted: unable to get local issuer"
    warnings = [line for line in server.log_text().splitlines() if cause in line]
    assert len(warnings) == 1 and " WARNING " in warnings[0], server.log_tail()
    uas.close()


# --------------------------------------------------------------------- HTTPS for the MI


def test_mi_over_https(sipdlg_server: Server, pki: Pki, tmp_path: Path) -> None:
    server = sipdlg_server(
        mi_tls_cert=str(pki.cert), mi_tls_key=str(pki.key), db="none", next_hop=f"{LOOPBACK}:9"
    )
    assert f"MI on https://{server.mi_listen}/mi" in server.log_text()
    url = f"https://{server.mi_listen}/mi"
    body = json.dumps({"jsonrpc": "2.0", "method": "dlg_list", "id": 1})
    curl = shutil.which("curl")
    if curl is not None:
        out = subprocess.run(
            [curl, "-sS", "--cacert", str(pki.ca_file), "-H", "Content-Type: application/json"]
            + ["-d", body, url],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert json.loads(out.stdout)["result"] == {"Dialogs": []}, out.stderr
        plain = subprocess.run(
            [curl, "-sS", "-H", "Content-Type: application/json", "-d", body, url],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert plain.returncode != 0, "curl without the CA must refuse the certificate"

    def sipdlg_mi(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "app.cli", "mi", "--url", url, *args],
            cwd=tmp_path,
            env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin", **(env or {})},
            capture_output=True,
            text=True,
            timeout=30,
        )

    good = sipdlg_mi("--cacert", str(pki.ca_file), "get_statistics", "dialog:")
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["dialog:active_dialogs"] == 0
    by_env = sipdlg_mi("dlg_list", env={"SIPDLG_MI_CACERT": str(pki.ca_file)})
    assert json.loads(by_env.stdout) == {"Dialogs": []}, by_env.stderr
    refused = sipdlg_mi("dlg_list")
    assert refused.returncode == 1
    assert "certificate verify failed" in refused.stderr and "--cacert" in refused.stderr
    insecure = sipdlg_mi("-k", "dlg_list")
    assert insecure.returncode == 0, insecure.stderr

    from opensips.mi import OpenSIPSMI

    assert OpenSIPSMI("http", url=url).execute("dlg_list", {}) == {"Dialogs": []}
    cli = shutil.which("opensips-cli", path=str(Path(sys.executable).parent))
    if cli is not None:
        out = subprocess.run(
            [cli, "-o", "communication_type=http", "-o", f"url={url}", "-x", "mi", "dlg_list"],
            env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert json.loads(out.stdout) == {"Dialogs": []}, out.stderr
    with pytest.raises(mi_client.MiCallError):  # plain HTTP to an HTTPS port
        mi_client.call(f"http://{server.mi_listen}/mi", "dlg_list", timeout=5)
