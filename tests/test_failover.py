"""Next hops with failover, DNS routing and the relay policy, through the engine (no sockets):
what a caller sees when a target refuses, is silent, answers 503 or does not resolve."""

from __future__ import annotations

from test_engine_kit import CALLEE, Call, Rig, one, pick

from engine.dialog import DlgState
from engine.dispatcher import Destination, DsState, parse_destination
from engine.locator import Query, Target

SECOND = ("127.0.0.1", 5090)


def two_hops(fr_timeout: float = 5.0, probe_interval: float = 0.0) -> Rig:
    hops = [Destination(None, *CALLEE, priority=0), Destination(None, *SECOND, priority=1)]
    return Rig(next_hops=hops, fr_timeout=fr_timeout, probe_interval=probe_interval)


def branch_of(out: object) -> str:
    return out.msg.header_values("via")[0].split("branch=")[1].split(";")[0]  # type: ignore[attr-defined]


def test_refused_target_fails_over_with_a_new_branch_and_the_same_headers() -> None:
    rig = two_hops()
    first = one(rig.recv(Call().invite()), method="INVITE")
    assert first.dest == CALLEE
    rig.eng.transport_error("udp", *CALLEE, "Connection refused", rig.now)
    second = one(rig.take(), method="INVITE")
    assert second.dest == SECOND
    assert branch_of(second) != branch_of(first)
    for name in ("via", "record-route"):
        assert len(second.msg.header_values(name)) == len(first.msg.header_values(name))
    assert second.msg.header("max-forwards") == first.msg.header("max-forwards") == "69"
    # The second target answers: the call is up as usual.
    call = Call()
    rig.recv(call.reply(second, 180, "Ringing"), src=SECOND)
    ok = one(rig.recv(call.reply(second, 200, "OK", sdp=True), src=SECOND), status=200)
    rig.recv(call.ack(ok))
    (dlg,) = rig.eng.dialogs
    assert dlg.state is DlgState.CONFIRMED
    ds = rig.eng.dispatcher
    assert ds is not None and [d.state for d in ds.destinations] == [
        DsState.PROBING,
        DsState.ACTIVE,
    ]
    assert [c.state for c in rig.destination_changes] == [DsState.PROBING]
    assert "Connection refused" in rig.destination_changes[0].reason


def test_a_down_destination_is_tried_last_and_comes_back_when_it_answers() -> None:
    rig = two_hops()
    one(rig.recv(Call(1).invite()), method="INVITE")
    rig.eng.transport_error("udp", *CALLEE, "Connection refused", rig.now)
    rig.take()
    inv = one(rig.recv(Call(2).invite()), method="INVITE")
    assert inv.dest == SECOND  # the first is Probing: tried only after the active ones
    rig.eng.transport_error("udp", *SECOND, "Connection refused", rig.now)
    again = one(rig.take(), method="INVITE")
    assert again.dest == CALLEE  # nothing active left: the probing one is a last resort
    rig.recv(Call(2).reply(again, 100, "Trying"), src=CALLEE)
    ds = rig.eng.dispatcher
    assert ds is not None and ds.destinations[0].state == DsState.ACTIVE


def test_503_from_a_target_goes_to_the_next_and_is_not_relayed() -> None:
    rig = two_hops()
    call = Call()
    first = one(rig.recv(call.invite()), method="INVITE")
    outs = rig.recv(call.reply(first, 503, "Service Unavailable"), src=CALLEE)
    assert one(outs, method="ACK").dest == CALLEE  # the 503 is ACKed hop by hop
    assert one(outs, method="INVITE").dest == SECOND
    assert not pick(outs, status=503)


def test_silent_target_is_skipped_after_fr_timeout_not_timer_b() -> None:
    rig = two_hops(fr_timeout=5.0)
    one(rig.recv(Call().invite()), method="INVITE")
    timed = rig.advance_timed(6.0)
    moved = [(t, o) for t, o in timed if o.method == "INVITE" and o.dest == SECOND]
    assert moved and moved[0][0] == 5.0  # then retransmitted there (Timer A)
    assert not [o for t, o in timed if t > 5.0 and o.dest == CALLEE]  # no more retransmissions


def test_no_target_left_gives_503_with_reason_at_once_and_fails_the_dialog() -> None:
    rig = two_hops()
    call = Call()
    one(rig.recv(call.invite()), method="INVITE")
    rig.eng.transport_error("udp", *CALLEE, "Connection refused", rig.now)
    rig.take()
    rig.eng.transport_error("udp", *SECOND, "Connection refused", rig.now)
    final = one(rig.take(), status=503)
    assert final.dest == ("127.0.0.1", 5061)
    reason = final.msg.header("reason") or ""
    assert reason.startswith("SIP;cause=503") and "Connection refused" in reason
    assert len(rig.eng.dialogs) == 0 and rig.eng.stats.failed_dialogs == 1


def test_dns_name_is_asked_once_cached_for_its_ttl_and_srv_order_kept() -> None:
    rig = Rig(next_hop=False, next_hops=[parse_destination("trunk.example.test")])
    rig.dns["trunk.example.test"] = [
        Target("udp", "127.0.0.1", 5080),
        Target("udp", "127.0.0.1", 5090),
    ]
    rig.answer_dns = False
    outs = rig.recv(Call(1).invite()) + rig.recv(Call(2).invite())
    assert [o.status for o in outs] == [100, 100]  # both wait for one query
    assert rig.queries == [Query("trunk.example.test", None, None, "udp", False)]
    rig.eng.resolved(rig.queries[0], rig.dns["trunk.example.test"], 30, rig.now)
    invites = pick(rig.take(), method="INVITE")
    assert [o.dest for o in invites] == [CALLEE, CALLEE]
    rig.answer_dns = True
    one(rig.recv(Call(3).invite()), method="INVITE")
    assert len(rig.queries) == 1  # cached
    rig.advance(31)
    one(rig.recv(Call(4).invite()), method="INVITE")
    assert len(rig.queries) == 2  # the TTL ran out: asked again
    # The first SRV target refuses: the second target of the same name is next.
    rig.eng.transport_error("udp", *CALLEE, "Connection refused", rig.now)
    assert one(rig.take(), method="INVITE").dest == SECOND


