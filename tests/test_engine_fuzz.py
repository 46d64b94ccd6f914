"""Hypothesis fuzzing: nothing fed to ``Engine.receive`` (or the stream framer) may raise, and
every request whose top Via can be read gets an answer or is sent on.

Mutations of valid INVITEs, BYEs, CANCELs, ACKs, responses and the RFC 4475 messages: byte
flips, truncation, inserted bytes and tokens, lines deleted or duplicated, header values
replaced by junk, numbers written in other scripts' digits (``²``, ``١٢``, ``２``) or
thousands of digits long, addresses turned into IPv6 references (well formed or not).

``SIPDLG_FUZZ_EXAMPLES`` sets the examples per test (300 by default; docs/operations.md
reports a long run).
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from helpers.shared import RFC4475_DIR
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_engine_kit import CALLEE, CALLER, TCP, Call, Rig, one

from engine.address import parse_via, split_values
from engine.framing import StreamFramer
from engine.message import SipError, header_key

RFC4475 = RFC4475_DIR


def _seeds() -> list[bytes]:
    call = Call(1)
    rig = Rig()
    inv = one(rig.recv(call.invite()), method="INVITE")
    ok_bytes = call.reply(inv, 200, "OK", sdp=True)
    ok = one(rig.recv(ok_bytes, src=CALLEE), status=200)
    seeds = [
        call.invite(),
        call.cancel(),
        call.reply(inv, 180, "Ringing"),
        ok_bytes,
        call.ack(ok),
        call.in_dialog("BYE", ok),
        call.in_dialog("BYE", ok, use_route=False),
        call.callee_request("BYE", inv),
    ]
    seeds += [Path(p).read_bytes() for p in sorted(glob.glob(str(RFC4475 / "*.dat")))]
    return seeds


SEEDS = _seeds()
EXAMPLES = int(os.environ.get("SIPDLG_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


#: Digits that ``str.isdigit()`` accepts and ``int()`` refuses (``²``) or reads (the rest).
ODD_DIGITS = ["²", "١٢", "２", "߁", "𝟙", "٠", "⁹", "①"]
NUMBERS = re.compile(rb"[0-9]+")
IPV4 = re.compile(rb"127\.0\.0\.1|192\.0\.2\.\d+|\d+\.\d+\.\d+\.\d+")
IPV6_REFERENCES = [
    b"[::1]",
    b"[::1",
    b"::1",
    b"[2001:db8::1]",
    b"[2001:db8::1]:5060",
    b"[::ffff:127.0.0.1]",
    b"[fe80::1%25eth0]",
    b"[:::]",
    b"[]",
    b"[2001:db8::1]:99999",
]


def _replace_match(data: bytearray, pattern: re.Pattern[bytes], pick: int, new: bytes) -> None:
    """Replace the ``pick``-th match (modulo their count) of ``pattern`` with ``new``."""
    found = list(pattern.finditer(data))
    if found:
        m = found[pick % len(found)]
        data[m.start() : m.end()] = new


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.integers(0, 9))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == 0:  # flip a byte
            data[i] = draw(st.integers(0, 255))
        elif op == 1:  # truncate
            del data[i:]
        elif op == 2:  # insert random bytes
            data[i:i] = draw(st.binary(max_size=20))
        elif op == 3:  # delete a line
            lines = bytes(data).split(b"\r\n")
            j = draw(st.integers(0, len(lines) - 1))
            del lines[j]
            data = bytearray(b"\r\n".join(lines))
        elif op == 4:  # duplicate a line
            lines = bytes(data).split(b"\r\n")
            j = draw(st.integers(0, len(lines) - 1))
            lines.insert(j, lines[j])
            data = bytearray(b"\r\n".join(lines))
        elif op == 5:  # insert a tricky token
            tok = draw(
                st.sampled_from(
                    [
                        b",",
                        b";",
                        b"<",
                        b">",
                        b'"',
                        b"\\",
                        b":",
                        b" ",
                        b"\r\n ",
                        b"\r\n",
                        b"%00",
                        b"=",
                        b"z9hG4bK",
                        b"4294967296",
                        b"-1",
                        b"\x00",
                        b"\xff",
                        b"SIP/2.0/",
                    ]
                )
            )
            data[i:i] = tok
        elif op == 6:  # replace a header value with junk
            lines = bytes(data).split(b"\r\n")
            j = draw(st.integers(0, len(lines) - 1))
            name = lines[j].split(b":", 1)[0]
            lines[j] = name + b": " + draw(st.binary(max_size=30))
            data = bytearray(b"\r\n".join(lines))
        elif op == 7:  # a number in other digits
            digits = draw(st.sampled_from(ODD_DIGITS)).encode()
            _replace_match(data, NUMBERS, draw(st.integers(0, 99)), digits)
        elif op == 8:  # a huge number (past int()'s 4300-digit limit, or just past a bound)
            huge = draw(
                st.sampled_from([b"4294967296", b"65536", b"256", b"1" + b"0" * 30])
                | st.integers(4000, 6000).map(lambda n: b"9" * n)
            )
            _replace_match(data, NUMBERS, draw(st.integers(0, 99)), huge)
        else:  # an address turned into an IPv6 reference
            ref = draw(st.sampled_from(IPV6_REFERENCES))
            _replace_match(data, IPV4, draw(st.integers(0, 99)), ref)
    return bytes(data)


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise(data: bytes) -> None:
    rig = Rig()
    rig.recv(data)
    rig.recv(data, sock=TCP, conn=1)
    rig.advance(40)


@FUZZ
@given(st.lists(mutated(), min_size=1, max_size=8))
def test_mutated_messages_never_raise(messages: list[bytes]) -> None:
    rig = Rig()
    call = Call(1)
    inv = one(rig.recv(call.invite()), method="INVITE")
    for data in messages:
        rig.recv(data)
        rig.recv(data, src=CALLEE)
        rig.recv(data, sock=TCP, conn=5)
    # The call set up before the noise still completes (or was legitimately ended by it).
    rig.recv(call.reply(inv, 200, "OK"), src=CALLEE)
    rig.advance(70)
    for dlg in list(rig.eng.dialogs):
        rig.end_dialog(dlg)
    rig.advance(70)
    assert not rig.eng.client_txns and not rig.eng.server_txns


@FUZZ
@given(st.lists(mutated(), min_size=1, max_size=5), st.lists(st.integers(1, 400), max_size=10))
def test_framer_never_raises_anything_but_sip_error(messages: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(messages)
    framer = StreamFramer(max_size=4096)
    pos = 0
    rig = Rig()
    try:
        for size in [*cuts, len(stream)]:
            chunk = stream[pos : pos + size]
            pos += size
            for msg in framer.feed(chunk):
                rig.recv(msg, sock=TCP, conn=9)
    except SipError:
        pass  # a framing error: the shell closes that connection


@FUZZ
@given(st.lists(mutated(), min_size=1, max_size=8), st.booleans())
def test_mutated_messages_in_established_call_never_raise(
    messages: list[bytes], from_callee: bool
) -> None:
    rig = Rig(default_timeout=30)
    call = Call(1)
    inv, ok = rig.call_up(call)
    for data in messages:
        rig.recv(data, src=CALLEE if from_callee else CALLER)
        rig.advance(1)
    rig.recv(call.in_dialog("BYE", ok))
    rig.advance(100)
    assert len(rig.eng.dialogs) == 0
    assert not rig.eng.client_txns and not rig.eng.server_txns


def readable_request(data: bytes) -> bool:
    """A request (not an ACK, which is never answered) whose top Via the engine's grammar
    reads: it must be answered or sent on.  Anything else may be dropped (RFC 3261 §18.2.1:
    a response goes to the top Via's sent-by, so without one there is nowhere to answer)."""
    end = data.find(b"\r\n\r\n")
    lines = data[: end if end >= 0 else len(data)].decode("utf-8", "surrogateescape").split("\r\n")
    start = lines[0].split(" ")
    if lines[0].startswith("SIP/") or start[0] == "ACK" or len(start) != 3:
        return False
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon and line[:1] not in (" ", "\t") and header_key(name) == "via":
            try:
                values = split_values(value)
                parse_via(values[0])
            except (SipError, IndexError):
                return False
            return True
    return False


@FUZZ
@given(mutated())
def test_every_readable_request_is_answered_or_sent_on(data: bytes) -> None:
    rig = Rig()  # a fresh engine: no transaction absorbs the message as a retransmission
    outs = rig.recv(data)
    readable = readable_request(data)
    event("a request with a readable Via" if readable else "no answer owed")
    if readable:
        answered = [o for o in outs if o.status is not None and o.dest == CALLER]
        sent_on = [o for o in outs if o.method is not None]
        assert answered or sent_on, data[:300]
    rig.advance(70)
