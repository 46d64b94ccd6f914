"""A sans-I/O rig for the engine tests: an ``Engine`` with a fake clock, message builders
and a decoder for what it sends.  No sockets anywhere.

Imported by the ``test_engine_*``/``test_parser``/``test_transaction``/``test_dialog`` modules
(``from test_engine_kit import ...``); it holds a couple of self-checks of its own.

Topology used throughout::

    caller 127.0.0.1:5061  --udp-->  proxy 127.0.0.1:5060  --udp-->  next hop 127.0.0.1:5080
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from helpers.sipmsg import SipMessage as Wire

from engine.dialog import Dialog, Socket
from engine.dispatcher import Destination
from engine.dlg_records import RecordRing, make_record
from engine.events import (
    DestinationChanged,
    DialogChanged,
    DialogStateChanged,
    Event,
    Resolve,
    Send,
    SourceBlocked,
    SourceReleased,
    StateChanged,
)
from engine.locator import DEFAULT_PORT, Query, Target
from engine.proxy import Engine, EngineConfig

PROXY_IP = "127.0.0.1"
PROXY_PORT = 5060
UDP = Socket("udp", PROXY_IP, PROXY_PORT)
TCP = Socket("tcp", PROXY_IP, PROXY_PORT)
CALLER = ("127.0.0.1", 5061)
CALLEE = ("127.0.0.1", 5080)
SDP = (
    "v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
)


@dataclass
class Out:
    """One ``Send`` from the engine, decoded with the tests' own (independent) parser."""

    send: Send
    msg: Wire

    @property
    def dest(self) -> tuple[str, int]:
        return (self.send.host, self.send.port)

    @property
    def status(self) -> int | None:
        return self.msg.status

    @property
    def method(self) -> str | None:
        return self.msg.method

    def __repr__(self) -> str:
        return f"<Out {self.msg.start_line!r} -> {self.send.host}:{self.send.port}>"


