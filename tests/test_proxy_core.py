"""Proxy core (RFC 3261 §16) and bad input, through ``Engine.receive`` (no sockets)."""

from __future__ import annotations

import pytest
from test_engine_kit import CALLEE, CALLER, TCP, UDP, Call, Rig, crlf, one, pick

from engine.dialog import Socket
from engine.proxy import Engine, EngineConfig

OPTIONS = (
    "OPTIONS sip:bob@example.com SIP/2.0\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-o1\n"
    "Max-Forwards: 70\n"
    "From: <sip:alice@example.com>;tag=a\n"
    "To: <sip:bob@example.com>\n"
    "Call-ID: o1@test\n"
    "CSeq: 1 OPTIONS\n"
    "Content-Length: 0\n\n"
)


def options(**replace: str) -> bytes:
    text = OPTIONS
    for old, new in replace.items():
        text = text.replace(old.replace("_", " "), new)
    return crlf(text)


def test_forward_adds_via_record_route_and_decrements_max_forwards() -> None:
    rig = Rig()
    call = Call()
    outs = rig.recv(call.invite())
    inv = one(outs, method="INVITE")
    m = inv.msg
    assert m.request_uri == "sip:bob@example.com"  # R-URI untouched with --next-hop
    assert m.header("max-forwards") == "69"
    vias = m.header_values("via")
    assert len(vias) == 2 and ";rport" in vias[0]
    assert vias[0].split("branch=")[1].startswith("z9hG4bK")
    assert m.header_values("record-route")[0].startswith("<sip:127.0.0.1:5060;lr;did=")
    assert m.body == Call().invite().split(b"\r\n\r\n", 1)[1].decode()


def test_unique_branches() -> None:
    rig = Rig()
    branches = set()
    for n in range(20):
        inv = one(rig.recv(Call(n).invite()), method="INVITE")
        branches.add((inv.msg.header("via") or "").split("branch=")[1].split(";")[0])
    assert len(branches) == 20


def test_missing_max_forwards_gets_70() -> None:
    rig = Rig()
    text = OPTIONS.replace("Max-Forwards: 70\n", "")
    fwd = one(rig.recv(crlf(text)), method="OPTIONS")
    assert fwd.msg.header("max-forwards") == "70"


def test_double_record_route_when_transport_changes() -> None:
    rig = Rig()
    assert rig.eng.dispatcher is not None
    rig.eng.dispatcher.destinations[0].proto = "tcp"
    inv = one(rig.recv(Call().invite()), method="INVITE")
    assert inv.send.socket is TCP
    rr = inv.msg.header_values("record-route")
    assert len(rr) == 2
    assert "transport=tcp" in rr[0] and "transport" not in rr[1]


def test_non_record_routed_methods() -> None:
    rig = Rig()
    fwd = one(rig.recv(options()), method="OPTIONS")
    assert fwd.msg.header("record-route") is None


# ---------------------------------------------------------------- bad input


def test_max_forwards_zero_483() -> None:
    rig = Rig()
    outs = rig.recv(Call().invite(max_forwards=0))
    assert [o.status for o in outs] == [483]
    assert outs[0].msg.start_line == "SIP/2.0 483 Too Many Hops"
    assert len(rig.eng.dialogs) == 0


def test_max_forwards_one_forwarded_with_zero() -> None:
    rig = Rig()
    inv = one(rig.recv(Call().invite(max_forwards=1)), method="INVITE")
    assert inv.msg.header("max-forwards") == "0"


def test_unsupported_uri_scheme_416() -> None:
    rig = Rig()
    outs = rig.recv(options(**{"OPTIONS_sip:bob@example.com": "OPTIONS nobodyKnowsThisScheme:x"}))
    assert [o.status for o in outs] == [416]


def test_proxy_require_420_lists_unsupported() -> None:
    rig = Rig()
    data = options(**{"Content-Length: 0": "Proxy-Require: foo, bar\nContent-Length: 0"})
    outs = rig.recv(data)
    assert [o.status for o in outs] == [420]
    assert outs[0].msg.header("unsupported") == "foo, bar"


def test_require_alone_is_forwarded() -> None:
    rig = Rig()
    data = options(**{"Content-Length: 0": "Require: 100rel\nContent-Length: 0"})
    assert one(rig.recv(data), method="OPTIONS")


