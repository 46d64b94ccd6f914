"""In-dialog pings: OPTIONS (OpenSIPS dialog flags P and p, ``options_ping_interval``) or
re-INVITEs (flags R and r, ``reinvite_ping_interval``; ``config.ping_method``).

Sans-I/O like the rest of the engine: every ping, and the guard that waits for its answer, is a
timer on ``eng.timers``; the OPTIONS goes out through a :class:`ClientTransaction` whose
``handler`` sees the answer.  Started by ``dlg_handlers._confirm`` when ``config.ping`` is not
"none".

* Every ``ping_interval`` seconds an OPTIONS goes to the pinged side, built as the engine builds
  its BYEs (:func:`engine.dlg_req_within.send_bye`): Request-URI the leg's contact, Route the
  leg's route set, From/To playing the other party, CSeq above anything that party sent and above
  the engine's own earlier requests on that leg (``local_cseq_*``), so a later BYE is higher still.
* A re-INVITE ping carries the SDP the pinged party already has from its peer (so nothing
  changes for the media), its 2xx is ACKed by the engine and the SDP of the answer kept; a
  re-INVITE is what a party that ignores OPTIONS (some gateways, dialers) still answers.
* A 408 or 481, or no final answer within ``ping_timeout`` seconds, ends the dialog with BYEs to
  both sides and the reason "Caller Ping Timeout" / "Callee Ping Timeout".  Any other final
  answer (even a 4xx-6xx, or a reply we cannot make sense of beyond its status) keeps the call.
* A ping timer of a dialog that ended is simply dropped when it comes due (lazy, like the
  timer queue's cancel).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import dlg_req_within
from .dialog import ANSWERED, Dialog, EndReason
from .message import SipMessage, sdp_of
from .transaction import ClientTransaction

if TYPE_CHECKING:
    from .proxy import Engine

#: Answers to a ping that mean the other side has lost the dialog.
DEAD_STATUSES = frozenset({408, 481})


def start(eng: Engine, dlg: Dialog) -> None:
    """Arm the pings for a dialog that was just confirmed, per ``config.ping``."""
    mode = eng.config.ping
    interval = eng.config.ping_interval
    if mode in ("caller", "both"):
        eng.timers.call_later(eng.now, interval, ping, eng, dlg, True)
    if mode in ("callee", "both"):
        eng.timers.call_later(eng.now, interval, ping, eng, dlg, False)


def ping(eng: Engine, dlg: Dialog, to_caller: bool) -> None:
    """Send one OPTIONS to a side and watch for its answer."""
    if dlg.state not in ANSWERED:
        return
    interval = eng.config.ping_interval
    sent_at = eng.now
    guard = None

    request: SipMessage | None = None

    def answered(txn: ClientTransaction, msg: SipMessage | None) -> None:
        if msg is not None and msg.status < 200:
            return  # provisional: keep waiting (the guard still runs)
        if msg is not None and msg.status < 300 and request is not None:
            dlg_req_within.send_ack(eng, txn, request)  # each 2xx, retransmissions too
            _note_answer_sdp(dlg, to_caller, msg)
        if guard is None or not guard.active:
            return  # the guard already decided
        guard.cancel()
        if dlg.state not in ANSWERED:
            return
        if msg is None or msg.status in DEAD_STATUSES:
            _dead(eng, dlg, to_caller)
            return
        eng.timers.call_at(max(eng.now, sent_at + interval), ping, eng, dlg, to_caller)

    reinvite = eng.config.ping_method == "reinvite"
    sdp = ""
    if reinvite:  # what the pinged party already has from its peer: the media stay as they are
        if to_caller:
            sdp = (dlg.callee.sdp if dlg.callee is not None else None) or ""
        else:
            sdp = dlg.caller_sdp or ""
    ctx = dlg_req_within.send_within(
        eng,
        dlg,
        "INVITE" if reinvite else "OPTIONS",
        to_caller=to_caller,
        handler=answered,
        sdp=sdp,
    )
    if ctx is not None and reinvite and ctx.request is not None:
        request = ctx.request  # the 2xx's ACK is built from it (the transaction drops it)
        _note_sent_sdp(dlg, to_caller, sdp)
    if ctx is None:  # nothing to send to on this leg: try again later
        eng.timers.call_later(eng.now, interval, ping, eng, dlg, to_caller)
        return
    guard = eng.timers.call_later(
        eng.now, eng.config.ping_timeout, _no_answer, eng, dlg, ctx, to_caller
    )


def _no_answer(eng: Engine, dlg: Dialog, ctx: ClientTransaction, to_caller: bool) -> None:
    ctx._terminate()  # stop retransmitting; a late answer is dropped as stray
    if dlg.state in ANSWERED:
        _dead(eng, dlg, to_caller)


def _dead(eng: Engine, dlg: Dialog, to_caller: bool) -> None:
    reason = EndReason.CALLER_PING_TIMEOUT if to_caller else EndReason.CALLEE_PING_TIMEOUT
    dlg_req_within.end_dialog(eng, dlg, reason, "")


def _note_sent_sdp(dlg: Dialog, to_caller: bool, sdp: str) -> None:
    """What the engine offered (``caller_sent_sdp``/``callee_sent_sdp`` in ``dlg_list``)."""
    if not sdp:
        return
    if to_caller:
        dlg.caller_sent_sdp = sdp
    elif dlg.callee is not None:
        dlg.callee.sent_sdp = sdp


def _note_answer_sdp(dlg: Dialog, to_caller: bool, msg: SipMessage) -> None:
    sdp = sdp_of(msg)
    if sdp is None:
        return
    if to_caller:
        dlg.caller_sdp = sdp
    elif dlg.callee is not None:
        dlg.callee.sdp = sdp
