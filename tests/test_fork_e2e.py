"""Forking through the real ``sipdlg serve``, on loopback UDP: a Python caller, and behind the
next hop a Python "forking proxy" that answers one INVITE from two forks (two 200s with
different To-tags and Contacts, each fork on its own socket).

SIPp cannot fork, hence the Python peers (tests/helpers/udp_peer.py).  What is checked is
what a user sees: both 200s reach the caller; its ACKs and the BYE for the second fork reach
that fork; the call stays up and is listed once; ``dlg_end_dlg`` BYEs both sides of the
first leg and nobody else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from helpers import SipdlgProcess, SipMessage
from helpers.udp_peer import UdpPeer, is_reply, is_request
from lifecycle_kit import mi

Server = Callable[..., SipdlgProcess]
CALLID = "fork-e2e-1@127.0.0.1"
SDP = "v=0\no=- 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 4000 RTP/AVP 0\n"


@dataclass
class Parties:
    server: SipdlgProcess
    caller: UdpPeer
    fork_a: UdpPeer  # the next hop: the forking proxy, and the fork that answers first
    fork_b: UdpPeer  # the second fork's own contact

    @property
    def proxy(self) -> tuple[str, int]:
        return (self.server.host, self.server.port)


@pytest.fixture
def parties(sipdlg_server: Server) -> Iterator[Parties]:
    caller, fork_a, fork_b = UdpPeer(), UdpPeer(), UdpPeer()
    server = sipdlg_server(uas_port=fork_a.port)
    yield Parties(server, caller, fork_a, fork_b)
    for peer in (caller, fork_a, fork_b):
        peer.close()


def invite(p: Parties) -> str:
    return (
        f"INVITE sip:bob@example.com SIP/2.0\n"
        f"Via: SIP/2.0/UDP {p.caller.hostport};branch=z9hG4bK-fork-inv;rport\n"
        f"Max-Forwards: 70\n"
        f"From: <sip:alice@example.com>;tag=caller-1\n"
        f"To: <sip:bob@example.com>\n"
        f"Call-ID: {CALLID}\n"
        f"CSeq: 1 INVITE\n"
        f"Contact: <sip:alice@{p.caller.hostport}>\n"
        f"Content-Type: application/sdp\n"
        f"Content-Length: {len(SDP.replace(chr(10), chr(13) + chr(10)))}\n\n{SDP}"
    )


def reply(req: SipMessage, status: str, tag: str, contact: str | None = None) -> str:
    """A UAS response to a request: Via, Record-Route, From, Call-ID, CSeq copied."""
    lines = [f"SIP/2.0 {status}"]
    lines += [f"Via: {v}" for v in req.header_values("via")]
    lines += [f"Record-Route: {v}" for v in req.header_values("record-route")]
    to = req.header("to") or ""
    if ";tag=" not in to:
        to += f";tag={tag}"
    lines += [f"From: {req.header('from')}", f"To: {to}", f"Call-ID: {req.call_id}"]
    lines.append(f"CSeq: {req.header('cseq')}")
    if contact:
        lines.append(f"Contact: <{contact}>")
    lines.append("Content-Length: 0")
    return "\n".join(lines) + "\n\n"


def in_dialog(p: Parties, method: str, ok: SipMessage, cseq: int) -> str:
    """The caller's request inside the dialog a 2xx made (RFC 3261 §12.2.1.1): to its Contact,
    through its Record-Route reversed."""
    routes = [r.strip() for line in ok.header_values("record-route") for r in line.split(",")]
    route_lines = "".join(f"Route: {r}\n" for r in reversed(routes))
    target = (ok.header("contact") or "").strip("<>")
    return (
        f"{method} {target} SIP/2.0\n"
        f"Via: SIP/2.0/UDP {p.caller.hostport};branch=z9hG4bK-fork-{method}-{cseq}-"
        f"{to_tag(ok)};rport\n"
        f"{route_lines}"
        f"Max-Forwards: 70\n"
        f"From: <sip:alice@example.com>;tag=caller-1\n"
        f"To: {ok.header('to')}\n"
        f"Call-ID: {CALLID}\n"
        f"CSeq: {1 if method == 'ACK' else cseq} {method}\n"
        f"Content-Length: 0\n\n"
    )


def to_tag(msg: SipMessage) -> str:
    return (msg.header("to") or "").rpartition("tag=")[2]


def answered_by_two_forks(p: Parties) -> tuple[SipMessage, SipMessage]:
    """INVITE → the forking proxy answers 180 and 200 from fork A, then 200 from fork B;
    the caller ACKs both.  Returns the two 200s as the caller got them."""
    p.caller.send(invite(p), p.proxy)
    inv = p.fork_a.expect(is_request("INVITE"), "forwarded INVITE")
    contact_a = f"sip:bob@{p.fork_a.hostport}"
    contact_b = f"sip:carol@{p.fork_b.hostport}"
    p.fork_a.send(reply(inv, "180 Ringing", "fork-a"), p.proxy)
    p.fork_a.send(reply(inv, "200 OK", "fork-a", contact_a), p.proxy)
    p.fork_a.send(reply(inv, "200 OK", "fork-b", contact_b), p.proxy)
    ok_a = p.caller.expect(lambda m: m.status == 200 and to_tag(m) == "fork-a", "200 from A")
    ok_b = p.caller.expect(lambda m: m.status == 200 and to_tag(m) == "fork-b", "200 from B")
    p.caller.send(in_dialog(p, "ACK", ok_a, 1), p.proxy)
    p.caller.send(in_dialog(p, "ACK", ok_b, 1), p.proxy)
    ack_a = p.fork_a.expect(is_request("ACK"), "ACK for fork A")
    ack_b = p.fork_b.expect(is_request("ACK"), "ACK for fork B")
    assert (to_tag(ack_a), to_tag(ack_b)) == ("fork-a", "fork-b")
    return ok_a, ok_b


def listed(p: Parties) -> list[dict[str, object]]:
    return [d for d in mi(p.server, "dlg_list")["Dialogs"] if d["callid"] == CALLID]


def test_the_extra_fork_is_acked_and_hung_up_while_the_call_stays_up(parties: Parties) -> None:
    p = parties
    ok_a, ok_b = answered_by_two_forks(p)
    assert (ok_b.header("contact") or "").strip("<>") == f"sip:carol@{p.fork_b.hostport}"

    p.caller.send(in_dialog(p, "BYE", ok_b, 2), p.proxy)
    bye_b = p.fork_b.expect(is_request("BYE"), "BYE for fork B")
    assert to_tag(bye_b) == "fork-b"
    p.fork_b.send(reply(bye_b, "200 OK", "fork-b"), p.proxy)
    p.caller.expect(is_reply(200, "BYE"), "200 to the BYE for fork B")

    (dialog,) = listed(p)
    assert dialog["state"] == 4
    callees = {c["callee_tag"]: c for c in dialog["CALLEES"]}  # type: ignore[attr-defined]
    assert set(callees) == {"fork-a", "fork-b"}
    assert callees["fork-b"]["callee_contact"] == f"sip:carol@{p.fork_b.hostport}"
    stats = mi(p.server, "get_statistics", {"statistics": ["active_dialogs"]})
    assert stats == {"dialog:active_dialogs": 1}

    assert mi(p.server, "dlg_end_dlg", {"dialog_id": dialog["ID"]}) == "OK"
    bye_to_caller = p.caller.expect(is_request("BYE"), "BYE from the MI to the caller")
    bye_to_a = p.fork_a.expect(is_request("BYE"), "BYE from the MI to fork A")
    assert "tag=fork-a" in (bye_to_caller.header("from") or "")
    assert to_tag(bye_to_a) == "fork-a"
    p.caller.send(reply(bye_to_caller, "200 OK", "caller-1"), p.proxy)
    p.fork_a.send(reply(bye_to_a, "200 OK", "fork-a"), p.proxy)
    assert p.fork_b.quiet_for(0.3, is_request("BYE")) == []  # its leg was the caller's to end
    assert listed(p) == []
    ended = mi(p.server, "dlg_list_ended", {"callid": CALLID})["Dialogs"]
    assert [e["end_reason"] for e in ended] == ["MI Termination"]


def test_the_callers_bye_for_the_first_fork_ends_the_call(parties: Parties) -> None:
    p = parties
    ok_a, ok_b = answered_by_two_forks(p)
    p.caller.send(in_dialog(p, "BYE", ok_b, 2), p.proxy)
    p.fork_b.expect(is_request("BYE"), "BYE for fork B")
    assert [d["state"] for d in listed(p)] == [4]
    p.caller.send(in_dialog(p, "BYE", ok_a, 3), p.proxy)
    bye_a = p.fork_a.expect(is_request("BYE"), "BYE for fork A")
    p.fork_a.send(reply(bye_a, "200 OK", "fork-a"), p.proxy)
    p.caller.expect(is_reply(200, "BYE"), "200 to the BYE for fork A")
    assert listed(p) == []
    ended = mi(p.server, "dlg_list_ended", {"callid": CALLID})["Dialogs"]
    assert [e["end_reason"] for e in ended] == ["Downstream BYE"]
