"""An in-memory stand-in for the server, for MI unit tests and the listing benchmark.

It fills a real ``DialogTable`` with real ``Dialog`` objects shaped like the SIPp calls of the
reference samples, so the MI can be exercised without sockets or SIPp.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field

from engine.dialog import Dialog, DlgState, Socket
from engine.dispatcher import DestinationSet
from engine.dlg_records import RecordRing
from engine.dlg_table import DialogTable
from engine.stats import Stats

SDP_CALLER = (
    "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\nm=audio 6004 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
SDP_CALLEE = SDP_CALLER.replace("6004", "6000")
PROXY = Socket("udp", "127.0.0.1", 5170)


def make_dialog(
    table: DialogTable,
    n: int,
    *,
    state: DlgState = DlgState.CONFIRMED,
    now: int | None = None,
    lifetime: int = 43200,
    callid: str | None = None,
) -> Dialog:
    """A dialog like SIPp's ``uac`` call number ``n`` through the proxy, added to ``table``."""
    callid = callid or f"{n}-16173@127.0.0.1"
    h_entry, h_id = table.new_ids(callid)
    dlg = Dialog(
        h_entry=h_entry,
        h_id=h_id,
        callid=callid,
        from_uri="sip:sipp@127.0.0.1:5160",
        to_uri="sip:service@127.0.0.1:5170",
        caller_tag=f"16173SIPpTag{n:03d}",
        caller_contact="sip:sipp@127.0.0.1:5160",
        caller_socket=PROXY,
        invite_cseq=1,
        caller_sdp=SDP_CALLER,
    )
    if state >= DlgState.EARLY:
        leg = dlg.leg_for_tag(f"16170SIPpTag{n + 10:03d}")
        leg.socket = PROXY
    if state >= DlgState.CONFIRMED_NA:
        leg.contact = "sip:127.0.0.1:5180;transport=UDP"
        leg.sdp = SDP_CALLEE
        dlg.confirmed_leg = 0
        start = int(time.time()) if now is None else now
        dlg.timestart = start
        dlg.timeout = start + lifetime
    dlg.state = state
    table.add(dlg)
    return dlg


def bump(stats: Stats, name: str, delta: int) -> None:
    """Add to a counter (Stats declares them through ``__slots__``)."""
    setattr(stats, name, getattr(stats, name) + delta)


@dataclass
class FakeEngine:
    dialogs: DialogTable = field(default_factory=lambda: DialogTable(rng=random.Random(7)))
    stats: Stats = field(default_factory=Stats)
    dispatcher: DestinationSet | None = None


@dataclass
class FakeService:
    """The MI's view of the server; ``end_dialog`` records calls and marks the dialog ended."""

    engine: FakeEngine = field(default_factory=FakeEngine)
    started_at: float = field(default_factory=time.time)
    version: str = "0.1.0"
    revision: str | None = None
    records: RecordRing = field(default_factory=lambda: RecordRing(100))
    mi_requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    has_db: bool = False
    end_result: bool = True
    ended: list[tuple[Dialog, str, str]] = field(default_factory=list)
    timeouts: list[tuple[Dialog, int]] = field(default_factory=list)
    #: What ``pike_list`` shows.
    blocked: list[str] = field(default_factory=list)

    def blocked_sources(self) -> list[str]:
        return list(self.blocked)

    def set_timeout(self, dlg: Dialog, seconds: int) -> bool:
        self.timeouts.append((dlg, seconds))
        return dlg.state is not DlgState.DELETED

    def db_sync(self) -> None:
        raise AssertionError("no database here")

    def set_destination_state(self, address: str, state: str) -> bool:
        ds = self.engine.dispatcher
        dest = ds.find(address) if ds is not None else None
        if ds is None or dest is None:
            return False
        ds.mark(dest, state, "MI", by_mi=True)
        return True

    def restore_db(self) -> int:
        raise AssertionError("no database here")

    async def end_dialog(
        self, dlg: Dialog, reason: str = "MI Termination", extra_headers: str = ""
    ) -> bool:
        self.ended.append((dlg, reason, extra_headers))
        if not self.end_result:
            return False
        dlg.set_end_reason(reason)
        if dlg.state >= DlgState.CONFIRMED_NA:
            bump(self.engine.stats, "active_dialogs", -1)
        dlg.state = DlgState.DELETED
        self.engine.dialogs.remove(dlg)
        return True

    def add_calls(self, count: int, state: DlgState = DlgState.CONFIRMED) -> list[Dialog]:
        """``count`` dialogs, with the statistics the engine would show for them."""
        out = [make_dialog(self.engine.dialogs, i + 1, state=state) for i in range(count)]
        st = self.engine.stats
        bump(st, "processed_dialogs", count)
        if state >= DlgState.CONFIRMED_NA:
            bump(st, "active_dialogs", count)
        elif state == DlgState.EARLY:
            bump(st, "early_dialogs", count)
        return out
