"""Hypothesis fuzzing: nothing fed to ``Engine.receive`` (or the stream framer) may raise."""

from __future__ import annotations

import glob
from pathlib import Path

from helpers.shared import RFC4475_DIR
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine_kit import CALLEE, CALLER, TCP, Call, Rig, one

from engine.framing import StreamFramer
from engine.message import SipError

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
FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.integers(0, 6))
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
        else:  # replace a header value with junk
            lines = bytes(data).split(b"\r\n")
            j = draw(st.integers(0, len(lines) - 1))
            name = lines[j].split(b":", 1)[0]
            lines[j] = name + b": " + draw(st.binary(max_size=30))
            data = bytearray(b"\r\n".join(lines))
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
