"""Dialogs as stored rows, and back (OpenSIPS ``dlg_db_handler``'s mapping, without a database).

Pure functions: :func:`dialog_row` turns a dialog into the row a store writes (its JSON-able
columns as Python values), :func:`state_row` is the one-column update of an ACK,
:func:`restore_dialogs` rebuilds dialogs inside an engine from rows, and :func:`expire` ends
those whose lifetime ran out while the server was down.  The engine only reports which
dialogs changed (``DialogChanged`` effects); the stores in ``app/store/`` decide when and how
to write them.

What is stored: every field of :class:`Dialog` and :class:`CalleeLeg` needed to list the call
and to end it correctly later (route sets, contacts, CSeqs including the ones the engine used,
sockets as ``proto:ip:port``, timestart/timeout/lifetime, end reason).  Only dialogs that reached
a confirmed state (3 or 4) are stored, as OpenSIPS does: an unanswered INVITE cannot outlive its
transaction anyway.  A row is deleted when its dialog reaches state 5; an ended-call record is
kept instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from . import dlg_ping, dlg_timer
from .dialog import ANSWERED, CalleeLeg, Dialog, DlgState, Socket

if TYPE_CHECKING:
    from .proxy import Engine

DIALOG_COLUMNS = (
    "db_id",
    "h_entry",
    "h_id",
    "callid",
    "from_uri",
    "to_uri",
    "caller_tag",
    "caller_contact",
    "caller_socket",
    "caller_route_set",
    "caller_source",
    "invite_cseq",
    "callee_cseq",
    "caller_sdp",
    "caller_sent_sdp",
    "callees",
    "confirmed_leg",
    "state",
    "user_flags",
    "timestart",
    "timeout",
    "lifetime",
    "end_reason",
    "local_cseq_caller",
    "local_cseq_callee",
    "created",
    "updated",
)


#: The length of a :func:`state_row` among the rows to upsert (a whole row has 27 columns).
STATE_ROW_LEN = 3


#: States worth storing: an answered call (OpenSIPS inserts the row at confirmation).
STORED_STATES = ANSWERED


#: (rows to upsert, db_ids to delete, ended-call records): what one flush changes.
ChangeSet = tuple[Sequence[tuple[Any, ...]], Sequence[int], Sequence[dict[str, Any]]]


class DbError(Exception):
    """The database cannot be used; the message is one line saying why (shown at startup)."""


def _leg_json(leg: CalleeLeg) -> dict[str, Any]:
    return {
        "tag": leg.tag,
        "contact": leg.contact,
        "caller_cseq": leg.caller_cseq,
        "route_set": leg.route_set,
        "socket": str(leg.socket) if leg.socket is not None else None,
        "sdp": leg.sdp,
        "sent_sdp": leg.sent_sdp,
    }


def dialog_row(dlg: Dialog, wall_offset: float, now_wall: float) -> tuple[Any, ...]:
    """The ``dialogs`` row of a dialog (``wall_offset`` turns its monotonic times into Unix),
    its route set and legs still as Python values (:func:`encode_row`)."""
    src = dlg.caller_source
    return (
        dlg.db_id,
        dlg.h_entry,
        dlg.h_id,
        dlg.callid,
        dlg.from_uri,
        dlg.to_uri,
        dlg.caller_tag,
        dlg.caller_contact,
        str(dlg.caller_socket),
        dlg.caller_route_set,
        f"{src[0]}:{src[1]}:{src[2]}" if src else None,
        dlg.invite_cseq,
        dlg.callee_cseq,
        dlg.caller_sdp,
        dlg.caller_sent_sdp,
        [_leg_json(leg) for leg in dlg.callees],
        dlg.confirmed_leg,
        int(dlg.state),
        dlg.user_flags,
        dlg.timestart,
        dlg.timeout,
        dlg.lifetime,
        dlg.end_reason,
        dlg.local_cseq_caller,
        dlg.local_cseq_callee,
        dlg.created + wall_offset,
        now_wall,
    )


def state_row(dlg: Dialog, now_wall: float) -> tuple[Any, ...]:
    """A dialog whose state alone changed since its row was written: ``(state, updated,
    db_id)``, applied as a one-column update (see :func:`dialog_row` for the whole row)."""
    return (int(dlg.state), now_wall, dlg.db_id)


def split_socket(text: str) -> tuple[str, str, int]:
    """``proto:ip:port`` (IPv6 addresses may contain colons) to its parts."""
    proto, _, rest = text.partition(":")
    host, _, port = rest.rpartition(":")
    return proto, host.strip("[]"), int(port)


class SocketMap:
    """Stored ``proto:ip:port`` texts to the engine's own Socket objects.

    A socket that no longer exists (the listen addresses changed) maps to the first socket of
    the same transport, else to the first socket, so the call can still be ended.
    """

    def __init__(self, sockets: Sequence[Socket]) -> None:
        self.sockets = list(sockets)
        self.exact = {str(s): s for s in sockets}
        self.missing: set[str] = set()
        self._sources: dict[str, tuple[str, str, int]] = {}

    def source(self, text: str | None) -> tuple[str, str, int] | None:
        """A stored ``caller_source`` (``proto:ip:port``) as a tuple; parsed once per text."""
        if not text:
            return None
        hit = self._sources.get(text)
        if hit is None:
            hit = self._sources[text] = split_socket(text)
        return hit

    def get(self, text: str | None) -> Socket | None:
        if not text:
            return None
        hit = self.exact.get(text)
        if hit is not None:
            return hit
        self.missing.add(text)
        proto = text.partition(":")[0]
        for s in self.sockets:
            if s.proto == proto:
                return s
        return self.sockets[0]


_loads = json.JSONDecoder().decode


def dialog_from_row(row: Sequence[Any], sockets: SocketMap) -> Dialog:
    """Rebuild a dialog from a ``dialogs`` row (``created`` stays a Unix time here)."""
    (
        _db_id,
        h_entry,
        h_id,
        callid,
        from_uri,
        to_uri,
        caller_tag,
        caller_contact,
        caller_socket,
        caller_route_set,
        caller_source,
        invite_cseq,
        callee_cseq,
        caller_sdp,
        caller_sent_sdp,
        callees,
        confirmed_leg,
        state,
        user_flags,
        timestart,
        timeout,
        lifetime,
        end_reason,
        local_cseq_caller,
        local_cseq_callee,
        created,
        _updated,
    ) = row
    get = sockets.get
    legs = [
        CalleeLeg(
            tag=leg["tag"],
            contact=leg["contact"],
            caller_cseq=leg["caller_cseq"],
            route_set=tuple(leg["route_set"]),
            socket=get(leg["socket"]),
            sdp=leg["sdp"],
            sent_sdp=leg["sent_sdp"],
        )
        for leg in _loads(callees)
    ]
    socket = get(caller_socket)
    assert socket is not None
    return Dialog(
        h_entry=h_entry,
        h_id=h_id,
        callid=callid,
        from_uri=from_uri,
        to_uri=to_uri,
        caller_tag=caller_tag,
        caller_contact=caller_contact,
        caller_socket=socket,
        invite_cseq=invite_cseq,
        caller_route_set=tuple(_loads(caller_route_set)),
        callee_cseq=callee_cseq,
        caller_sdp=caller_sdp,
        caller_sent_sdp=caller_sent_sdp,
        caller_source=sockets.source(caller_source),
        callees=legs,
        confirmed_leg=confirmed_leg,
        state=DlgState(state),
        user_flags=user_flags,
        timestart=timestart,
        timeout=timeout,
        lifetime=lifetime,
        end_reason=end_reason,
        local_cseq_caller=local_cseq_caller,
        local_cseq_callee=local_cseq_callee,
        created=created,
    )


def restore_dialogs(
    eng: Engine, rows: Iterable[Sequence[Any]], now: float, *, skip_known: bool = False
) -> tuple[list[Dialog], list[Dialog]]:
    """Put stored dialogs back into ``eng`` with their IDs, stats and lifetime timers.

    Returns (restored, expired): the expired ones (lifetime over while the server was down)
    are in the table but not ended yet; call :func:`expire` once the transports can send.
    ``skip_known`` leaves out dialogs already in memory (MI ``dlg_restore_db``).
    """
    eng.now = now
    sockets = SocketMap(eng.sockets)
    table = eng.dialogs
    stats = eng.stats
    now_wall = eng.wall()
    restored: list[Dialog] = []
    expired: list[Dialog] = []
    for row in rows:
        dlg = dialog_from_row(row, sockets)
        if dlg.state not in STORED_STATES:
            continue
        if dlg.h_entry >= table.hash_size:
            raise DbError(f"dialog {dlg.did} has h_entry {dlg.h_entry} beyond hash_size")
        if skip_known and table.holds(dlg.h_entry, dlg.h_id):
            continue
        # Monotonic creation time relative to this process (negative if long ago: fine).
        dlg.created = eng.now - (now_wall - dlg.created)
        table.add(dlg)
        stats.active_dialogs += 1
        restored.append(dlg)
        if dlg.timeout:
            remaining = dlg.timeout - now_wall
            if remaining <= 0:
                expired.append(dlg)
            else:
                timeout = dlg.timeout
                dlg_timer.arm_lifetime(
                    eng, dlg, remaining, store=False
                )  # its row is stored already
                dlg.timeout = timeout
                if eng.config.ping != "none":
                    dlg_ping.start(eng, dlg)
    return restored, expired


def expire(eng: Engine, dialogs: Iterable[Dialog], now: float) -> None:
    """End dialogs whose lifetime ran out while the server was down ("Lifetime Timeout")."""
    eng.now = now
    for dlg in dialogs:
        if dlg.state is not DlgState.DELETED:
            dlg_timer.on_lifetime(eng, dlg)
