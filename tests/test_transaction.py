"""RFC 3261 §17 transactions inside the proxy, driven through ``Engine.receive``/timers."""

from __future__ import annotations

from test_engine_kit import CALLEE, CALLER, Call, Rig, crlf, one, pick

from engine.transaction import T1, T2

OPTIONS = crlf(
    "OPTIONS sip:bob@example.com SIP/2.0\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-opt-1\n"
    "Max-Forwards: 70\n"
    "From: <sip:alice@example.com>;tag=a\n"
    "To: <sip:bob@example.com>\n"
    "Call-ID: opt-1@test\n"
    "CSeq: 1 OPTIONS\n"
    "Content-Length: 0\n\n"
)


# ------------------------------------------------------ server side: absorption


def test_invite_gets_100_trying_and_is_forwarded_once() -> None:
    rig = Rig()
    call = Call()
    outs = rig.recv(call.invite())
    assert one(outs, status=100).dest == CALLER
    inv = one(outs, method="INVITE")
    assert inv.dest == CALLEE
    # A retransmission: the 100 again, no second forward.
    outs = rig.recv(call.invite())
    assert [o.status for o in outs] == [100]
    assert rig.eng.stats.retransmissions == 1


def test_retransmitted_invite_gets_the_last_response() -> None:
    rig = Rig()
    call = Call()
    inv = one(rig.recv(call.invite()), method="INVITE")
    rig.recv(call.reply(inv, 180, "Ringing"), src=CALLEE)
    outs = rig.recv(call.invite())
    assert [o.status for o in outs] == [180]
    assert (outs[0].msg.header("to") or "").endswith(";tag=ttag1")
    # After a 486 the retransmission gets the 486 (the proxy's Completed state).
    rig.recv(call.reply(inv, 486, "Busy Here"), src=CALLEE)
    outs = rig.recv(call.invite())
    assert [o.status for o in outs] == [486]
    assert not pick(outs, method="INVITE")


def test_retransmitted_non_invite_absorbed_then_answered_again() -> None:
    rig = Rig()
    outs = rig.recv(OPTIONS)
    fwd = one(outs, method="OPTIONS")
    assert not pick(outs, status=100)  # no 100 for non-INVITE
    assert rig.recv(OPTIONS) == []  # Trying: absorbed, nothing to resend yet
    outs = rig.recv(Call().answer_request(fwd), src=CALLEE)
    assert one(outs, status=200).dest == CALLER
    outs = rig.recv(OPTIONS)
    assert [o.status for o in outs] == [200]
    # Timer J (64*T1 over UDP) ends the transaction; then a "retransmission" is new.
    rig.advance(64 * T1 + 0.1)
    outs = rig.recv(OPTIONS)
    assert one(outs, method="OPTIONS")


# ------------------------------------------------------ client side: A/B, E/F


def test_timer_a_b_invite_retransmits_then_408() -> None:
    rig = Rig()
    call = Call()
    rig.recv(call.invite())
    timed = rig.advance_timed(64 * T1 + 1)
    invites = [t for t, o in timed if o.method == "INVITE"]
    assert invites == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    final = [(t, o) for t, o in timed if o.status is not None]
    # Timer B fires at 64*T1; the 408 is then retransmitted by Timer G until the ACK.
    assert final[0][0] == 32.0
    assert {o.status for _, o in final} == {408}
    assert final[0][1].dest == CALLER
    assert (final[0][1].msg.header("to") or "").count(";tag=") == 1
    rig.recv(call.ack_non2xx(final[0][1]))
    assert not pick(rig.advance(10), status=408)
    # The dialog failed.
    assert rig.eng.stats.failed_dialogs == 1
    assert len(rig.eng.dialogs) == 0


def test_timer_a_stops_on_provisional() -> None:
    rig = Rig()
    call = Call()
    inv = one(rig.recv(call.invite()), method="INVITE")
    rig.advance(0.6)  # one retransmission
    rig.recv(call.reply(inv, 100, "Trying", tag=False), src=CALLEE)
    outs = rig.advance(40)
    assert not pick(outs, method="INVITE")
    assert not pick(outs, status=408)  # Timer B no longer runs once Proceeding