def test_wrong_version_505() -> None:
    rig = Rig()
    outs = rig.recv(options(**{"SIP/2.0\nVia": "SIP/7.0\nVia"}))
    assert [o.status for o in outs] == [505]


def test_message_too_large_513() -> None:
    rig = Rig(max_message_size=2000)
    big = "X-Pad: " + "a" * 3000 + "\nContent-Length: 0"
    outs = rig.recv(options(**{"Content-Length: 0": big}))
    assert [o.status for o in outs] == [513]
    assert rig.eng.stats.parse_errors == 1


def test_default_size_limit_is_64k() -> None:
    rig = Rig()
    assert rig.eng.config.max_message_size == 65536
    body = "b" * 66000
    data = options(
        **{"Content-Length: 0": f"Content-Type: text/plain\nContent-Length: {len(body)}"}
    )
    outs = rig.recv(data + body.encode())
    assert [o.status for o in outs] == [513]


@pytest.mark.parametrize(
    ("replace", "status", "reason_word"),
    [
        ({"Call-ID: o1@test\n": ""}, 400, "call-id"),
        ({"CSeq: 1 OPTIONS": "CSeq: 1 INVITE"}, 400, "cseq"),
        ({"CSeq: 1 OPTIONS": "CSeq: 99999999999 OPTIONS"}, 400, "cseq"),
        ({"Max-Forwards: 70": "Max-Forwards: -1"}, 400, "max-forwards"),
        ({"To: <sip:bob@example.com>": 'To: "unterminated <sip:bob@example.com>'}, 400, ""),
        ({"Content-Length: 0": "Content-Length: 10"}, 400, "content-length"),
        ({"OPTIONS sip:bob@example.com": "OPTIONS <sip:bob@example.com>"}, 400, "request-uri"),
    ],
)
def test_malformed_request_400_names_problem(
    replace: dict[str, str], status: int, reason_word: str
) -> None:
    rig = Rig()
    text = OPTIONS
    for old, new in replace.items():
        text = text.replace(old, new)
    outs = rig.recv(crlf(text))
    assert [o.status for o in outs] == [status]
    reason = outs[0].msg.start_line.split(" ", 2)[2]
    assert reason and reason.lower() != "bad request"
    assert reason_word in reason.lower()
    assert outs[0].dest == CALLER
    assert rig.eng.stats.parse_errors >= 1


def test_error_reply_copies_via_from_to_callid_cseq_and_adds_to_tag() -> None:
    rig = Rig()
    outs = rig.recv(Call().invite(max_forwards=0))
    m = outs[0].msg
    req = Call().invite().decode()
    assert (m.header("via") or "-") in req and m.call_id == "call-1@test"
    assert m.header("cseq") == "1 INVITE"
    assert ";tag=" in (m.header("to") or "")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\r\n\r\n",
        b"garbage",
        b"\x00\xff" * 50,
        b"SIP/2.0 200 OK\r\n\r\n",
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKnope\r\nCSeq: 1 INVITE\r\n"
        b"Call-ID: x\r\nContent-Length: 0\r\n\r\n",
        b"SIP/2.0 4294967301 Big\r\nVia: SIP/2.0/UDP 1.2.3.4\r\n\r\n",
        b"ACK sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKx\r\n\r\n",
        b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\n",  # no Via: cannot answer
    ],
)
def test_garbage_and_bad_responses_dropped_silently(data: bytes) -> None:
    rig = Rig()
    assert rig.recv(data) == []


def test_ack_errors_never_answered() -> None:
    rig = Rig()
    data = crlf(OPTIONS.replace("OPTIONS", "ACK").replace("Call-ID: o1@test\n", ""))
    assert rig.recv(data) == []
    data = crlf(OPTIONS.replace("OPTIONS", "ACK").replace("Max-Forwards: 70", "Max-Forwards: 0"))
    # An ACK with Max-Forwards 0: not answered (ACKs never are), and not forwarded either.
    assert not pick(rig.recv(data), status=483)


