"""OPTIONS probes of the next hops (OpenSIPS dispatcher's ``ds_ping_interval``).

Every interval each destination that is not ``Inactive`` gets an OPTIONS.  A final answer
marks it ``Active`` (any status but 408 and 503: a peer that rejects OPTIONS still answers
SIP); silence within the probe timeout, an unreachable address, or a 503 marks it
``Probing``.  So a destination that died between calls is skipped before a call finds it
dead, and one that came back is used again without an operator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import failover
from .dispatcher import Destination, DsState
from .dlg_req_within import build_request, user_agent
from .errors import SipError
from .locator import Query
from .message import SipMessage
from .transaction import ClientTransaction

if TYPE_CHECKING:
    from .proxy import Engine

#: Seconds a probe waits for its answer (at most the interval).
PROBE_TIMEOUT = 5.0


def start(eng: Engine, interval: float) -> None:
    eng.timers.call_later(eng.now, 0.0, _tick, eng, interval)


def _tick(eng: Engine, interval: float) -> None:
    dispatcher = eng.dispatcher
    if dispatcher is not None:
        for dest in dispatcher.destinations:
            if dest.state != DsState.INACTIVE:
                probe(eng, dest, min(interval, PROBE_TIMEOUT))
    eng.timers.call_later(eng.now, interval, _tick, eng, interval)


def probe(eng: Engine, dest: Destination, timeout: float) -> None:
    where = dest.where(dest.proto or "udp")
    if isinstance(where, Query):
        found = eng.locator.lookup(where, eng.now)
        if found is None:
            if eng.locator.wait(where, lambda: None):
                eng.resolve(where)
            return
        if not found:
            failover.set_state(eng, dest, DsState.PROBING, f"DNS: no address for {where.host}")
            return
        target = found[0]
    else:
        target = where[0]
    try:
        out = eng.socket_for(target.proto, None, target.host)
    except SipError:
        return
    branch = eng.new_branch()
    headers = [
        ("Via", f"SIP/2.0/{target.proto.upper()} {out.hostport};branch={branch}"),
        ("To", f"<{dest.uri}>"),
        ("From", f"<sip:sipdlg@{out.hostport}>;tag={branch[-8:]}"),
        ("Call-ID", f"{branch}-probe"),
        ("CSeq", "1 OPTIONS"),
        ("Max-Forwards", "70"),
        *user_agent(eng),
    ]
    data, msg = build_request("OPTIONS", dest.uri, headers)
    ctx = ClientTransaction(eng, branch, msg, out, target.host, target.port, None)
    ctx.handler = lambda txn, answer: _answered(eng, dest, answer)
    eng.client_txns[(branch, "OPTIONS")] = ctx
    ctx.start(data)
    ctx.arm_failover(timeout)


def _answered(eng: Engine, dest: Destination, answer: SipMessage | None) -> None:
    if answer is None:
        failover.set_state(eng, dest, DsState.PROBING, "no answer to OPTIONS")
    elif answer.status in (408, 503):
        failover.set_state(eng, dest, DsState.PROBING, f"{answer.status} to OPTIONS")
    elif answer.status >= 200:
        failover.set_state(eng, dest, DsState.ACTIVE, "")