def test_100_from_next_hop_not_relayed() -> None:
    rig = Rig()
    call = Call()
    inv = one(rig.recv(call.invite()), method="INVITE")
    assert rig.recv(call.reply(inv, 100, "Trying", tag=False), src=CALLEE) == []


def test_timer_e_f_non_invite_retransmits_then_408() -> None:
    rig = Rig()
    rig.recv(OPTIONS)
    timed = rig.advance_timed(64 * T1 + 1)
    times = [t for t, o in timed if o.method == "OPTIONS"]
    expected = []
    t, interval = 0.0, T1
    while True:
        t += interval
        if t >= 64 * T1:
            break
        expected.append(t)
        interval = min(interval * 2, T2)
    assert times == expected
    # Non-INVITE: the 408 is sent once (Timer J only absorbs retransmissions).
    assert [(t, o.status) for t, o in timed if o.status] == [(32.0, 408)]


def test_timer_e_after_provisional_uses_t2() -> None:
    rig = Rig()
    fwd = one(rig.recv(OPTIONS), method="OPTIONS")
    rig.recv(Call().answer_request(fwd, 180, "Ringing"), src=CALLEE)
    timed = rig.advance_timed(12)
    times = [t for t, o in timed if o.method == "OPTIONS"]
    assert times and all(b - a == T2 for a, b in zip(times, times[1:], strict=False))


# ------------------------------------------------------------ server side: G/H


def test_timer_g_h_final_response_retransmitted_until_ack() -> None:
    rig = Rig()
    call = Call()
    inv = one(rig.recv(call.invite()), method="INVITE")
    outs = rig.recv(call.reply(inv, 486, "Busy Here"), src=CALLEE)
    busy = one(outs, status=486)
    timed = rig.advance_timed(8)
    assert [t for t, o in timed if o.status == 486] == [0.5, 1.5, 3.5, 7.5]
    # The ACK stops Timer G.
    rig.recv(call.ack_non2xx(busy))
    assert not pick(rig.advance(20), status=486)


def test_timer_h_gives_up_without_ack() -> None:
    rig = Rig()
    call = Call()
    inv = one(rig.recv(call.invite()), method="INVITE")
    rig.recv(call.reply(inv, 486, "Busy Here"), src=CALLEE)
    timed = rig.advance_timed(64 * T1 + 5)
    times = [t for t, o in timed if o.status == 486]
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert not rig.eng.server_txns


def test_hop_by_hop_ack_for_non_2xx() -> None:
    rig = Rig()
    call = Call()
    inv = one(rig.recv(call.invite()), method="INVITE")
    outs = rig.recv(call.reply(inv, 486, "Busy Here"), src=CALLEE)
    ack = one(outs, method="ACK")
    busy = one(outs, status=486)
    # The proxy ACKs the callee itself: same R-URI and top Via branch as the INVITE it sent.
    assert ack.dest == CALLEE
    assert ack.msg.request_uri == inv.msg.request_uri
    assert ack.msg.header("via") == inv.msg.header("via")
    assert ack.msg.header("cseq") == "1 ACK"
    assert (ack.msg.header("to") or "").endswith(";tag=ttag1")
    assert ack.msg.call_id == call.callid
    # A retransmitted 486 from the callee is ACKed again, not relayed.
    outs = rig.recv(call.reply(inv, 486, "Busy Here"), src=CALLEE)
    assert [o.method for o in outs] == ["ACK"]
    # The caller's ACK stays here.
    assert rig.recv(call.ack_non2xx(busy)) == []


def test_2xx_ack_is_end_to_end() -> None:
    rig = Rig()
    call = Call()
    inv, ok = rig.call_up(call, ack=False)
    outs = rig.recv(call.ack(ok))
    ack = one(outs, method="ACK")
    assert ack.dest == CALLEE
    assert (ack.msg.header("via") or "").startswith("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK")