def test_name_that_does_not_resolve_gets_503_at_once() -> None:
    rig = Rig(next_hop=False, next_hops=[parse_destination("udp:no.such.host.invalid:5080")])
    rig.dns["no.such.host.invalid"] = []
    outs = rig.recv(Call().invite())
    final = one(outs, status=503)
    assert "no.such.host.invalid" in (final.msg.header("reason") or "")
    assert len(rig.eng.dialogs) == 0


def test_cancel_while_waiting_for_dns_ends_the_call() -> None:
    rig = Rig(next_hop=False, next_hops=[parse_destination("slow.example.test")])
    rig.answer_dns = False
    call = Call()
    rig.recv(call.invite())
    outs = rig.recv(call.cancel())
    assert sorted(o.status or 0 for o in outs) == [200, 487]
    rig.eng.resolved(rig.queries[0], [Target("udp", *CALLEE)], 30, rig.now)
    assert not pick(rig.take(), method="INVITE")
    assert len(rig.eng.dialogs) == 0


def test_in_dialog_route_to_unresolvable_host_gets_503_not_silence() -> None:
    rig = Rig()
    call = Call()
    inv = one(rig.recv(call.invite()), method="INVITE")
    rig.dns["gone.example.test"] = []
    reply = call.reply(inv, 200, "OK", sdp=True).decode()
    reply = reply.replace("Contact: <", "Contact: <sip:bob@gone.example.test>\r\nX-Old: <", 1)
    ok = one(rig.recv(reply.encode(), src=CALLEE), status=200)
    rig.recv(call.ack(ok))
    outs = rig.recv(call.in_dialog("BYE", ok, cseq=2))
    assert sorted(o.status or 0 for o in outs) == [503]


def test_unmatched_in_dialog_request_is_not_relayed() -> None:
    rig = Rig(next_hop=False)
    stray = Call(9).invite().decode()
    stray = stray.replace("INVITE sip:bob@example.com", "MESSAGE sip:bob@203.0.113.9:5060")
    stray = stray.replace("To: Bob <sip:bob@example.com>", "To: <sip:bob@example.com>;tag=x")
    stray = stray.replace("1 INVITE", "1 MESSAGE")
    outs = rig.recv(stray.encode())
    assert [o.status for o in outs] == [404]


def test_request_uri_routing_only_to_allowed_networks() -> None:
    rig = Rig(next_hop=False, relay_allow=("127.0.0.0/8", "example.test"))
    text = Call().invite().decode().replace("sip:bob@example.com SIP", "sip:bob@203.0.113.9 SIP")
    outs = rig.recv(text.encode())
    assert [o.status for o in outs] == [100, 403]
    text = Call(2).invite().decode().replace("bob@example.com SIP", "bob@pbx.example.test SIP")
    inv = one(rig.recv(text.encode()), method="INVITE")
    assert inv.dest == ("pbx.example.test", 5060)


def test_parse_destination_forms() -> None:
    d = parse_destination("tcp:[2001:DB8::1]:5070;priority=2;weight=5")
    assert (d.proto, d.host, d.port, d.priority, d.weight) == ("tcp", "2001:db8::1", 5070, 2, 5)
    assert d.uri == "sip:[2001:db8::1]:5070;transport=tcp"
    assert parse_destination("sip:trunk.example.test").port is None
    for bad in ("sctp:127.0.0.1:5080", "127.0.0.1:5080;prio=1", "udp:"):
        try:
            parse_destination(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad} accepted")


def test_probes_mark_destinations_down_and_up() -> None:
    rig = two_hops(probe_interval=10.0)
    probes = [o for o in rig.advance(0.1) if o.method == "OPTIONS"]
    assert sorted(o.dest for o in probes) == sorted([CALLEE, SECOND])
    first = next(o for o in probes if o.dest == CALLEE)
    rig.recv(Call().answer_request(first, 200), src=CALLEE)
    rig.advance(6)  # the second never answers within the probe timeout
    ds = rig.eng.dispatcher
    assert ds is not None
    assert [d.state for d in ds.destinations] == [DsState.ACTIVE, DsState.PROBING]
    probes = [o for o in rig.advance(5) if o.method == "OPTIONS" and o.dest == SECOND]
    rig.recv(Call().answer_request(probes[-1], 405, "Method Not Allowed"), src=SECOND)
    assert ds.destinations[1].state == DsState.ACTIVE  # any answer but 408/503: it is alive
    assert [c.state for c in rig.destination_changes] == [DsState.PROBING, DsState.ACTIVE]


def test_double_record_route_when_the_call_changes_family() -> None:
    from engine.dialog import Socket

    v6 = Socket("udp", "::1", 5060)
    rig = Rig(next_hop=False, next_hops=[parse_destination("[::1]:5080")])
    rig.eng.sockets.append(v6)
    inv = one(rig.recv(Call().invite()), method="INVITE")
    assert inv.send.socket is v6 and inv.dest == ("::1", 5080)
    rr = inv.msg.header_values("record-route")
    assert rr[0].startswith("<sip:[::1]:5060;lr;") and rr[1].startswith("<sip:127.0.0.1:5060;")
    assert inv.msg.header_values("via")[0].startswith("SIP/2.0/UDP [::1]:5060;")
