"""No reference cycles on the call path: every call's objects are freed by reference counting.

The server freezes long-lived objects out of the cyclic collector's scans (app/gc_policy.py),
so a cycle created per call would only be found by a rescan: memory would grow with every call.
Here the collector is off while calls of every kind run through the engine (answered, rejected,
cancelled, CANCEL crossing the 2xx, unanswered, ended by the MI, by their lifetime and by a
failed ping, re-INVITEd, over TCP, forked (early, answered twice, answered after the end,
CANCEL crossing both answers), refused as malformed), their timers run out, and
then a collection must find nothing unreachable.  Also run against the compiled engine
(tests/test_native.py).
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from test_engine_kit import CALLEE, CALLER, TCP, Call, Out, Rig, crlf, one, pick

from engine.dialog import Dialog, DlgState
from engine.dlg_records import RecordRing


def answered_caller_bye(rig: Rig, call: Call) -> None:
    _, ok = rig.call_up(call)
    bye = one(rig.recv(call.in_dialog("BYE", ok)), method="BYE")
    rig.recv(call.answer_request(bye), src=CALLEE)


def answered_callee_bye(rig: Rig, call: Call) -> None:
    inv, _ = rig.call_up(call)
    bye = one(rig.recv(call.callee_request("BYE", inv), src=CALLEE), method="BYE")
    rig.recv(call.answer_request(bye), src=CALLER)


def reinvited(rig: Rig, call: Call) -> None:
    _, ok = rig.call_up(call)
    reinv = one(rig.recv(call.in_dialog("INVITE", ok)), method="INVITE")
    ok2 = one(rig.recv(call.answer_request(reinv), src=CALLEE), status=200)
    rig.recv(call.in_dialog("ACK", ok2, cseq=call.cseq))
    answered_bye = one(rig.recv(call.in_dialog("BYE", ok)), method="BYE")
    rig.recv(call.answer_request(answered_bye), src=CALLEE)


def rejected(rig: Rig, call: Call) -> None:
    inv = one(rig.recv(call.invite()), method="INVITE")
    busy = one(rig.recv(call.reply(inv, 486, "Busy Here"), src=CALLEE), status=486)
    rig.recv(call.ack_non2xx(busy))


def cancelled(rig: Rig, call: Call) -> None:
    inv = one(rig.recv(call.invite()), method="INVITE")
    rig.recv(call.reply(inv, 180, "Ringing"), src=CALLEE)
    cancel = one(rig.recv(call.cancel()), method="CANCEL")
    rig.recv(call.answer_request(cancel), src=CALLEE)
    final = one(rig.recv(call.reply(inv, 487, "Request Terminated"), src=CALLEE), status=487)
    rig.recv(call.ack_non2xx(final))


def cancel_crossing_2xx(rig: Rig, call: Call) -> None:
    inv = one(rig.recv(call.invite()), method="INVITE")
    rig.recv(call.cancel())
    rig.recv(call.reply(inv, 200, "OK", sdp=True), src=CALLEE)  # ended by the race timeout


def unanswered(rig: Rig, call: Call) -> None:
    rig.recv(call.invite())  # no reply at all: Timer B, then 408 upstream


def ringing_forever(rig: Rig, call: Call) -> None:
    inv = one(rig.recv(call.invite()), method="INVITE")
    rig.recv(call.reply(inv, 180, "Ringing"), src=CALLEE)  # Timer C cancels it later


def forked_early(rig: Rig, call: Call) -> None:
    inv = one(rig.recv(call.invite()), method="INVITE")
    rig.recv(call.reply(inv, 180, "Ringing"), src=CALLEE)
    call.ttag = f"{call.ttag}-b"
    rig.recv(call.reply(inv, 183, "Session Progress"), src=CALLEE)
    ok = one(rig.recv(call.reply(inv, 200, "OK", sdp=True), src=CALLEE), status=200)
    rig.recv(call.ack(ok))
    rig.recv(call.in_dialog("BYE", ok))


def _fork_answers(rig: Rig, call: Call, inv: Out, tag: str, contact: str | None = None) -> Out:
    call.ttag = tag
    return one(rig.recv(call.reply(inv, 200, "OK", sdp=True, contact=contact)), status=200)


def forked_answered_twice(rig: Rig, call: Call) -> None:
    """Two forks answer; the caller ACKs both and BYEs the extra one, then the call."""
    inv = one(rig.recv(call.invite()), method="INVITE")
    ok_a = _fork_answers(rig, call, inv, "a")
    ok_b = _fork_answers(rig, call, inv, "b", "sip:carol@127.0.0.1:5090")
    rig.recv(call.ack(ok_a))
    rig.recv(call.ack(ok_b))
    for ok in (ok_b, ok_a):
        bye = one(rig.recv(call.in_dialog("BYE", ok)), method="BYE")
        rig.recv(call.answer_request(bye), src=bye.dest)


def forked_after_end(rig: Rig, call: Call) -> None:
    """The second fork answers after the call ended: relayed, its BYE refused."""
    inv = one(rig.recv(call.invite()), method="INVITE")
    ok_a = _fork_answers(rig, call, inv, "a")
    rig.recv(call.ack(ok_a))
    bye = one(rig.recv(call.in_dialog("BYE", ok_a)), method="BYE")
    rig.recv(call.answer_request(bye), src=CALLEE)
    ok_b = _fork_answers(rig, call, inv, "b", "sip:carol@127.0.0.1:5090")
    rig.recv(call.ack(ok_b))
    rig.recv(call.in_dialog("BYE", ok_b))


def cancel_crossing_forks(rig: Rig, call: Call) -> None:
    """A CANCEL crosses both forks' 2xx: the race timeout ends the call, the caller the rest."""
    inv = one(rig.recv(call.invite()), method="INVITE")
    rig.recv(call.reply(inv, 180, "Ringing"), src=CALLEE)
    rig.recv(call.cancel())
    ok_a = _fork_answers(rig, call, inv, "a")
    ok_b = _fork_answers(rig, call, inv, "b", "sip:carol@127.0.0.1:5090")
    rig.recv(call.ack(ok_a))
    rig.recv(call.ack(ok_b))
    rig.recv(call.in_dialog("BYE", ok_b))


