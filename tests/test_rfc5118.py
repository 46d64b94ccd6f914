"""RFC 5118's IPv6 torture messages, as the RFC gives them, sent to a real server inside a
network namespace (their addresses are documentation prefixes: nothing may leave ``lo``).

What a proxy must do with each, per the RFC: parse IPv6 references wherever they appear (Via
with ``received`` bracketed or not, Contact, Request-URI, mixed IPv4/IPv6 Via lists, mapped
IPv4 addresses) and go on with the request; refuse an IPv6 Request-URI without brackets (400).
For the three-colon reference of §4.10 the RFC allows either robustness or a refusal.  The
in-dialog requests (a To-tag) match no dialog here: they are parsed and answered 404, as
OpenSIPS answers a stray in-dialog request, which shows they were read whole."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from helpers import LOOPBACK, SipdlgProcess, free_port
from test_rfc4475 import FORWARD, Bench, Peer, answer, run_cases

REGISTER = """REGISTER {ruri} SIP/2.0
To: sip:user@example.com
From: sip:user@example.com;tag=81x2
Via: SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111
Call-ID: SSG9559905523997077@hlau_4100
Max-Forwards: 70
Contact: "Caller" <sip:caller@[2001:db8::1]>
CSeq: 98176 REGISTER
Content-Length: 0

"""

SDP_46 = """v=0
o=assistant 971731711378798081 0 IN IP6 2001:db8::20
s=Live video feed for today's meeting
c=IN IP6 2001:db8::20
t=3338481189 3370017201
m=audio 6000 RTP/AVP 2
a=rtpmap:2 G726-32/8000
m=video 6024 RTP/AVP 107
a=rtpmap:107 H263-1998/90000
"""

SDP_48 = """v=0
o=bob 280744730 28977631 IN IP4 host.example.com
s=
t=0 0
m=audio 22334 RTP/AVP 0
c=IN IP4 192.0.2.1
m=video 6024 RTP/AVP 107
c=IN IP6 2001:db8::1
a=rtpmap:107 H263-1998/90000
"""

SDP_49 = """v=0
o=assistant 971731711378798081 0 IN IP6 ::ffff:192.0.2.2
s=Call me soon, please!
c=IN IP6 ::ffff:192.0.2.2
t=3338481189 3370017201
m=audio 6000 RTP/AVP 2
a=rtpmap:2 G726-32/8000
m=video 6024 RTP/AVP 107
a=rtpmap:107 H263-1998/90000
"""


def with_body(head: str, body: str) -> str:
    body = body.replace("\n", "\r\n")
    return head.replace("{len}", str(len(body.encode()))) + body


MESSAGES: dict[str, tuple[str, tuple[tuple, ...]]] = {
    # 4.1 Valid SIP message with an IPv6 reference
    "ipv6-good": (REGISTER.format(ruri="sip:[2001:db8::10]"), (FORWARD,)),
    # 4.2 Invalid: an IPv6 Request-URI without "[" and "]"
    "ipv6-bad": (REGISTER.format(ruri="sip:2001:db8::10"), (answer(400),)),
    # 4.3 Port ambiguous: [2001:db8::10:5070] is an address, no port
    "port-ambiguous": (REGISTER.format(ruri="sip:[2001:db8::10:5070]"), (FORWARD,)),
    # 4.4 Port unambiguous
    "port-unambiguous": (REGISTER.format(ruri="sip:[2001:db8::10]:5070"), (FORWARD,)),
    # 4.5 IPv6 reference delimiters in Via: received with and without brackets
    "via-received-param-with-delim": (
        """BYE sip:[2001:db8::10] SIP/2.0
To: sip:user@example.com;tag=bd76ya
From: sip:user@example.com;tag=81x2
Via: SIP/2.0/UDP [2001:db8::9:1];received=[2001:db8::9:255];branch=z9hG4bKas3-111
Call-ID: SSG9559905523997077@hlau_4100
Max-Forwards: 70
CSeq: 321 BYE
Content-Length: 0

""",
        (answer(404),),
    ),
    "via-received-param-no-delim": (
        """OPTIONS sip:[2001:db8::10] SIP/2.0
To: sip:user@example.com
From: sip:user@example.com;tag=81x2
Via: SIP/2.0/UDP [2001:db8::9:1];received=2001:db8::9:255;branch=z9hG4bKas3
Call-ID: SSG95523997077@hlau_4100
Max-Forwards: 70
Contact: "Caller" <sip:caller@[2001:db8::9:1]>
CSeq: 921 OPTIONS
Content-Length: 0

""",
        (FORWARD,),
    ),
    # 4.6 IPv6 addresses in the SDP body
    "ipv6-in-sdp": (
        with_body(
            """INVITE sip:user@[2001:db8::10] SIP/2.0
