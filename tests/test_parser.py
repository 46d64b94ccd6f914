"""The SIP parser, the header grammar helpers and stream framing (no sockets)."""

from __future__ import annotations

import pytest
from test_engine_kit import CALLEE, CALLER, Call, Rig, crlf, one

from engine.address import parse_name_addr, parse_params, parse_uri, parse_via, split_values
from engine.framing import StreamFramer
from engine.message import COMPACT_FORMS, SipError, SipMessage, header_key, parse, validate_request

BASIC = crlf(
    "OPTIONS sip:bob@example.com SIP/2.0\n"
    "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1\n"
    "Max-Forwards: 70\n"
    "From: <sip:alice@example.com>;tag=a\n"
    "To: <sip:bob@example.com>\n"
    "Call-ID: c1@x\n"
    "CSeq: 1 OPTIONS\n"
    "Content-Length: 0\n\n"
)


def msg_with(
    headers: str, body: bytes = b"", start: str = "OPTIONS sip:bob@example.com SIP/2.0"
) -> bytes:
    return crlf(f"{start}\n{headers}\n") + body


# ----------------------------------------------------------------- start line


def test_request_line() -> None:
    m = parse(BASIC)
    assert m.method == "OPTIONS" and m.ruri == "sip:bob@example.com"
    assert m.status == 0


def test_status_line_and_reason_phrase() -> None:
    m = parse(crlf("SIP/2.0 180 Ringing Now\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\n\n"))
    assert m.method is None and m.status == 180 and m.reason == "Ringing Now"
    m = parse(crlf("SIP/2.0 100 \nVia: SIP/2.0/UDP h;branch=z9hG4bKx\n\n"))
    assert m.status == 100 and m.reason == ""


@pytest.mark.parametrize(
    ("start", "status"),
    [
        ("INVITE sip:a@b SIP/3.0", 505),
        ("INVITE sip:a@b SIP/7.0", 505),
        ("INVITE  sip:a@b SIP/2.0", 400),
        ("INVITE sip:a@b SIP/2.0 ", 400),
        ("INVITE sip:a@b", 400),
        ("INVITE <sip:a@b> SIP/2.0", 400),
        ("INVITE sip:a@b HTTP/1.1", 400),
        ("IN(VITE sip:a@b SIP/2.0", 400),
        ("SIP/2.0 4294967301 Huge", 0),
        ("SIP/2.0 99 Low", 0),
        ("SIP/3.0 200 OK", 0),
    ],
)
def test_bad_start_lines(start: str, status: int) -> None:
    with pytest.raises(SipError) as exc:
        parse(msg_with("Via: SIP/2.0/UDP h;branch=z9hG4bKx\nContent-Length: 0\n", start=start))
    assert exc.value.status == status