class Rig:
    """An engine, a clock, and helpers to feed it and read what it sends."""

    def __init__(self, *, next_hop: bool = True, start: float = 1000.0, **config: object) -> None:
        config.setdefault("next_hops", [Destination(None, *CALLEE)] if next_hop else [])
        cfg = EngineConfig(**config)  # type: ignore[arg-type]
        self.eng = Engine([UDP, TCP], cfg, wall_offset=1_700_000_000.0, rng=random.Random(7))
        self.now = start
        #: What the engine reported, drained after every call as the shell does.
        self.events: list[DialogStateChanged] = []
        self.changes: list[DialogChanged] = []
        #: What the rate limit reported (engine.pike).
        self.sources: list[SourceBlocked | SourceReleased] = []
        #: Fed a record of every dialog that ends, when set.
        self.records: RecordRing | None = None
        #: Called with every dialog that ends, when set.
        self.on_ended: Callable[[Dialog], None] | None = None
        #: A store pipeline (app.store.persistence.Persistence) told of every change, when set.
        self.persistence: Any = None
        #: DNS as the shell would answer it (:meth:`lookup`); queries asked, in order.
        self.dns: dict[str, list[Target]] = {}
        self.answer_dns = True
        self.queries: list[Query] = []
        self.destination_changes: list[DestinationChanged] = []

    # -- feeding ----------------------------------------------------------------------------

    def take(self) -> list[Out]:
        sends = list(self.eng.take_sends())
        while True:
            events = self.eng.take_events()
            if not events:
                break
            self._dispatch(events)
            sends += self.eng.take_sends()
        return [Out(s, Wire(s.data.decode("utf-8", "surrogateescape"))) for s in sends]

    def _dispatch(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Resolve):
                self.queries.append(event.query)
                if self.answer_dns:
                    self.eng.resolved(event.query, self.lookup(event.query), 60, self.now)
            elif isinstance(event, DestinationChanged):
                self.destination_changes.append(event)
            elif isinstance(event, StateChanged):
                self.events.append(event.public())
            elif isinstance(event, DialogChanged):
                self.changes.append(event)
                if self.persistence is not None:
                    self.persistence.note_change(event.dialog, event.state_only)
            elif isinstance(event, SourceBlocked | SourceReleased):
                self.sources.append(event)
            else:
                if self.records is not None:
                    self.records.add(make_record(self.eng, event.dialog))
                if self.on_ended is not None:
                    self.on_ended(event.dialog)

    def lookup(self, query: Query) -> list[Target]:
        """The rig's DNS: names in :attr:`dns`, else the name itself as its address (so a
        test sees which name a request went to)."""
        if query.host in self.dns:
            return self.dns[query.host]
        proto = query.proto or query.default_proto
        return [Target(proto, query.host, query.port or DEFAULT_PORT[proto])]

    def end_dialog(self, dlg: Dialog, reason: str = "MI Termination", extra: str = "") -> bool:
        """The MI's ``dlg_end_dlg`` at the rig's time; what it sends waits for :meth:`take`."""
        return self.eng.end_dialog(dlg, reason, extra, self.now)

    def recv(
        self,
        data: bytes | str,
        src: tuple[str, int] = CALLER,
        sock: Socket = UDP,
        conn: int | None = None,
    ) -> list[Out]:
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        self.eng.receive(data, sock, src, conn, self.now)
        return self.take()

    def advance(self, seconds: float) -> list[Out]:
        """Move the clock by ``seconds``, firing every timer due on the way, in order."""
        end = self.now + seconds
        out: list[Out] = []
        while True:
            deadline = self.eng.next_deadline()
            if deadline is None or deadline > end:
                break
            self.now = max(self.now, deadline)
            self.eng.handle_timers(self.now)
            out += self.take()
        self.now = end
        self.eng.handle_timers(end)
        return out + self.take()

    def advance_timed(self, seconds: float) -> list[tuple[float, Out]]:
        """Like :meth:`advance`, but each Send with the (relative) time it went out."""
        start = self.now
        end = self.now + seconds
        out: list[tuple[float, Out]] = []
        while True:
            deadline = self.eng.next_deadline()
            if deadline is None or deadline > end:
                break
            self.now = max(self.now, deadline)
            self.eng.handle_timers(self.now)
            out += [(round(self.now - start, 3), o) for o in self.take()]
        self.now = end
        self.eng.handle_timers(end)
        return out + [(round(seconds, 3), o) for o in self.take()]

    # -- a call, step by step ---------------------------------------------------------------

    def call_up(self, call: Call, *, ack: bool = True) -> tuple[Out, Out]:
        """INVITE → 180 → 200 (→ ACK): returns (forwarded INVITE, 200 seen by the caller)."""
        outs = self.recv(call.invite())
        inv = one(outs, method="INVITE")
        self.recv(call.reply(inv, 180, "Ringing"), src=CALLEE)
        outs = self.recv(call.reply(inv, 200, "OK", sdp=True), src=CALLEE)
        ok = one(outs, status=200)
        if ack:
            self.recv(call.ack(ok))
        return inv, ok


def pick(outs: list[Out], *, method: str | None = None, status: int | None = None) -> list[Out]:
    return [
        o
        for o in outs
        if (method is None or o.method == method) and (status is None or o.status == status)
    ]


def one(outs: list[Out], *, method: str | None = None, status: int | None = None) -> Out:
    found = pick(outs, method=method, status=status)
    assert len(found) == 1, f"expected one {method or status} in {outs}"
    return found[0]


def crlf(text: str) -> bytes:
    """Message text written with ``\\n`` line ends → wire bytes with CRLF."""
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8", "surrogateescape")