To: sip:user@[2001:db8::10]
From: sip:user@example.com;tag=81x2
Via: SIP/2.0/UDP [2001:db8::20];branch=z9hG4bKas3-111
Call-ID: SSG9559905523997077@hlau_4100
Contact: "Caller" <sip:caller@[2001:db8::20]>
CSeq: 8612 INVITE
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: {len}

""",
            SDP_46,
        ),
        (FORWARD,),
    ),
    # 4.7 IPv4 and IPv6 in one Via list
    "mult-ip-in-header": (
        """BYE sip:user@host.example.net SIP/2.0
Via: SIP/2.0/UDP [2001:db8::9:1]:6050;branch=z9hG4bKas3-111
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKjhja8781hjuaij65144
Via: SIP/2.0/TCP [2001:db8::9:255];branch=z9hG4bK451jj;received=192.0.2.200
Call-ID: 997077@lau_4100
Max-Forwards: 70
CSeq: 89187 BYE
To: sip:user@example.net;tag=9817--94
From: sip:user@example.com;tag=81x2
Content-Length: 0

""",
        (answer(404),),
    ),
    # 4.8 IPv4 and IPv6 media in one SDP
    "mult-ip-in-sdp": (
        with_body(
            """INVITE sip:user@[2001:db8::10] SIP/2.0
To: sip:user@[2001:db8::10]
From: sip:user@example.com;tag=81x2
Via: SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111
Call-ID: SSG9559905523997077@hlau_4100
Contact: "Caller" <sip:caller@[2001:db8::9:1]>
Max-Forwards: 70
CSeq: 8912 INVITE
Content-Type: application/sdp
Content-Length: {len}

""",
            SDP_48,
        ),
        (FORWARD,),
    ),
    # 4.9 IPv4-mapped IPv6 addresses
    "ipv4-mapped-ipv6": (
        with_body(
            """INVITE sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:user@east.example.com;tag=81x2
Via: SIP/2.0/UDP [::ffff:192.0.2.10]:19823;branch=z9hG4bKbh19
Via: SIP/2.0/UDP [::ffff:192.0.2.2];branch=z9hG4bKas3-111
Call-ID: SSG9559905523997077@hlau_4100
Contact: "T. desk phone" <sip:ted@[::ffff:192.0.2.2]>
CSeq: 612 INVITE
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: {len}

""",
            SDP_49,
        ),
        (FORWARD,),
    ),
    # 4.10 The IPv6 reference bug of RFC 3261's ABNF: three colons, then the correct form
    "ipv6-bug-abnf-3-colons": (
        """OPTIONS sip:user@[2001:db8:::192.0.2.1] SIP/2.0
To: sip:user@[2001:db8:::192.0.2.1]
From: sip:user@example.com;tag=810x2
Via: SIP/2.0/UDP lab1.east.example.com;branch=z9hG4bKas3-111
Call-ID: G9559905523997077@hlau_4100
CSeq: 689 OPTIONS
Max-Forwards: 70
Content-Length: 0

""",
        (FORWARD, answer(400)),
    ),
    "ipv6-correct-abnf-2-colons": (
        """OPTIONS sip:user@[2001:db8::192.0.2.1] SIP/2.0
To: sip:user@[2001:db8::192.0.2.1]
From: sip:user@example.com;tag=810x2
Via: SIP/2.0/UDP lab1.east.example.com;branch=z9hG4bKas3-111
Call-ID: G9559905523997077@hlau_4100
CSeq: 689 OPTIONS
Max-Forwards: 70
Content-Length: 0

""",
        (FORWARD,),
    ),
}


def wire(text: str) -> bytes:
    head, _, body = text.partition("\n\n")
    return (head.replace("\n", "\r\n") + "\r\n\r\n" + body).encode()


@pytest.mark.netns
def test_rfc5118_ipv6_torture(sipdlg_server: Callable[..., SipdlgProcess]) -> None:
    hop_port = free_port("udp")
    hop = Peer(hop_port)
    client = Peer(free_port("udp"))
    try:
        server = sipdlg_server(next_hop=f"{LOOPBACK}:{hop_port}", db="none")
        cases = [(name, wire(text), outcomes) for name, (text, outcomes) in MESSAGES.items()]
        bench = Bench(server, client, hop, [data for _, data, _ in cases])
        failures, servers, seen = run_cases(bench, sipdlg_server, hop_port, cases)
        assert not failures, "\n".join(failures)
        # What went on kept its IPv6 references intact, with our Via (received/rport added
        # to theirs) on top.
        (fwd,) = [m for m in seen["ipv4-mapped-ipv6"].at_hop if m.method == "INVITE"]
        vias = fwd.header_values("via")
        assert vias[1].startswith("SIP/2.0/UDP [::ffff:192.0.2.10]:19823;branch=z9hG4bKbh19")
        assert "received=127.0.0.1" in vias[1]
        assert fwd.header("contact") == '"T. desk phone" <sip:ted@[::ffff:192.0.2.2]>'
        for srv in servers:
            assert "Traceback" not in srv.log_text(), srv.log_tail()
    finally:
        hop.close()
        client.close()
