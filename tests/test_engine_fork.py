"""Forking downstream (RFC 3261 §13.2.2.4, §16.7 step 5), sans-I/O: one INVITE answered by
two forks with different To-tags.

The proxy relays every 2xx and tracks each answering fork's leg; the call is the leg that
answered first (OpenSIPS's ``DLG_LEG_200OK``): the caller's ACK and BYE for the other fork
are routed to that fork and leave the call as it is, which is listed once and ended by the
MI with BYEs to both sides of its own leg.
"""

from __future__ import annotations

from test_engine_kit import CALLEE, CALLER, Call, Out, Rig, one, pick

from engine.dialog import Dialog, DlgState
from engine.dlg_records import RecordRing

FORK_B = ("127.0.0.1", 5090)
CONTACT_B = f"sip:carol@{FORK_B[0]}:{FORK_B[1]}"


def answer(rig: Rig, call: Call, inv: Out, tag: str, *, contact: str | None = None) -> Out:
    """A fork's 200 to the forwarded INVITE; returns the 200 the caller got."""
    call.ttag = tag
    src = FORK_B if contact == CONTACT_B else CALLEE
    outs = rig.recv(call.reply(inv, 200, "OK", sdp=True, contact=contact), src=src)
    return one(outs, status=200)


def forked_call(rig: Rig, call: Call) -> tuple[Out, Out, Out]:
    """INVITE, 180 from fork A, 180 from fork B, then 200s from A and B: (INVITE, 200 A,
    200 B) as the caller saw them."""
    inv = one(rig.recv(call.invite()), method="INVITE")
    call.ttag = "fork-a"
    rig.recv(call.reply(inv, 180, "Ringing"), src=CALLEE)
    call.ttag = "fork-b"
    rig.recv(call.reply(inv, 180, "Ringing"), src=FORK_B)
    ok_a = answer(rig, call, inv, "fork-a")
    ok_b = answer(rig, call, inv, "fork-b", contact=CONTACT_B)
    return inv, ok_a, ok_b


def the_dialog(rig: Rig, call: Call) -> Dialog:
    found = [d for d in rig.eng.dialogs if d.callid == call.callid]
    assert len(found) == 1, found
    return found[0]


def to_tag(out: Out) -> str:
    return (out.msg.header("to") or "").rpartition("tag=")[2]


def test_both_2xx_reach_the_caller_and_the_first_one_is_the_call() -> None:
    rig = Rig()
    call = Call()
    _, ok_a, ok_b = forked_call(rig, call)
    assert ok_a.dest == ok_b.dest == CALLER
    assert (to_tag(ok_a), to_tag(ok_b)) == ("fork-a", "fork-b")
    assert (ok_b.msg.header("contact") or "").strip("<>") == CONTACT_B
    dlg = the_dialog(rig, call)
    assert dlg.state is DlgState.CONFIRMED_NA
    assert dlg.callee is not None and dlg.callee.tag == "fork-a"
    legs = {leg.tag: leg for leg in dlg.callees}
    assert set(legs) == {"fork-a", "fork-b"}
    assert legs["fork-b"].contact == CONTACT_B  # tracked from its 2xx, as OpenSIPS does
    assert legs["fork-b"].sdp is not None
    assert rig.eng.stats.active_dialogs == 1


def test_a_retransmitted_fork_2xx_is_relayed_and_changes_nothing() -> None:
    rig = Rig(report_changes=True)
    call = Call()
    inv, _, _ = forked_call(rig, call)
    rig.changes.clear()
    again = answer(rig, call, inv, "fork-b", contact=CONTACT_B)
    assert again.dest == CALLER
    assert rig.changes == []  # nothing new to store
    assert len(the_dialog(rig, call).callees) == 2


def test_ack_for_each_2xx_goes_to_its_own_fork() -> None:
    rig = Rig()
    call = Call()
    _, ok_a, ok_b = forked_call(rig, call)
    ack_b = one(rig.recv(call.ack(ok_b)), method="ACK")
    assert ack_b.dest == FORK_B
    assert ack_b.msg.request_uri == CONTACT_B
    assert the_dialog(rig, call).state is DlgState.CONFIRMED_NA  # not the call's ACK
    ack_a = one(rig.recv(call.ack(ok_a)), method="ACK")
    assert ack_a.dest == CALLEE
    assert the_dialog(rig, call).state is DlgState.CONFIRMED


