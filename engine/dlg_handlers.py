"""The SIP handlers that drive dialogs (OpenSIPS ``dlg_handlers.c``).

Called by the proxy core at the points where a message changes a dialog: the initial INVITE,
replies to it, and requests inside the dialog (which are also routed here, since a user agent
that ignores Record-Route still needs its requests sent on to the right party).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from . import dlg_ping, dlg_req_within
from .address import split_values
from .dialog import Dialog, DlgEvent, DlgState, EndReason, Socket
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
    if eng.observers:
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
            old = dlg.apply(DlgEvent.PROVISIONAL)
            if old is not None:
                eng.stats.early_dialogs += 1
                eng.notify(dlg, old)
        elif status < 300:
            _confirm(eng, ctx, dlg, msg)
        else:
            on_failure(eng, dlg)
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
    was_early = dlg.state is DlgState.EARLY
    old = dlg.apply(DlgEvent.ANSWERED)
    stats = eng.stats
    if was_early:
        stats.early_dialogs -= 1
    stats.active_dialogs += 1
    dlg.timestart = int(eng.wall())
    arm_lifetime(eng, dlg, dlg.lifetime)
    if eng.config.ping != "none":
        dlg_ping.start(eng, dlg)
    if old is not None:
        eng.notify(dlg, old)
    stx = ctx.server
    if stx is not None and stx.cancelled:
        on_race_condition(eng, dlg)  # answered after the caller's CANCEL: it lost the race


def on_race_condition(eng: Engine, dlg: Dialog) -> None:
    """A CANCEL and a 2xx crossed: the call is up, but its caller may believe it cancelled and
    never ACK or BYE it.  As OpenSIPS does, the lifetime is cut to ``race_condition_timeout``;
    a BYE within it ends the call as usual, else both sides get a BYE ("SIP Race Condition")."""
    if dlg.state not in (DlgState.CONFIRMED_NA, DlgState.CONFIRMED) or dlg.race_condition:
        return
    dlg.race_condition = True
    if dlg.end_reason == EndReason.CANCELLED:
        dlg.end_reason = None  # it was answered, not cancelled
    timeout = eng.config.race_condition_timeout
    if dlg.timeout == 0 or dlg.timeout > eng.wall() + timeout:
        arm_lifetime(eng, dlg, timeout)


def arm_lifetime(eng: Engine, dlg: Dialog, seconds: float) -> None:
    """(Re)start the lifetime timer; ``timeout`` shows the absolute expiry."""
    timer = dlg.timer
    if timer is not None:
        timer.cancel()  # type: ignore[attr-defined]
    dlg.timeout = int(eng.wall() + seconds)
    eng.mark_dirty(dlg)
    dlg.timer = eng.timers.call_later(eng.now, seconds, on_lifetime, eng, dlg)


def on_lifetime(eng: Engine, dlg: Dialog) -> None:
    dlg.timer = None
    if dlg.state not in (DlgState.CONFIRMED_NA, DlgState.CONFIRMED):
        return
    eng.stats.expired_dialogs += 1
    if dlg.race_condition:
        dlg_req_within.end_dialog(eng, dlg, EndReason.SIP_RACE_CONDITION, "")
    elif eng.config.bye_on_timeout:
        dlg_req_within.end_dialog(eng, dlg, EndReason.LIFETIME_TIMEOUT, "")
    else:  # without flag B the dialog just expires: no BYE, no reason (reference §5.2)
        terminate(eng, dlg, None)


def set_lifetime(eng: Engine, dlg: Dialog, seconds: int) -> bool:
    """Change a live dialog's remaining lifetime (MI ``dlg_set_timeout``); False if ended."""
    if dlg.state is DlgState.DELETED:
        return False
    dlg.lifetime = seconds
    if dlg.state in (DlgState.CONFIRMED_NA, DlgState.CONFIRMED):
        arm_lifetime(eng, dlg, seconds)
    return True


def on_failure(eng: Engine, dlg: Dialog) -> None:
    """A negative final reply (or a timeout) to the initial INVITE."""
    if dlg.state not in (DlgState.UNCONFIRMED, DlgState.EARLY):
        return
    was_early = dlg.state is DlgState.EARLY
    old = dlg.apply(DlgEvent.FAILED)
    stats = eng.stats
    stats.failed_dialogs += 1
    if was_early:
        stats.early_dialogs -= 1
    _ended(eng, dlg, old)


def terminate(eng: Engine, dlg: Dialog, reason: str | None) -> None:
    """End a dialog (state 5) with ``reason`` unless an earlier one was set."""
    if reason is not None:
        dlg.set_end_reason(reason)
    previous = dlg.state
    old = dlg.apply(DlgEvent.TERMINATE)
    if old is None:
        return
    stats = eng.stats
    if previous in (DlgState.CONFIRMED_NA, DlgState.CONFIRMED):
        stats.active_dialogs -= 1
    elif previous is DlgState.EARLY:
        stats.early_dialogs -= 1
    _ended(eng, dlg, old)


def _ended(eng: Engine, dlg: Dialog, old: DlgState | None) -> None:
    dlg.ended = eng.now
    eng.mark_dirty(dlg)
    timer = dlg.timer
    if timer is not None:
        timer.cancel()  # type: ignore[attr-defined]
        dlg.timer = None
    if old is not None:
        eng.notify(dlg, old)
    for hook in eng.ended_hooks:
        hook(dlg)
    delay = eng.config.delete_delay
    if delay > 0:
        eng.timers.call_later(eng.now, delay, eng.dialogs.remove, dlg)
    else:
        eng.dialogs.remove(dlg)


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
        # A dialog we do not track (or a request merely routed through us): route it.
        if stx is not None:
            stx.dialog = None
        _send_on(eng, msg, stx, socket, None, 0, conn=None)
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
        old = dlg.apply(DlgEvent.ACK)
        if old is not None:
            eng.mark_state(dlg)
            eng.notify(dlg, old)
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
) -> None:
    """Forward to the first Route, else to the Request-URI."""
    from .proxy import uri_target

    routes = msg.get("route")
    uri = _uri_of(split_values(routes)[0]) if routes else msg.ruri
    proto, host, port = uri_target(uri, default.proto)
    out = eng.socket_for(proto, default)
    if proto != "tcp":
        conn = None
    eng.forward(msg, stx, out, host, port, conn, dlg, direction)