def test_missing_blank_line_is_an_error() -> None:
    with pytest.raises(SipError):
        parse(b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h")


# --------------------------------------------------------------------- headers


@pytest.mark.parametrize(("short", "long"), sorted(COMPACT_FORMS.items()))
def test_every_compact_form(short: str, long: str) -> None:
    assert header_key(short) == long
    assert header_key(short.upper()) == long
    value = "0" if long == "content-length" else f"value-{short}"
    m = parse(msg_with(f"{short}: {value}\n" + ("" if short == "l" else "Content-Length: 0\n")))
    assert m.get(long) == value


def test_all_rfc3261_and_extension_compact_letters_are_known() -> None:
    assert set("imelcfsktvorbuxyajd") <= set(COMPACT_FORMS)


def test_header_names_case_insensitive_and_compact_mix() -> None:
    data = crlf(
        "INVITE sip:bob@example.com SIP/2.0\n"
        "v: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-a\n"
        "VIA: SIP/2.0/TCP 10.0.0.2;branch=z9hG4bK-b\n"
        "max-FORWARDS: 0068\n"
        "f: <sip:a@example.com>;tag=1\n"
        "T: <sip:b@example.com>\n"
        "i: cid\n"
        "cSeQ: 0009 INVITE\n"
        "l: 0\n\n"
    )
    m = parse(data)
    assert [v.split(";")[0] for v in m.get_all("via")] == [
        "SIP/2.0/UDP 10.0.0.1",
        "SIP/2.0/TCP 10.0.0.2",
    ]
    assert m.callid == "cid"
    assert m.cseq == (9, "INVITE")
    assert m.get("max-forwards") == "0068"
    validate_request(m)


def test_line_folding() -> None:
    data = crlf(
        "OPTIONS sip:bob@example.com SIP/2.0\n"
        "Via: SIP/2.0/UDP 10.0.0.1;\n"
        "  branch=z9hG4bK-f\n"
        "Subject: a\n"
        "\t folded\n"
        "   subject\n"
        "Content-Length: 0\n\n"
    )
    m = parse(data)
    assert m.get("subject") == "a folded subject"
    assert m.via.branch == "z9hG4bK-f"
    # The raw line keeps its folding for verbatim forwarding.
    raw = next(h[1] for h in m.headers if h[0] == "subject")
    assert raw == "Subject: a\r\n\t folded\r\n   subject"
    assert b"Subject: a\r\n\t folded\r\n   subject\r\n" in m.to_bytes()


def test_continuation_before_any_header() -> None:
    with pytest.raises(SipError) as exc:
        parse(crlf("OPTIONS sip:a@b SIP/2.0\n folded\nContent-Length: 0\n\n"))
    assert exc.value.status == 400


def test_header_line_without_colon() -> None:
    with pytest.raises(SipError) as exc:
        parse(crlf("OPTIONS sip:a@b SIP/2.0\nFoobar roobar\nContent-Length: 0\n\n"))
    assert exc.value.status == 400


def test_unknown_headers_preserved_verbatim() -> None:
    odd = "UnknownHeaderWithUnusualValue: ;;,,;;,;"
    spaced = "X-Spaced   :   kept  as is"
    data = msg_with(f"Via: SIP/2.0/UDP h;branch=z9hG4bKx\n{odd}\n{spaced}\nContent-Length: 0\n")
    out = parse(data).to_bytes()
    assert odd.encode() in out and spaced.encode() in out
    assert out == data


def test_round_trip_is_byte_exact() -> None:
    data = Call().invite()
    assert parse(data).to_bytes() == data


def test_multi_value_splitting() -> None:
    assert split_values("a, b ,c") == ["a", "b", "c"]
    assert split_values('"Doe, John" <sip:j@x>, <sip:k@y;p=1,2>') == [
        '"Doe, John" <sip:j@x>',
        "<sip:k@y;p=1,2>",
    ]
    assert split_values('"quote \\" , inside" <sip:a@b>') == ['"quote \\" , inside" <sip:a@b>']
    assert split_values("single") == ["single"]
    assert split_values("") == []
    with pytest.raises(SipError):
        split_values('"unterminated, <sip:a@b>')


def test_get_all_splits_and_combines_lines() -> None:
    m = parse(
        msg_with(
            "Via: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2\n"
            "Via: SIP/2.0/UDP c;branch=z9hG4bK3\n"
            "Route: <sip:p1;lr>, <sip:p2;lr>\n"
            "Content-Length: 0\n"
        )
    )
    assert [parse_via(v).host for v in m.get_all("via")] == ["a", "b", "c"]
    assert m.via.host == "a"
    assert m.pop_first_value("route") == "<sip:p1;lr>"
    assert m.get_all("route") == ["<sip:p2;lr>"]
    assert m.pop_first_value("route") == "<sip:p2;lr>"
    assert m.get("route") is None


# ------------------------------------------------------------------ name-addr


@pytest.mark.parametrize(
    ("value", "display", "uri", "params"),
    [
        ("<sip:a@b>", "", "sip:a@b", {}),
        ("sip:a@b;tag=1", "", "sip:a@b", {"tag": "1"}),
        (
            '"Alice A." <sip:a@b;transport=tcp>;tag=x;foo',
            '"Alice A."',
            "sip:a@b;transport=tcp",
            {"tag": "x", "foo": None},
        ),
        ("Bob <sips:b@c:5061>", "Bob", "sips:b@c:5061", {}),
        (
            "caller<sip:caller@example.com>;tag=323",
            "caller",
            "sip:caller@example.com",
            {"tag": "323"},
        ),
        ('"esc \\" quote" <sip:a@b> ; tag = 7 ', '"esc \\" quote"', "sip:a@b", {"tag": "7"}),
        ("<tel:+1-555>", "", "tel:+1-555", {}),
        ("sip:user@example.com;unknownparam", "", "sip:user@example.com", {"unknownparam": None}),
    ],
)
def test_name_addr(value: str, display: str, uri: str, params: dict[str, str | None]) -> None:
    na = parse_name_addr(value)
    assert (na.display, na.uri, na.params) == (display, uri, params)


@pytest.mark.parametrize(
    "value",
    [
        "",
        '"unterminated <sip:a@b>',
        '"quoted" sip:a@b',
        "<sip:a@b",
        "< sip:a@b >",
        "Bell, Alexander <sip:a.g.bell@bell-tel.com>",
        "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
        "<nocolon>",
        "sip:a@b;tag=",
    ],
)
def test_bad_name_addr(value: str) -> None:
    with pytest.raises(SipError) as exc:
        parse_name_addr(value)
    assert exc.value.status == 400


def test_uri_parts() -> None:
    u = parse_uri("sip:user;par=u%40example.net@example.com:5070;transport=TCP;lr?Subject=x")
    assert u.scheme == "sip" and u.user == "user;par=u%40example.net"
    assert (u.host, u.port) == ("example.com", 5070)
    assert u.transport == "tcp" and "lr" in u.params
    assert u.headers == "Subject=x"
    v6 = parse_uri("sip:[2001:db8::10]:5060")
    assert (v6.host, v6.port) == ("2001:db8::10", 5060)
    assert parse_uri("tel:+1234").scheme == "tel"
    with pytest.raises(SipError):
        parse_uri("sip:a@b:99999")


def test_params_with_lws() -> None:
    assert parse_params(" ; a = 1 ;b; C=X") == {"a": "1", "b": None, "c": "X"}


# ------------------------------------------------------------------------ Via


def test_via_parts_and_lws() -> None:
    v = parse_via(
        "SIP / 2.0 / UDP first.example.com: 4000;ttl=16 ;maddr=224.2.0.1 ;branch=z9hG4bKa"
    )
    assert v.transport == "UDP" and v.host == "first.example.com" and v.port == 4000
    assert v.branch == "z9hG4bKa" and v.params["maddr"] == "224.2.0.1"
    v = parse_via("SIP/2.0/TCP [::1]:5061;rport;received=10.1.1.1")
    assert (v.host, v.port) == ("::1", 5061)
    assert v.params["rport"] is None and v.params["received"] == "10.1.1.1"
    assert parse_via("SIP/2.0/UNKNOWN h").transport == "UNKNOWN"


@pytest.mark.parametrize(
    "value",
    [
        "SIP/2.0/UDP",
        "SIP/2.0 UDP h",
        "SIP/3.0/UDP h",
        "SIP/2.0/UDP h;",
        "SIP/2.0/UDP h;;branch=x",
        "SIP/2.0/UDP h:0",
    ],
)
def test_bad_via(value: str) -> None:
    with pytest.raises(SipError):
        parse_via(value)


def test_received_and_rport_added_on_forward() -> None:
    """RFC 3261 §18.2.1 received (sent-by differs from the source), RFC 3581 rport."""
    rig = Rig()
    call = Call()
    data = call.invite().replace(
        b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-inv-1",
        b"Via: SIP/2.0/UDP client.example.com:5061;rport;branch=z9hG4bK-inv-1",
    )
    outs = rig.recv(data, src=("192.0.2.9", 6000))
    inv = one(outs, method="INVITE")
    vias = inv.msg.header_values("via")
    assert vias[0].startswith("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK")
    second = parse_via(vias[1])
    assert second.params["received"] == "192.0.2.9" and second.params["rport"] == "6000"
    # The 100 Trying went to the source address, and so does the final response.
    assert one(outs, status=100).dest == ("192.0.2.9", 6000)
    outs = rig.recv(call.reply(inv, 486, "Busy Here"), src=CALLEE)
    assert one(outs, status=486).dest == ("192.0.2.9", 6000)
    assert one(outs, status=486).msg.header("via") == vias[1]


def test_no_received_when_sent_by_matches_source() -> None:
    rig = Rig()
    inv = one(rig.recv(Call().invite()), method="INVITE")
    assert "received=" not in inv.msg.header_values("via")[1]


# ----------------------------------------------------------- datagram framing


def test_udp_remainder_after_content_length_is_ignored() -> None:
    body = b"hello"
    data = msg_with(f"Via: SIP/2.0/UDP h;branch=z9hG4bKx\nContent-Length: {len(body)}\n", body)
    m = parse(data + b"TRAILING GARBAGE\r\n\r\nINVITE sip:x SIP/2.0\r\n")
    assert m.body == body


def test_udp_missing_content_length_takes_rest_of_datagram() -> None:
    data = msg_with("Via: SIP/2.0/UDP h;branch=z9hG4bKx\n", b"v=0\r\n")
    m = parse(data)
    assert m.body == b"v=0\r\n" and not m.has_length
    assert m.to_bytes().endswith(b"Content-Length: 5\r\n\r\nv=0\r\n")


def test_stream_missing_content_length_means_empty_body() -> None:
    m = parse(msg_with("Via: SIP/2.0/UDP h;branch=z9hG4bKx\n"), stream=True)
    assert m.body == b""


@pytest.mark.parametrize(
    "cl",
    [
        "Content-Length: 999",
        "Content-Length: -999",
        "Content-Length: abc",
        "Content-Length: 5\nl: 6",
    ],
)
def test_bad_content_length(cl: str) -> None:
    with pytest.raises(SipError) as exc:
        parse(msg_with(f"Via: SIP/2.0/UDP h;branch=z9hG4bKx\n{cl}\n", b"hello"))
    assert exc.value.status == 400


def test_binary_body_framed_by_length_not_by_text() -> None:
    body = b"\x00\r\n\r\n\x00\xff\xfe--boundary\r\n"
    m = parse(msg_with(f"Via: SIP/2.0/UDP h;branch=z9hG4bKx\nContent-Length: {len(body)}\n", body))
    assert m.body == body and m.to_bytes().endswith(body)


def test_cseq_limits() -> None:
    with pytest.raises(SipError):
        parse(msg_with("CSeq: 4294967296 OPTIONS\nContent-Length: 0\n")).cseq  # noqa: B018
    assert parse(msg_with("CSeq: 4294967295 OPTIONS\nContent-Length: 0\n")).cseq[0] == 2**32 - 1


# -------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("mutate", "status", "words"),
    [
        (lambda s: s.replace("Call-ID: c1@x\r\n", ""), 400, "Call-ID"),
        (lambda s: s.replace("From: <sip:alice@example.com>;tag=a\r\n", ""), 400, "From"),
        (lambda s: s.replace("CSeq: 1 OPTIONS", "CSeq: 1 INVITE"), 400, "CSeq"),
        (
            lambda s: s.replace("Call-ID: c1@x\r\n", "Call-ID: c1@x\r\nCall-ID: c2@x\r\n"),
            400,
            "Call-ID",
        ),
        (lambda s: s.replace("To: <sip:bob@example.com>", "To: <sip:b@x>, <sip:c@x>"), 400, "To"),
        (lambda s: s.replace("Max-Forwards: 70", "Max-Forwards: abc"), 400, "Max-Forwards"),
        (lambda s: s.replace("branch=z9hG4bK-1", "branch=z9hG4bK"), 400, "branch"),
        (
            lambda s: s.replace("sip:bob@example.com SIP", "sip:bob@example.com?X=1 SIP"),
            400,
            "Request-URI",
        ),
        (lambda s: s.replace("OPTIONS sip", "NEWMETHOD sip"), 501, "Not Implemented"),
    ],
)
def test_validate_request(mutate, status: int, words: str) -> None:  # type: ignore[no-untyped-def]
    m = parse(mutate(BASIC.decode()).encode())
    with pytest.raises(SipError) as exc:
        validate_request(m)
    assert exc.value.status == status
    assert words.lower() in exc.value.reason.lower()