def ended_by_mi(rig: Rig, call: Call) -> None:
    rig.call_up(call)
    dlg = rig.eng.dialogs.get_by_callid(call.callid)
    assert dlg is not None and rig.end_dialog(dlg)
    for bye in pick(rig.take(), method="BYE"):
        rig.recv(call.answer_request(bye), src=bye.dest)


def early_ended_by_mi(rig: Rig, call: Call) -> None:
    inv = one(rig.recv(call.invite()), method="INVITE")
    rig.recv(call.reply(inv, 180, "Ringing"), src=CALLEE)
    dlg = rig.eng.dialogs.get_by_callid(call.callid)
    assert dlg is not None and rig.end_dialog(dlg)
    cancel = one(rig.take(), method="CANCEL")
    rig.recv(call.answer_request(cancel), src=CALLEE)
    rig.recv(call.reply(inv, 487, "Request Terminated"), src=CALLEE)


def left_up(rig: Rig, call: Call) -> None:
    rig.call_up(call)  # ended by its lifetime (BYEs unanswered) or by a failed ping


def over_tcp(rig: Rig, call: Call) -> None:
    call.transport = "TCP"
    inv = one(rig.recv(call.invite(), sock=TCP, conn=7), method="INVITE")
    ok = one(rig.recv(call.reply(inv, 200, "OK", sdp=True), src=CALLEE), status=200)
    rig.recv(call.ack(ok), sock=TCP, conn=7)
    rig.recv(call.in_dialog("BYE", ok), sock=TCP, conn=7)


def malformed(rig: Rig, call: Call) -> None:
    rig.recv(call.invite(extra="CSeq: 2 INVITE\r\n"))  # two CSeqs: 400
    rig.recv(crlf("INVITE sip:bob@example.com SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5061\n\n"))
    rig.recv(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKnone\r\n\r\n")


SCENARIOS: list[Callable[[Rig, Call], None]] = [
    answered_caller_bye,
    answered_callee_bye,
    reinvited,
    rejected,
    cancelled,
    cancel_crossing_2xx,
    unanswered,
    ringing_forever,
    forked_early,
    forked_answered_twice,
    forked_after_end,
    cancel_crossing_forks,
    ended_by_mi,
    early_ended_by_mi,
    left_up,
    over_tcp,
    malformed,
]


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()


def unreachable() -> Counter[str]:
    """What a collection finds unreachable now, by type."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    found = Counter(type(o).__qualname__ for o in gc.garbage)
    gc.set_debug(0)
    gc.garbage.clear()
    return found


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"ping": "both", "ping_interval": 5.0, "ping_timeout": 2.0, "default_timeout": 60},
        {"delete_delay": 5, "default_timeout": 20, "bye_on_timeout": False},
    ],
    ids=["plain", "pings", "delete-delay"],
)
def test_calls_of_every_kind_leave_no_reference_cycles(
    collector_off: None, config: dict[str, Any]
) -> None:
    rig = Rig(**config)
    ring = rig.records = RecordRing(50)
    events = rig.events
    n = 0
    for _ in range(5):
        for scenario in SCENARIOS:
            n += 1
            scenario(rig, Call(n))
            rig.advance(0.2)
    rig.advance(50_000.0)  # every transaction, lifetime (12 h by default), ping and guard
    assert len(rig.eng.dialogs) == 0
    assert not rig.eng.server_txns and not rig.eng.client_txns
    assert rig.eng.next_deadline() is None
    assert ring.total >= n - 5  # every call but the malformed ones made a dialog and ended
    assert all(d.state != DlgState.DELETED or d.end_reason is not None for d in rig.eng.dialogs)
    assert events  # the observers saw the calls
    found = unreachable()
    assert sum(found.values()) == 0, f"reference cycles left by calls: {found.most_common(12)}"


def test_the_check_finds_a_cycle_made_per_call(collector_off: None) -> None:
    """The check above can fail: a shell that ties each ended dialog into a cycle is caught,
    dialog and all."""

    def tie(dlg: Dialog) -> None:
        dlg.timer = [dlg]

    rig = Rig()
    rig.on_ended = tie
    for n in range(3):
        answered_caller_bye(rig, Call(n))
    rig.advance(400.0)
    found = unreachable()
    assert found["Dialog"] >= 3 and found["list"] >= 3
