"""Ended-call records: what is left of every dialog that reached state 5 (beyond OpenSIPS).

``make_record`` turns a dialog into a plain dict (JSON-able, the shape ``dlg_list_ended``
returns) when the engine reports it ended (``DialogEnded``); :class:`RecordRing` keeps the
newest ``size`` of them in memory.  Sans-I/O: no clock is read here, times come from the engine.

For persistence (``app/store/``): call :meth:`RecordRing.load` with stored records (oldest
first) to restore them, iterate the ring for newest-first order, and append a callable to
:attr:`RecordRing.subscribers` to be handed each new record as it is added.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .dialog import Dialog, EndReason

if TYPE_CHECKING:
    from .proxy import Engine

Record = dict[str, Any]

#: Who sent the BYE that ended the call, by end reason ("Cancelled" and expiries: nobody).
BYE_SENDER = {
    EndReason.DOWNSTREAM_BYE: "caller",
    EndReason.UPSTREAM_BYE: "callee",
    EndReason.LIFETIME_TIMEOUT: "engine",
    EndReason.MI_TERMINATION: "engine",
    EndReason.CALLER_PING_TIMEOUT: "engine",
    EndReason.CALLEE_PING_TIMEOUT: "engine",
    EndReason.SIP_RACE_CONDITION: "engine",
}

#: The keys of a record, in output order.
RECORD_KEYS = (
    "ID",
    "db_id",
    "callid",
    "from_uri",
    "from_tag",
    "to_uri",
    "to_tag",
    "created",
    "confirmed",
    "ended",
    "duration",
    "state",
    "end_reason",
    "bye_sent_by",
)


def make_record(eng: Engine, dlg: Dialog) -> Record:
    """The record of an ended dialog.

    Times are Unix seconds: ``created`` and ``ended`` with milliseconds, ``confirmed`` the
    dialog's ``timestart`` (0 if the call was never answered).  ``duration`` is whole seconds
    from confirmation to the end (0 for unanswered calls).  ``state`` is the final state (5);
    ``end_reason`` is null for failed calls and for dialogs that expired without a BYE.
    """
    offset = eng.wall_offset
    leg = dlg.callee
    created = round(dlg.created + offset, 3)
    ended = round((dlg.ended or eng.now) + offset, 3)
    confirmed = dlg.timestart
    reason = dlg.end_reason
    return {
        "ID": dlg.did,
        "db_id": str(dlg.db_id),
        "callid": dlg.callid,
        "from_uri": dlg.from_uri,
        "from_tag": dlg.caller_tag,
        "to_uri": dlg.to_uri,
        "to_tag": leg.tag if leg is not None else "",
        "created": created,
        "confirmed": confirmed,
        "ended": ended,
        "duration": max(0, int(ended - confirmed)) if confirmed else 0,
        "state": int(dlg.state),
        "end_reason": reason,
        "bye_sent_by": BYE_SENDER.get(reason) if reason is not None else None,
    }


class RecordRing:
    """The newest ``size`` ended-call records; iteration is newest first."""

    def __init__(self, size: int = 10000) -> None:
        if size < 0:
            raise ValueError("size must not be negative")
        self.size = size
        self._ring: deque[Record] = deque(maxlen=size)
        #: Called with every record added (persistence, metrics); must not raise or block.
        self.subscribers: list[Callable[[Record], None]] = []
        #: Records added since start (including those that fell off the ring).
        self.total = 0

    def __len__(self) -> int:
        return len(self._ring)

    def __iter__(self) -> Iterator[Record]:
        return reversed(self._ring)

    def load(self, records: Iterable[Record]) -> None:
        """Put back stored records, oldest first: not new ends, so no subscriber is told."""
        self._ring.extend(records)

    def add(self, record: Record) -> None:
        self._ring.append(record)
        self.total += 1
        for subscriber in self.subscribers:
            subscriber(record)

    def by_callid(self, callid: str) -> list[Record]:
        """Records with this Call-ID, newest first."""
        return [r for r in self if r["callid"] == callid]

    def page(self, index: int, counter: int) -> list[Record]:
        """``counter`` records after skipping the ``index`` newest."""
        if index < 0 or counter <= 0:
            return []
        out = []
        for n, record in enumerate(self):
            if n >= index + counter:
                break
            if n >= index:
                out.append(record)
        return out