class Call:
    """Builds the caller's and the callee's messages of one call (the callee answers whatever
    the proxy forwarded, copying Via/Record-Route as a UAS does)."""

    def __init__(self, n: int = 1, *, caller: tuple[str, int] = CALLER, transport: str = "UDP"):
        self.n = n
        self.callid = f"call-{n}@test"
        self.ftag = f"ftag{n}"
        self.ttag = f"ttag{n}"
        self.caller = caller
        self.transport = transport
        self.cseq = 1
        self.callee_cseq = 0

    @property
    def caller_contact(self) -> str:
        return f"sip:alice@{self.caller[0]}:{self.caller[1]}"

    @property
    def callee_contact(self) -> str:
        return f"sip:bob@{CALLEE[0]}:{CALLEE[1]}"

    def _via(self, branch: str) -> str:
        host, port = self.caller
        return f"Via: SIP/2.0/{self.transport} {host}:{port};branch={branch}"

    def invite(
        self, *, branch: str | None = None, extra: str = "", max_forwards: int = 70
    ) -> bytes:
        body = SDP
        return (
            crlf(
                f"INVITE sip:bob@example.com SIP/2.0\n"
                f"{self._via(branch or f'z9hG4bK-inv-{self.n}')}\n"
                f"Max-Forwards: {max_forwards}\n"
                f"From: Alice <sip:alice@example.com>;tag={self.ftag}\n"
                f"To: Bob <sip:bob@example.com>\n"
                f"Call-ID: {self.callid}\n"
                f"CSeq: 1 INVITE\n"
                f"Contact: <{self.caller_contact}>\n"
                f"{extra}"
                f"Content-Type: application/sdp\n"
                f"Content-Length: {len(body)}\n\n"
            )
            + body.encode()
        )

    def cancel(self, *, branch: str | None = None) -> bytes:
        return crlf(
            f"CANCEL sip:bob@example.com SIP/2.0\n"
            f"{self._via(branch or f'z9hG4bK-inv-{self.n}')}\n"
            f"Max-Forwards: 70\n"
            f"From: Alice <sip:alice@example.com>;tag={self.ftag}\n"
            f"To: Bob <sip:bob@example.com>\n"
            f"Call-ID: {self.callid}\n"
            f"CSeq: 1 CANCEL\n"
            f"Content-Length: 0\n\n"
        )

    def ack_non2xx(self, final: Out) -> bytes:
        """The caller's hop-by-hop ACK for a non-2xx final response (same branch as INVITE)."""
        return crlf(
            f"ACK sip:bob@example.com SIP/2.0\n"
            f"{self._via(f'z9hG4bK-inv-{self.n}')}\n"
            f"Max-Forwards: 70\n"
            f"From: Alice <sip:alice@example.com>;tag={self.ftag}\n"
            f"To: {final.msg.header('to')}\n"
            f"Call-ID: {self.callid}\n"
            f"CSeq: 1 ACK\n"
            f"Content-Length: 0\n\n"
        )

    def reply(
        self,
        req: Out,
        status: int,
        reason: str,
        *,
        tag: bool = True,
        sdp: bool = False,
        contact: str | None = None,
    ) -> bytes:
        """The callee's (or caller's) response to a request the proxy forwarded."""
        m = req.msg
        lines = [f"SIP/2.0 {status} {reason}"]
        lines += [f"Via: {v}" for v in m.header_values("via")]
        lines += [f"Record-Route: {v}" for v in m.header_values("record-route")]
        lines.append(f"From: {m.header('from')}")
        to = m.header("to") or ""
        if tag and status > 100 and ";tag=" not in to:
            to += f";tag={self.ttag}"
        lines.append(f"To: {to}")
        lines.append(f"Call-ID: {m.call_id}")
        lines.append(f"CSeq: {m.header('cseq')}")
        if status > 100 and status < 300:
            lines.append(f"Contact: <{contact or self.callee_contact}>")
        body = SDP if sdp else ""
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return crlf("\n".join(lines) + "\n\n") + body.encode()

    def in_dialog(
        self,
        method: str,
        ok: Out,
        *,
        cseq: int | None = None,
        branch: str | None = None,
        use_route: bool = True,
        extra: str = "",
        body: str = "",
    ) -> bytes:
        """A caller request inside the dialog, to the callee's contact with the route set taken
        from the 2xx's Record-Route (reversed), as RFC 3261 §12 says; ``use_route=False`` sends
        it to the proxy itself with no Route, as SIPp's built-in uac does."""
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        rr = ok.msg.header_values("record-route")
        routes = [r.strip() for line in rr for r in line.split(",")][::-1]
        if use_route:
            ruri = (ok.msg.header("contact") or "").strip("<>")
            route_lines = "".join(f"Route: {r}\n" for r in routes)
        else:
            ruri = f"sip:bob@{PROXY_IP}:{PROXY_PORT}"
            route_lines = ""
        ctype = "Content-Type: application/sdp\n" if body else ""
        return (
            crlf(
                f"{method} {ruri} SIP/2.0\n"
                f"{self._via(branch or f'z9hG4bK-{method.lower()}-{self.n}-{cseq}')}\n"
                f"{route_lines}"
                f"Max-Forwards: 70\n"
                f"From: Alice <sip:alice@example.com>;tag={self.ftag}\n"
                f"To: {ok.msg.header('to')}\n"
                f"Call-ID: {self.callid}\n"
                f"CSeq: {cseq} {method}\n"
                f"Contact: <{self.caller_contact}>\n"
                f"{extra}{ctype}"
                f"Content-Length: {len(body)}\n\n"
            )
            + body.encode()
        )

    def ack(self, ok: Out, **kw: object) -> bytes:
        return self.in_dialog("ACK", ok, cseq=1, **kw)  # type: ignore[arg-type]

    def callee_request(self, method: str, inv: Out, *, cseq: int | None = None) -> bytes:
        """A callee request toward the caller, routed by the INVITE's Record-Route."""
        if cseq is None:
            self.callee_cseq += 1
            cseq = self.callee_cseq
        rr = inv.msg.header_values("record-route")
        routes = [r.strip() for line in rr for r in line.split(",")]
        route_lines = "".join(f"Route: {r}\n" for r in routes)
        frm = f"{inv.msg.header('to')};tag={self.ttag}"
        return crlf(
            f"{method} {self.caller_contact} SIP/2.0\n"
            f"Via: SIP/2.0/UDP {CALLEE[0]}:{CALLEE[1]}"
            f";branch=z9hG4bK-uas-{method}-{self.n}-{cseq}\n"
            f"{route_lines}"
            f"Max-Forwards: 70\n"
            f"From: {frm}\n"
            f"To: {inv.msg.header('from')}\n"
            f"Call-ID: {self.callid}\n"
            f"CSeq: {cseq} {method}\n"
            f"Contact: <{self.callee_contact}>\n"
            f"Content-Length: 0\n\n"
        )

    def answer_request(self, req: Out, status: int = 200, reason: str = "OK") -> bytes:
        """A UA's response to an in-dialog request the proxy forwarded to it."""
        m = req.msg
        lines = [f"SIP/2.0 {status} {reason}"]
        lines += [f"Via: {v}" for v in m.header_values("via")]
        lines += [
            f"From: {m.header('from')}",
            f"To: {m.header('to')}",
            f"Call-ID: {m.call_id}",
            f"CSeq: {m.header('cseq')}",
            "Content-Length: 0",
        ]
        return crlf("\n".join(lines) + "\n\n")


# ------------------------------------------------------------------ self-checks


def test_rig_basic_call_flows() -> None:
    rig = Rig()
    call = Call()
    inv, ok = rig.call_up(call)
    assert inv.dest == CALLEE
    assert ok.dest == CALLER
    outs = rig.recv(call.in_dialog("BYE", ok))
    bye = one(outs, method="BYE")
    outs = rig.recv(call.answer_request(bye), src=CALLEE)
    assert one(outs, status=200).dest == CALLER
    assert len(rig.eng.dialogs) == 0


def test_rig_advance_runs_timers_in_order() -> None:
    rig = Rig()
    rig.recv(Call().invite())
    timed = rig.advance_timed(2.0)
    assert [t for t, o in timed if o.method == "INVITE"] == [0.5, 1.5]