def test_build_request_adds_content_length() -> None:
    m = SipMessage.request("OPTIONS", "sip:a@b", [("Via", "SIP/2.0/UDP h;branch=z9hG4bKx")], b"xy")
    assert m.to_bytes().endswith(b"Content-Length: 2\r\n\r\nxy")


# -------------------------------------------------------------- stream framing


def _two_messages() -> tuple[bytes, bytes]:
    a = Call(1).invite()
    b = BASIC
    return a, b


def test_framer_several_messages_in_one_read() -> None:
    a, b = _two_messages()
    f = StreamFramer()
    assert f.feed(a + b + a) == [a, b, a]
    assert f.pending == 0


def test_framer_partial_messages_across_reads() -> None:
    a, b = _two_messages()
    stream = a + b
    for chunk in (1, 3, 7, 50, 333):
        f = StreamFramer()
        got: list[bytes] = []
        for i in range(0, len(stream), chunk):
            got += f.feed(stream[i : i + chunk])
        assert got == [a, b], chunk
        assert f.pending == 0


def test_framer_split_inside_header_terminator_and_body() -> None:
    a, _ = _two_messages()
    cut = a.find(b"\r\n\r\n") + 2
    f = StreamFramer()
    assert f.feed(a[:cut]) == []
    assert f.feed(a[cut : cut + 3]) == []
    assert f.feed(a[cut + 3 :]) == [a]