def test_bye_for_the_extra_leg_reaches_that_fork_and_the_call_stays_up() -> None:
    rig = Rig(report_changes=True)
    ring = rig.records = RecordRing(10)
    call = Call()
    _, ok_a, ok_b = forked_call(rig, call)
    rig.recv(call.ack(ok_a))
    rig.recv(call.ack(ok_b))
    rig.events.clear()

    bye_b = one(rig.recv(call.in_dialog("BYE", ok_b)), method="BYE")
    assert bye_b.dest == FORK_B
    assert bye_b.msg.request_uri == CONTACT_B
    assert to_tag(bye_b) == "fork-b"
    done = one(rig.recv(call.answer_request(bye_b), src=FORK_B), status=200)
    assert done.dest == CALLER

    dlg = the_dialog(rig, call)
    assert dlg.state is DlgState.CONFIRMED
    assert dlg.end_reason is None
    assert rig.events == []  # no state change reported
    assert rig.eng.stats.active_dialogs == 1
    assert dlg.leg_with_tag("fork-b") is not None
    assert dlg.leg_with_tag("fork-b").caller_cseq == call.cseq  # type: ignore[union-attr]
    assert dlg.callee is not None and dlg.callee.caller_cseq == 1  # the call's leg untouched

    bye_a = one(rig.recv(call.in_dialog("BYE", ok_a)), method="BYE")
    assert bye_a.dest == CALLEE
    assert to_tag(bye_a) == "fork-a"
    rig.recv(call.answer_request(bye_a), src=CALLEE)
    assert len(rig.eng.dialogs) == 0
    assert [(e.old_state, e.new_state, e.end_reason) for e in rig.events] == [
        (4, 5, "Downstream BYE")
    ]
    assert ring.by_callid(call.callid)[0]["end_reason"] == "Downstream BYE"
    assert rig.eng.stats.active_dialogs == 0


def test_bye_from_the_extra_fork_to_the_caller_leaves_the_call_up() -> None:
    """The other fork hangs up by itself (it may never get its ACK): routed to the caller,
    and the call on the first leg stays (OpenSIPS would end it here: its BYE from upstream
    is taken for the call's whatever leg sends it)."""
    rig = Rig()
    call = Call()
    inv, ok_a, _ = forked_call(rig, call)
    rig.recv(call.ack(ok_a))
    call.ttag = "fork-b"
    bye = one(rig.recv(call.callee_request("BYE", inv), src=FORK_B), method="BYE")
    assert bye.dest == CALLER
    dlg = the_dialog(rig, call)
    assert dlg.state is DlgState.CONFIRMED
    assert dlg.callee_cseq == 0  # the call's callee sent nothing: BYEs from the MI use 1


def test_a_caller_ignoring_record_route_reaches_the_fork_by_its_stored_contact() -> None:
    rig = Rig()
    call = Call()
    _, ok_a, ok_b = forked_call(rig, call)
    rig.recv(call.ack(ok_a, use_route=False))
    ack_b = one(rig.recv(call.ack(ok_b, use_route=False)), method="ACK")
    assert ack_b.dest == FORK_B and ack_b.msg.request_uri == CONTACT_B
    bye_b = one(rig.recv(call.in_dialog("BYE", ok_b, use_route=False)), method="BYE")
    assert bye_b.dest == FORK_B
    assert the_dialog(rig, call).state is DlgState.CONFIRMED


def test_mi_end_sends_byes_to_both_sides_of_the_first_leg_only() -> None:
    rig = Rig()
    call = Call()
    _, ok_a, ok_b = forked_call(rig, call)
    rig.recv(call.ack(ok_a))
    rig.recv(call.ack(ok_b))
    dlg = the_dialog(rig, call)
    assert rig.end_dialog(dlg)
    byes = pick(rig.take(), method="BYE")
    assert sorted(b.dest for b in byes) == sorted([CALLER, CALLEE])
    to_callee = one([b for b in byes if b.dest == CALLEE], method="BYE")
    assert to_tag(to_callee) == "fork-a"
    to_caller = one([b for b in byes if b.dest == CALLER], method="BYE")
    assert "tag=fork-a" in (to_caller.msg.header("from") or "")
    assert dlg.end_reason == "MI Termination"


