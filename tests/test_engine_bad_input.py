"""Malformed numbers and oversized requests get the RFC's answer from the engine, never an
exception: every number a header carries is ASCII digits within a bound (docs/operations.md,
"Limits on input"), and a request too large to receive or to forward over UDP gets a 513."""

from __future__ import annotations

import re

import pytest
from test_engine_kit import CALLEE, CALLER, TCP, Call, Out, Rig, one, pick

from engine.proxy import MAX_DATAGRAM

#: Digits that str.isdigit() accepts and int() either refuses ("²") or reads ("١", "２").
ODD_DIGITS = ["²", "١٢", "２", "߁", "𝟙"]


def invite_text(n: int = 1) -> str:
    return Call(n).invite().decode()


def with_header(text: str, name: str, value: str) -> bytes:
    """``text`` with the value of header ``name`` replaced."""
    out, count = re.subn(rf"(?m)^{name}: [^\r\n]*", f"{name}: {value}", text, count=1)
    assert count == 1, name
    return out.encode("utf-8")


def only_answer(rig: Rig, data: bytes, src: tuple[str, int] = CALLER) -> tuple[int, str]:
    """Feed ``data``; the one final reply to the sender (status, reason), nothing forwarded."""
    outs = rig.recv(data, src=src)
    assert not [o for o in outs if o.method is not None], outs
    replies = [o for o in outs if o.dest == src and o.status != 100]
    assert len(replies) == 1, outs
    status = replies[0].status
    assert status is not None
    return status, replies[0].msg.start_line.split(" ", 2)[2]


@pytest.mark.parametrize("digits", ODD_DIGITS)
@pytest.mark.parametrize("header", ["Max-Forwards", "CSeq", "Content-Length"])
def test_non_ascii_digits_get_400(header: str, digits: str) -> None:
    value = f"{digits} INVITE" if header == "CSeq" else digits
    status, reason = only_answer(Rig(), with_header(invite_text(), header, value))
    assert (status, reason) == (400, f"Malformed {header}")


@pytest.mark.parametrize("header", ["Max-Forwards", "CSeq", "Content-Length"])
def test_huge_numbers_get_400_without_converting_them(header: str) -> None:
    nines = "9" * 5000  # int() would refuse past 4300 digits; we never get that far
    value = f"{nines} INVITE" if header == "CSeq" else nines
    assert only_answer(Rig(), with_header(invite_text(), header, value)) == (
        400,
        f"{header} too large",
    )


def test_bounds_of_each_number() -> None:
    text = invite_text()
    assert only_answer(Rig(), with_header(text, "CSeq", "4294967296 INVITE"))[0] == 400
    assert only_answer(Rig(), with_header(text, "Max-Forwards", "65536"))[0] == 400
    # Leading zeros are digits like any other, and within the bounds the request goes on.
    outs = Rig().recv(with_header(text, "CSeq", "0000000000000004294967295 INVITE"))
    assert one(outs, method="INVITE").msg.header("cseq") == "0000000000000004294967295 INVITE"
    outs = Rig().recv(with_header(text, "Max-Forwards", "300"))
    assert one(outs, method="INVITE").msg.header("max-forwards") == "255"


def test_two_max_forwards_get_400() -> None:
    text = invite_text().replace("Max-Forwards: 70", "Max-Forwards: 70\r\nMax-Forwards: 0")
    assert only_answer(Rig(), text.encode()) == (400, "Multiple Max-Forwards headers")


def test_zero_max_forwards_gets_483() -> None:
    assert only_answer(Rig(), with_header(invite_text(), "Max-Forwards", "0"))[0] == 483


@pytest.mark.parametrize("port", [*ODD_DIGITS, "0", "65536", "9" * 50])
def test_via_port_must_be_ascii_and_in_range(port: str) -> None:
    text = invite_text().replace("127.0.0.1:5061;branch", f"127.0.0.1:{port};branch", 1)
    status, _ = only_answer(Rig(), text.encode())
    assert status == 400


@pytest.mark.parametrize("uri", ["sip:bob@example.com:²", "sip:bob@bücher.example", "sip:b@[::1"])
def test_request_uri_numbers_and_hosts_routed_by_uri_get_400(uri: str) -> None:
    text = invite_text().replace("INVITE sip:bob@example.com", f"INVITE {uri}", 1)
    assert only_answer(Rig(next_hop=False), text.encode("utf-8"))[0] == 400


