"""Serial forking over a request's targets (RFC 3263 §4.3; OpenSIPS's ``ds_next_dst``).

A request is sent to its first target; one that refuses (ICMP, TCP/TLS connect failure), is
silent or answers 503 is skipped for the next target of the same destination (the next SRV
record, the next address), then for the next destination of the set.  When none is left the
caller gets a 503 at once, with a ``Reason`` header saying why (RFC 3326), instead of a 408
after 32 seconds.  Each new target gets a new branch: a new client transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import dlg_life
from .address import is_sips, is_stream
from .dialog import Dialog, Socket
from .dispatcher import Destination, DsState
from .errors import SipError
from .events import DestinationChanged
from .locator import Query, Target
from .message import SipMessage
from .transaction import ClientTransaction, ServerTransaction, TxState

if TYPE_CHECKING:
    from .proxy import Engine

Where = tuple[Target, ...] | Query


@dataclass(slots=True, eq=False)
class Attempt:
    """A request on its way to the first target that takes it."""

    msg: SipMessage
    stx: ServerTransaction | None
    #: Where the request came in (Record-Route names it when it leaves elsewhere).
    socket: Socket
    dlg: Dialog | None
    direction: int
    #: A stream connection to prefer (an in-dialog request back to a TCP caller).
    conn: int | None
    record_route: bool
    #: The destinations left, each with its address or the DNS query that gives them.
    hops: list[tuple[Destination | None, Where]]
    targets: list[Target] = field(default_factory=list)
    dest: Destination | None = None
    #: Record-Route values added for the current target (taken off again for the next).
    added: int = 0
    reason: str = ""
    #: The sender's CSeq number when the request was renumbered (0: it was not).
    original_cseq: int = 0


def advance(eng: Engine, a: Attempt) -> None:
    """Send to the next target, wait for DNS, or give up with a 503."""
    while True:
        stx = a.stx
        if stx is not None and (
            stx.cancelled or stx.state not in (TxState.TRYING, TxState.PROCEEDING)
        ):
            if a.dlg is not None and a.direction == 0:  # cancelled while waiting for DNS
                dlg_life.fail(eng, a.dlg)
            return
        if a.targets:
            if _send(eng, a, a.targets.pop(0)):
                return
            continue
        if a.dest is not None:
            set_state(eng, a.dest, DsState.PROBING, a.reason)  # every address of it failed
            a.dest = None
        if not a.hops:
            give_up(eng, a)
            return
        dest, where = a.hops[0]
        if type(where) is Query:
            found = eng.locator.lookup(where, eng.now)
            if found is None:
                if eng.locator.wait(where, lambda: advance(eng, a)):
                    eng.resolve(where)
                return
            if not found:
                a.reason = f"DNS: no address for {where.host}"
            where = found
        a.hops.pop(0)
        a.dest = dest
        a.targets = list(where)  # type: ignore[arg-type]


def retry(eng: Engine, ctx: ClientTransaction, reason: str) -> bool:
    """``ctx`` failed before any useful answer: try the next target.  False when none is left
    (the caller then answers as it would without failover)."""
    a = ctx.attempt
    if a is None:
        return False
    ctx.attempt = None
    a.reason = reason
    if not a.targets and not a.hops:
        if a.dest is not None:
            set_state(eng, a.dest, DsState.PROBING, reason)
            a.dest = None
        return False
    msg = a.msg
    msg.pop_first_value("via")
    for _ in range(a.added):
        msg.pop_first_value("record-route")
    a.added = 0
    mf = msg.get("max-forwards")
    if mf is not None and mf.isdigit():
        msg.set("Max-Forwards", str(int(mf) + 1))
    if a.stx is not None:
        a.stx.client = None
    advance(eng, a)
    return True


def answered(eng: Engine, ctx: ClientTransaction) -> None:
    """A target answered: its destination is up again, and failover is over for ``ctx``
    unless the answer is a 503 (handled by the caller)."""
    a = ctx.attempt
    if a is not None and a.dest is not None and a.dest.state == DsState.PROBING:
        set_state(eng, a.dest, DsState.ACTIVE, "")


def give_up(eng: Engine, a: Attempt) -> None:
    stx = a.stx
    if stx is not None and stx.state in (TxState.TRYING, TxState.PROCEEDING):
        text = (a.reason or "no destination").replace('"', "'")
        eng.reply(stx, 503, "Service Unavailable", f'Reason: SIP;cause=503;text="{text}"')
    if a.dlg is not None and a.direction == 0:
        dlg_life.fail(eng, a.dlg)


def _send(eng: Engine, a: Attempt, target: Target) -> bool:
    try:
        out = eng.socket_for(target.proto, a.socket, target.host)
    except SipError as exc:
        a.reason = exc.reason
        return False
    if a.record_route:
        did = a.dlg.did if a.dlg is not None else "0"
        sips = is_sips(a.msg.ruri)
        if out is not a.socket:
            a.msg.add_first("Record-Route", eng.record_route(a.socket, did, sips))
            a.added += 1
        a.msg.add_first("Record-Route", eng.record_route(out, did, sips))
        a.added += 1
    conn = a.conn if is_stream(target.proto) else None
    try:
        ctx = eng.forward(a.msg, a.stx, out, target.host, target.port, conn, a.dlg, a.direction)
    except SipError as exc:  # 513: too large for UDP, so for any UDP target: answer now
        stx = a.stx
        if stx is not None and stx.state in (TxState.TRYING, TxState.PROCEEDING):
            eng.reply(stx, exc.status, exc.reason)
        if a.dlg is not None and a.direction == 0:
            dlg_life.fail(eng, a.dlg)
        return True
    if ctx is not None:
        ctx.attempt = a
        if a.targets or a.hops:
            ctx.arm_failover(eng.config.fr_timeout)
    return True


def set_state(eng: Engine, dest: Destination, state: str, reason: str, by_mi: bool = False) -> None:
    """Mark a next hop up or down; the shell logs each change once."""
    if eng.dispatcher is not None and eng.dispatcher.mark(dest, state, reason, by_mi):
        eng.queue_event(DestinationChanged(dest.uri, state, reason))