def test_a_fork_answering_after_the_call_ended_is_relayed_but_not_revived() -> None:
    """The call ended before the second fork's 2xx: the 2xx still goes up (a proxy forwards
    every 2xx), the ended dialog stays ended and unlisted, and the caller's requests for that
    fork are answered as for any ended dialog (its BYE gets 481, which ends it for the
    caller; the fork, never ACKed, hangs up by itself, RFC 3261 §13.3.1.4)."""
    rig = Rig()
    call = Call()
    inv = one(rig.recv(call.invite()), method="INVITE")
    ok_a = answer(rig, call, inv, "fork-a")
    rig.recv(call.ack(ok_a))
    bye_a = one(rig.recv(call.in_dialog("BYE", ok_a)), method="BYE")
    rig.recv(call.answer_request(bye_a), src=CALLEE)
    assert len(rig.eng.dialogs) == 0
    rig.events.clear()

    ok_b = answer(rig, call, inv, "fork-b", contact=CONTACT_B)
    assert ok_b.dest == CALLER
    assert len(rig.eng.dialogs) == 0
    assert rig.events == []
    assert rig.eng.stats.active_dialogs == 0
    assert rig.recv(call.ack(ok_b)) == []
    refused = one(rig.recv(call.in_dialog("BYE", ok_b)), status=481)
    assert refused.dest == CALLER


def test_a_cancel_crossing_two_forks_2xx_ends_the_first_leg_as_a_race() -> None:
    """CANCEL while both forks ring, then both answer anyway: both 2xx reach the caller; the
    first is the call, cut to the race-condition lifetime and then ended with BYEs to both
    sides of its leg; the second fork's leg is the caller's to ACK and BYE."""
    rig = Rig(race_condition_timeout=5)
    call = Call()
    inv = one(rig.recv(call.invite()), method="INVITE")
    call.ttag = "fork-a"
    rig.recv(call.reply(inv, 180, "Ringing"), src=CALLEE)
    call.ttag = "fork-b"
    rig.recv(call.reply(inv, 180, "Ringing"), src=FORK_B)
    outs = rig.recv(call.cancel())
    assert one(outs, status=200).dest == CALLER
    cancel = one(outs, method="CANCEL")
    ok_a = answer(rig, call, inv, "fork-a")
    ok_b = answer(rig, call, inv, "fork-b", contact=CONTACT_B)
    rig.recv(call.answer_request(cancel), src=CALLEE)
    dlg = the_dialog(rig, call)
    assert dlg.state is DlgState.CONFIRMED_NA and dlg.race_condition
    assert dlg.end_reason is None  # answered, not cancelled

    rig.recv(call.ack(ok_a))
    rig.recv(call.ack(ok_b))
    bye_b = one(rig.recv(call.in_dialog("BYE", ok_b)), method="BYE")
    assert bye_b.dest == FORK_B
    rig.recv(call.answer_request(bye_b), src=FORK_B)
    assert dlg.state is DlgState.CONFIRMED

    byes = pick(rig.advance(6.0), method="BYE")  # unanswered: retransmitted
    assert {b.dest for b in byes} == {CALLER, CALLEE}
    assert dlg.end_reason == "SIP Race Condition"


def test_a_cancel_while_two_forks_ring_cancels_the_call() -> None:
    rig = Rig()
    call = Call()
    inv = one(rig.recv(call.invite()), method="INVITE")
    call.ttag = "fork-a"
    rig.recv(call.reply(inv, 180, "Ringing"), src=CALLEE)
    call.ttag = "fork-b"
    rig.recv(call.reply(inv, 183, "Session Progress"), src=FORK_B)
    assert {leg.tag for leg in the_dialog(rig, call).callees} == {"fork-a", "fork-b"}
    outs = rig.recv(call.cancel())
    cancel = one(outs, method="CANCEL")
    rig.recv(call.answer_request(cancel), src=CALLEE)
    final = one(rig.recv(call.reply(inv, 487, "Request Terminated"), src=CALLEE), status=487)
    assert final.dest == CALLER
    assert len(rig.eng.dialogs) == 0
    assert rig.events[-1].end_reason == "Cancelled"
