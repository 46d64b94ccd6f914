"""The test harness itself: SIPp helpers against SIPp (no proxy), ports, netns."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import (
    SCENARIO_DIR,
    SipMessage,
    Sipp,
    call_in_netns,
    free_port,
    in_netns,
    netns_support,
    parse_stat_file,
    read_messages,
    run_in_netns,
)

Factory = Callable[..., Sipp]

# ----------------------------------------------------------------- ports


def test_free_port_is_free_for_udp_and_tcp() -> None:
    ports = {free_port("both") for _ in range(20)}
    assert len(ports) == 20, "free_port handed out a number twice"
    for port in list(ports)[:5]:
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind(("127.0.0.1", port))


# ----------------------------------------------------------------- SIPp


def test_builtin_uac_uas_20_calls(sipp: Factory, sipp_uas: Factory) -> None:
    uas = sipp_uas("uas")
    res = sipp("uac", remote=uas.address, calls=20, rate=10, limit=20, timeout=30).run()
    assert res.ok, res.describe()
    assert res.stats is not None
    assert (res.stats.successful, res.stats.failed) == (20, 0), res.describe()
    assert res.stats.outgoing == 20

    uas_res = uas.stop()
    assert uas_res.stats is not None
    assert uas_res.stats.incoming == 20
    assert uas_res.stats.successful == 20, uas_res.describe()

    got = uas.received()
    assert [m.method for m in got].count("INVITE") == 20
    assert [m.method for m in got].count("BYE") == 20
    assert all(m.transport == "UDP" and m.direction == "received" for m in got)
    sent = read_messages(uas.message_file, "sent")
    assert sum(1 for m in sent if m.status == 200) == 40  # 200 INVITE + 200 BYE


def test_builtin_over_tcp(sipp: Factory, sipp_uas: Factory) -> None:
    uas = sipp_uas("uas", transport="t1")
    res = sipp("uac", remote=uas.address, transport="t1", calls=5, rate=10).run()
    assert res.ok, res.describe()
    assert res.successful == 5
    assert {m.transport for m in uas.received()} == {"TCP"}


@pytest.mark.parametrize(
    ("uas_scenario", "uac_scenario", "kw"),
    [
        ("uas_busy", "uac_expect_486", {}),
        ("uas_early_cancel", "uac_cancel", {"pause_ms": 100}),
        ("uas_answer", "uac_basic", {"pause_ms": 100}),
        ("uas_answer", "uac_reinvite", {"pause_ms": 100}),
        ("uas_hangup", "uac_wait_bye", {}),
    ],
)
@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_scenario_pairs(
    sipp: Factory,
    sipp_uas: Factory,
    uas_scenario: str,
    uac_scenario: str,
    kw: dict[str, int],
    transport: str,
) -> None:
    uas_kw = {"pause_ms": 100} if uas_scenario == "uas_hangup" else {}
    uas = sipp_uas(uas_scenario, transport=transport, **uas_kw)
    res = sipp(
        uac_scenario, remote=uas.address, transport=transport, calls=3, rate=10, timeout=20, **kw
    ).run()
    assert res.ok, res.describe()
    assert (res.successful, res.failed) == (3, 0), res.describe()
    uas_res = uas.stop()
    assert uas_res.stats is not None
    st = uas_res.stats
    # Over TCP, a UAS call still in its closing <timewait> when the UAC exits and
    # closes the connection counts as FailedTcpClosed: SIPp artefact, not a flow error.
    closed = st.failed_tcp_closed if transport == "t1" else 0
    assert (st.successful + closed, st.failed - closed) == (3, 0), uas_res.describe()


def test_reinvite_flow_on_the_wire(sipp: Factory, sipp_uas: Factory) -> None:
    uas = sipp_uas("uas_answer")
    res = sipp("uac_reinvite", remote=uas.address, calls=1, pause_ms=50).run()
    assert res.ok, res.describe()
    got = [m for m in uas.received() if m.is_request]
    assert [(m.method, m.cseq) for m in got] == [
        ("INVITE", (1, "INVITE")),
        ("ACK", (1, "ACK")),
        ("INVITE", (2, "INVITE")),
        ("ACK", (2, "ACK")),
        ("BYE", (3, "BYE")),
    ]
    # in-dialog requests target the callee's Contact ([next_url])
    assert got[2].request_uri == f"sip:127.0.0.1:{uas.port};transport=UDP"
    assert "tag=" in (got[2].header("To") or "")


def test_cancel_flow_on_the_wire(sipp: Factory, sipp_uas: Factory) -> None:
    uas = sipp_uas("uas_early_cancel")
    res = sipp("uac_cancel", remote=uas.address, calls=1, pause_ms=50).run()
    assert res.ok, res.describe()
    got = res.messages("received")
    assert [m.status for m in got] == [180, 200, 487]
    assert got[1].cseq == (1, "CANCEL") and got[2].cseq == (1, "INVITE")
    acks = [m for m in uas.received() if m.method == "ACK"]
    assert len(acks) == 1
    invite = next(m for m in uas.received() if m.method == "INVITE")
    # ACK to a non-2xx: same branch as the INVITE
    assert acks[0].header("Via") == invite.header("Via")


def test_early_cancel_487_carries_the_invites_via_set(
    tmp_path: Path, sipp: Factory, sipp_uas: Factory
) -> None:
    """Behind a proxy the INVITE has 2+ Vias but the CANCEL only the proxy's:
    the 487 must be built from the INVITE's. Simulate it: the INVITE carries an
    extra (lower) Via the CANCEL does not."""
    text = (SCENARIO_DIR / "uac_cancel.xml").read_text()
    via = "branch=z9hG4bK-[pid]-[call_number]-inv\n"
    extra = "      Via: SIP/2.0/UDP 192.0.2.7:5099;branch=z9hG4bKlower;received=127.0.0.1\n"
    first = text.index(via) + len(via)
    scen = tmp_path / "uac_cancel_2via.xml"
    scen.write_text(text[:first] + extra + text[first:])

    uas = sipp_uas("uas_early_cancel")
    res = sipp(scen, remote=uas.address, calls=1, pause_ms=20).run()
    assert res.ok, res.describe()
    resp = {m.status: m for m in res.messages("received")}
    # SIPp's [last_Via:] joins Vias as "a, b"; our $vias keeps the lines.
    vias_487 = resp[487].header_values("Via")
    assert len(vias_487) == 2, resp[487].text
    assert "z9hG4bKlower" in vias_487[1]
    assert "z9hG4bKlower" not in (resp[200].header("Via") or "")
    assert resp[200].cseq == (1, "CANCEL")


def test_failed_calls_are_counted(sipp: Factory, sipp_uas: Factory) -> None:
    uas = sipp_uas("uas_busy")
    res = sipp("uac", remote=uas.address, calls=2, rate=10, timeout=15).run()
    assert not res.ok
    assert res.returncode == 1
    assert res.stats is not None and res.stats.failed == 2 and res.stats.successful == 0


def test_uac_timeout_always_ends(sipp: Factory) -> None:
    dead = free_port("udp")  # nobody listens: INVITE retransmits until -timeout
    res = sipp("uac", remote=f"127.0.0.1:{dead}", calls=1, timeout=2).run(timeout=15)
    assert not res.ok
    assert res.returncode != 0


def test_stop_ends_a_uas_with_a_stuck_call(sipp: Factory, sipp_uas: Factory) -> None:
    uas = sipp_uas("uas_early_cancel")
    res = sipp("uac_wait_487", remote=uas.address, calls=1, timeout=2).run(timeout=15)
    assert not res.ok  # nobody ever CANCELs
    out = uas.stop(grace=1)
    assert not uas.running
    assert out.stats is not None and out.stats.incoming == 1


def test_wait_received(sipp: Factory, sipp_uas: Factory) -> None:
    uas = sipp_uas("uas_answer")
    uac = sipp("uac_basic", remote=uas.address, calls=2, rate=20, pause_ms=300).start()
    byes = uas.wait_received(method="BYE", count=2, timeout=10)
    assert len(byes) == 2
    assert uac.wait().ok


def test_stat_parser_tolerates_missing_file(tmp_path: Path) -> None:
    assert parse_stat_file(tmp_path / "nope.csv") is None
    assert read_messages(tmp_path / "nope.msg") == []


def test_sip_message_accessors() -> None:
    m = SipMessage(
        "BYE sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP x;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP y\r\n"
        "i: abc\r\nCSeq: 7 BYE\r\nX-Folded: one\r\n two\r\n\r\n"
    )
    assert m.method == "BYE" and m.status is None and m.request_uri == "sip:a@b"
    assert m.header_values("via") == ["SIP/2.0/UDP x;branch=z9hG4bK1", "SIP/2.0/UDP y"]
    assert m.call_id == "abc" and m.cseq == (7, "BYE")
    assert m.header("x-folded") == "one two"
    r = SipMessage("SIP/2.0 487 Request Terminated\r\n\r\n")
    assert r.status == 487 and r.method is None


def test_all_scenarios_parse(sipp_bin: str, tmp_path: Path) -> None:
    """Every scenario in tests/scenarios loads in SIPp (XML + keywords)."""
    for path in sorted(SCENARIO_DIR.glob("*.xml")):
        proc = subprocess.run(
            [
                sipp_bin,
                "-sf",
                str(path),
                "-i",
                "127.0.0.1",
                "-p",
                str(free_port("udp")),
                "-m",
                "0",
                "-timeout",
                "1s",
                "-nostdin",
                "127.0.0.1:9",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=20,
        )
        out = proc.stdout + proc.stderr
        assert "Unable to load" not in out and "Error" not in out.split("Scenario Screen")[0], (
            f"{path.name}: exit {proc.returncode}\n{out[-2000:]}"
        )


# ----------------------------------------------------------------- netns


def _netns_probe() -> tuple[list[str], bool]:
    """Runs inside the namespace: interface names, and whether lo works."""
    names = sorted(name for _, name in socket.if_nameindex())
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b,
    ):
        a.bind(("127.0.0.1", 0))
        b.sendto(b"ping", a.getsockname())
        a.settimeout(2)
        ok = a.recv(10) == b"ping"
    return names, ok


def test_call_in_netns() -> None:
    support = netns_support()
    if not support.ok:
        pytest.skip(support.reason)
    names, lo_ok = call_in_netns(_netns_probe)
    assert names == ["lo"]
    assert lo_ok


def test_run_in_netns_only_lo() -> None:
    support = netns_support()
    if not support.ok:
        pytest.skip(support.reason)
    proc = run_in_netns(["ip", "-o", "link"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert [ln.split(":")[1].strip() for ln in proc.stdout.splitlines()] == ["lo"]


@pytest.mark.netns
def test_marker_runs_inside_netns(sipp: Factory, sipp_uas: Factory) -> None:
    assert in_netns()
    # (not /sys/class/net: sysfs shows the namespace it was mounted in)
    assert [name for _, name in socket.if_nameindex()] == ["lo"]
    uas = sipp_uas("uas")
    assert sipp("uac", remote=uas.address, calls=2, rate=10).run().ok
