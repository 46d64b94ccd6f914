"""A CANCEL that crosses the 2xx (RFC 3261 §9.1, OpenSIPS's "SIP Race Condition").

The call is answered, but its caller believes it cancelled and may never ACK or BYE it: without
care the dialog would stay "active" for its whole lifetime (12 hours by default).  As OpenSIPS
does, its lifetime is cut to ``race_condition_timeout`` (5 s): a BYE within it ends the call as
usual, else the engine sends BYEs to both sides and records "SIP Race Condition".
"""

from __future__ import annotations

from test_engine_kit import CALLEE, CALLER, Call, Out, Rig, one, pick

from engine.dialog import DlgState
from engine.dlg_records import RecordRing


def rig_with_records() -> tuple[Rig, RecordRing]:
    rig = Rig()
    ring = rig.records = RecordRing(10)
    return rig, ring


def ringing(rig: Rig, call: Call) -> Out:
    inv = one(rig.recv(call.invite()), method="INVITE")
    rig.recv(call.reply(inv, 180, "Ringing"), src=CALLEE)
    return inv


def assert_race_byes(rig: Rig, ring: RecordRing) -> None:
    dlg = next(iter(rig.eng.dialogs))
    assert dlg.state is DlgState.CONFIRMED_NA
    assert not pick(rig.advance(4.5), method="BYE")  # the caller still has time to BYE
    byes = pick(rig.advance(1.0), method="BYE")
    assert {b.dest for b in byes} == {CALLER, CALLEE}
    assert len(rig.eng.dialogs) == 0
    record = next(iter(ring))
    assert record["end_reason"] == "SIP Race Condition"
    assert record["bye_sent_by"] == "engine"
    assert record["confirmed"] > 0


def test_cancel_arriving_after_the_2xx_ends_the_call_after_the_race_timeout() -> None:
    rig, ring = rig_with_records()
    call = Call()
    inv = ringing(rig, call)
    one(rig.recv(call.reply(inv, 200, "OK", sdp=True), src=CALLEE), status=200)
    outs = rig.recv(call.cancel())  # crossed the 200 on the wire; no ACK follows
    assert one(outs, status=200).dest == CALLER  # the CANCEL itself is answered
    assert not pick(outs, method="CANCEL")  # nothing left to cancel downstream
    assert_race_byes(rig, ring)


def test_2xx_arriving_after_the_cancel_confirms_then_ends_the_call() -> None:
    rig, ring = rig_with_records()
    call = Call()
    inv = ringing(rig, call)
    cancel = one(rig.recv(call.cancel()), method="CANCEL")
    ok = one(rig.recv(call.reply(inv, 200, "OK", sdp=True), src=CALLEE), status=200)
    assert ok.dest == CALLER  # relayed: only the caller can ACK and BYE it
    rig.recv(call.answer_request(cancel), src=CALLEE)
    dlg = next(iter(rig.eng.dialogs))
    assert dlg.end_reason is None  # answered, not cancelled
    assert rig.eng.stats.active_dialogs == 1
    assert_race_byes(rig, ring)


def test_a_caller_that_acks_and_byes_in_time_ends_the_call_as_usual() -> None:
    rig, ring = rig_with_records()
    call = Call()
    inv = ringing(rig, call)
    rig.recv(call.cancel())
    ok = one(rig.recv(call.reply(inv, 200, "OK", sdp=True), src=CALLEE), status=200)
    rig.recv(call.ack(ok))
    bye = one(rig.recv(call.in_dialog("BYE", ok)), method="BYE")
    rig.recv(call.answer_request(bye), src=CALLEE)
    assert not pick(rig.advance(10.0), method="BYE")
    assert next(iter(ring))["end_reason"] == "Downstream BYE"


def test_a_cancel_before_any_answer_is_still_cancelled() -> None:
    rig, ring = rig_with_records()
    call = Call()
    inv = ringing(rig, call)
    cancel = one(rig.recv(call.cancel()), method="CANCEL")
    rig.recv(call.answer_request(cancel), src=CALLEE)
    rig.recv(call.reply(inv, 487, "Request Terminated"), src=CALLEE)
    assert next(iter(ring))["end_reason"] == "Cancelled"
    assert rig.eng.stats.active_dialogs == 0
