"""Engine-only throughput: whole calls through the sans-I/O core, no sockets, no SIPp.

Feeds the exact message flow of SIPp's built-in uac/uas scenarios (INVITE, 100, 180, 200,
ACK, BYE, 200) into one ``Engine`` and reports calls/s and µs per message.  Useful to profile
the hot path without the noise of the network and of SIPp sharing the CPU:

    python bench/engine_calls.py --calls 20000
    python bench/engine_calls.py --calls 5000 --census   # objects the collector must scan
    python -m cProfile -s tottime bench/engine_calls.py --calls 5000 | head -40
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from collections import Counter

from engine.dialog import Socket
from engine.dispatcher import Destination
from engine.proxy import Engine, EngineConfig

PROXY = Socket("udp", "127.0.0.1", 5060)
UAC = ("127.0.0.1", 5061)
UAS = ("127.0.0.1", 5080)

SDP = (
    "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def invite(n: int) -> bytes:
    return (
        f"INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-{n}-0\r\n"
        f"From: sipp <sip:sipp@127.0.0.1:5061>;tag=1SIPpTag00{n}\r\n"
        f"To: service <sip:service@127.0.0.1:5060>\r\n"
        f"Call-ID: {n}-1@127.0.0.1\r\n"
        f"CSeq: 1 INVITE\r\n"
        f"Contact: sip:sipp@127.0.0.1:5061\r\n"
        f"Max-Forwards: 70\r\n"
        f"Subject: Performance Test\r\n"
        f"Content-Type: application/sdp\r\n"
        f"Content-Length: {len(SDP)}\r\n\r\n{SDP}"
    ).encode()


def reply_to(request: bytes, status: str, to_tag: str | None, sdp: bool = False) -> bytes:
    """A UAS reply copying Via/From/To/Call-ID/CSeq from the forwarded request."""
    head = request.split(b"\r\n\r\n", 1)[0].decode()
    lines = [f"SIP/2.0 {status}"]
    for line in head.split("\r\n")[1:]:
        name = line.split(":", 1)[0].lower()
        if name in ("via", "from", "call-id", "cseq", "record-route"):
            lines.append(line)
        elif name == "to":
            lines.append(line + (f";tag={to_tag}" if to_tag and "tag=" not in line else ""))
    lines.append("Contact: <sip:127.0.0.1:5080;transport=UDP>")
    body = SDP if sdp else ""
    if sdp:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def in_dialog(method: str, n: int, cseq: int, to_tag: str) -> bytes:
    return (
        f"{method} sip:service@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-{n}-{cseq}{method}\r\n"
        f"From: sipp <sip:sipp@127.0.0.1:5061>;tag=1SIPpTag00{n}\r\n"
        f"To: service <sip:service@127.0.0.1:5060>;tag={to_tag}\r\n"
        f"Call-ID: {n}-1@127.0.0.1\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"Contact: sip:sipp@127.0.0.1:5061\r\n"
        f"Max-Forwards: 70\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def call_up(eng: Engine, n: int, now: float) -> None:
    """Call ``n`` up to the ACK (state 4), SIPp's message flow; what the engine sent and
    reported is dropped, as the shell would have sent and dispatched it."""
    tag = f"{n}SIPpTag01"
    eng.receive(invite(n), PROXY, UAC, None, now)
    fwd = eng.take_sends()[-1].data
    eng.receive(reply_to(fwd, "100 Trying", None), PROXY, UAS, None, now)
    eng.receive(reply_to(fwd, "180 Ringing", tag), PROXY, UAS, None, now)
    eng.receive(reply_to(fwd, "200 OK", tag, sdp=True), PROXY, UAS, None, now)
    eng.receive(in_dialog("ACK", n, 1, tag), PROXY, UAC, None, now)
    eng.take_sends()
    eng.take_events()


def hang_up(eng: Engine, n: int, now: float) -> None:
    """The caller's BYE of call ``n`` and its 200."""
    eng.receive(in_dialog("BYE", n, 2, f"{n}SIPpTag01"), PROXY, UAC, None, now)
    bye = eng.take_sends()[-1].data
    eng.receive(reply_to(bye, "200 OK", None), PROXY, UAS, None, now)
    eng.take_sends()
    eng.take_events()


def run(calls: int, census: bool = False) -> tuple[float, int]:
    if census:
        gc.collect()
        before = Counter(type(o).__name__ for o in gc.get_objects())
    eng = Engine([PROXY], EngineConfig(next_hops=[Destination(None, *UAS)]), rng=random.Random(1))
    now = 0.0
    messages = 0
    start = time.perf_counter()
    for n in range(calls):
        call_up(eng, n, now)
        hang_up(eng, n, now)
        messages += 7
        now += 0.0005
        eng.handle_timers(now)
    elapsed = time.perf_counter() - start
    assert len(eng.dialogs) == 0, "every call must have ended"
    assert eng.stats.processed_dialogs == calls
    if census:
        # Every call above has ended, but its transactions still absorb retransmissions
        # (Timers J, L, M: 32 s of simulated time have not passed): what they keep is what
        # the cyclic garbage collector scans at every full collection (app/gc_policy.py).
        gc.collect()
        kinds = Counter(type(o).__name__ for o in gc.get_objects())
        kinds.subtract(before)
        print(f"objects tracked by the collector per ended call: {kinds.total() / calls:.1f}")
        for name, n in kinds.most_common(8):
            print(f"  {n / calls:6.2f} {name}")
    return elapsed, messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--census", action="store_true", help="count GC-tracked objects")
    args = parser.parse_args()
    elapsed, messages = run(args.calls, args.census)
    print(
        f"{args.calls} calls, {messages} messages in {elapsed:.2f} s: "
        f"{args.calls / elapsed:.0f} calls/s, {elapsed / messages * 1e6:.1f} µs/message "
        "(message building included)"
    )


if __name__ == "__main__":
    main()
