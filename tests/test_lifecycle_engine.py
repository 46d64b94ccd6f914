"""Sans-I/O checks of the lifecycle pieces of the engine: pings (CSeqs, garbage answers,
timeouts), target refresh from the callee, a CANCELled re-INVITE, and the record ring."""

from __future__ import annotations

from typing import Any

from test_engine_kit import CALLEE, CALLER, Call, Rig, one, pick

from engine.dialog import DlgState
from engine.dlg_records import RecordRing


def _rig(**cfg: Any) -> tuple[Rig, Call, RecordRing]:
    rig = Rig(**cfg)
    ring = rig.records = RecordRing(10)
    return rig, Call(), ring


def test_pings_keep_cseq_order_and_garbage_answer_is_no_answer() -> None:
    rig, call, ring = _rig(ping="callee", ping_interval=10.0, ping_timeout=2.0)
    inv, ok = rig.call_up(call)
    outs = rig.advance(10.0)
    ping = one(outs, method="OPTIONS")
    assert ping.dest == CALLEE
    assert ping.msg.request_uri == call.callee_contact
    assert f"tag={call.ftag}" in str(ping.msg.header("from"))
    first_cseq = ping.msg.cseq[0]  # type: ignore[index]
    assert first_cseq == 2  # above the caller's INVITE CSeq 1
    rig.recv(call.answer_request(ping, 200), src=CALLEE)
    outs = rig.advance(10.0)
    ping2 = one(outs, method="OPTIONS")
    assert ping2.msg.cseq[0] == first_cseq + 1  # type: ignore[index]
    # garbage instead of an answer: counted, dropped, and so no answer
    errors = rig.eng.stats.parse_errors
    rig.recv(b"SIP/2.0 2oo OK\r\n\x00\x01garbage\r\n\r\n", src=CALLEE)
    assert rig.eng.stats.parse_errors == errors + 1
    dlg = next(iter(rig.eng.dialogs))
    assert dlg.state is DlgState.CONFIRMED
    outs = rig.advance(2.5)
    byes = pick(outs, method="BYE")
    assert {b.dest for b in byes} == {CALLER, CALLEE}  # (with UDP retransmissions)
    to_callee = next(b for b in byes if b.dest == CALLEE)
    assert to_callee.msg.cseq[0] > ping2.msg.cseq[0]  # type: ignore[index]
    assert dlg.state is DlgState.DELETED and dlg.end_reason == "Callee Ping Timeout"
    assert ring.total == 1 and next(iter(ring))["bye_sent_by"] == "engine"
    assert not pick(rig.advance(30.0), method="OPTIONS")  # no pings after the end


def test_481_to_a_ping_ends_and_other_answers_keep() -> None:
    rig, call, _ = _rig(ping="caller", ping_interval=5.0, ping_timeout=2.0)
    rig.call_up(call)
    dlg = next(iter(rig.eng.dialogs))
    ping = one(rig.advance(5.0), method="OPTIONS")
    assert ping.dest == CALLER
    rig.recv(call.answer_request(ping, 404, "Not Found"), src=CALLER)
    ping = one(rig.advance(5.0), method="OPTIONS")
    outs = rig.recv(call.answer_request(ping, 481, "Call/Transaction Does Not Exist"), src=CALLER)
    assert len(pick(outs, method="BYE")) == 2
    assert dlg.end_reason == "Caller Ping Timeout"


def test_callee_reinvite_updates_callee_leg_and_failed_reinvite_keeps_dialog() -> None:
    rig, call, _ = _rig()
    inv, ok = rig.call_up(call)
    dlg = next(iter(rig.eng.dialogs))
    outs = rig.recv(call.callee_request("INVITE", inv), src=CALLEE)
    fwd = one(outs, method="INVITE")
    assert fwd.dest == CALLER
    rig.recv(call.answer_request(fwd, 488, "Not Acceptable Here"), src=CALLER)
    assert dlg.state is DlgState.CONFIRMED and dlg.end_reason is None
    # a caller re-INVITE answered with a new contact for the callee
    outs = rig.recv(call.in_dialog("INVITE", ok, body="v=0\r\n"))
    fwd = one(outs, method="INVITE")
    rig.recv(call.reply(fwd, 200, "OK", sdp=True, contact="sip:bob@127.0.0.1:5099"), src=CALLEE)
    assert dlg.callee is not None and dlg.callee.contact == "sip:bob@127.0.0.1:5099"
    assert dlg.state is DlgState.CONFIRMED


def test_cancelled_reinvite_does_not_set_an_end_reason() -> None:
    rig, call, _ = _rig()
    inv, ok = rig.call_up(call)
    dlg = next(iter(rig.eng.dialogs))
    reinvite = call.in_dialog("INVITE", ok, branch="z9hG4bK-re1")
    outs = rig.recv(reinvite)
    fwd = one(outs, method="INVITE")
    rig.recv(call.reply(fwd, 180, "Ringing"), src=CALLEE)
    cancel = reinvite.split(b"\r\n\r\n")[0].decode()
    cancel = cancel.replace("INVITE ", "CANCEL ", 1).replace(" INVITE\r\n", " CANCEL\r\n")
    rig.recv(cancel + "\r\n\r\n")
    assert dlg.end_reason is None
    outs = rig.recv(call.in_dialog("BYE", ok))
    assert dlg.end_reason == "Downstream BYE"


def test_record_ring_bounds_and_pages() -> None:
    ring = RecordRing(3)
    seen: list[dict[str, object]] = []
    ring.subscribers.append(seen.append)
    for n in range(5):
        ring.add({"callid": f"c{n}", "n": n})
    assert [r["n"] for r in ring] == [4, 3, 2]
    assert len(ring) == 3 and ring.total == 5 and len(seen) == 5
    assert [r["n"] for r in ring.page(1, 5)] == [3, 2]
    assert ring.page(3, 1) == [] and ring.page(-1, 1) == [] and ring.page(0, 0) == []
    assert ring.by_callid("c3") == [{"callid": "c3", "n": 3}]
    assert list(RecordRing(0)) == []
