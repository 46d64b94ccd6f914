"""RFC 4475 torture messages over real UDP to a running ``sipdlg serve``.

Every file in ``/work/shared/testdata/rfc4475`` is sent from a client socket; the proxy's
``--next-hop`` is a UDP socket this test listens on (and answers, so that nothing is
retransmitted for long).  Per row of ``index.tsv`` the outcome must be the one below; the
server must still route a normal OPTIONS and a call that was ringing before the torture.

The messages name foreign hosts, so the test runs in a network namespace that has only
loopback (``@pytest.mark.netns``: helper-1's harness re-runs it under ``unshare -n``).
"""

from __future__ import annotations

import csv
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from helpers import LOOPBACK, SipdlgProcess, free_port
from helpers.shared import RFC4475_DIR
from helpers.sipmsg import SipMessage

DATA = RFC4475_DIR
RELAYED = "Relayed By Test"

# Outcomes: ("forward",) the request reaches the next hop; ("answer", {codes}) the sender gets
# one of these from the proxy and nothing is forwarded; ("drop",) nothing anywhere (responses
# the proxy has no transaction for, garbage without a Via); several tuples = any of them.
FORWARD = ("forward",)
DROP = ("drop",)


def answer(*codes: int) -> tuple[str, frozenset[int]]:
    return ("answer", frozenset(codes))


EXPECT: dict[str, tuple[tuple, ...]] = {
    # 3.1.1 valid
    # Parsed whole, but a To-tag for no dialog of ours with a foreign Route: refused, never
    # relayed to the host the message names (no open relay; OpenSIPS answers 404 too).
    "wsinv": (answer(404),),
    "intmeth": (FORWARD,),
    "esc01": (FORWARD,),
    "escnull": (FORWARD,),
    "esc02": (FORWARD,),
    "lwsdisp": (FORWARD,),
    "longreq": (FORWARD,),
    "dblreq": (FORWARD,),
    "semiuri": (FORWARD,),
    "transports": (FORWARD,),
    "mpart01": (FORWARD,),
    "unreason": (DROP,),  # responses matching no transaction
    "noreason": (DROP,),
    # 3.1.2 invalid
    "badinv01": (answer(400),),
    "clerr": (answer(400),),
    "ncl": (answer(400),),
    "scalar02": (answer(400),),
    "scalarlg": (DROP,),
    "quotbal": (answer(400),),
    "ltgtruri": (answer(400),),
    "lwsruri": (answer(400),),
    "lwsstart": (answer(400),),
    "trws": (answer(400),),
    "escruri": (answer(400),),
    "baddate": (FORWARD, answer(400)),
    "regbadct": (answer(400),),
    "badaspec": (answer(400),),
    "baddn": (answer(400),),
    "badvers": (answer(505),),
    "mismatch01": (answer(400),),
    "mismatch02": (answer(501, 400),),
    "bigcode": (DROP,),
    # 3.2 / 3.3 / 3.4
    "badbranch": (answer(400), FORWARD),
    "insuf": (answer(400),),
    "unkscm": (answer(416),),
    "novelsc": (answer(416, 404),),
    "unksm2": (FORWARD,),
    "bext01": (answer(420),),
    "invut": (FORWARD,),
    "regaut01": (FORWARD,),
    "multi01": (answer(400),),
    "mcl01": (answer(400),),
    "bcast": (DROP,),
    "zeromf": (answer(483),),
    "cparam01": (FORWARD,),
    "cparam02": (FORWARD,),
    "regescrt": (FORWARD,),
    "sdp01": (FORWARD,),
    "inv2543": (FORWARD,),
    "test": (answer(400), DROP),
}


