"""In-dialog OPTIONS pings (OpenSIPS dialog flags P and p, ``options_ping_interval``).

Sans-I/O like the rest of the engine: every ping, and the guard that waits for its answer, is a
timer on ``eng.timers``; the OPTIONS goes out through a :class:`ClientTransaction` whose
``handler`` sees the answer.  Started by ``dlg_handlers._confirm`` when ``config.ping`` is not
"none".

* Every ``ping_interval`` seconds an OPTIONS goes to the pinged side, built as the engine builds
  its BYEs (:func:`engine.dlg_req_within.send_bye`): Request-URI the leg's contact, Route the
  leg's route set, From/To playing the other party, CSeq above anything that party sent and above
  the engine's own earlier requests on that leg (``local_cseq_*``), so a later BYE is higher still.
* A 408 or 481, or no final answer within ``ping_timeout`` seconds, ends the dialog with BYEs to
  both sides and the reason "Caller Ping Timeout" / "Callee Ping Timeout".  Any other final
  answer (even a 4xx-6xx, or a reply we cannot make sense of beyond its status) keeps the call.
* A ping timer of a dialog that ended is simply dropped when it comes due (lazy, like the
  timer queue's cancel).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import dlg_req_within
from .dialog import Dialog, DlgState, EndReason
from .message import ENCODING, ERRORS, SipMessage, parse
from .transaction import ClientTransaction

if TYPE_CHECKING:
    from .proxy import Engine

#: Answers to a ping that mean the other side has lost the dialog.
DEAD_STATUSES = frozenset({408, 481})
_LIVE = (DlgState.CONFIRMED_NA, DlgState.CONFIRMED)


def start(eng: Engine, dlg: Dialog) -> None:
    """Arm the pings for a dialog that was just confirmed, per ``config.ping``."""
    mode = eng.config.ping
    first = eng.now + eng.config.ping_interval
    if mode in ("caller", "both"):
        eng.timers.call_at(first, ping, eng, dlg, True)
    if mode in ("callee", "both"):
        eng.timers.call_at(first, ping, eng, dlg, False)


def ping(eng: Engine, dlg: Dialog, to_caller: bool) -> None:
    """Send one OPTIONS to a side and watch for its answer."""
    if dlg.state not in _LIVE:
        return
    interval = eng.config.ping_interval
    sent_at = eng.now
    guard = None

    def answered(txn: ClientTransaction, msg: SipMessage | None) -> None:
        if msg is not None and msg.status < 200:
            return  # provisional: keep waiting (the guard still runs)
        if guard is None or not guard.active:
            return  # the guard already decided
        guard.cancel()
        if dlg.state not in _LIVE:
            return
        if msg is None or msg.status in DEAD_STATUSES:
            _dead(eng, dlg, to_caller)
            return
        eng.timers.call_at(max(eng.now, sent_at + interval), ping, eng, dlg, to_caller)

    ctx = send_options(eng, dlg, to_caller, answered)
    if ctx is None:  # nothing to send to on this leg: try again later
        eng.timers.call_at(eng.now + interval, ping, eng, dlg, to_caller)
        return
    guard = eng.timers.call_at(
        eng.now + eng.config.ping_timeout, _no_answer, eng, dlg, ctx, to_caller
    )


def _no_answer(eng: Engine, dlg: Dialog, ctx: ClientTransaction, to_caller: bool) -> None:
    ctx._terminate()  # stop retransmitting; a late answer is dropped as stray
    if dlg.state in _LIVE:
        _dead(eng, dlg, to_caller)


def _dead(eng: Engine, dlg: Dialog, to_caller: bool) -> None:
    reason = EndReason.CALLER_PING_TIMEOUT if to_caller else EndReason.CALLEE_PING_TIMEOUT
    dlg_req_within.end_dialog(eng, dlg, reason, "")


def send_options(
    eng: Engine,
    dlg: Dialog,
    to_caller: bool,
    handler: object,
) -> ClientTransaction | None:
    """Build and send an in-dialog OPTIONS to one side; None when that leg has no target."""
    from .proxy import uri_target

    leg = dlg.callee
    if leg is None:
        return None
    if to_caller:
        ruri = dlg.caller_contact
        routes = dlg.caller_route_set
        to = f"<{dlg.from_uri}>;tag={dlg.caller_tag}"
        from_ = f"<{dlg.to_uri}>;tag={leg.tag}"
        socket = dlg.caller_socket
        conn = dlg.caller_conn
        if not ruri and dlg.caller_source is not None:
            ruri = f"sip:{dlg.caller_source[1]}:{dlg.caller_source[2]}"
    else:
        ruri = leg.contact
        routes = leg.route_set
        to = f"<{dlg.to_uri}>;tag={leg.tag}"
        from_ = f"<{dlg.from_uri}>;tag={dlg.caller_tag}"
        socket = leg.socket or dlg.caller_socket
        conn = None
    if not ruri:
        return None
    first = routes[0] if routes else ruri
    if "<" in first:
        first = first[first.find("<") + 1 : first.rfind(">")]
    try:
        proto, host, port = uri_target(first, socket.proto)
        out = eng.socket_for(proto, socket)
    except Exception:  # an unroutable stored target
        return None
    if proto != "tcp":
        conn = None
    # CSeq: above what this party has seen from the other side and from us; BYEs go higher.
    if to_caller:
        cseq = max(dlg.callee_cseq, dlg.local_cseq_caller) + 1
        dlg.local_cseq_caller = cseq
    else:
        cseq = max(leg.caller_cseq, dlg.local_cseq_callee) + 1
        dlg.local_cseq_callee = cseq
    branch = eng.new_branch()
    lines = [
        f"OPTIONS {ruri} SIP/2.0",
        f"Via: SIP/2.0/{proto.upper()} {out.host}:{out.port};branch={branch}",
    ]
    lines.extend(f"Route: {r}" for r in routes)
    lines += [
        f"To: {to}",
        f"From: {from_}",
        f"CSeq: {cseq} OPTIONS",
        f"Call-ID: {dlg.callid}",
        "Max-Forwards: 70",
        f"User-Agent: {eng.config.user_agent}",
        "Content-Length: 0",
        "",
        "",
    ]
    data = "\r\n".join(lines).encode(ENCODING, ERRORS)
    msg = parse(data, stream=True)
    ctx = ClientTransaction(eng, branch, msg, out, host, port, conn)
    ctx.dialog = dlg
    ctx.handler = handler  # type: ignore[assignment]
    eng.client_txns[(branch, "OPTIONS")] = ctx
    ctx.start(data)
    return ctx
