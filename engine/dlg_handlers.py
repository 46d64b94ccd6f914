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
from .dialog import Dialog, DlgEvent, DlgState, EndReason, Socket
from .dlg_life import fail, terminate, transition
from .locator import locate
from .message import ENCODING, ERRORS, SipError, SipMessage
from .transaction import ClientTransaction, ServerTransaction

if TYPE_CHECKING:
    from .proxy import Engine


def sdp_of(msg: SipMessage) -> str | None:
    if not msg.body:
        return None
    ctype = msg.get("content-type")
    if ctype is None or not ctype.lower().startswith("application/sdp"):
        return None
    return msg.body.decode(ENCODING, ERRORS)


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
        callee = dlg.callee
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
    if dlg.state not in (DlgState.UNCONFIRMED, DlgState.EARLY):
        return  # a retransmitted or forked 2xx
    tag = msg.to.tag
    if not tag:
        return
    leg = dlg.leg_for_tag(tag)
    dlg.confirmed_leg = dlg.callees.index(leg)
    dlg.invite_branch = ""  # only an unanswered INVITE can be CANCELled
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
    dlg.timestart = int(eng.wall())
    transition(eng, dlg, DlgEvent.ANSWERED)
    dlg_timer.arm_lifetime(eng, dlg, dlg.lifetime)
    if eng.config.ping != "none":
        dlg_ping.start(eng, dlg)
    stx = ctx.server
    if stx is not None and stx.cancelled:
        dlg_timer.on_race_condition(eng, dlg)  # answered after the CANCEL: it lost the race


def _match(eng: Engine, callid: str, from_tag: str, to_tag: str) -> tuple[Dialog | None, int]:
    """The dialog of an in-dialog request and its direction (1 from caller, 2 from callee)."""
    for dlg in eng.dialogs.by_callid(callid):
        if dlg.caller_tag == from_tag and any(leg.tag == to_tag for leg in dlg.callees):
            return dlg, 1
        if dlg.caller_tag == to_tag and any(leg.tag == from_tag for leg in dlg.callees):
            return dlg, 2
    return None, 0


def route_in_dialog(
    eng: Engine,
    msg: SipMessage,
    stx: ServerTransaction | None,
    socket: Socket,
    src: tuple[str, int],
    conn: int | None,
    own_route: str | None,
) -> None:
    """Update the dialog for an in-dialog request and send it on (loose_route/match_dialog)."""
    method = msg.method
    dlg, direction = _match(eng, msg.callid, msg.from_.tag or "", msg.to.tag or "")
    if dlg is None:
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
    leg = dlg.callee
    if method not in ("ACK", "CANCEL"):
        eng.mark_dirty(dlg)
        if direction == 1 and leg is not None:
            if cseq > leg.caller_cseq:
                leg.caller_cseq = cseq
        elif cseq > dlg.callee_cseq:
            dlg.callee_cseq = cseq
    if method == "ACK":
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
        elif leg is not None:
            if contact is not None:
                leg.contact = contact.uri
            if sdp is not None:
                leg.sdp = sdp
    elif method == "BYE":
        reason = EndReason.DOWNSTREAM_BYE if direction == 1 else EndReason.UPSTREAM_BYE
        terminate(eng, dlg, reason)

    if own_route is None and eng.is_local_uri(msg.ruri):
        # The user agent ignored Record-Route: send on with the stored target and route set
        # (OpenSIPS fix_route_dialog).
        if direction == 1:
            target = leg.contact if leg is not None else ""
            routes = leg.route_set if leg is not None else ()
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
        out_default = leg.socket if leg is not None and leg.socket else dlg.caller_socket
        _send_on(eng, msg, stx, out_default, dlg, direction, conn=None)
    else:
        _send_on(eng, msg, stx, dlg.caller_socket, dlg, direction, conn=dlg.caller_conn)


def _send_on(
    eng: Engine,
    msg: SipMessage,
    stx: ServerTransaction | None,
    default: Socket,
    dlg: Dialog | None,
    direction: int,
    conn: int | None,
    checked: bool = False,
) -> None:
    """Forward to the first Route, else to the Request-URI; ``checked``: only to a
    destination the relay policy allows."""
    routes = msg.get("route")
    uri = _uri_of(split_values(routes)[0]) if routes else msg.ruri
    where = locate(uri, default.proto)
    if checked and not eng.relay.allows(where):
        raise SipError(403, "Relay Forbidden")
    attempt = failover.Attempt(msg, stx, default, dlg, direction, conn, False, [(None, where)])
    failover.advance(eng, attempt)
