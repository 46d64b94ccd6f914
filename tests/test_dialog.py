"""Dialog tracking with OpenSIPS semantics: states, ids, end reasons, statistics, engine-ended
dialogs (reference §3, §4.3, §5), all without sockets."""

from __future__ import annotations

import pytest
from test_engine_kit import CALLEE, CALLER, SDP, Call, Rig, crlf, one, pick

from engine.dialog import (
    Dialog,
    DlgEvent,
    DlgState,
    Socket,
    parse_reverse_hex,
    reverse_hex,
)
from engine.dlg_table import DialogTable, callid_hash
from engine.events import DialogStateChanged
from engine.transaction import T1


def watch(rig: Rig) -> list[DialogStateChanged]:
    """The state changes the engine reports from now on (OpenSIPS's E_DLG_STATE_CHANGED)."""
    rig.take()
    del rig.events[:]
    return rig.events


def only_dialog(rig: Rig) -> Dialog:
    dialogs = list(rig.eng.dialogs)
    assert len(dialogs) == 1, dialogs
    return dialogs[0]


# ------------------------------------------------------------------- ids


def test_reverse_hex_worked_example() -> None:
    """Reference §3: h_entry 2731, h_id 1234567890 → baa.2d206994, db_id 11730790253266."""
    assert reverse_hex(2731) == "baa"
    assert reverse_hex(1234567890) == "2d206994"
    assert reverse_hex(0) == "0"
    assert reverse_hex(16) == "01"
    assert reverse_hex(0xFFFFFFFF) == "ffffffff"
    dlg = Dialog(2731, 1234567890, "c", "sip:a@x", "sip:b@x", "t", "", Socket("udp", "h", 1), 1)
    assert dlg.did == "baa.2d206994"
    assert dlg.db_id == 11730790253266
    # The real output cited in the reference: ID 263.8b17a8e4 <-> db_id 3720759374264.
    e, i = (parse_reverse_hex(x) for x in "263.8b17a8e4".split("."))
    assert e is not None and i is not None
    assert (e << 32) + i == 3720759374264


@pytest.mark.parametrize("n", [0, 1, 15, 16, 255, 4095, 2**31, 2**32 - 1])
def test_reverse_hex_round_trip(n: int) -> None:
    assert parse_reverse_hex(reverse_hex(n)) == n


@pytest.mark.parametrize("text", ["", "g", "123456789", "-1", "1 2"])
def test_parse_reverse_hex_rejects(text: str) -> None:
    assert parse_reverse_hex(text) is None


def test_table_ids_and_lookups() -> None:
    table = DialogTable(16)
    h_entry, h_id = table.new_ids("abc")
    assert h_entry == callid_hash("abc", 16) < 16
    dlg = Dialog(h_entry, h_id, "abc", "sip:a@x", "sip:b@x", "ft", "", Socket("udp", "h", 1), 1)
    table.add(dlg)
    assert table.get(h_entry, h_id) is dlg
    assert table.get_by_did(dlg.did) is dlg
    assert table.lookup(dlg.did) is dlg
    assert table.lookup("abc") is dlg  # falls back to the Call-ID
    assert table.get_by_callid("abc", "ft") is dlg
    assert table.get_by_callid("abc", "other") is None
    assert table.get_by_did("zz.1") is None and table.get_by_did("nodot") is None
    # The next id in the bucket follows on.
    assert table.new_ids("abc") == (h_entry, h_id + 1)
    dlg.state = DlgState.DELETED
    assert table.get(h_entry, h_id) is None and table.lookup("abc") is None
    table.remove(dlg)
    assert len(table) == 0
    with pytest.raises(ValueError):
        DialogTable(1000)


def test_default_hash_size_and_did_in_record_route() -> None:
    rig = Rig()
    inv = one(rig.recv(Call().invite()), method="INVITE")
    dlg = only_dialog(rig)
    assert rig.eng.dialogs.hash_size == 4096
    assert 0 <= dlg.h_entry < 4096
    assert dlg.h_entry == callid_hash("call-1@test", 4096)
    assert inv.msg.header("record-route") == f"<sip:127.0.0.1:5060;lr;did={dlg.did}>"


# ------------------------------------------------------------ state machine