def test_response_status_in_other_digits_is_dropped() -> None:
    rig = Rig()
    call = Call(1)
    inv = one(rig.recv(call.invite()), method="INVITE")
    fake = call.reply(inv, 200, "OK").replace(b"SIP/2.0 200", "SIP/2.0 ２００".encode())
    assert rig.recv(fake, src=CALLEE) == []
    assert rig.eng.stats.parse_errors == 1
    assert len(pick(rig.recv(call.reply(inv, 200, "OK"), src=CALLEE), status=200)) == 1


def test_stateless_2xx_with_odd_rport_or_received_is_dropped() -> None:
    """A 2xx retransmission after the transaction is gone is routed by its second Via: a
    non-ASCII ``received`` or an ``rport`` in other digits is dropped, not sent."""
    rig = Rig()
    call = Call(1)
    inv, ok = rig.call_up(call)
    rig.advance(40)  # the INVITE transaction is over
    ours = inv.msg.header_values("via")[0]
    for bad in (";rport=²", ";rport=0", ";received=b\u00fccher"):
        data = call.reply(inv, 200, "OK").decode()
        caller_via = inv.msg.header_values("via")[1]
        data = data.replace(caller_via, caller_via + bad, 1)
        assert ours in data
        assert rig.recv(data.encode(), src=CALLEE) == []
    good = rig.recv(call.reply(inv, 200, "OK"), src=CALLEE)
    assert [o.dest for o in good] == [CALLER]


def test_request_over_max_message_size_gets_513_before_parsing() -> None:
    rig = Rig(max_message_size=2048)
    text = invite_text().replace("Max-Forwards: 70", "Max-Forwards: 70\r\nX-Pad: " + "a" * 3000)
    assert only_answer(rig, text.encode()) == (513, "Message Too Large")
    assert not rig.eng.dialogs


def padded_invite(size: int, n: int = 1) -> bytes:
    text = invite_text(n)
    pad = size - len(text.encode()) - len("X-Pad: \r\n")
    return text.replace("Max-Forwards: 70", "Max-Forwards: 70\r\nX-Pad: " + "a" * pad).encode()


def test_request_that_outgrows_udp_once_forwarded_gets_513() -> None:
    """65,480 bytes arrive in one datagram; with our Via and Record-Route they would not fit
    in one (today's sendto() would fail with EMSGSIZE and nobody would know): 513, and the
    dialog it created is gone."""
    data = padded_invite(65480)
    assert len(data) <= MAX_DATAGRAM[4]
    rig = Rig()
    outs = rig.recv(data)
    assert [o.status for o in outs] == [100, 513]
    assert not [o for o in outs if o.method]
    assert len(rig.eng.dialogs) == 0 and rig.eng.stats.failed_dialogs == 1
    rig.advance(40)
    assert not rig.eng.server_txns and not rig.eng.client_txns


def test_big_request_over_tcp_to_a_tcp_next_hop_goes_on() -> None:
    """The same size is fine when it leaves over TCP (the next hop keeps the transport)."""
    rig = Rig()
    outs = rig.recv(padded_invite(65480), sock=TCP, conn=3)
    fwd = one(outs, method="INVITE")
    assert fwd.send.socket is TCP and len(fwd.send.data) > MAX_DATAGRAM[4]


def byes_of_ended_call(rig: Rig) -> list[Out]:
    """The BYEs ``dlg_end_dlg`` sends for a confirmed call."""
    rig.call_up(Call(9))
    rig.end_dialog(next(d for d in rig.eng.dialogs if d.callid == Call(9).callid))
    return pick(rig.take(), method="BYE")


def test_server_and_user_agent_headers_default_without_version() -> None:
    rig = Rig()
    assert one(rig.recv(Call(1).invite()), status=100).msg.header("server") == "sipdlg"
    byes = byes_of_ended_call(rig)
    assert len(byes) == 2 and all(b.msg.header("user-agent") == "sipdlg" for b in byes)


def test_server_and_user_agent_headers_set_or_off() -> None:
    rig = Rig(server_header="Edge (example)", user_agent_header="")
    assert one(rig.recv(Call(1).invite()), status=100).msg.header("server") == "Edge (example)"
    assert [b.msg.header("user-agent") for b in byes_of_ended_call(rig)] == [None, None]
    rig = Rig(server_header="", user_agent_header="Edge UA")
    assert one(rig.recv(Call(1).invite()), status=100).msg.header("server") is None
    assert [b.msg.header("user-agent") for b in byes_of_ended_call(rig)] == ["Edge UA"] * 2