def test_bad_input_does_not_disturb_call_in_progress() -> None:
    rig = Rig()
    call = Call()
    inv = one(rig.recv(call.invite()), method="INVITE")
    rig.recv(b"\x00garbage\r\n\r\n")
    rig.recv(call.invite()[:80])
    rig.recv(b"SIP/2.0 200 OK\r\nVia: bogus\r\n\r\n")
    ok = one(rig.recv(call.reply(inv, 200, "OK"), src=CALLEE), status=200)
    rig.recv(call.ack(ok))
    assert list(rig.eng.dialogs)[0].state == 4


def test_no_next_hop_routes_by_ruri_and_404_for_self() -> None:
    rig = Rig(next_hop=False)
    text = OPTIONS.replace("sip:bob@example.com SIP", "sip:bob@127.0.0.9:5099;transport=udp SIP")
    fwd = one(rig.recv(crlf(text)), method="OPTIONS")
    assert fwd.dest == ("127.0.0.9", 5099)
    text = OPTIONS.replace("sip:bob@example.com SIP", "sip:bob@127.0.0.1:5060 SIP")
    text = text.replace("z9hG4bK-o1", "z9hG4bK-self").replace("o1@test", "self@test")
    outs = rig.recv(crlf(text))
    assert [o.status for o in outs] == [404]
    data = options(**{"o1@test": "o2@test", "z9hG4bK-o1": "z9hG4bK-o2"})
    outs = rig.recv(data)
    assert [o.status for o in outs] == [403]  # not an allowed destination: no open relay


def test_tcp_request_answered_on_its_connection() -> None:
    rig = Rig()
    text = OPTIONS.replace("SIP/2.0/UDP", "SIP/2.0/TCP").replace(
        "Max-Forwards: 70", "Max-Forwards: 0"
    )
    outs = rig.recv(crlf(text), sock=TCP, conn=11)
    assert [o.status for o in outs] == [483]
    assert outs[0].send.conn == 11 and outs[0].send.socket is TCP


def test_response_routed_by_via_rport() -> None:
    rig = Rig()
    call = Call()
    data = call.invite().replace(b"5061;branch", b"5061;rport;branch")
    inv = one(rig.recv(data, src=("127.0.0.1", 40000)), method="INVITE")
    outs = rig.recv(call.reply(inv, 180, "Ringing"), src=CALLEE)
    assert one(outs, status=180).dest == ("127.0.0.1", 40000)
    vias = one(outs, status=180).msg.header_values("via")
    assert len(vias) == 1 and "rport=40000" in vias[0]


def test_engine_needs_a_socket() -> None:
    with pytest.raises(ValueError):
        Engine([], EngineConfig())
    eng = Engine([Socket("udp", "127.0.0.1", 5060)])
    assert eng.socket_for("udp") is eng.sockets[0]
    assert UDP.proto == "udp"


def test_empty_route_header_400() -> None:
    rig = Rig()
    call = Call()
    inv, ok = rig.call_up(call)
    data = call.in_dialog("INFO", ok).replace(b"Max-Forwards: 70", b"Route: \r\nMax-Forwards: 70")
    outs = rig.recv(data)
    assert [o.status for o in outs] == [400]
    ack = call.ack(ok).replace(b"Max-Forwards: 70", b"Route: \r\nMax-Forwards: 70")
    assert rig.recv(ack) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"To: Bob <sip:bob@example.com>;tag=ttag1\r\n", b""),
        (b"To: Bob <sip:bob@example.com>;tag=ttag1", b'To: "Bob <sip:bob@example.com>;tag=ttag1'),
        (b"Contact: <sip:bob@127.0.0.1:5080>", b"Contact: <sip:bob@127.0.0.1:5080"),
    ],
)
def test_malformed_response_dropped_without_side_effects(old: bytes, new: bytes) -> None:
    rig = Rig()
    call = Call()
    inv = one(rig.recv(call.invite()), method="INVITE")
    good = call.reply(inv, 200, "OK")
    assert old in good
    assert rig.recv(good.replace(old, new), src=CALLEE) == []
    assert rig.eng.stats.drop_replies == 1
    assert list(rig.eng.dialogs)[0].state == 1
    # The good 200 still goes through afterwards.
    assert one(rig.recv(good, src=CALLEE), status=200).dest == CALLER
    assert list(rig.eng.dialogs)[0].state == 3
