"""The real ``sipdlg serve`` between two real SIPp processes, on loopback (helper-1's fixtures).

UAC (SIPp) → sipdlg → UAS (SIPp, the ``--next-hop``); the MI is used to look at the dialogs
and to end one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from helpers import SipdlgProcess, SipMessage, Sipp
from lifecycle_kit import mi

pytestmark = pytest.mark.sipp

Server = Callable[..., SipdlgProcess]
SippFactory = Callable[..., Sipp]


def dialog_stats(server: SipdlgProcess) -> dict[str, int]:
    res = mi(server, "get_statistics", {"statistics": ["dialog:"]})
    return {k.split(":", 1)[1]: int(v) for k, v in res.items()}


def dialogs(server: SipdlgProcess) -> list[dict[str, Any]]:
    return list(mi(server, "dlg_list")["Dialogs"])


def wait_for(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def ended_reason(server: SipdlgProcess, callid: str) -> str | None:
    recs = mi(server, "dlg_list_ended", {"callid": callid})["Dialogs"]
    return recs[0]["end_reason"] if recs else None


def start_pair(
    sipdlg_server: Server,
    sipp_uas: SippFactory,
    uas_scenario: str = "uas",
    transport: str = "u1",
    uas_kw: dict[str, Any] | None = None,
    **server_kw: Any,
) -> tuple[SipdlgProcess, Sipp]:
    uas = sipp_uas(uas_scenario, transport=transport, **(uas_kw or {}))
    server = sipdlg_server(uas_port=uas.port, **server_kw)
    return server, uas


def run_uac(sipp: SippFactory, scenario: str, server: SipdlgProcess, **kw: Any) -> Any:
    kw.setdefault("timeout", 60)
    uac = sipp(scenario, remote=server.sip_address, **kw)
    return uac.run()


# --------------------------------------------------------------------- load


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_hundreds_of_calls(
    transport: str, sipdlg_server: Server, sipp_uas: SippFactory, sipp: SippFactory
) -> None:
    """300 calls at 100 cps with SIPp's built-in uac/uas: the uac ignores Record-Route, so its
    ACK and BYE reach the proxy without a Route and are routed by the stored contact."""
    server, uas = start_pair(sipdlg_server, sipp_uas, "uas", transport, uas_kw={"trace_msg": False})
    res = run_uac(
        sipp, "uac", server, transport=transport, calls=300, rate=100, limit=200, trace_msg=False
    )
    assert res.ok, res.describe()
    assert res.successful == 300 and res.failed == 0, res.describe()
    stats = wait_for(
        lambda: (s := dialog_stats(server))["active_dialogs"] == 0 and s, what="calls to end"
    )
    assert stats["processed_dialogs"] == 300
    assert stats["failed_dialogs"] == 0 and stats["early_dialogs"] == 0
    assert dialogs(server) == []
    uas_res = uas.stop()
    assert uas_res.successful == 300, uas_res.describe()


def test_packet_loss_every_call_completes(
    sipdlg_server: Server, sipp_uas: SippFactory, sipp: SippFactory
) -> None:
    """10 % loss on both SIPp sides: retransmissions (SIPp's and the proxy's) save every call.

    The UAS is ``uas_lossy.xml`` (the built-in uas aborts a call when an INVITE retransmission
    arrives after its 180 and 200 were both lost, and forgets a call 4 s after the BYE, before
    the proxy's last BYE retransmissions); the UAC is SIPp's built-in uac."""
    server, uas = start_pair(
        sipdlg_server, sipp_uas, "uas_lossy", uas_kw={"extra_args": ["-lost", "10"]}
    )
    res = run_uac(
        sipp, "uac_lossy", server, calls=60, rate=20, timeout=90, extra_args=["-lost", "10"]
    )
    assert res.successful == 60 and res.failed == 0, res.describe()
    assert res.stats is not None and res.stats.retransmissions > 0, res.describe()
    try:
        stats = wait_for(
            lambda: (
                (s := dialog_stats(server))["processed_dialogs"] >= 60
                and s["active_dialogs"] == 0
                and s
            ),
            timeout=15,
            what="all dialogs to end",
        )
    except AssertionError:
        raise AssertionError(f"{dialog_stats(server)}\n{dialogs(server)}") from None
    assert stats["failed_dialogs"] == 0
    assert stats["processed_dialogs"] == 60
    uas.stop(grace=0.5)  # its calls linger in timewait; the UAC's verdict is what counts


# ------------------------------------------------------------ call flows


def test_busy_486_counts_failed_dialogs(
    sipdlg_server: Server, sipp_uas: SippFactory, sipp: SippFactory
) -> None:
    server, uas = start_pair(sipdlg_server, sipp_uas, "uas_busy")
    res = run_uac(sipp, "uac_expect_486", server, calls=5, rate=10)
    assert res.ok and res.successful == 5, res.describe()
    stats = dialog_stats(server)
    assert stats["failed_dialogs"] == 5 and stats["processed_dialogs"] == 5
    assert stats["active_dialogs"] == 0 and stats["early_dialogs"] == 0
    # The proxy ACKed the 486 hop by hop: the UAS got an ACK for every call.
    acks = uas.wait_received(method="ACK", count=5, timeout=5)
    assert len(acks) == 5


def test_cancel_of_ringing_call(
    sipdlg_server: Server, sipp_uas: SippFactory, sipp: SippFactory
) -> None:
    server, uas = start_pair(sipdlg_server, sipp_uas, "uas_early_cancel")
    res = run_uac(sipp, "uac_cancel", server, calls=3, rate=10, pause_ms=500)
    assert res.ok and res.successful == 3, res.describe()
    cancels = uas.wait_received(method="CANCEL", count=3, timeout=5)
    assert len(cancels) == 3
    invites = uas.received()
    for c in cancels:
        inv = next(m for m in invites if m.method == "INVITE" and m.call_id == c.call_id)
        assert c.header_values("via")[0] == inv.header_values("via")[0]  # same branch
        assert c.request_uri == inv.request_uri
    stats = dialog_stats(server)
    assert stats["failed_dialogs"] == 3 and stats["active_dialogs"] == 0
    for c in cancels:
        callid = c.call_id
        assert callid is not None
        assert wait_for(partial(ended_reason, server, callid), what="record") == "Cancelled"


def test_reinvite_updates_dialog(
    sipdlg_server: Server, sipp_uas: SippFactory, sipp: SippFactory
) -> None:
    server, uas = start_pair(sipdlg_server, sipp_uas, "uas_answer")
    uac = sipp("uac_reinvite_contact", remote=server.sip_address, calls=1, pause_ms=1500)
    uac.start()
    # Before the re-INVITE: the first contact and SDP.
    first = wait_for(lambda: [d for d in dialogs(server) if d["state"] == 4], what="state 4")[0]
    assert first["caller_contact"].startswith("sip:sipp@127.0.0.1")
    assert "2353687637" in first["caller_sdp"]
    # After it (the UAC pauses 1.5 s, re-INVITEs, pauses again): the new ones.
    moved = wait_for(
        lambda: [d for d in dialogs(server) if d["caller_contact"].startswith("sip:moved@")],
        timeout=5,
        what="the re-INVITE",
    )[0]
    assert moved["ID"] == first["ID"] and moved["state"] == 4
    assert "2353687638" in moved["caller_sdp"]
    callee = moved["CALLEES"][0]
    assert "2353687638" in callee["callee_sdp"]
    assert callee["caller_cseq"] == "2"
    res = uac.wait()
    assert res.ok, res.describe()
    # The BYE (CSeq 3) went to the callee and ended the dialog as a Downstream BYE.
    assert wait_for(lambda: ended_reason(server, moved["callid"])) == "Downstream BYE"
    reinvites = [m for m in uas.received() if m.method == "INVITE" and m.cseq == (2, "INVITE")]
    assert len(reinvites) == 1
    assert (reinvites[0].header("contact") or "").startswith("<sip:moved@")


def _check_bye(bye: SipMessage, *, ruri: str, to_tag: str, from_tag: str, cseq: int) -> None:
    """Reference §4.3: what a BYE generated by the proxy looks like on the wire."""
    assert bye.request_uri == ruri, bye.text
    assert (bye.header("to") or "").endswith(f";tag={to_tag}"), bye.text
    assert (bye.header("from") or "").endswith(f";tag={from_tag}"), bye.text
    assert bye.cseq == (cseq, "BYE"), bye.text
    assert bye.header("max-forwards") == "70", bye.text
    vias = bye.header_values("via")
    assert len(vias) == 1 and vias[0].startswith("SIP/2.0/UDP 127.0.0.1:"), bye.text
    assert bye.header("content-length") == "0" and bye.body == ""
    assert bye.header("reason") == "Q.850;cause=16", bye.text


def _wait_both_byes(uac: Sipp, uas: Sipp) -> tuple[SipMessage, SipMessage]:
    caller_bye = uac.wait_received(method="BYE", timeout=10)
    callee_bye = uas.wait_received(method="BYE", timeout=10)
    assert caller_bye and callee_bye, (uac.received(), uas.received())
    return caller_bye[0], callee_bye[0]


def test_mi_dlg_end_dlg_byes_both_parties(
    sipdlg_server: Server, sipp_uas: SippFactory, sipp: SippFactory
) -> None:
    server, uas = start_pair(sipdlg_server, sipp_uas, "uas_answer")
    uac = sipp("uac_wait_bye", remote=server.sip_address, calls=1, timeout=30)
    uac.start()
    dlg = wait_for(lambda: [d for d in dialogs(server) if d["state"] == 4], what="state 4")[0]
    assert mi(server, "dlg_end_dlg", [dlg["ID"], "Reason: Q.850;cause=16\r\n"]) == "OK"
    caller_bye, callee_bye = _wait_both_byes(uac, uas)
    callee = dlg["CALLEES"][0]
    _check_bye(
        caller_bye,
        ruri=dlg["caller_contact"],
        to_tag=dlg["caller_tag"],
        from_tag=callee["callee_tag"],
        cseq=int(dlg["callee_cseq"]) + 1,
    )
    _check_bye(
        callee_bye,
        ruri=callee["callee_contact"],
        to_tag=callee["callee_tag"],
        from_tag=dlg["caller_tag"],
        cseq=int(callee["caller_cseq"]) + 1,
    )
    # From/To URIs swapped for the caller's BYE, as the callee would send it.
    assert "<sip:sipp@127.0.0.1" in (caller_bye.header("to") or "")
    assert caller_bye.header("route") is None  # the caller's route set is empty here
    res = uac.wait()
    assert res.ok and res.successful == 1, res.describe()
    # Both answered 200; nothing was retransmitted at the parties; the dialog is gone.
    assert len(uac.wait_received(method="BYE", count=2, timeout=0.5)) == 1
    assert dialogs(server) == []
    assert ended_reason(server, dlg["callid"]) == "MI Termination"
    stats = dialog_stats(server)
    assert stats["active_dialogs"] == 0
    uas_res = uas.stop()
    assert uas_res.successful == 1, uas_res.describe()


def test_default_timeout_byes_both_parties(
    sipdlg_server: Server, sipp_uas: SippFactory, sipp: SippFactory
) -> None:
    server, uas = start_pair(
        sipdlg_server, sipp_uas, "uas_answer", default_timeout=2, extra_args=[]
    )
    uac = sipp("uac_wait_bye", remote=server.sip_address, calls=1, timeout=30)
    started = time.monotonic()
    uac.start()
    dlg = wait_for(lambda: [d for d in dialogs(server) if d["state"] == 4], what="state 4")[0]
    assert dlg["timeout"] - dlg["timestart"] == 2
    caller_bye, callee_bye = _wait_both_byes(uac, uas)
    assert 1.5 < time.monotonic() - started < 8
    for bye in (caller_bye, callee_bye):
        assert bye.header("max-forwards") == "70"
        assert bye.cseq is not None and bye.cseq[1] == "BYE"
    res = uac.wait()
    assert res.ok and res.successful == 1, res.describe()
    assert ended_reason(server, dlg["callid"]) == "Lifetime Timeout"
    assert dialog_stats(server)["expired_dialogs"] == 1
