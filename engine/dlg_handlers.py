"""The SIP handlers that drive dialogs (OpenSIPS ``dlg_handlers.c``).

Called by the proxy core at the points where a message changes a dialog: the initial INVITE,
replies to it, and requests inside the dialog (which are also routed here, since a user agent
that ignores Record-Route still needs its requests sent on to the right party).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from . import dlg_ping, dlg_timer, failover
from .address import split_values
from .dialog import ANSWERED, CalleeLeg, Dialog, DlgEvent, DlgState, EndReason, Socket
from .dlg_life import fail, terminate, transition
from .locator import locate
from .message import SipError, SipMessage, sdp_of
from .transaction import ClientTransaction, ServerTransaction

if TYPE_CHECKING:
    from .proxy import Engine


def _uri_of(name_addr: str) -> str:
    if "<" in name_addr:
        return name_addr[name_addr.find("<") + 1 : name_addr.rfind(">")]
    return name_addr.split(";", 1)[0].strip()


def create_dialog(
    eng: Engine, msg: SipMessage, socket: Socket, src: tuple[str, int], conn: int | None
) -> Dialog:
    """A new dialog for an initial INVITE, in state 1."""
    callid = msg.callid
    h_entry, h_id = eng.dialogs.new_ids(callid)
    from_ = msg.from_
    contact = msg.contact
    dlg = Dialog(
        h_entry=h_entry,
        h_id=h_id,
        callid=callid,
        from_uri=from_.uri,
        to_uri=msg.to.uri,
        caller_tag=from_.tag or "",
        caller_contact=contact.uri if contact else "",
        caller_socket=socket,
        invite_cseq=msg.cseq[0],
        caller_route_set=tuple(msg.get_all("record-route")),
        caller_sdp=sdp_of(msg),
        # Interned: one string per peer address, not one per dialog.
        caller_source=(socket.proto, sys.intern(src[0]), src[1]),
        caller_conn=conn,
        lifetime=eng.config.default_timeout,
        created=eng.now,
    )
    eng.dialogs.add(dlg)
    eng.stats.processed_dialogs += 1
    eng.notify(dlg, DlgState.UNCONFIRMED)
    return dlg


def on_reply(eng: Engine, ctx: ClientTransaction, msg: SipMessage) -> None:
    """A reply to a request of this dialog (initial INVITE or in-dialog)."""
    dlg = ctx.dialog
    assert dlg is not None
    status = msg.status
    if ctx.direction == 0 and ctx.method == "INVITE":
        if status < 200:
            tag = msg.to.tag
            if not tag or dlg.state is DlgState.DELETED:
                return
            leg = dlg.leg_for_tag(tag)
            leg.socket = ctx.socket
            sdp = sdp_of(msg)
            if sdp is not None:
                leg.sdp = sdp
            transition(eng, dlg, DlgEvent.PROVISIONAL)
        elif status < 300:
            _confirm(eng, ctx, dlg, msg)
        else:
            fail(eng, dlg)
        return
    if status < 200 or status >= 300 or ctx.method not in ("INVITE", "UPDATE"):
        return
    # A target refresh answered: the responder's contact and SDP are its new ones.
    contact = msg.contact
    sdp = sdp_of(msg)
    if ctx.direction == 1:
        callee = dlg.leg_with_tag(msg.to.tag or "")
        if callee is not None:
            if contact is not None:
                callee.contact = contact.uri
            if sdp is not None:
                callee.sdp = sdp
    else:
        if contact is not None:
            dlg.caller_contact = contact.uri
        if sdp is not None:
            dlg.caller_sdp = sdp
    eng.mark_dirty(dlg)


def _confirm(eng: Engine, ctx: ClientTransaction, dlg: Dialog, msg: SipMessage) -> None:
    tag = msg.to.tag
    if not tag:
        return
    if dlg.state in ANSWERED:
        confirmed = dlg.callee
        if confirmed is not None and tag != confirmed.tag:
            _answer_fork(eng, ctx, dlg, msg, tag)
        return  # else a retransmitted 2xx
    if dlg.state is DlgState.DELETED:
        return  # a fork answering after the call ended: relayed, not tracked
    leg = dlg.leg_for_tag(tag)
    dlg.confirmed_leg = dlg.callees.index(leg)
    dlg.invite_branch = ""  # only an unanswered INVITE can be CANCELled
    _answered_leg(eng, ctx, leg, msg)
    dlg.timestart = int(eng.wall())
    transition(eng, dlg, DlgEvent.ANSWERED)
    dlg_timer.arm_lifetime(eng, dlg, dlg.lifetime)
    if eng.config.ping != "none":
        dlg_ping.start(eng, dlg)
    stx = ctx.server
    if stx is not None and stx.cancelled:
        dlg_timer.on_race_condition(eng, dlg)  # answered after the CANCEL: it lost the race


def _answered_leg(eng: Engine, ctx: ClientTransaction, leg: CalleeLeg, msg: SipMessage) -> None:
    """What a 2xx tells about the leg that sent it: its contact, SDP and route set."""
    contact = msg.contact
    if contact is not None:
        leg.contact = contact.uri
    leg.socket = ctx.socket
    sdp = sdp_of(msg)
    if sdp is not None:
        leg.sdp = sdp
    rr = msg.get_all("record-route")
    ours = next((i for i, v in enumerate(rr) if eng.is_local_uri(_uri_of(v))), len(rr))
    leg.route_set = tuple(rr[:ours][::-1])


def _answer_fork(
    eng: Engine, ctx: ClientTransaction, dlg: Dialog, msg: SipMessage, tag: str
) -> None:
    """A 2xx from another fork of an answered call (RFC 3261 §13.2.2.4, §16.7 step 5): it is
    relayed like any 2xx and its leg is tracked, so that the caller's ACK and BYE for it are
    routed to that callee; the call stays on the first leg that answered (OpenSIPS's
    ``DLG_LEG_200OK``), and only that leg's requests change the dialog's state."""
    leg = dlg.leg_for_tag(tag)
    known = leg.contact
    _answered_leg(eng, ctx, leg, msg)
    if leg.contact != known:
        eng.mark_dirty(dlg)


def _match(
    eng: Engine, callid: str, from_tag: str, to_tag: str
) -> tuple[Dialog | None, int, CalleeLeg | None]:
    """The dialog of an in-dialog request, its direction (1 from caller, 2 from callee) and
    the callee leg it belongs to (every stored To-tag matches, as OpenSIPS's match_dialog)."""
    for dlg in eng.dialogs.by_callid(callid):
        if dlg.caller_tag == from_tag:
            leg = dlg.leg_with_tag(to_tag)
            if leg is not None:
                return dlg, 1, leg
        if dlg.caller_tag == to_tag:
            leg = dlg.leg_with_tag(from_tag)
            if leg is not None:
                return dlg, 2, leg
    return None, 0, None


def route_in_dialog(
    eng: Engine,
    msg: SipMessage,
    stx: ServerTransaction | None,
    socket: Socket,
    src: tuple[str, int],
    conn: int | None,
    own_route: str | None,
) -> None:
    """Update the dialog for an in-dialog request and send it on (loose_route/match_dialog).

    A request on another fork's leg of an answered call (the caller ACKing and BYEing a second
    2xx, RFC 3261 §13.2.2.4) is routed to that fork and leaves the call as it is: only the leg
    that answered first moves the dialog (OpenSIPS: "to end the call, the BYE must be received
    on the same leg as the 200 OK for INVITE"), whichever side sends the request.
    """
    method = msg.method
    dlg, direction, leg = _match(eng, msg.callid, msg.from_.tag or "", msg.to.tag or "")
    if dlg is None or leg is None:
        did = None
        if own_route is not None and ";did=" in own_route:
            did = own_route.split(";did=", 1)[1].split(";", 1)[0]
        if did and did != "0" or own_route is None and eng.is_local_uri(msg.ruri):
            if method != "ACK":
                raise SipError(481, "Call/Transaction Does Not Exist")
            return
        if own_route is None:
            # Neither our dialog nor our Route: not ours to forward (OpenSIPS's 404), and
            # never sent to wherever its Request-URI points (no open relay).
            if method != "ACK":
                raise SipError(404, "Not Here")
            return
        # A dialog we record-routed without tracking it (SUBSCRIBE, REFER): sent on only to
        # an allowed destination, since its target comes from the message.
        if stx is not None:
            stx.dialog = None
        _send_on(eng, msg, stx, socket, None, 0, conn=None, checked=True)
        return
    if dlg.state is DlgState.DELETED:
        if method == "ACK":
            return
        raise SipError(481, "Call/Transaction Does Not Exist")
    if stx is not None:
        stx.dialog = dlg
    cseq = msg.cseq[0]
    call_leg = dlg.state not in ANSWERED or leg is dlg.callee
    if method not in ("ACK", "CANCEL"):
        eng.mark_dirty(dlg)
        if direction == 1:
            if cseq > leg.caller_cseq:
                leg.caller_cseq = cseq
        elif call_leg and cseq > dlg.callee_cseq:
            dlg.callee_cseq = cseq
    if not call_leg:
        pass  # another fork's leg: routed below, the call is left as it is
    elif method == "ACK":
        if transition(eng, dlg, DlgEvent.ACK) is not None:
            eng.mark_state(dlg)
    elif method in ("INVITE", "UPDATE"):
        contact = msg.contact
        sdp = sdp_of(msg)
        if direction == 1:
            if contact is not None:
                dlg.caller_contact = contact.uri
            if sdp is not None:
                dlg.caller_sdp = sdp
        else:
            if contact is not None:
                leg.contact = contact.uri
            if sdp is not None:
                leg.sdp = sdp
    elif method == "BYE":
        reason = EndReason.DOWNSTREAM_BYE if direction == 1 else EndReason.UPSTREAM_BYE
        terminate(eng, dlg, reason)

    original = _renumber_cseq(dlg, msg, direction, cseq) if call_leg and method != "CANCEL" else 0

    if own_route is None and eng.is_local_uri(msg.ruri):
        # The user agent ignored Record-Route: send on with the stored target and route set
        # (OpenSIPS fix_route_dialog).
        if direction == 1:
            target = leg.contact
            routes = leg.route_set
        else:
            target = dlg.caller_contact
            routes = dlg.caller_route_set
        if not target:
            raise SipError(481, "Call/Transaction Does Not Exist")
        msg.ruri = target
        msg.remove("route")
        for r in routes:
            msg.add_last("Route", r)
    if direction == 1:
        out = leg.socket or dlg.caller_socket
        _send_on(eng, msg, stx, out, dlg, direction, conn=None, original_cseq=original)
    else:
        out, conn = dlg.caller_socket, dlg.caller_conn
        _send_on(eng, msg, stx, out, dlg, direction, conn=conn, original_cseq=original)


def _renumber_cseq(dlg: Dialog, msg: SipMessage, direction: int, cseq: int) -> int:
    """After the proxy sent a request of its own to a party (a ping), that party has seen a
    CSeq its peer never used: the peer's later requests are renumbered above it, as OpenSIPS
    does, and stay so (the shift is kept).  Returns the original number when it changed, so
    the responses can carry it back; 0 otherwise.  An ACK takes its INVITE's shift."""
    if direction == 1:
        seen, shift = dlg.local_cseq_callee, dlg.cseq_shift_callee
    else:
        seen, shift = dlg.local_cseq_caller, dlg.cseq_shift_caller
    if not seen:
        return 0  # the proxy never spoke to that party: numbers pass unchanged
    out = cseq + shift
    if msg.method != "ACK":
        if out <= seen:
            shift = seen + 1 - cseq
            out = cseq + shift
        if direction == 1:
            dlg.local_cseq_callee, dlg.cseq_shift_callee = out, shift
        else:
            dlg.local_cseq_caller, dlg.cseq_shift_caller = out, shift
    if out == cseq:
        return 0
    msg.set("CSeq", f"{out} {msg.cseq[1]}")
    return cseq


def _send_on(
    eng: Engine,
    msg: SipMessage,
    stx: ServerTransaction | None,
    default: Socket,
    dlg: Dialog | None,
    direction: int,
    conn: int | None,
    checked: bool = False,
    original_cseq: int = 0,
) -> None:
    """Forward to the first Route, else to the Request-URI; ``checked``: only to a
    destination the relay policy allows; ``original_cseq``: the number the sender used, put
    back into the responses (renumbered requests)."""
    routes = msg.get("route")
    uri = _uri_of(split_values(routes)[0]) if routes else msg.ruri
    where = locate(uri, default.proto)
    if checked and not eng.relay.allows(where):
        raise SipError(403, "Relay Forbidden")
    attempt = failover.Attempt(msg, stx, default, dlg, direction, conn, False, [(None, where)])
    attempt.original_cseq = original_cseq
    failover.advance(eng, attempt)