def test_transition_table() -> None:
    dlg = Dialog(1, 1, "c", "sip:a@x", "sip:b@x", "t", "", Socket("udp", "h", 1), 1)
    assert dlg.apply(DlgEvent.ACK) is None  # not allowed in state 1
    assert dlg.apply(DlgEvent.PROVISIONAL) is DlgState.UNCONFIRMED
    assert dlg.apply(DlgEvent.PROVISIONAL) is None
    assert dlg.apply(DlgEvent.ANSWERED) is DlgState.EARLY
    assert dlg.apply(DlgEvent.FAILED) is None  # a late failure cannot undo a 2xx
    assert dlg.apply(DlgEvent.ACK) is DlgState.CONFIRMED_NA
    assert dlg.apply(DlgEvent.TERMINATE) is DlgState.CONFIRMED
    assert dlg.state is DlgState.DELETED
    assert dlg.apply(DlgEvent.ANSWERED) is None
    dlg.set_end_reason("first")
    dlg.set_end_reason("second")
    assert dlg.end_reason == "first"


def test_states_1_to_5_and_downstream_bye() -> None:
    rig = Rig()
    events = watch(rig)
    call = Call()
    inv = one(rig.recv(call.invite()), method="INVITE")
    dlg = only_dialog(rig)
    assert dlg.state == 1 and dlg.timestart == 0 and dlg.timeout == 0
    rig.recv(call.reply(inv, 180, "Ringing"), src=CALLEE)
    assert dlg.state == 2
    assert rig.eng.stats.early_dialogs == 1
    assert [leg.tag for leg in dlg.callees] == ["ttag1"]
    assert dlg.callees[0].contact == ""  # early legs have no contact yet
    ok = one(rig.recv(call.reply(inv, 200, "OK", sdp=True), src=CALLEE), status=200)
    assert dlg.state == 3
    assert rig.eng.stats.early_dialogs == 0 and rig.eng.stats.active_dialogs == 1
    assert dlg.timestart == int(rig.eng.wall())
    assert dlg.timeout == dlg.timestart + 43200
    rig.recv(call.ack(ok))
    assert dlg.state == 4
    bye = one(rig.recv(call.in_dialog("BYE", ok)), method="BYE")
    assert dlg.state == 5 and dlg.end_reason == "Downstream BYE"
    assert bye.dest == CALLEE
    assert rig.eng.stats.active_dialogs == 0
    assert [(e.old_state, e.new_state) for e in events] == [(1, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    assert events[-1].end_reason == "Downstream BYE"
    assert events[-1].id == dlg.did and events[-1].db_id == str(dlg.db_id)
    assert len(rig.eng.dialogs) == 0
    assert rig.eng.stats.processed_dialogs == 1


def test_stored_dialog_data() -> None:
    rig = Rig()
    call = Call()
    inv, ok = rig.call_up(call)
    dlg = only_dialog(rig)
    assert dlg.callid == "call-1@test"
    assert dlg.from_uri == "sip:alice@example.com" and dlg.to_uri == "sip:bob@example.com"
    assert dlg.caller_tag == "ftag1"
    assert dlg.caller_contact == call.caller_contact
    assert dlg.caller_sdp == SDP
    assert dlg.caller_route_set == ()
    assert str(dlg.caller_socket) == "udp:127.0.0.1:5060"
    leg = dlg.callee
    assert leg is not None
    assert leg.tag == "ttag1" and leg.contact == call.callee_contact
    assert leg.caller_cseq == 1 and dlg.callee_cseq == 0
    assert leg.route_set == ()
    assert leg.sdp == SDP
    assert str(leg.socket) == "udp:127.0.0.1:5060"


def test_route_sets_from_record_route() -> None:
    """Caller side: the INVITE's Record-Route as received; callee side: the 2xx's entries
    below ours, reversed (reference §2.2)."""
    rig = Rig()
    call = Call()
    data = call.invite(extra="Record-Route: <sip:up1.example.com;lr>, <sip:up2.example.com;lr>\n")
    inv = one(rig.recv(data), method="INVITE")
    ours = inv.msg.header_values("record-route")[0]
    raw = call.reply(inv, 200, "OK").decode()
    # The callee side adds two proxies of its own above ours.
    raw = raw.replace(
        f"Record-Route: {ours}",
        f"Record-Route: <sip:down2.example.com;lr>\r\nRecord-Route: <sip:down1.example.com;lr>\r\n"
        f"Record-Route: {ours}",
    )
    rig.recv(raw.encode(), src=CALLEE)
    dlg = only_dialog(rig)
    assert dlg.caller_route_set == ("<sip:up1.example.com;lr>", "<sip:up2.example.com;lr>")
    assert dlg.callee is not None
    assert dlg.callee.route_set == ("<sip:down1.example.com;lr>", "<sip:down2.example.com;lr>")


def test_upstream_bye() -> None:
    rig = Rig()
    events = watch(rig)
    call = Call()
    inv, ok = rig.call_up(call)
    outs = rig.recv(call.callee_request("BYE", inv), src=CALLEE)
    bye = one(outs, method="BYE")
    assert bye.dest == CALLER
    assert bye.msg.request_uri == call.caller_contact
    assert events[-1].end_reason == "Upstream BYE"
    assert rig.eng.stats.active_dialogs == 0


def test_failed_dialog_counted() -> None:
    rig = Rig()
    events = watch(rig)
    call = Call()
    inv = one(rig.recv(call.invite()), method="INVITE")
    rig.recv(call.reply(inv, 180, "Ringing"), src=CALLEE)
    rig.recv(call.reply(inv, 486, "Busy Here"), src=CALLEE)
    st = rig.eng.stats
    assert (st.failed_dialogs, st.early_dialogs, st.active_dialogs) == (1, 0, 0)
    assert events[-1].new_state == 5
    assert len(rig.eng.dialogs) == 0


def test_cancelled_dialog() -> None:
    rig = Rig()
    events = watch(rig)
    call = Call()
    inv = one(rig.recv(call.invite()), method="INVITE")
    rig.recv(call.reply(inv, 180, "Ringing"), src=CALLEE)
    outs = rig.recv(call.cancel())
    cancel = one(outs, method="CANCEL")
    rig.recv(call.answer_request(cancel), src=CALLEE)
    rig.recv(call.reply(inv, 487, "Request Terminated"), src=CALLEE)
    assert events[-1].new_state == 5 and events[-1].end_reason == "Cancelled"
    assert rig.eng.stats.failed_dialogs == 1


def test_delete_delay_keeps_ended_dialog_listed() -> None:
    rig = Rig(delete_delay=10)
    call = Call()
    inv, ok = rig.call_up(call)
    rig.recv(call.in_dialog("BYE", ok))
    dlg = only_dialog(rig)
    assert dlg.state == 5
    rig.advance(10.5)
    assert len(rig.eng.dialogs) == 0


# ------------------------------------------------------------ in-dialog


def test_cseq_tracking_both_directions() -> None:
    rig = Rig()
    call = Call()
    inv, ok = rig.call_up(call)
    dlg = only_dialog(rig)
    fwd = one(rig.recv(call.in_dialog("INFO", ok, cseq=7)), method="INFO")
    rig.recv(call.answer_request(fwd), src=CALLEE)
    fwd = one(rig.recv(call.callee_request("INFO", inv, cseq=3)), method="INFO")
    assert dlg.callee is not None
    assert dlg.callee.caller_cseq == 7 and dlg.callee_cseq == 3


def test_reinvite_updates_contact_and_sdp() -> None:
    rig = Rig()
    call = Call()
    inv, ok = rig.call_up(call)
    dlg = only_dialog(rig)
    new_sdp = SDP.replace("4000", "4002")
    data = call.in_dialog("INVITE", ok, body=new_sdp).replace(
        call.caller_contact.encode(), b"sip:alice@127.0.0.1:7777"
    )
    # (the Via names the caller by port 5061; only the Contact changes)
    data = data.replace(b"127.0.0.1:7777;branch", b"127.0.0.1:5061;branch")
    outs = rig.recv(data)
    reinv = one(outs, method="INVITE")
    assert reinv.dest == CALLEE
    assert dlg.caller_contact == "sip:alice@127.0.0.1:7777"
    assert dlg.caller_sdp == new_sdp
    answer = call.reply(reinv, 200, "OK", sdp=True, contact="sip:bob@127.0.0.1:5090")
    answer = answer.replace(SDP.encode(), SDP.replace("4000", "4010").encode())
    assert one(rig.recv(answer, src=CALLEE), status=200).dest == CALLER
    assert dlg.callee is not None
    assert dlg.callee.contact == "sip:bob@127.0.0.1:5090"
    assert dlg.callee.sdp == SDP.replace("4000", "4010")
    assert dlg.state == 4


def test_in_dialog_without_route_uses_stored_contact() -> None:
    """SIPp's built-in uac style: ACK and BYE to the proxy's own address, no Route."""
    rig = Rig()
    call = Call()
    inv = one(rig.recv(call.invite()), method="INVITE")
    contact = "sip:bob@127.0.0.1:5099"
    ok = one(rig.recv(call.reply(inv, 200, "OK", contact=contact), src=CALLEE), status=200)
    ack = one(rig.recv(call.ack(ok, use_route=False)), method="ACK")
    assert ack.msg.request_uri == contact and ack.dest == ("127.0.0.1", 5099)
    dlg = only_dialog(rig)
    assert dlg.state == 4
    bye = one(rig.recv(call.in_dialog("BYE", ok, use_route=False)), method="BYE")
    assert bye.msg.request_uri == contact and bye.dest == ("127.0.0.1", 5099)
    assert bye.msg.header("route") is None
    assert dlg.end_reason == "Downstream BYE"


def test_in_dialog_from_callee_without_route_uses_caller_contact() -> None:
    rig = Rig()
    call = Call()
    inv, ok = rig.call_up(call)
    raw = call.callee_request("BYE", inv).decode()
    raw = raw.replace(f"BYE {call.caller_contact} ", "BYE sip:alice@127.0.0.1:5060 ")
    raw = "\r\n".join(line for line in raw.split("\r\n") if not line.startswith("Route:"))
    bye = one(rig.recv(raw.encode(), src=CALLEE), method="BYE")
    assert bye.msg.request_uri == call.caller_contact and bye.dest == CALLER


def test_in_dialog_request_for_ended_dialog_481() -> None:
    rig = Rig()
    call = Call()
    inv, ok = rig.call_up(call)
    bye = one(rig.recv(call.in_dialog("BYE", ok)), method="BYE")
    rig.recv(call.answer_request(bye), src=CALLEE)
    outs = rig.recv(call.in_dialog("INFO", ok))
    assert [o.status for o in outs] == [481]
    # ... also with delete_delay, while the ended dialog is still listed
    rig = Rig(delete_delay=30)
    call = Call(2)
    inv, ok = rig.call_up(call)
    rig.recv(call.in_dialog("BYE", ok))
    assert [o.status for o in rig.recv(call.in_dialog("INFO", ok))] == [481]
    assert [o.status for o in rig.recv(call.in_dialog("INFO", ok, use_route=False))] == [481]
    assert rig.recv(call.in_dialog("ACK", ok, cseq=9)) == []  # never answered


def test_unknown_dialog_without_route_to_proxy_481() -> None:
    rig = Rig()
    call = Call(5)
    inv, ok = rig.call_up(call)
    data = call.in_dialog("BYE", ok, use_route=False).replace(b"ftag5", b"someone-else")
    assert [o.status for o in rig.recv(data)] == [481]


# ------------------------------------------------------- engine-ended dialogs


def _end(rig: Rig, dlg: Dialog, reason: str = "MI Termination", extra: str = "") -> list:
    assert rig.end_dialog(dlg, reason, extra)
    return rig.take()


def test_end_dialog_bye_headers_reference_4_3() -> None:
    rig = Rig()
    events = watch(rig)
    call = Call()
    data = call.invite(extra="Record-Route: <sip:up1.example.com;lr>\n")
    inv = one(rig.recv(data), method="INVITE")
    ours = inv.msg.header_values("record-route")[0]
    raw = (
        call.reply(inv, 200, "OK")
        .decode()
        .replace(
            f"Record-Route: {ours}",
            f"Record-Route: <sip:down1.example.com;lr>\r\nRecord-Route: {ours}",
        )
    )
    ok = one(rig.recv(raw.encode(), src=CALLEE), status=200)
    rig.recv(call.ack(ok))
    dlg = only_dialog(rig)
    # The caller has sent CSeq 5 toward the callee; the callee nothing yet.
    fwd = one(rig.recv(call.in_dialog("INFO", ok, cseq=5)), method="INFO")
    rig.recv(call.answer_request(fwd), src=CALLEE)

    outs = _end(rig, dlg, extra="Reason: Q.850;cause=16\r\nX-Admin: yes\r\n")
    byes = pick(outs, method="BYE")
    assert len(byes) == 2
    to_caller, to_callee = byes  # the caller's BYE goes first
    # BYE -> caller: R-URI caller contact, Route caller route set, From/To swapped.
    m = to_caller.msg
    assert m.request_uri == call.caller_contact
    assert m.header_values("route") == ["<sip:up1.example.com;lr>"]
    assert to_caller.dest == ("up1.example.com", 5060)  # loose routing: first Route
    assert m.header("to") == "<sip:alice@example.com>;tag=ftag1"
    assert m.header("from") == "<sip:bob@example.com>;tag=ttag1"
    assert m.header("cseq") == "1 BYE"
    # BYE -> callee
    m2 = to_callee.msg
    assert m2.request_uri == call.callee_contact
    assert m2.header_values("route") == ["<sip:down1.example.com;lr>"]
    assert m2.header("to") == "<sip:bob@example.com>;tag=ttag1"
    assert m2.header("from") == "<sip:alice@example.com>;tag=ftag1"
    assert m2.header("cseq") == "6 BYE"
    for m in (to_caller.msg, to_callee.msg):
        assert m.call_id == call.callid
        assert m.header("max-forwards") == "70"
        vias = m.header_values("via")
        assert len(vias) == 1 and vias[0].startswith("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK")
        assert m.header("content-length") == "0" and m.body == ""
        assert m.header("reason") == "Q.850;cause=16" and m.header("x-admin") == "yes"
        assert '"' not in (m.header("from") or "") + (m.header("to") or "")
    assert to_caller.msg.header("via") != to_callee.msg.header("via")
    assert dlg.state == 5 and dlg.end_reason == "MI Termination"
    assert events[-1].end_reason == "MI Termination"
    assert rig.eng.stats.active_dialogs == 0
    # Both parties answer; nothing is relayed anywhere and nothing is retransmitted.
    rig.recv(call.answer_request(to_caller), src=("up1.example.com", 5060))
    rig.recv(call.answer_request(to_callee), src=("down1.example.com", 5060))
    assert rig.advance(40) == []
    # A second end is refused: the dialog is gone.
    assert not rig.end_dialog(dlg)


def test_end_dialog_byes_retransmitted_then_given_up() -> None:
    rig = Rig()
    call = Call()
    rig.call_up(call)
    dlg = only_dialog(rig)
    _end(rig, dlg)
    timed = rig.advance_timed(64 * T1 + 1)
    byes = [t for t, o in timed if o.method == "BYE"]
    assert byes[:4] == [0.5, 0.5, 1.5, 1.5]
    assert not [o for _, o in timed if o.status]  # nothing relayed to anyone
    assert not rig.eng.client_txns
    assert len(rig.eng.dialogs) == 0


def test_end_dialog_uses_local_cseq_above_in_dialog_ones() -> None:
    rig = Rig()
    call = Call()
    inv, ok = rig.call_up(call)
    dlg = only_dialog(rig)
    one(rig.recv(call.callee_request("INFO", inv, cseq=41)), method="INFO")
    byes = pick(_end(rig, dlg), method="BYE")
    assert [b.msg.header("cseq") for b in byes] == ["42 BYE", "2 BYE"]
    assert [b.dest for b in byes] == [CALLER, CALLEE]


def test_end_dialog_early_sends_cancel() -> None:
    rig = Rig()
    events = watch(rig)
    call = Call()
    inv = one(rig.recv(call.invite()), method="INVITE")
    rig.recv(call.reply(inv, 180, "Ringing"), src=CALLEE)
    dlg = only_dialog(rig)
    outs = _end(rig, dlg)
    cancel = one(outs, method="CANCEL")
    assert not pick(outs, method="BYE")
    assert cancel.dest == CALLEE and cancel.msg.header("via") == inv.msg.header("via")
    rig.recv(call.answer_request(cancel), src=CALLEE)
    outs = rig.recv(call.reply(inv, 487, "Request Terminated"), src=CALLEE)
    assert one(outs, status=487).dest == CALLER
    assert events[-1].new_state == 5 and events[-1].end_reason == "MI Termination"


def test_end_dialog_extra_headers_from_config() -> None:
    rig = Rig(bye_extra_headers="X-From-Config: 1")
    call = Call()
    rig.call_up(call)
    byes = pick(_end(rig, only_dialog(rig), extra="X-From-MI: 2"), method="BYE")
    for b in byes:
        names = [n for n, _ in b.msg.headers]
        assert names.index("x-from-config") < names.index("x-from-mi")


def test_lifetime_timeout_byes_both_sides() -> None:
    rig = Rig(default_timeout=5)
    events = watch(rig)
    call = Call()
    inv, ok = rig.call_up(call)
    dlg = only_dialog(rig)
    assert dlg.timeout == dlg.timestart + 5
    assert not pick(rig.advance(4.9), method="BYE")
    outs = rig.advance(0.2)
    byes = pick(outs, method="BYE")
    assert [b.dest for b in byes] == [CALLER, CALLEE]
    assert events[-1].end_reason == "Lifetime Timeout"
    assert rig.eng.stats.expired_dialogs == 1 and rig.eng.stats.active_dialogs == 0
    for b in byes:
        rig.recv(call.answer_request(b), src=b.dest)
    assert not pick(rig.advance(40), method="BYE")


def test_lifetime_timer_cancelled_by_bye() -> None:
    rig = Rig(default_timeout=5)
    call = Call()
    inv, ok = rig.call_up(call)
    bye = one(rig.recv(call.in_dialog("BYE", ok)), method="BYE")
    rig.recv(call.answer_request(bye), src=CALLEE)
    assert not pick(rig.advance(10), method="BYE")
    assert rig.eng.stats.expired_dialogs == 0


def test_many_dialogs_distinct_ids() -> None:
    rig = Rig(hash_size=8)
    for n in range(50):
        rig.recv(Call(n).invite())
    dids = [d.did for d in rig.eng.dialogs]
    assert len(set(dids)) == 50
    assert all(0 <= d.h_entry < 8 for d in rig.eng.dialogs)
    entries = [d.h_entry for d in rig.eng.dialogs]
    assert entries == sorted(entries)  # listing order: bucket ascending


def test_crlf_helper_sanity() -> None:
    assert crlf("a\nb\n") == b"a\r\nb\r\n"


def test_a_pair_the_table_does_not_expect_is_counted() -> None:
    """An ACK for a dialog still early (no 2xx yet) moves nothing, and is counted."""
    rig = Rig()
    call = Call()
    inv = one(rig.recv(call.invite()), method="INVITE")
    ringing = one(rig.recv(call.reply(inv, 180, "Ringing"), src=CALLEE), status=180)
    rig.recv(call.reply(inv, 180, "Ringing"), src=CALLEE)  # a second 1xx: expected, not counted
    assert rig.eng.stats.unexpected_transitions == 0
    rig.recv(call.ack(ringing))
    assert only_dialog(rig).state is DlgState.EARLY
    assert rig.eng.stats.unexpected_transitions == 1


def test_state_changes_are_reported_only_while_somebody_listens() -> None:
    rig = Rig()
    call = Call()
    rig.eng.report_states(False)  # what the shell does while the event stream has no consumer
    _, ok = rig.call_up(call)
    assert rig.events == []
    rig.eng.report_states(True)
    rig.recv(call.in_dialog("BYE", ok))
    assert [(e.old_state, e.new_state, e.end_reason) for e in rig.events] == [
        (4, 5, "Downstream BYE")
    ]


def test_2xx_retransmission_after_a_restart_is_relayed_by_via() -> None:
    """The callee retransmits its 200 (the caller's ACK was lost while sipdlg restarted):
    the new process has no transaction and another branch prefix, yet the top Via is its
    address, so the 200 goes on to the caller, who ACKs again (RFC 3261 §13.3.1.4, §18.1.2)."""
    rig = Rig()
    call = Call()
    lines = [
        "SIP/2.0 200 OK",
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKdeadbeef.7;rport",
        f"Via: SIP/2.0/UDP {CALLER[0]}:{CALLER[1]};branch=z9hG4bK-inv-1",
        "From: Alice <sip:alice@example.com>;tag=ftag1",
        "To: Bob <sip:bob@example.com>;tag=ttag1",
        f"Call-ID: {call.callid}",
        "CSeq: 1 INVITE",
        f"Contact: <{call.callee_contact}>",
        "Content-Length: 0",
    ]
    ok = crlf("\n".join(lines) + "\n\n")
    assert one(rig.recv(ok, src=CALLEE), status=200).dest == CALLER
    foreign = ok.replace(b"127.0.0.1:5060;branch", b"127.0.0.9:5060;branch")
    assert rig.recv(foreign, src=CALLEE) == []  # not our Via: dropped
