"""SIP user agents in Python, over TLS, TCP or UDP: SIPp from Debian has no TLS.

Used by tests/test_tls.py and bench/tls.py.  :class:`Peer` is one connection (or one UDP
socket) that sends text and reads whole messages (framed by Content-Length on a stream).
:func:`serve_uas` answers what a proxy sends it (INVITE: 180 then 200; BYE, OPTIONS: 200;
ACK: nothing), statelessly, so that one connection can carry any number of calls.
:class:`Call` plays the caller: INVITE, ACK and BYE with the route set of the 200.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
from dataclasses import dataclass, field

from .sipmsg import SipMessage

_ids = itertools.count(1)


class PeerClosed(ConnectionError):
    pass


def take_messages(buffer: bytearray) -> list[bytes]:
    """Remove and return the complete messages at the start of a stream buffer."""
    out: list[bytes] = []
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return out
        head = bytes(buffer[:end]).decode("utf-8", "replace")
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() in ("content-length", "l"):
                length = int(value.strip())
        total = end + 4 + length
        if len(buffer) < total:
            return out
        out.append(bytes(buffer[:total]))
        del buffer[:total]


class Peer:
    """One SIP transport end: a TLS or TCP connection, or a UDP socket with one remote."""

    def __init__(self, transport: str, record: bool = True) -> None:
        self.transport = transport  # "TLS", "TCP" or "UDP", as Via writes it
        #: Keep every message in ``received`` (tests look at them; benchmarks do not).
        self.record = record
        self.local: tuple[str, int] = ("", 0)
        self.inbox: asyncio.Queue[SipMessage | None] = asyncio.Queue()
        self.received: list[SipMessage] = []
        self._write: asyncio.BaseTransport | None = None
        self._remote: tuple[str, int] | None = None

    def _deliver(self, data: bytes) -> None:
        msg = SipMessage(data.decode("utf-8", "replace"), transport=self.transport)
        if self.record:
            self.received.append(msg)
        self.inbox.put_nowait(msg)

    def send(self, text: str) -> None:
        data = text.encode()
        if self.transport == "UDP":
            self._write.sendto(data, self._remote)  # type: ignore[union-attr]
        else:
            self._write.write(data)  # type: ignore[union-attr]

    async def recv(self, timeout: float = 10.0) -> SipMessage:
        msg = await asyncio.wait_for(self.inbox.get(), timeout)
        if msg is None:
            raise PeerClosed("the connection was closed")
        return msg

    def close(self) -> None:
        if self._write is not None:
            self._write.close()

    @property
    def hostport(self) -> str:
        host = self.local[0]
        return f"[{host}]:{self.local[1]}" if ":" in host else f"{host}:{self.local[1]}"

    @property
    def contact(self) -> str:
        transport = "" if self.transport == "UDP" else f";transport={self.transport.lower()}"
        return f"<sip:peer@{self.hostport}{transport}>"


class _StreamProtocol(asyncio.Protocol):
    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.peer._write = transport
        local = transport.get_extra_info("sockname")
        self.peer.local = (local[0], local[1])

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        for message in take_messages(self.buffer):
            self.peer._deliver(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.peer.inbox.put_nowait(None)


class _DatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.peer._write = transport
        local = transport.get_extra_info("sockname")
        self.peer.local = (local[0], local[1])

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.peer._deliver(data)


async def connect(
    host: str,
    port: int,
    tls: ssl.SSLContext | None = None,
    *,
    udp: bool = False,
    server_hostname: str | None = None,
    record: bool = True,
) -> Peer:
    """A peer talking to ``host:port``: TLS with ``tls``, else TCP, or UDP with ``udp``."""
    loop = asyncio.get_running_loop()
    if udp:
        peer = Peer("UDP", record)
        peer._remote = (host, port)
        await loop.create_datagram_endpoint(lambda: _DatagramProtocol(peer), local_addr=(host, 0))
        return peer
    peer = Peer("TLS" if tls else "TCP", record)
    await loop.create_connection(
        lambda: _StreamProtocol(peer),
        host,
        port,
        ssl=tls,
        server_hostname=(server_hostname or host) if tls else None,
    )
    return peer


# ------------------------------------------------------------------------------ messages


def request(
    peer: Peer,
    method: str,
    ruri: str,
    *,
    callid: str,
    cseq: int,
    from_tag: str,
    to: str,
    routes: list[str] | None = None,
    sdp: bool = False,
) -> str:
    body = ""
    if sdp:
        host = peer.local[0]
        family = "IP6" if ":" in host else "IP4"
        body = (
            f"v=0\r\no=peer 1 1 IN {family} {host}\r\ns=-\r\nc=IN {family} {host}\r\n"
            f"t=0 0\r\n"
            f"m=audio 6000 RTP/AVP 0\r\n"
        )
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/{peer.transport} {peer.hostport};branch=z9hG4bKp{next(_ids)};rport",
        *[f"Route: {r}" for r in routes or []],
        "Max-Forwards: 70",
        f"From: <sip:caller@{peer.hostport}>;tag={from_tag}",
        f"To: {to}",
        f"Call-ID: {callid}",
        f"CSeq: {cseq} {method}",
        f"Contact: {peer.contact}",
    ]
    if body:
        lines.append("Content-Type: application/sdp")
    lines += [f"Content-Length: {len(body)}", "", body]
    return "\r\n".join(lines)


def response(req: SipMessage, status: int, reason: str, peer: Peer, to_tag: str = "") -> str:
    """A response to ``req``: its Via, From, Call-ID and CSeq, To with ``to_tag``, and for a
    dialog-creating answer our Contact and the Record-Route it came with."""
    lines = [f"SIP/2.0 {status} {reason}"]
    for name in ("via", "record-route"):
        lines += [f"{name.title()}: {v}" for v in req.header_values(name)]
    to = req.header("to") or ""
    if to_tag and ";tag=" not in to:
        to += f";tag={to_tag}"
    lines += [
        f"From: {req.header('from')}",
        f"To: {to}",
        f"Call-ID: {req.call_id}",
        f"CSeq: {req.header('cseq')}",
    ]
    if req.method == "INVITE" and status >= 180:
        lines.append(f"Contact: {peer.contact}")
    lines += ["Content-Length: 0", "", ""]
    return "\r\n".join(lines)


def answer(req: SipMessage, peer: Peer) -> None:
    """What the test callee sends for a request: 180 and 200 to an INVITE, 200 to anything
    else but an ACK."""
    if req.method == "ACK" or not req.is_request:
        return
    tag = f"uas{abs(hash(req.call_id)) % 100000}"
    if req.method == "INVITE":
        peer.send(response(req, 180, "Ringing", peer, tag))
    peer.send(response(req, 200, "OK", peer, tag))


# ------------------------------------------------------------------------------ callee


@dataclass
class Uas:
    """A listening callee; ``peers`` are the connections it accepted (or its UDP socket),
    ``server_names`` the SNI names TLS clients asked for."""

    server: asyncio.AbstractServer | None = None
    peers: list[Peer] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)
    port: int = 0

    def received(self, method: str | None = None) -> list[SipMessage]:
        msgs = [m for p in self.peers for m in p.received]
        return [m for m in msgs if method is None or m.method == method]

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for peer in self.peers:
            peer.close()


async def _answer_forever(peer: Peer) -> None:
    while True:
        try:
            msg = await peer.inbox.get()
        except asyncio.CancelledError:
            return
        if msg is None:
            return
        answer(msg, peer)


async def serve_uas(
    host: str,
    port: int,
    tls: ssl.SSLContext | None = None,
    *,
    udp: bool = False,
    record: bool = True,
) -> Uas:
    """Start a callee on ``host:port`` (TLS with ``tls``, else TCP; UDP with ``udp``)."""
    loop = asyncio.get_running_loop()
    uas = Uas(port=port)
    if udp:
        peer = Peer("UDP", record)

        class Reply(_DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                self.peer._remote = addr
                super().datagram_received(data, addr)

        await loop.create_datagram_endpoint(lambda: Reply(peer), local_addr=(host, port))
        uas.peers.append(peer)
        loop.create_task(_answer_forever(peer))
        return uas
    if tls is not None:

        def record_sni(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
            uas.server_names.append(name)

        tls.sni_callback = record_sni  # type: ignore[assignment]

    def accept() -> _StreamProtocol:
        peer = Peer("TLS" if tls else "TCP", record)
        uas.peers.append(peer)
        loop.create_task(_answer_forever(peer))
        return _StreamProtocol(peer)

    uas.server = await loop.create_server(accept, host, port, ssl=tls)
    return uas


# ------------------------------------------------------------------------------ caller


@dataclass
class Call:
    """One call from ``peer`` through the proxy: ``invite`` until the final answer, ``ack``,
    ``bye``; ``responses`` holds every response to the INVITE."""

    peer: Peer
    ruri: str
    callid: str = field(default_factory=lambda: f"tls-{next(_ids)}@test")
    from_tag: str = field(default_factory=lambda: f"c{next(_ids)}")
    to: str = ""
    responses: list[SipMessage] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)
    target: str = ""

    async def invite(self, timeout: float = 10.0) -> SipMessage:
        self.to = f"<{self.ruri}>"
        self.peer.send(
            request(
                self.peer,
                "INVITE",
                self.ruri,
                callid=self.callid,
                cseq=1,
                from_tag=self.from_tag,
                to=self.to,
                sdp=True,
            )
        )
        while True:
            msg = await self.peer.recv(timeout)
            if msg.call_id != self.callid or msg.is_request:
                continue
            self.responses.append(msg)
            if msg.status is not None and msg.status >= 200:
                break
        if msg.status is not None and msg.status < 300:
            self.to = msg.header("to") or self.to
            rr = [r.strip() for v in msg.header_values("record-route") for r in v.split(",")]
            self.routes = list(reversed(rr))
            contact = msg.header("contact") or ""
            self.target = contact[contact.find("<") + 1 : contact.rfind(">")] or self.ruri
        return msg

    def _send(self, method: str, cseq: int) -> None:
        self.peer.send(
            request(
                self.peer,
                method,
                self.target or self.ruri,
                callid=self.callid,
                cseq=cseq,
                from_tag=self.from_tag,
                to=self.to,
                routes=self.routes,
            )
        )

    def ack(self) -> None:
        self._send("ACK", 1)

    async def bye(self, timeout: float = 10.0) -> SipMessage:
        self._send("BYE", 2)
        while True:
            msg = await self.peer.recv(timeout)
            if msg.call_id == self.callid and msg.cseq == (2, "BYE") and not msg.is_request:
                return msg

    async def expect_request(self, method: str, timeout: float = 10.0) -> SipMessage:
        """Wait for ``method`` from the proxy (its BYE after dlg_end_dlg) and answer 200."""
        while True:
            msg = await self.peer.recv(timeout)
            if msg.call_id == self.callid and msg.method == method:
                answer(msg, self.peer)
                return msg