def test_2xx_retransmission_relayed() -> None:
    rig = Rig()
    call = Call()
    inv = one(rig.recv(call.invite()), method="INVITE")
    ok = call.reply(inv, 200, "OK")
    assert [o.status for o in rig.recv(ok, src=CALLEE)] == [200]
    assert [o.status for o in rig.recv(ok, src=CALLEE)] == [200]


# ------------------------------------------------------------------- CANCEL


def test_cancel_200_then_cancel_downstream_then_487() -> None:
    rig = Rig()
    call = Call()
    inv = one(rig.recv(call.invite()), method="INVITE")
    rig.recv(call.reply(inv, 180, "Ringing"), src=CALLEE)
    outs = rig.recv(call.cancel())
    ok = one(outs, status=200)
    assert ok.dest == CALLER and ok.msg.header("cseq") == "1 CANCEL"
    cancel = one(outs, method="CANCEL")
    assert cancel.dest == CALLEE
    assert cancel.msg.request_uri == inv.msg.request_uri
    assert cancel.msg.header("via") == inv.msg.header("via")  # same branch as our INVITE
    assert cancel.msg.header("cseq") == "1 CANCEL"
    # The callee answers the CANCEL and the INVITE.
    assert rig.recv(call.answer_request(cancel), src=CALLEE) == []
    outs = rig.recv(call.reply(inv, 487, "Request Terminated"), src=CALLEE)
    assert one(outs, status=487).dest == CALLER
    assert one(outs, method="ACK").dest == CALLEE
    assert rig.eng.stats.failed_dialogs == 1


def test_cancel_retransmission_gets_200_again() -> None:
    rig = Rig()
    call = Call()
    inv = one(rig.recv(call.invite()), method="INVITE")
    rig.recv(call.reply(inv, 180, "Ringing"), src=CALLEE)
    rig.recv(call.cancel())
    outs = rig.recv(call.cancel())
    assert [o.status for o in outs] == [200]


def test_cancel_before_provisional_waits_for_1xx() -> None:
    rig = Rig()
    call = Call()
    inv = one(rig.recv(call.invite()), method="INVITE")
    outs = rig.recv(call.cancel())
    assert [o.status for o in outs] == [200]  # no CANCEL downstream yet (RFC 3261 §9.1)
    outs = rig.recv(call.reply(inv, 100, "Trying", tag=False), src=CALLEE)
    assert one(outs, method="CANCEL").dest == CALLEE


def test_cancel_of_unknown_transaction_481() -> None:
    rig = Rig()
    outs = rig.recv(Call(9).cancel())
    assert [o.status for o in outs] == [481]
    assert outs[0].dest == CALLER


def test_cancel_after_final_response_does_nothing_downstream() -> None:
    rig = Rig()
    call = Call()
    inv = one(rig.recv(call.invite()), method="INVITE")
    rig.recv(call.reply(inv, 200, "OK"), src=CALLEE)
    outs = rig.recv(call.cancel())
    assert [o.status for o in outs] == [200]
    assert not pick(outs, method="CANCEL")


def test_cancel_without_answer_gives_487_after_guard() -> None:
    """A callee that never answers the CANCEL: 64*T1 later the caller still gets its 487."""
    rig = Rig()
    call = Call()
    inv = one(rig.recv(call.invite()), method="INVITE")
    rig.recv(call.reply(inv, 180, "Ringing"), src=CALLEE)
    rig.recv(call.cancel())
    timed = rig.advance_timed(64 * T1 + 0.2)
    finals = [(t, o) for t, o in timed if o.status]
    assert [(t, o.status) for t, o in finals] == [(32.0, 487)]
    assert finals[0][1].dest == CALLER
    assert len(rig.eng.dialogs) == 0
    assert rig.eng.stats.failed_dialogs == 1


def test_tcp_no_retransmissions() -> None:
    from test_engine_kit import TCP

    rig = Rig()
    call = Call(transport="TCP")
    outs = rig.recv(call.invite(), sock=TCP, conn=3)
    assert one(outs, method="INVITE").send.socket is TCP
    timed = rig.advance_timed(64 * T1 + 1)
    assert [o.method or o.status for _, o in timed] == [408]
