"""Requests the engine sends on its own inside a dialog (OpenSIPS ``dlg_req_within.c``).

BYEs built from the stored leg data, playing the other party as OpenSIPS's dlg_end_dlg does,
and CANCELs of the pending INVITE branch for dialogs that are not yet answered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .address import is_stream, uri_target
from .dialog import Dialog, DlgState
from .dlg_life import fail, terminate
from .message import ENCODING, ERRORS, SipError, SipMessage, header_key
from .transaction import T1, ClientTransaction, TxState

if TYPE_CHECKING:
    from .proxy import Engine


def end_dialog(eng: Engine, dlg: Dialog, reason: str, extra_headers: str) -> bool:
    """BYE both legs of a confirmed dialog, or CANCEL an early one; False if impossible."""
    state = dlg.state
    if state is DlgState.DELETED:
        return False
    if state in (DlgState.UNCONFIRMED, DlgState.EARLY):
        ctx = eng.client_txns.get((dlg.invite_branch, "INVITE"))
        if ctx is None or ctx.state not in (TxState.CALLING, TxState.PROCEEDING):
            return False
        dlg.set_end_reason(reason)
        cancel_branch(eng, ctx)
        return True
    extra = _header_block(eng.config.bye_extra_headers) + _header_block(extra_headers)
    send_bye(eng, dlg, to_caller=True, extra=extra)
    send_bye(eng, dlg, to_caller=False, extra=extra)
    terminate(eng, dlg, reason)
    return True


def _header_block(text: str) -> str:
    """Extra header text as complete CRLF-terminated lines (a missing final CRLF is added)."""
    if not text:
        return ""
    text = text.replace("\r\n", "\n").replace("\n", "\r\n")
    return text if text.endswith("\r\n") else text + "\r\n"


def send_bye(eng: Engine, dlg: Dialog, *, to_caller: bool, extra: str) -> None:
    ctx = send_within(eng, dlg, "BYE", to_caller=to_caller, extra=extra, handler=_bye_answered)
    if ctx is not None:
        dlg.pending_byes += 1


def send_within(
    eng: Engine,
    dlg: Dialog,
    method: str,
    *,
    to_caller: bool,
    handler: Callable[[ClientTransaction, SipMessage | None], None],
    extra: str = "",
    sdp: str = "",
) -> ClientTransaction | None:
    """Send a request inside ``dlg`` to one party, playing the other one (as OpenSIPS).

    R-URI = that party's contact, Route = its route set, From/To swapped accordingly, CSeq
    above anything that party has seen (its peer's requests and ours).  None when the leg has
    no usable target.
    """
    leg = dlg.callee
    callee_tag = leg.tag if leg is not None else ""
    if to_caller:
        ruri = dlg.caller_contact
        routes = dlg.caller_route_set
        to = f"<{dlg.from_uri}>;tag={dlg.caller_tag}"
        from_ = f"<{dlg.to_uri}>;tag={callee_tag}"
        socket = dlg.caller_socket
        conn = dlg.caller_conn
        if not ruri and dlg.caller_source is not None:
            ruri = f"sip:{dlg.caller_source[1]}:{dlg.caller_source[2]}"
    else:
        if leg is None:
            return None
        ruri = leg.contact
        routes = leg.route_set
        to = f"<{dlg.to_uri}>;tag={callee_tag}"
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
        out = eng.socket_for(proto, socket, host)
    except SipError:  # an unroutable stored target: nothing can be sent on this leg
        return None
    if not is_stream(proto):
        conn = None
    if to_caller:
        cseq = max(dlg.callee_cseq + dlg.cseq_shift_caller, dlg.local_cseq_caller) + 1
        dlg.local_cseq_caller = cseq
    else:
        assert leg is not None
        cseq = max(leg.caller_cseq + dlg.cseq_shift_callee, dlg.local_cseq_callee) + 1
        dlg.local_cseq_callee = cseq
    eng.mark_dirty(dlg)
    branch = eng.new_branch()
    headers = [("Via", f"SIP/2.0/{proto.upper()} {out.hostport};branch={branch}")]
    headers += [("Route", r) for r in routes]
    headers += [
        ("To", to),
        ("From", from_),
        ("CSeq", f"{cseq} {method}"),
        ("Call-ID", dlg.callid),
        ("Max-Forwards", "70"),
        *user_agent(eng),
    ]
    if method == "INVITE":  # a re-INVITE ping: we are the other party's stand-in
        headers.append(("Contact", f"<sip:{out.hostport}{_transport_param(out.proto)}>"))
    data, msg = build_request(method, ruri, headers, extra, sdp=sdp)
    ctx = ClientTransaction(eng, branch, msg, out, host, port, conn)
    ctx.dialog = dlg
    ctx.handler = handler
    eng.client_txns[(branch, method)] = ctx
    ctx.start(data)
    return ctx


def user_agent(eng: Engine) -> list[tuple[str, str]]:
    """The User-Agent of a request the engine sends itself, if the settings want one."""
    value = eng.config.user_agent_header
    return [("User-Agent", value)] if value else []


def build_request(
    method: str,
    ruri: str,
    headers: list[tuple[str, str]],
    extra: str = "",
    *,
    lines: list[tuple[str, str]] | None = None,
    sdp: str = "",
) -> tuple[bytes, SipMessage]:
    """A request the engine originates: the bytes to send and the same message, built once
    (nothing is written as text and parsed back).  ``headers`` are (name, value) pairs;
    ``lines`` (key, whole line) pairs copied from another message; ``extra`` is a block of
    CRLF-terminated header lines from the settings or the MI.  Content-Length is added."""
    rows = [[k, line, line.partition(":")[2].strip()] for k, line in lines or ()]
    rows += [[header_key(n), f"{n}: {v}", v] for n, v in headers]
    for line in extra.split("\r\n"):
        name, colon, value = line.partition(":")
        if colon:
            rows.append([header_key(name), line, value.strip()])
    body = sdp.encode(ENCODING, ERRORS)
    if body:
        rows.append(["content-type", "Content-Type: application/sdp", "application/sdp"])
    rows.append(["content-length", f"Content-Length: {len(body)}", str(len(body))])
    msg = SipMessage(method, ruri, 0, "", rows, body)
    return msg.to_bytes(), msg


def send_ack(eng: Engine, invite: ClientTransaction, request: SipMessage) -> None:
    """The ACK for a 2xx to a re-INVITE the engine sent (``request``; RFC 3261 §13.2.2.4):
    end to end, a new branch, the INVITE's Request-URI, Route, From, To, Call-ID and CSeq."""
    branch = eng.new_branch()
    via = f"Via: SIP/2.0/{invite.socket.proto.upper()} {invite.socket.hostport};branch={branch}"
    lines = [("via", via)]
    lines += [(h[0], h[1]) for h in request.headers if h[0] in ("route", "from", "to", "call-id")]
    lines += [("cseq", f"CSeq: {request.cseq[0]} ACK"), ("max-forwards", "Max-Forwards: 70")]
    data, _ = build_request("ACK", request.ruri, [], lines=lines)
    eng.send(invite.socket, invite.host, invite.port, invite.conn, data)


def _transport_param(proto: str) -> str:
    return "" if proto == "udp" else f";transport={proto}"


def _bye_answered(ctx: ClientTransaction, msg: SipMessage | None) -> None:
    if msg is not None and msg.status < 200:
        return
    dlg = ctx.dialog
    if dlg is not None:
        dlg.pending_byes -= 1


def cancel_branch(eng: Engine, ctx: ClientTransaction) -> None:
    """CANCEL a pending INVITE branch; before any 1xx the CANCEL waits (RFC 3261 §9.1)."""
    if ctx.cancelled:
        return
    ctx.cancelled = True
    eng.timers.call_later(eng.now, 64 * T1, _cancel_guard, eng, ctx)
    if ctx.provisional:
        send_cancel(eng, ctx)
    else:
        ctx.cancel_pending = True


def send_cancel(eng: Engine, ctx: ClientTransaction) -> None:
    invite = ctx.request
    if invite is None:  # answered meanwhile: nothing left to cancel
        return
    # RFC 3261 §9.1: the INVITE's top Via (our branch), Request-URI, From, Call-ID, To and
    # Route, with the CSeq number of the INVITE.
    headers = [next((h[0], h[1]) for h in invite.headers if h[0] == "via")]
    headers += [(h[0], h[1]) for h in invite.headers if h[0] in ("from", "call-id", "route")]
    headers += [
        ("to", f"To: {invite.get('to') or ''}"),
        ("cseq", f"CSeq: {invite.cseq[0]} CANCEL"),
        ("max-forwards", "Max-Forwards: 70"),
    ]
    if eng.config.user_agent_header:
        headers.append(("user-agent", f"User-Agent: {eng.config.user_agent_header}"))
    data, cancel = build_request("CANCEL", invite.ruri, [], lines=headers)
    cctx = ClientTransaction(eng, ctx.branch, cancel, ctx.socket, ctx.host, ctx.port, ctx.conn)
    cctx.handler = _ignore
    eng.client_txns[(ctx.branch, "CANCEL")] = cctx
    cctx.start(data)


def _ignore(ctx: ClientTransaction, msg: SipMessage | None) -> None:
    return None


def _cancel_guard(eng: Engine, ctx: ClientTransaction) -> None:
    """No final reply 64*T1 after our CANCEL: give up the branch and answer upstream."""
    if ctx.state not in (TxState.CALLING, TxState.PROCEEDING):
        return
    ctx._terminate()
    if ctx.dialog is not None:
        fail(eng, ctx.dialog)
    stx = ctx.server
    if stx is not None and stx.state in (TxState.TRYING, TxState.PROCEEDING):
        eng.reply(
            stx,
            487 if stx.cancelled else 408,
            "Request Terminated" if stx.cancelled else "Request Timeout",
        )
