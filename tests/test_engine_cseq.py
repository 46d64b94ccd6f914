"""CSeq renumbering after the proxy spoke inside a dialog itself (OpenSIPS's dialog module):
once a ping has used a CSeq toward a party, the other party's requests are renumbered above
it, their answers carry the sender's own number back, and ACKs follow their INVITE."""

from __future__ import annotations

from test_engine_kit import CALLEE, CALLER, Call, Out, Rig, one

from engine.dialog import DlgState


def cseq_of(out: Out) -> int:
    return int((out.msg.header("cseq") or "0").split()[0])


def pinged_call(ping: str = "callee") -> tuple[Rig, Call, Out, Out]:
    """A call up, then one ping to ``ping`` answered 200."""
    rig = Rig(ping=ping, ping_interval=10.0, ping_timeout=5.0)
    call = Call()
    inv, ok = rig.call_up(call)
    (probe,) = [o for o in rig.advance(10.0) if o.method == "OPTIONS"]
    src = CALLEE if ping == "callee" else CALLER
    rig.recv(call.answer_request(probe), src=src)
    return rig, call, inv, ok


def test_caller_bye_after_a_ping_to_the_callee_is_renumbered_and_answered_back() -> None:
    rig, call, _, ok = pinged_call("callee")
    (dlg,) = rig.eng.dialogs
    ping_cseq = dlg.local_cseq_callee
    assert ping_cseq == 2  # the INVITE's 1, then the ping
    bye = one(rig.recv(call.in_dialog("BYE", ok, cseq=2)), method="BYE")
    assert cseq_of(bye) == 3  # above what the callee saw from the ping
    answer = one(rig.recv(call.answer_request(bye), src=CALLEE), status=200)
    assert answer.dest == CALLER and cseq_of(answer) == 2  # the caller's own number
    assert dlg.state is DlgState.DELETED


def test_the_shift_stays_and_acks_follow_their_invite() -> None:
    rig, call, _, ok = pinged_call("callee")
    reinv = one(rig.recv(call.in_dialog("INVITE", ok, cseq=2)), method="INVITE")
    assert cseq_of(reinv) == 3
    ok2 = one(rig.recv(call.reply(reinv, 200, "OK", sdp=True), src=CALLEE), status=200)
    assert cseq_of(ok2) == 2
    ack = one(rig.recv(call.in_dialog("ACK", ok, cseq=2)), method="ACK")
    assert cseq_of(ack) == 3
    info = one(rig.recv(call.in_dialog("INFO", ok, cseq=3)), method="INFO")
    assert cseq_of(info) == 4  # the shift is kept: numbers stay increasing for the callee


def test_callee_requests_after_a_ping_to_the_caller() -> None:
    rig, call, inv, _ = pinged_call("caller")
    (dlg,) = rig.eng.dialogs
    assert dlg.local_cseq_caller == 1
    bye = one(rig.recv(call.callee_request("BYE", inv, cseq=1), src=CALLEE), method="BYE")
    assert bye.dest == CALLER and cseq_of(bye) == 2
    answer = one(rig.recv(call.answer_request(bye), src=CALLER), status=200)
    assert answer.dest == CALLEE and cseq_of(answer) == 1


def test_no_ping_no_renumbering_and_mi_bye_stays_above_everything() -> None:
    rig = Rig()
    call = Call()
    _, ok = rig.call_up(call)
    info = one(rig.recv(call.in_dialog("INFO", ok, cseq=7)), method="INFO")
    assert cseq_of(info) == 7
    rig.recv(call.answer_request(info), src=CALLEE)
    (dlg,) = rig.eng.dialogs
    rig.end_dialog(dlg)
    byes = [o for o in rig.take() if o.method == "BYE"]
    to_callee = next(o for o in byes if o.dest == CALLEE)
    assert cseq_of(to_callee) == 8


def test_bye_after_ping_and_renumbered_requests_is_above_all_of_them() -> None:
    rig, call, _, ok = pinged_call("callee")
    info = one(rig.recv(call.in_dialog("INFO", ok, cseq=2)), method="INFO")
    rig.recv(call.answer_request(info), src=CALLEE)
    (dlg,) = rig.eng.dialogs
    rig.end_dialog(dlg)
    to_callee = next(o for o in rig.take() if o.method == "BYE" and o.dest == CALLEE)
    assert cseq_of(to_callee) == cseq_of(info) + 1 == 4


def test_reinvite_ping_carries_the_current_sdp_is_acked_and_keeps_the_call() -> None:
    rig = Rig(ping="callee", ping_method="reinvite", ping_interval=10.0, ping_timeout=5.0)
    call = Call()
    _, ok = rig.call_up(call)
    (dlg,) = rig.eng.dialogs
    (probe,) = [o for o in rig.advance(10.0) if o.method == "INVITE"]
    assert probe.dest == CALLEE and probe.msg.body == dlg.caller_sdp
    assert (probe.msg.header("content-type") or "") == "application/sdp"
    assert cseq_of(probe) == 2 and probe.msg.header("contact")
    outs = rig.recv(call.reply(probe, 200, "OK", sdp=True), src=CALLEE)
    ack = one(outs, method="ACK")
    assert ack.dest == CALLEE and cseq_of(ack) == 2
    assert ack.msg.header_values("via")[0] != probe.msg.header_values("via")[0]  # new branch
    assert not [o for o in outs if o.dest == CALLER]  # the caller sees nothing of it
    assert dlg.callee is not None and dlg.callee.sent_sdp == dlg.caller_sdp
    # A retransmitted 2xx is ACKed again; the call goes on and the next ping comes.
    one(rig.recv(call.reply(probe, 200, "OK", sdp=True), src=CALLEE), method="ACK")
    assert dlg.state is DlgState.CONFIRMED
    assert [o for o in rig.advance(10.0) if o.method == "INVITE"]
    # The caller's BYE is renumbered above the ping's CSeq.
    bye = one(rig.recv(call.in_dialog("BYE", ok, cseq=2)), method="BYE")
    assert cseq_of(bye) > 2


def test_reinvite_ping_answered_481_ends_the_call() -> None:
    rig = Rig(ping="callee", ping_method="reinvite", ping_interval=10.0, ping_timeout=5.0)
    call = Call()
    rig.call_up(call)
    (dlg,) = rig.eng.dialogs
    (probe,) = [o for o in rig.advance(10.0) if o.method == "INVITE"]
    outs = rig.recv(call.reply(probe, 481, "Call/Transaction Does Not Exist"), src=CALLEE)
    assert one(outs, method="ACK").dest == CALLEE  # hop-by-hop ACK of the non-2xx
    assert {o.dest for o in outs if o.method == "BYE"} == {CALLER, CALLEE}
    assert dlg.state is DlgState.DELETED and dlg.end_reason == "Callee Ping Timeout"