def test_framer_keepalive_crlf_between_messages() -> None:
    a, b = _two_messages()
    f = StreamFramer()
    assert f.feed(b"\r\n\r\n" + a + b"\r\n" + b) == [a, b]


def test_framer_compact_content_length() -> None:
    body = b"abc"
    m = crlf("MESSAGE sip:a@b SIP/2.0\nv: SIP/2.0/TCP h;branch=z9hG4bKx\nl: 3\n\n") + body
    f = StreamFramer()
    assert f.feed(m + m[:10]) == [m]
    assert f.pending == 10


def test_framer_missing_content_length_is_zero() -> None:
    m = crlf("OPTIONS sip:a@b SIP/2.0\nVia: SIP/2.0/TCP h;branch=z9hG4bKx\n\n")
    assert StreamFramer().feed(m + m) == [m, m]


@pytest.mark.parametrize("cl", ["Content-Length: -1", "Content-Length: x", "l: 1\nl: 2"])
def test_framer_bad_length_is_fatal(cl: str) -> None:
    with pytest.raises(SipError) as exc:
        StreamFramer().feed(crlf(f"OPTIONS sip:a@b SIP/2.0\n{cl}\n\n"))
    assert exc.value.status == 400


def test_framer_size_limit() -> None:
    f = StreamFramer(max_size=200)
    with pytest.raises(SipError) as exc:
        f.feed(crlf("MESSAGE sip:a@b SIP/2.0\nContent-Length: 500\n\n"))
    assert exc.value.status == 513
    f = StreamFramer(max_size=200)
    with pytest.raises(SipError) as exc:
        f.feed(b"X" * 300)  # no header end in sight
    assert exc.value.status == 513