def rows() -> list[dict[str, str]]:
    with open(DATA / "index.tsv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@dataclass
class Seen:
    at_client: list[SipMessage] = field(default_factory=list)
    at_hop: list[SipMessage] = field(default_factory=list)


class Peer:
    """A UDP socket on loopback that records what it receives."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, port))
        self.sock.setblocking(False)
        self.port = port

    def read(self) -> list[tuple[bytes, tuple[str, int]]]:
        out = []
        while True:
            try:
                out.append(self.sock.recvfrom(70000))
            except BlockingIOError:
                return out

    def close(self) -> None:
        self.sock.close()


def respond(req: SipMessage, status: int, reason: str = RELAYED) -> bytes:
    """A UAS response to a request the proxy forwarded (headers copied per RFC 3261 §8.2.6)."""
    lines = [f"SIP/2.0 {status} {reason}"]
    lines += [f"Via: {v}" for v in req.header_values("via")]
    for name in ("from", "call-id", "cseq"):
        for v in req.header_values(name):
            lines.append(f"{name.title()}: {v}")
    to = req.header("to") or ""
    lines.append(f"To: {to}" + ("" if "tag=" in to.replace(" ", "") else ";tag=hop"))
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


def call_id_of(data: bytes) -> str | None:
    """The Call-ID of the (first) message in a file, read with the tests' own parser."""
    return SipMessage(data.decode("utf-8", "surrogateescape")).call_id


def txn_key(data: bytes) -> tuple[str, ...] | None:
    """RFC 3261 §17.2.3 server transaction key: top Via branch + sent-by, CSeq method."""
    msg = SipMessage(data.decode("utf-8", "surrogateescape"))
    via, cseq = msg.header("via"), msg.cseq if msg.header("cseq") else None
    if not msg.is_request or not via or not cseq or "branch=z9hG4bK" not in via.replace(" ", ""):
        return None
    sent_by = via.split(";")[0].split()[-1]
    branch = via.replace(" ", "").split("branch=")[1].split(";")[0].split(",")[0]
    return (branch, sent_by.lower(), cseq[1])


def ack_for(resp: SipMessage) -> bytes:
    """The caller's ACK for a non-2xx final response: Via (branch), From, To, Call-ID as in
    the response, CSeq number with ACK."""
    cseq = resp.cseq
    assert cseq is not None
    lines = ["ACK sip:ack@127.0.0.1 SIP/2.0"]
    lines += [f"Via: {v}" for v in resp.header_values("via")[:1]]
    lines += [
        f"From: {resp.header('from')}",
        f"To: {resp.header('to')}",
        f"Call-ID: {resp.call_id}",
        f"CSeq: {cseq[0]} ACK",
        "Max-Forwards: 70",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


class Bench:
    def __init__(
        self, server: SipdlgProcess, client: Peer, hop: Peer, messages: list[bytes]
    ) -> None:
        self.server = server
        self.client = client
        self.hop = hop
        self.hold: dict[str, SipMessage] = {}  # INVITEs the hop keeps ringing
        self.hop_log: list[SipMessage] = []
        #: Call-IDs of every message: a message with another message's Call-ID (a late
        #: retransmission, a 408 for an earlier one) is not counted for the current one.
        self.callids = {c for c in map(call_id_of, messages) if c}
        self.callids.add("inprogress@rfc4475")
        self.current: str | None = None

    def mine(self, msg: SipMessage) -> bool:
        cid = msg.call_id
        return cid == self.current or cid not in self.callids

    def pump(self, seen: Seen) -> None:
        for data, _ in self.client.read():
            msg = SipMessage(data.decode("utf-8", "surrogateescape"))
            cseq = msg.cseq
            if not msg.is_request and msg.status and msg.status >= 300 and cseq:
                if cseq[1] == "INVITE":  # the caller's hop-by-hop ACK
                    self.client.sock.sendto(ack_for(msg), (LOOPBACK, self.server.port))
            if self.mine(msg):
                seen.at_client.append(msg)
        for data, addr in self.hop.read():
            msg = SipMessage(data.decode("utf-8", "surrogateescape"))
            if self.mine(msg):
                seen.at_hop.append(msg)
            self.hop_log.append(msg)
            if not msg.is_request or msg.method == "ACK":
                continue
            if msg.call_id in self.hold:
                if msg.call_id and self.hold[msg.call_id] is None:  # type: ignore[comparison-overlap]
                    self.hold[msg.call_id] = msg
                self.hop.sock.sendto(respond(msg, 180, "Ringing"), addr)
                continue
            status = 486 if msg.method == "INVITE" else 200
            self.hop.sock.sendto(respond(msg, status), addr)

    def exchange(
        self,
        data: bytes,
        until: Callable[[Seen], bool],
        timeout: float,
        linger: float,
        callid: str | None = None,
    ) -> Seen:
        seen = Seen()
        self.current = callid or call_id_of(data)
        self.client.sock.sendto(data, (LOOPBACK, self.server.port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not until(seen):
            self.pump(seen)
            time.sleep(0.01)
        end = time.monotonic() + linger
        while time.monotonic() < end:
            self.pump(seen)
            time.sleep(0.01)
        return seen


def _proxy_answers(seen: Seen) -> list[SipMessage]:
    """Responses the proxy itself generated (not 100, not relayed from the hop)."""
    return [
        m
        for m in seen.at_client
        if not m.is_request and m.status != 100 and RELAYED not in m.start_line
    ]


def _matches(name: str, data: bytes, seen: Seen, outcome: tuple) -> str | None:
    """None if ``seen`` satisfies ``outcome``, else why not."""
    kind = outcome[0]
    own = _proxy_answers(seen)
    if kind == "forward":
        if not seen.at_hop:
            return "not forwarded to the next hop"
        if own:
            return f"proxy answered {own[0].start_line!r}"
        first = seen.at_hop[0]
        vias = first.header_values("via")
        if not vias or f"{LOOPBACK}:" not in vias[0]:
            return f"forwarded without our Via on top: {vias[:1]}"
        return None
    if kind == "answer":
        if seen.at_hop:
            return f"forwarded ({seen.at_hop[0].start_line!r}) instead of answered"
        codes = [m.status for m in own]
        if len(own) != 1 or codes[0] not in outcome[1]:
            return f"answers {[m.start_line for m in own]}, expected one of {sorted(outcome[1])}"
        reason = own[0].start_line.split(" ", 2)[2] if own[0].start_line.count(" ") >= 2 else ""
        if not reason.strip():
            return "empty reason phrase"
        if own[0].status == 400 and reason.strip().lower() == "bad request":
            return "400 reason phrase does not name the problem"
        return None
    if kind == "drop":
        if seen.at_hop or seen.at_client:
            got = [m.start_line for m in seen.at_client + seen.at_hop]
            return f"expected silence, got {got}"
        return None
    raise AssertionError(kind)


def _done(outcomes: tuple[tuple, ...]) -> Callable[[Seen], bool]:
    kinds = {o[0] for o in outcomes}

    def until(seen: Seen) -> bool:
        if "forward" in kinds and seen.at_hop:
            return True
        return "answer" in kinds and bool(_proxy_answers(seen))

    return until


RINGING_INVITE = (
    "INVITE sip:bob@127.0.0.1 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-inprogress\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:alice@127.0.0.1>;tag=ip1\r\n"
    "To: <sip:bob@127.0.0.1>\r\n"
    "Call-ID: inprogress@rfc4475\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:alice@127.0.0.1:{port}>\r\n"
    "Content-Length: 0\r\n\r\n"
)

OPTIONS = (
    "OPTIONS sip:bob@127.0.0.1 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-after\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:alice@127.0.0.1>;tag=after\r\n"
    "To: <sip:bob@127.0.0.1>\r\n"
    "Call-ID: after@rfc4475\r\n"
    "CSeq: 1 OPTIONS\r\n"
    "Content-Length: 0\r\n\r\n"
)


def run_cases(
    bench: Bench,
    sipdlg_server: Callable[..., SipdlgProcess],
    hop_port: int,
    cases: list[tuple[str, bytes, tuple[tuple, ...]]],
) -> tuple[list[str], list[SipdlgProcess], dict[str, Seen]]:
    """Send each message and check its outcome; returns the failures, the servers used and
    what each message caused."""
    failures = []
    servers = [bench.server]
    used_keys: list[set[tuple[str, ...]]] = [set()]
    seen_by_name: dict[str, Seen] = {}
    for name, data, outcomes in cases:
        # Some messages reuse another's branch and sent-by (escnull/regescrt, cparam01/
        # cparam02, most of RFC 5118's): to a proxy that is a retransmission of the same
        # transaction (RFC 3261 §17.2.3), so such a message goes to a fresh server instance.
        key = txn_key(data)
        gen = next(i for i, keys in enumerate([*used_keys, set()]) if key not in keys)
        if gen == len(servers):
            servers.append(sipdlg_server(next_hop=f"{LOOPBACK}:{hop_port}"))
            used_keys.append(set())
        if key is not None:
            used_keys[gen].add(key)
        bench.server = servers[gen]
        kinds = {o[0] for o in outcomes}
        seen = seen_by_name[name] = bench.exchange(
            data,
            _done(outcomes),
            timeout=0.6 if "drop" in kinds else 3,
            linger=0.15,
        )
        why = [_matches(name, data, seen, o) for o in outcomes]
        if all(w is not None for w in why):
            failures.append(f"{name}: {'; '.join(why)}")  # type: ignore[arg-type]
        assert bench.server.running, f"server died after {name}\n{bench.server.log_tail()}"
    return failures, servers, seen_by_name


def test_index_covers_every_file() -> None:
    names = {r["name"] for r in rows()}
    files = {p.stem for p in DATA.glob("*.dat")}
    assert names == files == set(EXPECT)


@pytest.mark.netns
def test_rfc4475_over_udp(sipdlg_server: Callable[..., SipdlgProcess]) -> None:
    hop_port = free_port("udp")
    client_port = free_port("udp")
    hop = Peer(hop_port)
    client = Peer(client_port)
    try:
        server = sipdlg_server(next_hop=f"{LOOPBACK}:{hop_port}")
        bench = Bench(server, client, hop, [p.read_bytes() for p in DATA.glob("*.dat")])

        # A call rings through the proxy before the torture, and is answered after it.
        bench.hold["inprogress@rfc4475"] = None  # type: ignore[assignment]
        seen = bench.exchange(
            RINGING_INVITE.format(port=client_port).encode(),
            lambda s: any(m.status == 180 for m in s.at_client),
            timeout=5,
            linger=0.05,
        )
        assert any(m.status == 180 for m in seen.at_client), seen

        cases = [(r["name"], (DATA / r["file"]).read_bytes(), EXPECT[r["name"]]) for r in rows()]
        failures, servers, seen_by_name = run_cases(bench, sipdlg_server, hop_port, cases)
        # dblreq: only the REGISTER, never the INVITE hidden after its Content-Length.
        methods = [m.method for m in seen_by_name["dblreq"].at_hop if m.is_request]
        assert set(methods) <= {"REGISTER"}, methods
        assert not any("dblreq.0ha0isnda977644900765" in (m.call_id or "") for m in bench.hop_log)
        assert not failures, "\n".join(failures)

        # The ringing call is still there: its 200 reaches the caller.
        bench.server = server
        invite = bench.hold["inprogress@rfc4475"]
        assert invite is not None
        bench.hop.sock.sendto(respond(invite, 200, "OK"), (LOOPBACK, server.port))
        seen = bench.exchange(
            b"\r\n\r\n",  # a keep-alive: ignored
            lambda s: any(m.status == 200 for m in s.at_client),
            timeout=3,
            linger=0.05,
            callid="inprogress@rfc4475",
        )
        assert any(m.status == 200 and m.call_id == "inprogress@rfc4475" for m in seen.at_client), (
            seen
        )

        # And a normal OPTIONS still goes through both ways.
        seen = bench.exchange(
            OPTIONS.format(port=client_port).encode(),
            lambda s: any(m.status == 200 for m in s.at_client),
            timeout=3,
            linger=0.05,
        )
        assert [m.method for m in seen.at_hop] == ["OPTIONS"], seen
        assert [m.status for m in seen.at_client] == [200], seen
        for srv in servers:
            assert srv.running
            assert "Traceback" not in srv.log_text(), srv.log_tail()
        assert len(servers) == 2
    finally:
        hop.close()
        client.close()
