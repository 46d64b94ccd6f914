"""The dialog lifecycle end to end: SIPp UAC -> ``sipdlg serve`` -> SIPp UAS.

Lifetime timeouts (with and without BYE, and re-armed over the MI), OPTIONS pings that fail or
get odd answers, target refresh, end reasons and ended-call records, delete_delay, and the bad
inputs of issue 4 (BYE with a wrong tag, stray CANCEL).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from helpers import SipdlgProcess, Sipp
from lifecycle_kit import dialogs, ended, mi, mi_raw, stat, wait_ended, wait_for, wait_state

pytestmark = pytest.mark.sipp

Server = Callable[..., SipdlgProcess]
Factory = Callable[..., Sipp]


def start(
    sipp: Factory,
    sipp_uas: Factory,
    sipdlg_server: Server,
    uac: str,
    uas: str,
    uas_vars: dict[str, Any] | None = None,
    uac_pause_ms: int | None = None,
    **opts: Any,
) -> tuple[Sipp, Sipp, SipdlgProcess]:
    """A UAS, a sipdlg in front of it (no persistence), and a started one-call UAC."""
    opts.setdefault("db", "none")
    callee = sipp_uas(uas, variables=uas_vars or {})
    server = sipdlg_server(uas_port=callee.port, **opts)
    caller = sipp(uac, remote=server.sip_address, calls=1, timeout=40, pause_ms=uac_pause_ms)
    caller.start()
    return caller, callee, server


def finish(caller: Sipp) -> None:
    res = caller.wait(45)
    assert res.ok, res.describe()


def cseq(msg: Any) -> int:
    return int(str(msg.header("CSeq")).split()[0])


# ------------------------------------------------------------------------------ lifetime


def test_lifetime_timeout_byes_both_sides(
    sipp: Factory, sipp_uas: Factory, sipdlg_server: Server
) -> None:
    caller, callee, server = start(
        sipp, sipp_uas, sipdlg_server, "uac_wait_bye", "uas_answer", default_timeout=2
    )
    d = wait_state(server, 4)
    assert abs(d["timeout"] - (d["timestart"] + 2)) <= 1  # absolute expiry
    finish(caller)  # the caller got its BYE
    assert callee.wait_received(method="BYE")
    (rec,) = wait_ended(server)
    assert rec["end_reason"] == "Lifetime Timeout"
    assert rec["bye_sent_by"] == "engine"
    assert rec["state"] == 5 and 1 <= rec["duration"] <= 4
    assert stat(server, "expired_dialogs") == 1
    assert stat(server, "active_dialogs") == 0


def test_a_cancel_that_crosses_the_2xx_ends_the_call_with_byes(
    sipp: Factory, sipp_uas: Factory, sipdlg_server: Server
) -> None:
    """The callee answers the INVITE after the caller's CANCEL, the caller never ACKs or BYEs
    the call it believes cancelled: sipdlg ends it after --race-condition-timeout."""
    caller, callee, server = start(
        sipp,
        sipp_uas,
        sipdlg_server,
        "uac_cancel_no_ack",
        "uas_answer_after_cancel",
        uac_pause_ms=100,
        race_condition_timeout=2,
    )
    d = wait_state(server, 3)  # answered, never ACKed
    assert d["timeout"] - d["timestart"] <= 3  # the 12-hour lifetime was cut to 2 s
    finish(caller)  # the caller got its BYE
    assert callee.wait_received(method="BYE")
    (rec,) = wait_ended(server)
    assert rec["end_reason"] == "SIP Race Condition"
    assert rec["bye_sent_by"] == "engine"
    assert stat(server, "active_dialogs") == 0


def test_lifetime_without_bye_just_expires(
    sipp: Factory, sipp_uas: Factory, sipdlg_server: Server
) -> None:
    caller, callee, server = start(
        sipp,
        sipp_uas,
        sipdlg_server,
        "uac_wait_bye",
        "uas_answer",
        default_timeout=1,
        extra_args=["--no-bye-on-timeout"],
    )
    (rec,) = wait_ended(server)
    assert rec["end_reason"] is None and rec["bye_sent_by"] is None
    assert stat(server, "expired_dialogs") == 1
    assert dialogs(server) == []
    time.sleep(1.0)
    assert not [m for m in caller.received() if m.method == "BYE"]
    assert not [m for m in callee.received() if m.method == "BYE"]
    caller.stop(grace=1)


def test_dlg_set_timeout_rearms_lifetime(
    sipp: Factory, sipp_uas: Factory, sipdlg_server: Server
) -> None:
    caller, callee, server = start(
        sipp, sipp_uas, sipdlg_server, "uac_wait_bye", "uas_answer", default_timeout=3600
    )
    d = wait_state(server, 4)
    assert d["timeout"] >= time.time() + 3500
    bad = mi_raw(server, "dlg_set_timeout", {"dialog_id": "1.2", "timeout": 5})
    assert bad["error"] == {"code": 404, "message": "Requested Dialog not found"}
    bad = mi_raw(server, "dlg_set_timeout", {"dialog_id": d["ID"], "timeout": 0})
    assert bad["error"] == {"code": 400, "message": "Bad timeout"}
    before = time.time()
    assert mi(server, "dlg_set_timeout", {"dialog_id": d["ID"], "timeout": 2}) == "OK"
    d2 = dialogs(server)[0]
    assert int(before) <= d2["timeout"] <= time.time() + 2 + 1  # still absolute
    assert d2["timestart"] == d["timestart"]
    finish(caller)
    assert callee.wait_received(method="BYE")
    (rec,) = wait_ended(server)
    assert rec["end_reason"] == "Lifetime Timeout"
    assert time.time() - before < 8


# ---------------------------------------------------------------------------------- pings


def test_callee_stops_answering_pings(
    sipp: Factory, sipp_uas: Factory, sipdlg_server: Server
) -> None:
    caller, callee, server = start(
        sipp,
        sipp_uas,
        sipdlg_server,
        "uac_wait_bye",
        "uas_ping_then_silent",
        ping="callee",
        ping_interval=1,
        ping_timeout=1,
    )
    finish(caller)  # BYE to the caller
    byes = callee.wait_received(method="BYE")
    assert byes
    pings = [m for m in callee.received() if m.method == "OPTIONS"]
    assert len(pings) >= 2
    invite = next(m for m in callee.received() if m.method == "INVITE")
    first = pings[0]
    assert first.header("Call-ID") == invite.header("Call-ID")
    assert "tag=" in str(first.header("To")) and "tag=" in str(first.header("From"))
    assert str(first.header("From")).split("tag=")[1] == str(invite.header("From")).split("tag=")[1]
    assert cseq(byes[0]) > max(cseq(p) for p in pings)  # later BYEs above the pings
    assert not [m for m in caller.received() if m.method == "OPTIONS"]
    (rec,) = wait_ended(server)
    assert rec["end_reason"] == "Callee Ping Timeout" and rec["bye_sent_by"] == "engine"


def test_caller_ping_timeout_with_callee_answering(
    sipp: Factory, sipp_uas: Factory, sipdlg_server: Server
) -> None:
    caller, callee, server = start(
        sipp,
        sipp_uas,
        sipdlg_server,
        "uac_ignore_options",
        "uas_answer_options",
        ping="both",
        ping_interval=1,
        ping_timeout=1,
    )
    finish(caller)
    assert callee.wait_received(method="BYE")
    assert [m for m in caller.received() if m.method == "OPTIONS"]
    (rec,) = wait_ended(server)
    assert rec["end_reason"] == "Caller Ping Timeout"


def test_ping_answered_with_junk_5xx_keeps_the_call(
    sipp: Factory, sipp_uas: Factory, sipdlg_server: Server
) -> None:
    caller, callee, server = start(
        sipp,
        sipp_uas,
        sipdlg_server,
        "uac_wait_bye",
        "uas_options_junk",
        ping="callee",
        ping_interval=1,
        ping_timeout=1,
    )
    d = wait_state(server, 4)
    callee.wait_received(method="OPTIONS", count=3, timeout=10)
    assert wait_state(server, 4)["ID"] == d["ID"]  # still up after 3 odd answers
    assert mi(server, "dlg_end_dlg", {"dialog_id": d["ID"]}) == "OK"
    finish(caller)
    assert callee.wait_received(method="BYE")
    (rec,) = wait_ended(server)
    assert rec["end_reason"] == "MI Termination"


# -------------------------------------------------------------------------- target refresh


def test_reinvite_updates_contact_and_sdp(
    sipp: Factory, sipp_uas: Factory, sipdlg_server: Server
) -> None:
    caller, callee, server = start(sipp, sipp_uas, sipdlg_server, "uac_reinvite_move", "uas_answer")

    def moved() -> dict[str, Any] | None:
        """The re-INVITE's contact and SDP, and its 200's SDP (which comes a moment later)."""
        ds = dialogs(server)
        if (
            ds
            and "moved@" in ds[0]["caller_contact"]
            and "7078" in ds[0].get("caller_sdp", "")
            and "2353687638" in ds[0]["CALLEES"][0].get("callee_sdp", "")
        ):
            return ds[0]
        return None

    d = wait_for(moved, what="re-INVITE's contact and SDP, and its answer's, in dlg_list")
    assert d["state"] == 4
    (leg,) = d["CALLEES"]
    assert "moved" not in leg["callee_contact"]
    assert "o=user1 53655765 2353687638" in leg["callee_sdp"]  # the 200's new SDP
    assert mi(server, "dlg_end_dlg", {"dialog_id": d["ID"]}) == "OK"
    finish(caller)
    (bye,) = [m for m in caller.received() if m.method == "BYE"]
    assert bye.start_line.split()[1].startswith("sip:moved@")  # the new target
    assert cseq(bye) == 1  # the callee's CSeq space (it sent nothing), not the caller's 2
    assert callee.wait_received(method="BYE")


# ------------------------------------------------------------------------ end reasons


def test_caller_bye_is_downstream(sipp: Factory, sipp_uas: Factory, sipdlg_server: Server) -> None:
    caller, callee, server = start(
        sipp, sipp_uas, sipdlg_server, "uac_basic", "uas_answer", uac_pause_ms=200
    )
    finish(caller)
    (rec,) = wait_ended(server)
    assert rec["end_reason"] == "Downstream BYE" and rec["bye_sent_by"] == "caller"
    assert rec["confirmed"] and rec["ended"] >= rec["created"]
    assert {"ID", "db_id", "callid", "end_reason", "duration"} <= set(rec)


def test_callee_bye_is_upstream(sipp: Factory, sipp_uas: Factory, sipdlg_server: Server) -> None:
    caller, callee, server = start(sipp, sipp_uas, sipdlg_server, "uac_wait_bye", "uas_send_bye")
    finish(caller)
    (rec,) = wait_ended(server)
    assert rec["end_reason"] == "Upstream BYE" and rec["bye_sent_by"] == "callee"
    res = callee.stop()
    assert res.successful == 1 and res.failed == 0, res.describe()


def test_dlg_list_ended_queries(sipp: Factory, sipp_uas: Factory, sipdlg_server: Server) -> None:
    callee = sipp_uas("uas_answer")
    server = sipdlg_server(uas_port=callee.port, db="none", ended_records=2)
    res = sipp(
        "uac_basic", remote=server.sip_address, calls=3, rate=10, pause_ms=100, timeout=30
    ).run()
    assert res.ok, res.describe()
    recs = wait_ended(server, 2)
    everything = ended(server)
    assert everything["count"] == 2  # the ring keeps the newest 2
    assert [r["ended"] for r in recs] == sorted((r["ended"] for r in recs), reverse=True)
    one = ended(server, callid=recs[1]["callid"])
    assert one == {"count": 1, "Dialogs": [recs[1]]}
    assert ended(server, callid="nope") == {"count": 0, "Dialogs": []}
    assert ended(server, index=1, counter=5) == {"count": 2, "Dialogs": [recs[1]]}
    assert ended(server, index=5, counter=5) == {"count": 2, "Dialogs": []}
    assert stat(server, "processed_dialogs") == 3


def test_failed_call_counted_and_recorded(
    sipp: Factory, sipp_uas: Factory, sipdlg_server: Server
) -> None:
    caller, callee, server = start(sipp, sipp_uas, sipdlg_server, "uac_expect_486", "uas_busy")
    finish(caller)
    (rec,) = wait_ended(server)
    assert rec["end_reason"] is None and rec["confirmed"] == 0 and rec["duration"] == 0
    assert stat(server, "failed_dialogs") == 1


def test_delete_delay_keeps_state_5_listed(
    sipp: Factory, sipp_uas: Factory, sipdlg_server: Server
) -> None:
    caller, callee, server = start(
        sipp, sipp_uas, sipdlg_server, "uac_basic", "uas_answer", uac_pause_ms=100, delete_delay=2
    )
    finish(caller)
    d = wait_state(server, 5, timeout=5)
    assert d["CALLEES"]
    wait_for(lambda: dialogs(server) == [], timeout=6, what="the dialog to go")


# -------------------------------------------------------------------------------- bad input


def test_bye_with_wrong_tag_gets_481_and_call_survives(
    sipp: Factory, sipp_uas: Factory, sipdlg_server: Server
) -> None:
    caller, callee, server = start(sipp, sipp_uas, sipdlg_server, "uac_bad_bye", "uas_answer")
    finish(caller)  # 481 for the bad BYE, 200 for the real one
    byes = callee.wait_received(method="BYE")
    assert len(byes) == 1 and cseq(byes[0]) == 3
    (rec,) = wait_ended(server)
    assert rec["end_reason"] == "Downstream BYE"


def test_stray_cancel_gets_481(sipp: Factory, sipdlg_server: Server) -> None:
    server = sipdlg_server(db="none")
    res = sipp("uac_stray_cancel", remote=server.sip_address, calls=1, timeout=15).run()
    assert res.ok, res.describe()
    assert dialogs(server) == [] and ended(server)["count"] == 0


# ------------------------------------------------------------- pings and CSeq numbering


def test_caller_bye_after_pings_is_renumbered_above_the_pings(
    sipp: Factory, sipp_uas: Factory, sipdlg_server: Server
) -> None:
    """SIPp's caller sends its BYE with CSeq 2 after two seconds; by then the proxy has
    pinged the callee with CSeq 2 and more: the callee must get a higher number, the caller
    its 200 with its own."""
    caller, callee, server = start(
        sipp,
        sipp_uas,
        sipdlg_server,
        "uac",
        "uas_answer_options",
        uac_pause_ms=2500,
        ping="callee",
        ping_interval=1,
    )
    finish(caller)  # SIPp accepted the 200 for its BYE: the caller's own CSeq came back
    (bye,) = callee.wait_received(method="BYE")
    pings = [m for m in callee.received() if m.method == "OPTIONS"]
    assert pings and cseq(bye) > max(cseq(p) for p in pings)
    (rec,) = wait_ended(server)
    assert rec["end_reason"] == "Downstream BYE"


def test_reinvite_pings_keep_a_call_that_answers_them(
    sipp: Factory, sipp_uas: Factory, sipdlg_server: Server
) -> None:
    caller, callee, server = start(
        sipp,
        sipp_uas,
        sipdlg_server,
        "uac_wait_bye",
        "uas_answer_reinvite",
        ping="callee",
        ping_method="reinvite",
        ping_interval=1,
        ping_timeout=2,
    )
    d = wait_state(server, 4)
    invites = callee.wait_received(method="INVITE", count=3, timeout=15)  # the call + 2 pings
    pings = invites[1:]
    assert all(p.header("Content-Type") == "application/sdp" and p.body for p in pings)
    assert len(callee.wait_received(method="ACK", count=3, timeout=10)) >= 3  # ours, too
    assert wait_state(server, 4)["ID"] == d["ID"]  # still up
    assert mi(server, "dlg_end_dlg", {"dialog_id": d["ID"]}) == "OK"
    finish(caller)
    assert callee.wait_received(method="BYE")
    (rec,) = wait_ended(server)
    assert rec["end_reason"] == "MI Termination"