def test_tcp_messages_through_engine_with_conn() -> None:
    """Framed stream messages go through the engine; responses reuse the connection id."""
    from test_engine_kit import TCP

    rig = Rig()
    call = Call(transport="TCP")
    f = StreamFramer()
    data = call.invite()
    outs = []
    for msg in f.feed(data[:100]) + f.feed(data[100:]):
        outs += rig.recv(msg, sock=TCP, conn=42)
    trying = one(outs, status=100)
    assert trying.send.conn == 42 and trying.send.socket is TCP
    inv = one(outs, method="INVITE")
    assert inv.send.socket is TCP and inv.dest == CALLEE
    rr = inv.msg.header("record-route") or ""
    assert "transport=tcp" in rr and ";lr" in rr
    outs = rig.recv(call.reply(inv, 200, "OK"), src=CALLEE, sock=TCP, conn=7)
    ok = one(outs, status=200)
    assert ok.send.conn == 42 and ok.dest == CALLER


@pytest.mark.parametrize(
    "header",
    ["Max-Forwards: \u00b2", "Max-Forwards: \u0663", 'Proxy-Require: " foo, bar'],
    ids=["superscript-digit", "arabic-indic-digit", "unterminated-quote"],
)
def test_malformed_max_forwards_and_proxy_require_get_400(header: str) -> None:
    rig = Rig()
    call = Call()
    invite = call.invite().replace(b"Max-Forwards: 70\r\n", (header + "\r\n").encode())
    outs = rig.recv(invite)
    assert [o.status for o in outs] == [400]
    assert not rig.eng.server_txns
